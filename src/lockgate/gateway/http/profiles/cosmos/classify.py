"""Classification of one Cosmos DB (NoSQL REST) request into (action, object, operation).

Used by :mod:`lockgate.gateway.http.profiles.cosmos` for every request, before policy. The
rules follow the REST reference and what the ``azure-cosmos`` SDK actually sends (the captures
in ``tests/gateway/http/cosmos_captures/``); ``docs/cosmos.md`` has the table.

The hard case is a ``POST`` to a feed: the same verb and path are a create, an upsert, a
transactional batch, a query or a query-plan request, told apart only by headers. A ``POST``
is judged a read only when it carries *every* marker a genuine SDK query (or query-plan)
request carries, spelled exactly as the SDK spells it, and no write marker. With no query
marker at all it is a create (or upsert / batch). Anything in between (a partial or
misspelled query marker set, or query markers next to upsert/batch markers) is refused: the
account might run either reading, and neither is safe to assume.

Header values are compared case-sensitively on purpose: a lenient reading here could call a
request a query that the account reads as a create. The cost of strictness is only that an
odd client's query is refused, never that a write passes as a read.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import unquote

from lockgate.credentials import cosmos as sig

__all__ = ["ACCOUNT", "Operation", "Refused", "classify", "json_or_none"]

ACCOUNT = "*"
_READ = ("GET", "HEAD")
_TRUE = ("True", "true")  # the spellings the SDKs send (Python: "True" and "true")
_QUERY_TYPES = ("application/query+json", "application/sql")  # the REST docs: exactly these
_PLAN_TYPES = ("application/json", "application/query+json")  # Python / .NET and Java SDKs
_IS_QUERY = "x-ms-documentdb-isquery"
_IS_PLAN = "x-ms-cosmos-is-query-plan-request"
_PLAN_ALSO = ("x-ms-cosmos-supported-query-features", "x-ms-cosmos-query-version")
_IS_UPSERT = "x-ms-documentdb-is-upsert"
_IS_BATCH = "x-ms-cosmos-is-batch-request"
_BATCH_PREFIX = "x-ms-cosmos-batch-"  # batch-atomic, batch-continue-on-error, ...
_OP_TYPE = "x-ms-thinclient-proxy-operation-type"  # newer SDKs name the operation outright
_QUERY_OPS = ("SqlQuery", "Query", "QueryPlan")
# Characters a Cosmos id cannot hold; a decoded segment holding one is not a name.
_NOT_IN_IDS = frozenset("/\\?#")
# The hook's existence checks; with exactly this text the @id value names the object.
_EXISTS = re.compile(r"select\s+\*\s+from\s+r\s+where\s+r\.id\s*=\s*@id", re.IGNORECASE)
_BAD_CHARS = re.compile(r"[\\?#]")
_FEEDS = ("docs", "pkranges", "sprocs", "triggers", "udfs", "conflicts")


class Refused(Exception):
    """A request the profile answers itself (400/405/403 before policy)."""

    def __init__(self, status: int, code: str, reason: str) -> None:
        super().__init__(reason)
        self.status, self.code, self.reason = status, code, reason


@dataclass(frozen=True, slots=True)
class Operation:
    action: str
    obj: str
    name: str  # for the audit detail, e.g. upsert_document


# -- the POST reading --------------------------------------------------------------------
def post_kind(headers: Mapping[str, str]) -> str:
    """``query``, ``query_plan``, ``create``, ``upsert`` or ``batch`` for a POST to a feed.

    Raises :class:`Refused` when the markers are partial or contradict each other."""
    ctype = headers.get("content-type")
    is_query = headers.get(_IS_QUERY)
    is_plan = headers.get(_IS_PLAN)
    op_type = headers.get(_OP_TYPE)
    upsert = headers.get(_IS_UPSERT)
    if (
        is_query is None
        and is_plan is None
        and ctype not in _QUERY_TYPES
        and (op_type is None or op_type not in _QUERY_OPS)
    ):  # no query marker: a create of some kind, and which one only names the audit detail
        if _IS_BATCH in headers:
            return "batch"
        return "upsert" if upsert is not None and upsert.strip().lower() == "true" else "create"
    write_marked = (
        upsert is not None
        or _IS_BATCH in headers
        or any(name.startswith(_BATCH_PREFIX) for name in headers)
    )
    if not write_marked and (op_type is None or op_type in _QUERY_OPS):
        if is_query in _TRUE and ctype in _QUERY_TYPES and is_plan is None:
            return "query"
        if (
            is_plan in _TRUE
            and ctype in _PLAN_TYPES
            and is_query is None
            and all(headers.get(name) for name in _PLAN_ALSO)
        ):
            return "query_plan"
    raise Refused(400, "BadRequest", "ambiguous Cosmos DB request: partial or conflicting query "
                  "markers (a query needs x-ms-documentdb-isquery: True and Content-Type: "
                  "application/query+json, and no upsert or batch header)")  # fmt: skip


# -- the whole request -------------------------------------------------------------------
def classify(method: str, path: str, headers: Mapping[str, str], body: bytes) -> Operation:
    """(action, object, operation) of one request; :class:`Refused` when unknown.

    ``headers`` has lower-case names, one value each."""
    seg = _segments(path)
    if len(seg) >= 2 and seg[0] == "dbs" and sig.is_rid_based("/".join(seg)):
        raise Refused(403, "Forbidden", "_rid-based links are not served; address by name")
    n = len(seg)
    if n == 0:
        if method in _READ:
            return Operation("read", ACCOUNT, "read_account")
        raise Refused(405, "MethodNotAllowed", "only GET is allowed on the account")
    if seg[0] == "offers":  # throughput: reading it is harmless, changing it costs money
        if method in _READ or (method == "POST" and n == 1 and post_kind(headers) == "query"):
            return Operation("read", ACCOUNT, "offers")
        return Operation("admin", ACCOUNT, "offers")
    if seg[0] != "dbs" or n > 6:
        raise Refused(403, "Forbidden", f"unsupported Cosmos DB path /{seg[0]}")
    if n == 1:
        if method in _READ:
            return Operation("read", ACCOUNT, "list_databases")
        if method == "POST":
            if _feed_query(headers):
                return Operation("read", _exists_id(body) or ACCOUNT, "query_databases")
            return Operation("admin", _body_id(body), "create_database")
        raise _bad_method(method)
    db = seg[1]
    if n == 2:
        if method in _READ:
            return Operation("read", db, "read_database")
        if method in ("DELETE", "PUT"):
            return Operation("admin", db, "delete_database" if method == "DELETE" else
                             "replace_database")  # fmt: skip
        raise _bad_method(method)
    if seg[2] != "colls":  # users, permissions, client encryption keys: security admin
        return Operation("admin", db, f"{seg[2]}")
    if n == 3:
        if method in _READ:
            return Operation("read", db, "list_containers")
        if method == "POST":
            if _feed_query(headers):
                found = _exists_id(body)
                return Operation("read", f"{db}/{found}" if found else db, "query_containers")
            return Operation("admin", f"{db}/{_body_id(body)}", "create_container")
        raise _bad_method(method)
    obj = f"{db}/{seg[3]}"
    if n == 4:
        if method in _READ:
            return Operation("read", obj, "read_container")
        if method in ("PUT", "DELETE"):
            return Operation(
                "admin", obj, f"{'replace' if method == 'PUT' else 'delete'}_container"
            )
        raise _bad_method(method)
    kind = seg[4]
    if kind == "operations":  # partition-key delete: a mass delete is not a document write
        return Operation("admin", obj, "delete_partition_key")
    if kind not in _FEEDS:
        raise Refused(403, "Forbidden", f"unsupported Cosmos DB feed {kind}")
    if n == 5:
        return _feed_operation(method, obj, kind, headers)
    if method in _READ:
        return Operation("read", obj, f"read_{kind}")
    if kind == "docs" and method in ("PUT", "PATCH", "DELETE"):
        op = {"PUT": "replace", "PATCH": "patch", "DELETE": "delete"}[method]
        return Operation("write", obj, f"{op}_document")
    if kind == "sprocs" and method == "POST":
        return Operation("write", obj, "execute_sproc")
    if kind == "conflicts" and method == "DELETE":
        return Operation("write", obj, "delete_conflict")
    if kind in ("sprocs", "triggers", "udfs") and method in ("PUT", "DELETE"):
        return Operation("admin", obj, f"{'replace' if method == 'PUT' else 'delete'}_{kind}")
    raise _bad_method(method)


def _feed_operation(method: str, obj: str, kind: str, headers: Mapping[str, str]) -> Operation:
    """A request to a container's feed (``.../colls/<c>/<kind>``)."""
    if method in _READ:
        return Operation("read", obj, f"read_{kind}")
    if method != "POST":
        raise _bad_method(method)
    how = post_kind(headers)
    if how == "query":
        return Operation("read", obj, f"query_{kind}")
    if how == "query_plan":  # the SDK asks for one before a cross-partition query
        if kind != "docs":
            raise Refused(400, "BadRequest", f"a query plan is only served on docs, not {kind}")
        return Operation("read", obj, "query_plan")
    if kind == "docs":
        if how == "batch":
            return Operation("write", obj, "batch")
        return Operation("write", obj, f"{how}_document")
    if kind in ("sprocs", "triggers", "udfs") and how == "create":
        return Operation("admin", obj, f"create_{kind}")  # server-side code
    raise _bad_method(method)


