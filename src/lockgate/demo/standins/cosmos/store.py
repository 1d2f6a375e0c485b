"""In-memory databases, containers and documents with Cosmos system properties.

Rules kept from the service: ids are unique per database account (databases), per database
(containers) and per logical partition (documents); every resource carries ``_rid``,
``_self``, ``_etag`` and ``_ts``; ``_rid`` sizes follow the real hierarchy (4 bytes for a
database, 8 for a container, 16 for a document) so the SDK's ``_rid`` sniffing sees real-looking
values. Errors are raised as :class:`CosmosError` with the service's status and code. Patch and
transactional batches follow the REST reference (a batch is all or nothing: on a failure the
failing operation carries its status and every other one 424).

Part of a stand-in for demos and tests, written from the public docs: not the service.
"""

from __future__ import annotations

import base64
import json
import os
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

__all__ = ["Container", "CosmosError", "Database", "Store"]


class CosmosError(Exception):
    """An error the server answers as ``{"code": ..., "message": ...}``."""

    def __init__(self, status: int, code: str, message: str, substatus: int | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.substatus = substatus


def _rid(raw: bytes) -> str:
    # The service's _rid alphabet swaps '/' for '-'.
    return base64.b64encode(raw).decode().replace("/", "-")


def _system(resource: dict[str, Any], rid: str, self_link: str) -> dict[str, Any]:
    resource["_rid"] = rid
    resource["_self"] = self_link
    resource["_etag"] = f'"{uuid.uuid4()}"'
    resource["_ts"] = int(time.time())
    return resource


@dataclass
class Container:
    props: dict[str, Any]
    raw_rid: bytes
    # (partition key JSON, id) -> document
    docs: dict[tuple[str, str], dict[str, Any]] = field(default_factory=dict)
    lsn: int = 0

    @property
    def pk_path(self) -> list[str]:
        paths = self.props["partitionKey"]["paths"]
        return [p for p in paths[0].split("/") if p]

    def pk_of(self, doc: dict[str, Any]) -> str:
        """JSON of the partition key value the document carries (``[{}]`` when absent)."""
        value: Any = doc
        for name in self.pk_path:
            if not isinstance(value, dict) or name not in value:
                return "[{}]"
            value = value[name]
        return json.dumps([value], separators=(",", ":"))

    def put(self, pk: str, doc: dict[str, Any], *, mode: str) -> tuple[dict[str, Any], bool]:
        """Store a document. ``mode`` is create, upsert or replace. Returns (doc, created)."""
        doc_id = doc.get("id")
        if not isinstance(doc_id, str) or not doc_id or "/" in doc_id:
            raise CosmosError(400, "BadRequest", "The input content is invalid: bad or missing id.")
        if self.pk_of(doc) != _canon(pk):
            raise CosmosError(
                400,
                "BadRequest",
                "PartitionKey extracted from document doesn't match the one specified in the "
                "header.",
                1001,
            )
        key = (_canon(pk), doc_id)
        existing = self.docs.get(key)
        if mode == "create" and existing is not None:
            raise CosmosError(
                409, "Conflict", "Entity with the specified id already exists in the system."
            )
        if mode == "replace" and existing is None:
            raise CosmosError(404, "NotFound", "Entity with the specified id does not exist.")
        raw = existing["_rid"] if existing else _rid(self.raw_rid + os.urandom(8))
        stored = {k: v for k, v in doc.items() if not k.startswith("_")}
        _system(stored, raw, f"{self.props['_self']}docs/{raw}/")
        self.docs[key] = stored
        self.lsn += 1
        return stored, existing is None

    def get(self, pk: str, doc_id: str) -> dict[str, Any]:
        doc = self.docs.get((_canon(pk), doc_id))
        if doc is None:
            raise CosmosError(404, "NotFound", "Entity with the specified id does not exist.")
        return doc

    def delete(self, pk: str, doc_id: str) -> None:
        self.get(pk, doc_id)
        del self.docs[(_canon(pk), doc_id)]
        self.lsn += 1

    def patch(self, pk: str, doc_id: str, spec: Any) -> dict[str, Any]:
        """Apply a JSON-patch-like ``{"operations": [...]}`` (add, set, replace, remove, incr)."""
        ops = spec.get("operations") if isinstance(spec, dict) else None
        if not isinstance(ops, list) or not ops:
            raise CosmosError(400, "BadRequest", "Patch needs a non-empty operations list.")
        doc = json.loads(json.dumps(self.get(pk, doc_id)))
        for op in ops:
            _patch_one(doc, op)
        if doc.get("id") != doc_id or self.pk_of(doc) != _canon(pk):
            raise CosmosError(400, "BadRequest", "Patch may not change the id or partition key.")
        stored, _ = self.put(pk, doc, mode="replace")
        return stored

    def batch(self, pk: str, ops: Any) -> tuple[list[dict[str, Any]], bool]:
        """Run a transactional batch: all operations or none. Returns (results, succeeded)."""
        if not isinstance(ops, list) or not ops or not all(isinstance(o, dict) for o in ops):
            raise CosmosError(400, "BadRequest", "A batch is a non-empty list of operations.")
        saved, saved_lsn = dict(self.docs), self.lsn
        results: list[dict[str, Any]] = []
        for index, op in enumerate(ops):
            try:
                status, body = self._batch_one(pk, op)
            except CosmosError as err:
                self.docs, self.lsn = saved, saved_lsn
                failed = [{"statusCode": 424, "requestCharge": 0.0} for _ in ops]
                failed[index] = {"statusCode": err.status, "requestCharge": 1.0}
                return failed, False
            result: dict[str, Any] = {"statusCode": status, "requestCharge": 1.0}
            if body is not None:
                result.update(eTag=body["_etag"], resourceBody=body)
            results.append(result)
        return results, True

    def _batch_one(self, pk: str, op: dict[str, Any]) -> tuple[int, dict[str, Any] | None]:
        kind, doc_id, body = op.get("operationType"), op.get("id"), op.get("resourceBody")
        if kind in ("Create", "Upsert", "Replace") and isinstance(body, dict):
            doc, created = self.put(pk, body, mode=kind.lower())
            return (201 if created else 200), doc
        if kind == "Read" and isinstance(doc_id, str):
            return 200, self.get(pk, doc_id)
        if kind == "Delete" and isinstance(doc_id, str):
            self.delete(pk, doc_id)
            return 204, None
        if kind == "Patch" and isinstance(doc_id, str):
            return 200, self.patch(pk, doc_id, body)
        raise CosmosError(400, "BadRequest", f"Unsupported batch operation {kind!r}.")

    def items(self, pk: str | None) -> list[dict[str, Any]]:
        if pk is None:
            return list(self.docs.values())
        wanted = _canon(pk)
        return [doc for (key, _), doc in self.docs.items() if key == wanted]


def _patch_one(doc: dict[str, Any], op: Any) -> None:
    if not isinstance(op, dict) or not isinstance(op.get("path"), str):
        raise CosmosError(400, "BadRequest", "A patch operation needs op and path.")
    *parents, last = [p for p in op["path"].split("/") if p] or [""]
    target: Any = doc
    for name in parents:
        target = target.get(name) if isinstance(target, dict) else None
    if not isinstance(target, dict) or not last:
        raise CosmosError(400, "BadRequest", f"Patch path {op['path']} does not exist.")
    kind, value = op.get("op"), op.get("value")
    if kind in ("add", "set") or (kind == "replace" and last in target):
        target[last] = value
    elif kind == "remove" and last in target:
        del target[last]
    elif kind == "incr" and isinstance(target.get(last, 0), int | float):
        target[last] = target.get(last, 0) + value
    else:
        raise CosmosError(400, "BadRequest", f"Patch operation {kind} on {op['path']} failed.")


def _canon(pk_json: str) -> str:
    try:
        value = json.loads(pk_json)
    except ValueError:
        raise CosmosError(400, "BadRequest", "Partition key header is not valid JSON.") from None
    if not isinstance(value, list) or len(value) != 1:
        raise CosmosError(400, "BadRequest", "Partition key must be a one-element JSON array.")
    return json.dumps(value, separators=(",", ":"))


@dataclass
class Database:
    props: dict[str, Any]
    raw_rid: bytes
    containers: dict[str, Container] = field(default_factory=dict)


class Store:
    """All resources of one fake account."""

    def __init__(self) -> None:
        self.databases: dict[str, Database] = {}

    # databases -------------------------------------------------------------------------------
    def create_database(self, body: dict[str, Any]) -> dict[str, Any]:
        db_id = _valid_id(body)
        if db_id in self.databases:
            raise CosmosError(409, "Conflict", "Entity with the specified id already exists.")
        raw = os.urandom(4)
        rid = _rid(raw)
        props = _system({"id": db_id}, rid, f"dbs/{rid}/")
        props["_colls"] = "colls/"
        props["_users"] = "users/"
        self.databases[db_id] = Database(props, raw)
        return props

    def database(self, db_id: str) -> Database:
        db = self.databases.get(db_id)
        if db is None:
            raise CosmosError(404, "NotFound", "Entity with the specified id does not exist.")
        return db

    def delete_database(self, db_id: str) -> None:
        self.database(db_id)
        del self.databases[db_id]

    # containers ------------------------------------------------------------------------------
    def create_container(self, db_id: str, body: dict[str, Any]) -> dict[str, Any]:
        db = self.database(db_id)
        coll_id = _valid_id(body)
        if coll_id in db.containers:
            raise CosmosError(409, "Conflict", "Entity with the specified id already exists.")
        pk = body.get("partitionKey") or {"paths": ["/_partitionKey"], "kind": "Hash"}
        paths = pk.get("paths")
        if not isinstance(paths, list) or len(paths) != 1 or not str(paths[0]).startswith("/"):
            raise CosmosError(400, "BadRequest", "Only single-path hash partition keys here.")
        raw = db.raw_rid + os.urandom(4)
        rid = _rid(raw)
        props = _system(
            {
                "id": coll_id,
                "indexingPolicy": body.get("indexingPolicy")
                or {
                    "indexingMode": "consistent",
                    "automatic": True,
                    "includedPaths": [{"path": "/*"}],
                },
                "partitionKey": {"paths": paths, "kind": pk.get("kind", "Hash"), "version": 2},
            },
            rid,
            f"{db.props['_self']}colls/{rid}/",
        )
        for extra in ("defaultTtl", "uniqueKeyPolicy", "conflictResolutionPolicy"):
            if extra in body:
                props[extra] = body[extra]
        props["_docs"] = "docs/"
        db.containers[coll_id] = Container(props, raw)
        return props

    def container(self, db_id: str, coll_id: str) -> Container:
        coll = self.database(db_id).containers.get(coll_id)
        if coll is None:
            raise CosmosError(404, "NotFound", "Entity with the specified id does not exist.")
        return coll

    def replace_container(self, db_id: str, coll_id: str, body: dict[str, Any]) -> dict[str, Any]:
        coll = self.container(db_id, coll_id)
        if body.get("id") != coll_id:
            raise CosmosError(400, "BadRequest", "The id in the body must match the link.")
        for extra in ("indexingPolicy", "defaultTtl"):
            if extra in body:
                coll.props[extra] = body[extra]
        coll.props["_etag"] = f'"{uuid.uuid4()}"'
        return coll.props

    def delete_container(self, db_id: str, coll_id: str) -> None:
        self.container(db_id, coll_id)
        del self.databases[db_id].containers[coll_id]


def _valid_id(body: dict[str, Any]) -> str:
    value = body.get("id")
    bad = set("/\\?#")
    if not isinstance(value, str) or not value or len(value) > 255 or bad & set(value):
        raise CosmosError(400, "BadRequest", "The input content is invalid: bad or missing id.")
    return value
