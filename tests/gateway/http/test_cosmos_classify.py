"""The Cosmos DB classifier against two oracles that are not itself.

1. The requests the real ``azure-cosmos`` SDK sends, captured (``cosmos_captures/``), each
   with the operation the test account executed for it: the classifier must give the action
   that operation needs. A live re-capture notices when a new SDK version sends other headers.
2. Every combination of the query, query-plan, upsert and batch markers (values, casing,
   white space, content types): the classifier must never call a POST a read unless the test
   account (written from the REST docs, :mod:`lockgate.demo.standins.cosmos.operations`) reads it
   as a
   query too, and must refuse rather than guess when the markers disagree.
"""

from __future__ import annotations

import itertools
import json
from pathlib import Path
from typing import Any

import pytest

from lockgate.demo.standins.cosmos.capture import capture
from lockgate.demo.standins.cosmos.operations import post_operation
from lockgate.gateway.http.profiles.cosmos import Refused, classify

CAPTURES = Path(__file__).parent / "cosmos_captures" / "azure-cosmos.json"
DOCS = "/dbs/sales/colls/orders/docs"
# The action policy must grant for what the account executed (the oracle's side of the map).
NEEDS = {
    "read_account": "read",
    "read": "read",
    "read_feed": "read",
    "query": "read",
    "query_plan": "read",
    "create": "write",
    "upsert": "write",
    "replace": "write",
    "patch": "write",
    "delete": "write",
    "batch": "write",
    "create_database": "admin",
    "delete_database": "admin",
    "create_container": "admin",
    "replace_container": "admin",
    "delete_container": "admin",
}
SDK_PLAN = {  # the Python SDK's query-plan request, as captured
    "content-type": "application/json",
    "x-ms-cosmos-is-query-plan-request": "True",
    "x-ms-cosmos-supported-query-features": "Aggregate,Distinct,OrderBy,Top",
    "x-ms-cosmos-query-version": "1.0",
}
SDK_QUERY = {"content-type": "application/query+json", "x-ms-documentdb-isquery": "true"}


def _captured() -> list[tuple[str, dict[str, Any]]]:
    data = json.loads(CAPTURES.read_text())
    return [(s["label"], r) for s in data["steps"] for r in s["requests"]]


def _object_of(path: str) -> tuple[str | None, str | None]:
    seg = [s for s in path.split("/") if s]
    return (seg[1] if len(seg) > 1 else None), (seg[3] if len(seg) > 3 else None)


@pytest.mark.parametrize(
    ("label", "request_"), _captured(), ids=lambda v: v if isinstance(v, str) else ""
)
def test_captured_sdk_requests_get_the_action_the_account_executed(
    label: str, request_: dict[str, Any]
) -> None:
    executed = request_["executed"]
    assert executed in NEEDS, f"{label}: the account executed {executed}"
    op = classify(
        request_["method"], request_["path"], request_["headers"], request_["body"].encode()
    )
    assert op.action == NEEDS[executed], (label, op)
    db, container = _object_of(request_["path"])
    if container is not None:
        assert op.obj == f"{db}/{container}"
    elif db is not None:  # a database, or the hook's existence query narrowed to a container
        assert op.obj == db or op.obj.startswith(f"{db}/")
    if executed in ("create_database", "create_container"):  # named by the body's id
        assert op.obj.split("/")[-1] == json.loads(request_["body"])["id"]


def test_the_captures_cover_every_operation_the_brief_names() -> None:
    executed = {r["executed"] for _, r in _captured()}
    assert executed >= {
        "create",
        "upsert",
        "replace",
        "delete",
        "read",
        "query",
        "query_plan",
        "read_feed",
        "batch",
        "patch",
        "create_database",
        "create_container",
    }


@pytest.mark.slow
def test_a_live_capture_with_the_installed_sdk_matches_the_fixture() -> None:
    """A new SDK version that sends other headers must be looked at (and re-captured)."""
    fixture = json.loads(CAPTURES.read_text())
    live = capture()
    hint = "python -m lockgate.demo.standins.cosmos.capture > " + str(
        CAPTURES.relative_to(Path.cwd())
    )

    def shape(data: dict[str, Any]) -> list[tuple[Any, ...]]:
        out: list[tuple[Any, ...]] = []
        for s in data["steps"]:
            for r in s["requests"]:
                entry = (s["label"], r["method"], r["path"], r["executed"])
                entry += (sorted(r["headers"].items()),)
                # The SDK re-reads the account on a timer of its own: a repeat of an
                # account read already seen is timing, not a change in what it sends.
                if r["executed"] == "read_account" and any(e[1:] == entry[1:] for e in out):
                    continue
                out.append(entry)
        return out

    assert shape(live) == shape(fixture), f"{live['sdk']} differs from {fixture['sdk']}: {hint}"