def _feed_query(headers: Mapping[str, str]) -> bool:
    """True for a query of the databases or containers feed, False for a create."""
    how = post_kind(headers)
    if how in ("query", "create"):
        return how == "query"
    raise Refused(400, "BadRequest", f"a {how.replace('_', ' ')} is only served on docs")


def _segments(path: str) -> list[str]:
    """The URL-decoded path segments; :class:`Refused` for any that cannot be a name."""
    bare = path.split("?", 1)[0].strip("/")
    if not bare:
        return []
    seg = bare.split("/")
    text = bare
    if "%" in bare:  # only decoding can put a "/" inside a segment
        seg = [unquote(s) for s in seg]
        if any("/" in s for s in seg):
            raise _not_a_name()
        text = "/".join(seg)
    if "" in seg or "." in seg or ".." in seg or not text.isprintable() or _BAD_CHARS.search(text):
        raise _not_a_name()
    return seg


def _not_a_name() -> Refused:
    return Refused(400, "BadRequest", "a path segment is not a valid Cosmos DB name")


def _bad_method(method: str) -> Refused:
    return Refused(405, "MethodNotAllowed", f"{method} is not served on this Cosmos DB path")


def json_or_none(body: bytes) -> Any:
    """The JSON value of ``body`` (``None`` for an empty or invalid body)."""
    try:
        return json.loads(body or b"null")
    except (ValueError, RecursionError):  # RecursionError: [[[[...]]]], refused as unplaceable
        return None


def _body_id(body: bytes) -> str:
    data = json_or_none(body)
    rid = data.get("id") if isinstance(data, dict) else None
    if not _is_name(rid):
        raise Refused(400, "BadRequest", "the request body has no valid id")
    return str(rid)


def _is_name(value: object) -> bool:
    """True for a string that can be a Cosmos id (and so a policy object part)."""
    return (
        isinstance(value, str)
        and value not in ("", ".", "..")
        and value.isprintable()
        and _NOT_IN_IDS.isdisjoint(value)
    )


def _exists_id(body: bytes) -> str | None:
    """The @id of the hook's ``SELECT * FROM r WHERE r.id=@id`` (and only that query)."""
    data = json_or_none(body)
    if not isinstance(data, dict) or not isinstance(data.get("query"), str):
        return None
    params = data.get("parameters") or []
    if not _EXISTS.fullmatch(data["query"].strip()) or not isinstance(params, list):
        return None
    if len(params) != 1 or not isinstance(params[0], dict) or params[0].get("name") != "@id":
        return None
    value = params[0].get("value")
    return value if _is_name(value) else None
