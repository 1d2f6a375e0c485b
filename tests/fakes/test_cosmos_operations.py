"""The test account's reading of a request and its log of what it executed.

The oracle tests trust this log, so it is checked here against the REST docs' rules and
against the store itself: a POST that is not a complete query is stored as a document, a
batch is all or nothing, and every executed operation is logged with what it answered.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

import pytest

from lockgate.demo.standins.cosmos import CosmosFake, start_cosmos
from lockgate.demo.standins.cosmos.operations import post_operation
from tests.fakes.test_cosmos_wire import call

DOCS = "/dbs/d/colls/c/docs"
PK = {"x-ms-documentdb-partitionkey": '["p"]'}


@pytest.fixture
async def fake() -> AsyncIterator[CosmosFake]:
    f = await start_cosmos()
    f.store.create_database({"id": "d"})
    f.store.create_container("d", {"id": "c", "partitionKey": {"paths": ["/pk"], "kind": "Hash"}})
    yield f
    await f.close()


def _stored(fake: CosmosFake) -> set[str]:
    return {doc["id"] for doc in fake.store.container("d", "c").items(None)}


@pytest.mark.parametrize(
    ("headers", "reading"),
    [
        ({"x-ms-documentdb-isquery": "True", "content-type": "application/query+json"}, "query"),
        ({"x-ms-documentdb-isquery": " TRUE ", "content-type": "application/query+json"}, "query"),
        ({"x-ms-documentdb-isquery": "True", "content-type": "application/json"}, "create"),
        ({"content-type": "application/query+json"}, "create"),
        ({"x-ms-cosmos-is-query-plan-request": "True"}, "create"),
        ({"x-ms-cosmos-is-query-plan-request": "True", "x-ms-cosmos-query-version": "1.0",
          "x-ms-cosmos-supported-query-features": "Top"}, "query_plan"),
        ({"x-ms-documentdb-isquery": "True", "content-type": "application/query+json",
          "x-ms-documentdb-is-upsert": "True"}, "upsert"),
        ({"x-ms-documentdb-is-upsert": "true", "x-ms-cosmos-is-batch-request": "True"}, "batch"),
    ],
)  # fmt: skip
def test_post_reading(headers: dict[str, str], reading: str) -> None:
    assert post_operation(headers) == reading


async def test_a_plan_header_alone_stores_the_body_and_logs_a_create(fake: CosmosFake) -> None:
    body = {"id": "planted", "pk": "p", "query": "SELECT * FROM c"}
    headers = {**PK, "x-ms-cosmos-is-query-plan-request": "True"}
    status, _, _ = await call(fake, "POST", DOCS, body, headers=headers)
    assert status == 201 and _stored(fake) == {"planted"}
    last = fake.executed[-1]
    assert (last.op, last.db, last.container, last.status) == ("create", "d", "c", 201)
    assert last.is_write and fake.requests[-1].operation == "create"


async def test_a_full_query_stores_nothing(fake: CosmosFake) -> None:
    headers = {**PK, "x-ms-documentdb-isquery": "True", "content-type": "application/query+json"}
    status, _, body = await call(fake, "POST", DOCS, {"query": "SELECT * FROM c", "id": "x"},
                                 headers=headers)  # fmt: skip
    assert status == 200 and body["Documents"] == [] and _stored(fake) == set()
    assert fake.executed[-1].op == "query" and not fake.executed[-1].is_write


async def test_batch_is_all_or_nothing_and_patch_applies(fake: CosmosFake) -> None:
    batch = {**PK, "x-ms-cosmos-is-batch-request": "True"}
    ops: list[dict[str, Any]] = [
        {"operationType": "Create", "resourceBody": {"id": "a", "pk": "p", "n": 1}},
        {"operationType": "Upsert", "resourceBody": {"id": "b", "pk": "p"}},
    ]
    status, _, results = await call(fake, "POST", DOCS, ops, headers=batch)
    assert status == 200 and [r["statusCode"] for r in results] == [201, 201]
    failing = [{"operationType": "Create", "resourceBody": {"id": "c", "pk": "p"}},
               {"operationType": "Create", "resourceBody": {"id": "a", "pk": "p"}}]  # fmt: skip
    status, _, results = await call(fake, "POST", DOCS, failing, headers=batch)
    assert status == 207 and [r["statusCode"] for r in results] == [424, 409]
    assert _stored(fake) == {"a", "b"}  # "c" was rolled back
    patch = [{"op": "incr", "path": "/n", "value": 2}, {"op": "set", "path": "/x", "value": "y"}]
    status, _, doc = await call(fake, "PATCH", f"{DOCS}/a", {"operations": patch}, headers=PK)
    assert status == 200 and (doc["n"], doc["x"]) == (3, "y")
    assert [e.op for e in fake.executed] == ["batch", "batch", "patch"]
    assert [e.status for e in fake.executed] == [200, 207, 200]
    assert json.loads(fake.requests[0].body) == ops