# -- every marker combination -----------------------------------------------------------
TRUTHS = [None, "True", "true", "TRUE", " True ", "False", "1", ""]
CONTENT_TYPES = [
    None,
    "application/query+json",
    "application/json",
    "application/sql",
    "application/query+json; charset=utf-8",
    "Application/Query+Json",
]


def marker_combinations() -> list[dict[str, str]]:
    out = []
    for is_query, plan, plan_extras, upsert, batch, ctype, op_type in itertools.product(
        TRUTHS,
        TRUTHS[:5],
        (False, True),
        (None, "True", "false"),
        (None, "is", "atomic-only"),
        CONTENT_TYPES,
        (None, "SqlQuery", "Create"),
    ):
        h: dict[str, str] = {}
        for name, value in (
            ("x-ms-documentdb-isquery", is_query),
            ("x-ms-cosmos-is-query-plan-request", plan),
            ("x-ms-documentdb-is-upsert", upsert),
            ("content-type", ctype),
            ("x-ms-thinclient-proxy-operation-type", op_type),
        ):
            if value is not None:
                h[name] = value
        if plan_extras:
            h.update({k: v for k, v in SDK_PLAN.items() if k != "content-type" and k not in h})
        if batch == "is":
            h["x-ms-cosmos-is-batch-request"] = "True"
        if batch is not None:
            h["x-ms-cosmos-batch-atomic"] = "True"
        out.append(h)
    return out


def _reading(headers: dict[str, str]) -> str:
    try:
        op = classify("POST", DOCS, headers, b'{"id": "x", "pk": "p", "query": "SELECT 1"}')
    except Refused as exc:
        assert exc.status == 400
        return "refused"
    return op.name


def test_every_marker_combination_is_read_only_when_the_account_queries() -> None:
    combos = marker_combinations()
    seen: dict[str, int] = {}
    for headers in combos:
        ours, account = _reading(headers), post_operation(headers)
        seen[ours] = seen.get(ours, 0) + 1
        if ours == "query_docs":
            assert account == "query", headers
            assert headers["x-ms-documentdb-isquery"] in ("True", "true"), headers
        elif ours == "query_plan":
            assert account == "query_plan", headers
        elif ours != "refused":  # a create of some kind: the account must write too
            assert ours in ("create_document", "upsert_document", "batch"), headers
            assert account in ("create", "upsert", "batch"), (headers, account)
    assert len(combos) > 10_000 and set(seen) == {
        "query_docs",
        "query_plan",
        "refused",
        "create_document",
        "upsert_document",
        "batch",
    }


