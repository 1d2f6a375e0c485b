"""Hypothesis fuzz of the Cosmos DB classifier: random methods, paths (encoded and odd
segments) and marker headers. Whatever comes in, the classifier answers an operation or
refuses; it never calls a non-GET/HEAD request a read unless every query (or query-plan) marker
the SDK sends is there, and the object it names is always inside the path's database and
container."""

from __future__ import annotations

import json
from urllib.parse import quote, unquote

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from lockgate.gateway.http.profiles.cosmos import Refused, classify

FUZZ = settings(max_examples=700, deadline=None, suppress_health_check=[HealthCheck.too_slow])

METHODS = st.sampled_from(["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "get",
                           "post", "PROPFIND", "TRACE", ""])  # fmt: skip
WORDS = ["dbs", "colls", "docs", "sales", "orders", "users", "permissions", "sprocs", "udfs",
         "triggers", "pkranges", "conflicts", "offers", "operations", "partitionkeydelete", "",
         ".", "..", "abcdEA==", "%2F", "%2E%2E", "%5C", "%3F", "%23", "%00", "%25", "a%2Fb",
         "%C0%AF", "%E2%80%8B", "_t"]  # fmt: skip
SEGMENT = st.one_of(
    st.sampled_from(WORDS),
    st.text(min_size=0, max_size=8).map(lambda s: quote(s, safe="")),
    st.text(alphabet="ab%2FfE.C0", min_size=1, max_size=6),
)
PATHS = st.builds(
    lambda segs, slash, query: "/" + "/".join(segs) + ("/" if slash else "") + query,
    st.lists(SEGMENT, max_size=8),
    st.booleans(),
    st.sampled_from(["", "?x=1", "?"]),
)
# Paths shaped like real ones, so the fuzz reaches deep branches often.
SHAPED = st.builds(
    lambda db, c, tail: "/".join(["", "dbs", db, "colls", c, *tail]),
    st.sampled_from(["sales", "s%61les", "a b", "x"]),
    st.sampled_from(["orders", "ord%65rs", "o"]),
    st.lists(st.sampled_from(["docs", "sprocs", "pkranges", "d1", "s1", "operations"]),
             max_size=2),
)  # fmt: skip
MARKERS = ["x-ms-documentdb-isquery", "x-ms-cosmos-is-query-plan-request",
           "x-ms-documentdb-is-upsert", "x-ms-cosmos-is-batch-request",
           "x-ms-cosmos-batch-atomic", "x-ms-cosmos-batch-continue-on-error", "content-type",
           "x-ms-cosmos-supported-query-features", "x-ms-cosmos-query-version",
           "x-ms-thinclient-proxy-operation-type", "x-ms-documentdb-partitionkey"]  # fmt: skip
VALUES = st.one_of(
    st.sampled_from(["True", "true", "TRUE", " True", "False", "false", "1", "", "yes",
                     "application/query+json", "application/json", "application/sql",
                     "application/query+json; charset=utf-8", "APPLICATION/QUERY+JSON",
                     "SqlQuery", "QueryPlan", "Create", "Upsert", "Batch", "1.0", "Top"]),
    st.text(max_size=12),
)  # fmt: skip
HEADERS = st.dictionaries(st.sampled_from(MARKERS), VALUES, max_size=7)


def _exists(value: str) -> bytes:
    """The hook's existence query: the one query whose @id names the object."""
    params = [{"name": "@id", "value": value}]
    return json.dumps({"query": "SELECT * FROM r WHERE r.id=@id", "parameters": params}).encode()


BODIES = st.sampled_from(
    [b"", b"{}", b'{"id": "x"}', b'{"id": "a/b"}', b'{"id": ""}', b"[1]", b"\xff\xfe",
     b'{"id": "x\\u0000"}', *(_exists(v) for v in ("o", "../x", "a/b", "", ".."))]
)  # fmt: skip


def _full_query(h: dict[str, str]) -> bool:
    writes = any(k.startswith("x-ms-cosmos-batch-") for k in h) or (
        "x-ms-documentdb-is-upsert" in h or "x-ms-cosmos-is-batch-request" in h
    )
    op_type = h.get("x-ms-thinclient-proxy-operation-type")
    if writes or op_type not in (None, "SqlQuery", "Query", "QueryPlan"):
        return False
    query = h.get("x-ms-documentdb-isquery") in ("True", "true") and h.get("content-type") in (
        "application/query+json", "application/sql")  # fmt: skip
    plan = (
        h.get("x-ms-cosmos-is-query-plan-request") in ("True", "true")
        and h.get("content-type") in ("application/json", "application/query+json")
        and bool(h.get("x-ms-cosmos-supported-query-features"))
        and bool(h.get("x-ms-cosmos-query-version"))
    )
    return query or plan


def _check(method: str, path: str, headers: dict[str, str], body: bytes) -> None:
    try:
        op = classify(method, path, headers, body)
    except Refused as exc:
        assert exc.status in (400, 403, 405) and exc.reason
        return
    assert op.action in ("read", "write", "admin") and op.obj and op.name
    if op.action == "read" and method not in ("GET", "HEAD"):
        assert _full_query(headers), (method, path, headers, op)
    seg = [unquote(s) for s in path.split("?", 1)[0].strip("/").split("/")]
    if len(seg) >= 2 and seg[0] == "dbs":
        db = seg[1]
        assert op.obj == db or op.obj.startswith(db + "/"), (path, op)
        if len(seg) >= 4 and seg[2] == "colls":
            assert op.obj == f"{db}/{seg[3]}", (path, op)
    parts = op.obj.split("/")
    assert len(parts) <= 2 and all(p and p not in (".", "..") for p in parts), op
    assert op.obj == "*" or ("\\" not in op.obj and all(p.isprintable() for p in parts)), op


@pytest.mark.slow
@FUZZ
@given(METHODS, PATHS, HEADERS, BODIES)
def test_any_request(method: str, path: str, headers: dict[str, str], body: bytes) -> None:
    _check(method, path, headers, body)


@pytest.mark.slow
@FUZZ
@given(METHODS, SHAPED, HEADERS, BODIES)
def test_container_requests(method: str, path: str, headers: dict[str, str], body: bytes) -> None:
    _check(method, path, headers, body)


@pytest.mark.slow
@FUZZ
@given(st.sampled_from(["/dbs", "/dbs/sales/colls"]), HEADERS, BODIES)
def test_database_and_container_feeds(path: str, headers: dict[str, str], body: bytes) -> None:
    _check("POST", path, headers, body)
