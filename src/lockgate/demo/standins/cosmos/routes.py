"""Routing of authenticated requests to the store, and Cosmos-shaped responses.

Paths are the URL-decoded segments: ``[]`` is the account, ``[dbs]``, ``[dbs, d]``,
``[dbs, d, colls]``, ``[dbs, d, colls, c]``, ``[dbs, d, colls, c, docs]``,
``[dbs, d, colls, c, docs, id]`` and ``[dbs, d, colls, c, pkranges]``. Anything else is 404.
Feeds answer ``{"_rid", "<Kind>", "_count"}`` in one page (no continuation). Which operation
a request runs (query, query plan, create, upsert, batch, ...) is decided once, by
:func:`~lockgate.demo.standins.cosmos.operations.operation_of`, and logged in ``fake.executed``; the
branches below only carry it out, so the log cannot differ from what was done.

Part of a stand-in for demos and tests, written from the public docs: not the service.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

from aiohttp import web

from .operations import Executed, operation_of
from .query import QueryError, parse_query, run_query
from .store import Container, CosmosError

if TYPE_CHECKING:
    from .server import CosmosFake

__all__ = ["EXECUTED", "handle"]

EXECUTED = web.RequestKey("executed", Executed)

_FEED_KEYS = {"dbs": "Databases", "colls": "DocumentCollections", "docs": "Documents"}
# The pkranges change feed ends on 304; the single range never changes, so one etag suffices.
_PKRANGES_ETAG = '"pkranges-1"'


def _json_body(body: bytes) -> Any:
    try:
        value = json.loads(body or b"{}")
    except ValueError:
        raise CosmosError(400, "BadRequest", "The request body is not valid JSON.") from None
    return value


def _ok(body: Any, status: int = 200, /, **headers: str) -> web.Response:
    headers.setdefault("x-ms-request-charge", "1")
    if isinstance(body, dict) and "_etag" in body:
        headers.setdefault("etag", body["_etag"])
    return web.json_response(body, status=status, headers=headers)


def _feed(kind: str, items: list[Any], rid: str = "", **headers: str) -> web.Response:
    headers.setdefault("x-ms-item-count", str(len(items)))
    return _ok({"_rid": rid, _FEED_KEYS.get(kind, kind): items, "_count": len(items)}, **headers)


def _not_found() -> CosmosError:
    return CosmosError(404, "NotFound", "Entity with the specified id does not exist.")


def handle(fake: CosmosFake, request: web.Request, seg: list[str], body: bytes) -> web.Response:
    verb = request.method
    op = operation_of(verb, seg, request.headers)
    if op is not None:
        fake.executed.append(op)
        request[EXECUTED] = op  # requests run concurrently: the server reads it back here
    how = op.op if op is not None else ""
    if not seg:
        if verb != "GET":
            raise CosmosError(405, "MethodNotAllowed", "Only GET is allowed on the account.")
        return _account(fake)
    if seg[0] != "dbs" or len(seg) > 6:
        raise _not_found()
    store = fake.store
    if len(seg) == 1:
        if verb == "GET":
            return _feed("dbs", [db.props for db in store.databases.values()])
        if how == "query":
            return _query(request, body, "dbs", [db.props for db in store.databases.values()])
        if how == "create_database":
            created = store.create_database(_json_body(body))
            op.db = created["id"]  # type: ignore[union-attr]  # the log names what was made
            return _ok(created, 201)
    elif len(seg) == 2:
        db = store.database(seg[1])
        if verb == "GET":
            return _ok(db.props)
        if verb == "DELETE":
            store.delete_database(seg[1])
            return web.Response(status=204, headers={"x-ms-request-charge": "1"})
    elif seg[2] != "colls":
        raise _not_found()
    elif len(seg) == 3:
        db = store.database(seg[1])
        colls = [c.props for c in db.containers.values()]
        alt = {"x-ms-alt-content-path": f"dbs/{seg[1]}"}
        if verb == "GET":
            return _feed("colls", colls, db.props["_rid"], **alt)
        if how == "query":
            return _query(request, body, "colls", colls, db.props["_rid"])
        if how == "create_container":
            created = store.create_container(seg[1], _json_body(body))
            op.container = created["id"]  # type: ignore[union-attr]
            return _ok(created, 201, **alt)
    elif len(seg) == 4:
        alt = {"x-ms-alt-content-path": f"dbs/{seg[1]}"}
        if verb == "GET":
            return _ok(store.container(seg[1], seg[3]).props, **alt)
        if verb == "PUT":
            return _ok(store.replace_container(seg[1], seg[3], _json_body(body)), **alt)
        if verb == "DELETE":
            store.delete_container(seg[1], seg[3])
            return web.Response(status=204, headers={"x-ms-request-charge": "1"})
    else:
        coll = store.container(seg[1], seg[3])
        return _collection_child(request, coll, seg, body, how, fake.plan_cross_partition)
    raise CosmosError(405, "MethodNotAllowed", f"{verb} is not allowed here.")


def _account(fake: CosmosFake) -> web.Response:
    location = [{"name": "Local", "databaseAccountEndpoint": fake.public_url}]
    body = {
        "_self": "",
        "id": fake.account_id,
        "_rid": f"{fake.account_id}.documents.azure.com",
        "media": "//media/",
        "addresses": "//addresses/",
        "_dbs": "//dbs/",
        "writableLocations": location,
        "readableLocations": location,
        "enableMultipleWriteLocations": False,
        "continuousBackupEnabled": False,
        "enableNRegionSynchronousCommit": False,
        "userReplicationPolicy": {
            "asyncReplication": False,
            "minReplicaSetSize": 3,
            "maxReplicasetSize": 4,
        },
        "userConsistencyPolicy": {"defaultConsistencyLevel": "Session"},
        "systemReplicationPolicy": {"minReplicaSetSize": 3, "maxReplicasetSize": 4},
        "readPolicy": {"primaryReadCoefficient": 1, "secondaryReadCoefficient": 1},
        "queryEngineConfiguration": "{}",
    }
    return _ok(
        body, **{"x-ms-max-media-storage-usage-mb": "10240", "x-ms-media-storage-usage-mb": "0"}
    )


def _collection_child(
    request: web.Request, coll: Container, seg: list[str], body: bytes, how: str, plan: bool
) -> web.Response:
    verb, kind = request.method, seg[4]
    alt = {"x-ms-alt-content-path": f"dbs/{seg[1]}/colls/{seg[3]}"}
    if kind == "pkranges" and len(seg) == 5 and verb == "GET":
        if request.headers.get("if-none-match") == _PKRANGES_ETAG:
            return web.Response(status=304, headers={"etag": _PKRANGES_ETAG, **alt})
        rng = {
            "id": "0",
            "_rid": coll.props["_rid"] + "AgAAAAAAAAA=",
            "minInclusive": "",
            "maxExclusive": "FF",
            "ridPrefix": 0,
            "throughputFraction": 1.0,
            "status": "online",
            "parents": [],
            "_self": coll.props["_self"] + "pkranges/0/",
            "_etag": '"0"',
            "_ts": coll.props["_ts"],
        }
        headers = {"etag": _PKRANGES_ETAG, **alt}
        return _feed("PartitionKeyRanges", [rng], coll.props["_rid"], **headers)
    if kind != "docs":
        raise _not_found()
    pk = request.headers.get("x-ms-documentdb-partitionkey")

    def done(result: Any, status: int = 200) -> web.Response:
        session = {"x-ms-session-token": f"0:1#{coll.lsn}", **alt}
        if result is None:
            return web.Response(status=status, headers={"x-ms-request-charge": "1", **session})
        return _ok(result, status, **session)

    if len(seg) == 5:
        if verb == "GET":
            return done(
                {
                    "_rid": coll.props["_rid"],
                    "Documents": coll.items(pk),
                    "_count": len(coll.items(pk)),
                }
            )
        if how == "query_plan":
            return _query_plan(body)
        if how == "query":
            if plan and _needs_plan(request, pk):
                raise _not_servable()
            items = coll.items(pk)
            response = _query(request, body, "docs", items, coll.props["_rid"])
            response.headers["x-ms-session-token"] = f"0:1#{coll.lsn}"
            response.headers.update(alt)
            return response
        if how in ("create", "upsert", "batch"):
            if pk is None:
                raise CosmosError(400, "BadRequest", "PartitionKey value must be supplied.")
            if how == "batch":
                results, ok = coll.batch(pk, _json_body(body))
                return _ok(results, 200 if ok else 207, **{"x-ms-session-token": f"0:1#{coll.lsn}"})
            doc, created = coll.put(pk, _json_body(body), mode=how)
            return done(doc, 201 if created else 200)
    else:
        if pk is None:
            raise CosmosError(400, "BadRequest", "PartitionKey value must be supplied.")
        doc_id = seg[5]
        if verb == "GET":
            return done(coll.get(pk, doc_id))
        if verb == "PUT":
            new = _json_body(body)
            if new.get("id") != doc_id:
                raise CosmosError(400, "BadRequest", "The id in the body must match the link.")
            _check_if_match(request, coll.get(pk, doc_id))
            doc, _ = coll.put(pk, new, mode="replace")
            return done(doc)
        if verb == "DELETE":
            _check_if_match(request, coll.get(pk, doc_id))
            coll.delete(pk, doc_id)
            return done(None, 204)
        if verb == "PATCH":
            _check_if_match(request, coll.get(pk, doc_id))
            return done(coll.patch(pk, doc_id, _json_body(body)))
    raise CosmosError(405, "MethodNotAllowed", f"{verb} is not allowed here.")


def _check_if_match(request: web.Request, current: dict[str, Any]) -> None:
    wanted = request.headers.get("if-match")
    if wanted and wanted not in ("*", current["_etag"]):
        raise CosmosError(
            412,
            "PreconditionFailed",
            "Operation cannot be performed because one of the specified precondition is not met.",
        )


def _needs_plan(request: web.Request, pk: str | None) -> bool:
    """A cross-partition query the service cannot answer without a plan (when the knob is on):
    it answers 400/1004 and the SDK asks for a query plan, then queries range by range."""
    return (
        pk is None
        and request.headers.get("x-ms-documentdb-query-enablecrosspartition", "").lower() == "true"
        and "x-ms-documentdb-partitionkeyrangeid" not in request.headers
    )


def _not_servable() -> CosmosError:
    return CosmosError(
        400,
        "BadRequest",
        "The provided cross partition query can not be directly served by the gateway.",
        1004,
    )


def _parse(body: bytes) -> tuple[str, dict[str, Any]]:
    spec = _json_body(body)
    if isinstance(spec, str):
        spec = {"query": spec}
    if not isinstance(spec, dict) or not isinstance(spec.get("query"), str):
        raise CosmosError(400, "BadRequest", "The query body must carry a query string.")
    params = {p["name"]: p.get("value") for p in spec.get("parameters") or [] if "name" in p}
    return spec["query"], params


def _query(
    request: web.Request, body: bytes, kind: str, items: list[Any], rid: str = ""
) -> web.Response:
    text, params = _parse(body)
    try:
        result = run_query(parse_query(text), params, items)
    except QueryError as err:
        raise CosmosError(400, "BadRequest", f"Syntax error or unsupported query: {err}") from None
    return _feed(kind, result, rid)


def _query_plan(body: bytes) -> web.Response:
    """A plan that tells the SDK to run the query as-is on the one range we have.

    No aggregates, TOP or ORDER BY are declared: the fake answers each query completely itself,
    so the SDK must not post-process (a declared aggregate would make it expect partial rows).
    """
    text, _ = _parse(body)
    try:
        parse_query(text)
    except QueryError as err:
        raise CosmosError(400, "BadRequest", f"Syntax error or unsupported query: {err}") from None
    plan = {
        "partitionedQueryExecutionInfoVersion": 2,
        "queryInfo": {
            "distinctType": "None",
            "top": None,
            "offset": None,
            "limit": None,
            "orderBy": [],
            "orderByExpressions": [],
            "groupByExpressions": [],
            "groupByAliases": [],
            "aggregates": [],
            "groupByAliasToAggregateType": {},
            "rewrittenQuery": "",
            "hasSelectValue": False,
            "dCountInfo": None,
            "hasNonStreamingOrderBy": False,
        },
        "queryRanges": [{"min": "", "max": "FF", "isMinInclusive": True, "isMaxInclusive": False}],
    }
    return _ok(plan)