POST_CASES: list[tuple[dict[str, str], str]] = [
    (SDK_QUERY, "query_docs"),
    ({**SDK_QUERY, "x-ms-documentdb-isquery": "True"}, "query_docs"),
    ({**SDK_QUERY, "content-type": "application/sql"}, "query_docs"),
    (SDK_PLAN, "query_plan"),
    ({**SDK_PLAN, "content-type": "application/query+json"}, "query_plan"),  # Java / .NET
    ({}, "create_document"),
    ({"content-type": "application/json"}, "create_document"),
    ({"x-ms-documentdb-is-upsert": "True"}, "upsert_document"),
    ({"x-ms-documentdb-is-upsert": " TRUE "}, "upsert_document"),
    ({"x-ms-cosmos-is-batch-request": "True"}, "batch"),
    ({"x-ms-cosmos-batch-continue-on-error": "False"}, "create_document"),  # a write either way
    # the known attack: the plan header alone (the account stores the body)
    ({"x-ms-cosmos-is-query-plan-request": "True"}, "refused"),
    (
        {"x-ms-cosmos-is-query-plan-request": "True", "content-type": "application/json"},
        "refused",
    ),
    ({**SDK_PLAN, "x-ms-cosmos-query-version": ""}, "refused"),
    ({**SDK_PLAN, "x-ms-documentdb-isquery": "true"}, "refused"),
    ({**SDK_PLAN, "content-type": "text/plain"}, "refused"),
    # half a query, or a query with write markers
    ({"x-ms-documentdb-isquery": "True"}, "refused"),
    ({"content-type": "application/query+json"}, "refused"),
    ({**SDK_QUERY, "x-ms-documentdb-isquery": " TRUE "}, "refused"),
    ({**SDK_QUERY, "content-type": "application/query+json;charset=utf-8"}, "refused"),
    ({**SDK_QUERY, "x-ms-documentdb-is-upsert": "True"}, "refused"),
    ({**SDK_QUERY, "x-ms-documentdb-is-upsert": "False"}, "refused"),
    ({**SDK_QUERY, "x-ms-cosmos-is-batch-request": "True"}, "refused"),
    ({**SDK_QUERY, "x-ms-cosmos-batch-atomic": "True"}, "refused"),
    ({**SDK_QUERY, "x-ms-cosmos-is-query-plan-request": "True"}, "refused"),
    ({**SDK_QUERY, "x-ms-thinclient-proxy-operation-type": "Create"}, "refused"),
    ({"x-ms-thinclient-proxy-operation-type": "SqlQuery"}, "refused"),
]


@pytest.mark.parametrize(("headers", "expected"), POST_CASES)
def test_post_to_docs(headers: dict[str, str], expected: str) -> None:
    assert _reading(headers) == expected


@pytest.mark.parametrize("feed", ["/dbs", "/dbs/sales/colls"])
def test_database_and_container_feeds_fail_closed_too(feed: str) -> None:
    body = b'{"id": "x", "query": "SELECT * FROM r"}'
    assert classify("POST", feed, SDK_QUERY, body).action == "read"
    assert classify("POST", feed, {}, body).action == "admin"
    for headers in (
        {"x-ms-cosmos-is-query-plan-request": "True"},
        SDK_PLAN,
        {**SDK_QUERY, "x-ms-documentdb-is-upsert": "True"},
        {"x-ms-documentdb-isquery": "True", "content-type": "application/json"},
    ):
        with pytest.raises(Refused):
            classify("POST", feed, headers, body)


def test_other_feeds_and_users_are_never_read_by_post() -> None:
    body = b'{"id": "x", "query": "SELECT * FROM r"}'
    assert classify("POST", "/dbs/sales/colls/orders/sprocs", SDK_QUERY, body).action == "read"
    assert classify("POST", "/dbs/sales/colls/orders/sprocs", {}, body).action == "admin"
    assert classify("POST", "/dbs/sales/users", SDK_QUERY, body).action == "admin"
    assert classify("POST", "/dbs/sales/colls/orders/sprocs/s1", SDK_QUERY, body).action == "write"
    with pytest.raises(Refused):
        classify("POST", "/dbs/sales/colls/orders/sprocs", SDK_PLAN, body)
    with pytest.raises(Refused):
        classify("POST", "/dbs/sales/colls/orders/pkranges", {}, body)
    assert classify("POST", "/offers", SDK_QUERY, body).action == "read"
    assert classify("POST", "/offers", {}, body).action == "admin"
    with pytest.raises(Refused):
        classify("POST", "/offers", {"x-ms-cosmos-is-query-plan-request": "True"}, body)


@pytest.mark.parametrize(
    "path",
    [
        "/dbs//colls/orders/docs",
        "/dbs/sales/colls/../colls/orders/docs",
        "/dbs/sa%2Fles/colls/o",
        "/dbs/sales/colls/or%5Cders/docs",
        "/dbs/sales/colls/%2E%2E/docs",
        "/dbs/sales%00/colls",
        "/dbs/sales/colls/orders%3Fx/docs",
        "/dbs/sales/colls/orders%23/docs",
    ],
)
def test_segments_that_cannot_be_names_are_refused(path: str) -> None:
    with pytest.raises(Refused) as err:
        classify("GET", path, {}, b"")
    assert err.value.status == 400


def test_encoded_names_are_judged_decoded() -> None:
    op = classify("GET", "/dbs/sa%6Ces/colls/ord%20ers/docs/x", {}, b"")
    assert op.obj == "sales/ord ers"
