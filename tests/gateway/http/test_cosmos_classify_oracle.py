"""Oracle: what the test Cosmos account executed, against what Lockgate's audit allowed.

A battery of requests goes through the real gateway to the test account: every interesting
marker combination and a sample of all of them, duplicate marker headers, and the operations
of the real ``azure-cosmos`` SDK (CRUD, patch, batch, single- and cross-partition queries with
a query plan), sent by a principal that may write and by one that may only read. After each
one, every operation the account executed (its own log,
:mod:`lockgate.demo.standins.cosmos.operations`)
must match an allowed audit record of the same principal with the action that operation needs
on the same object, and the policy below must allow it. The account decides what it executes
from the REST docs, not from Lockgate's classifier, so a classification gap shows up here as
an executed write the audit calls a read, or never mentions.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import time
from collections.abc import Callable
from typing import Any

import aiohttp
import pytest
from azure.cosmos.exceptions import CosmosHttpResponseError
from multidict import CIMultiDict

from lockgate.credentials.cosmos import resource_of, sign
from lockgate.demo.standins.cosmos import Executed
from tests.gateway.http import test_cosmos as stack
from tests.gateway.http.test_cosmos_classify import (
    NEEDS,
    POST_CASES,
    SDK_PLAN,
    SDK_QUERY,
    marker_combinations,
)

pytestmark = pytest.mark.slow
Env = stack.Env
env = stack.env  # the gateway in front of the test account, as the Cosmos profile tests use it
WRITER, READER = "orders_load", "finance_daily"
# What tests/gateway/http/test_cosmos.py's policy grants, written out independently.
GRANTS = {
    WRITER: {
        ("read", "sales"),
        ("read", "sales/orders"),
        ("write", "sales"),
        ("write", "sales/orders"),
    },
    READER: {("read", "sales"), ("read", "sales/orders")},
}
DOCS = "dbs/sales/colls/orders/docs"


class Oracle:
    """Sends one thing at a time and checks the account's log against the audit after each."""

    def __init__(self, env: Env) -> None:
        self.env = env
        self.seen_exec = 0
        self.seen_seq = self._audit()[-1].seq if self._audit() else 0
        self.checked = 0
        self.writes = 0

    def _audit(self) -> list[Any]:
        self.env.gw.audit.flush(5.0)
        return list(self.env.gw.audit.search(resource="cosmos", limit=100_000))

    def check(self, dag: str, what: str) -> None:
        executed = self.env.fake.executed[self.seen_exec :]
        self.seen_exec += len(executed)
        rows = [r for r in self._audit() if r.seq > self.seen_seq]
        if rows:
            self.seen_seq = rows[-1].seq
        allowed = [r for r in rows if r.decision == "allow" and r.action is not None]
        for op in executed:
            self.checked += 1
            self.writes += op.is_write
            need, obj = NEEDS[op.op], _object(op)
            principal = f"airflow:prod/{dag}/load"
            match = next(
                (
                    r
                    for r in allowed
                    if r.principal == principal and r.action == need and _covers(r.object, obj)
                ),
                None,
            )
            assert match is not None, (
                f"{what}: the account executed {op} ({need} on {obj}) but the audit shows "
                f"{[(r.event, r.decision, r.action, r.object) for r in rows]}"
            )
            allowed.remove(match)
            if op.op != "read_account":  # discovery is allowed to every valid token
                assert (need, obj) in GRANTS[dag], f"{what}: {dag} may not {need} {obj}: {op}"


def _object(op: Executed) -> str:
    if op.container:
        return f"{op.db}/{op.container}"
    return op.db or "*"


def _covers(audited: str | None, executed: str) -> bool:
    # A query of a database's containers may be audited narrowed to the container it names.
    return audited == executed or (audited or "").startswith(executed + "/")


async def _send(
    env: Env, dag: str, method: str, path: str, headers: CIMultiDict[str], body: bytes
) -> int:
    token, claims = env.token(dag)
    x_date = time.strftime("%a, %d %b %Y %H:%M:%S GMT", time.gmtime())
    rtype, link = resource_of("/" + path)
    signed = CIMultiDict(headers)
    signed["authorization"] = sign(env.task_key(claims.jti), method, rtype, link, x_date)
    signed["x-ms-date"] = x_date
    signed["x-ms-documentdb-partitionkey"] = '["p"]'
    async with (
        aiohttp.ClientSession(skip_auto_headers=("Content-Type",)) as s,
        s.request(method, f"{env.base}/_t/{token}/{path}", headers=signed, data=body) as r,
    ):
        await r.read()
        return r.status


def _battery() -> list[CIMultiDict[str]]:
    cases = [h for h, _ in POST_CASES] + marker_combinations()[::61]
    out = [CIMultiDict(h) for h in cases]
    for name, first, second in (
        ("x-ms-documentdb-isquery", "True", "False"),
        ("x-ms-documentdb-isquery", "False", "True"),
        ("content-type", "application/json", "application/query+json"),
        ("content-type", "application/query+json", "application/json"),
        ("x-ms-cosmos-is-query-plan-request", "True", "True"),
    ):
        dup = CIMultiDict(SDK_QUERY if name != "x-ms-cosmos-is-query-plan-request" else SDK_PLAN)
        dup.popall(name, None)
        dup.add(name, first)
        dup.add(name, second)
        out.append(dup)
    return out


async def test_marker_battery_executes_nothing_the_audit_does_not_allow(env: Env) -> None:
    oracle = Oracle(env)
    statuses: dict[int, int] = {}
    for (i, headers), dag in itertools.product(enumerate(_battery()), (READER, WRITER)):
        body = json.dumps(
            {"id": f"{dag}-{i}", "pk": "p", "query": "SELECT * FROM c", "parameters": []}
        ).encode()
        status = await _send(env, dag, "POST", DOCS, headers, body)
        statuses[status] = statuses.get(status, 0) + 1
        oracle.check(dag, f"POST {list(headers.items())} as {dag} -> {status}")
    # the battery reached every outcome: queries, creates, refusals and denials
    assert {200, 201, 400, 403} <= set(statuses), statuses
    assert oracle.writes >= 5 and oracle.checked >= 20, (oracle.writes, oracle.checked)
    created = {d["id"] for d in env.fake.store.container("sales", "orders").items(None)}
    assert created and all(i.startswith(WRITER) for i in created), created


async def test_the_query_plan_attack_stores_nothing(env: Env) -> None:
    oracle = Oracle(env)
    attack = CIMultiDict(
        {"x-ms-cosmos-is-query-plan-request": "True", "content-type": "application/json"}
    )
    body = b'{"id": "planted", "pk": "p", "query": "SELECT * FROM c"}'
    status = await _send(env, READER, "POST", DOCS, attack, body)
    oracle.check(READER, "the query-plan attack")
    assert status in (400, 403)
    assert env.fake.store.container("sales", "orders").items(None) == []
    refused = [r for r in env.gw.audit.search(resource="cosmos", limit=10) if r.status == status]
    assert refused and refused[-1].decision == "deny"


def _sdk_steps() -> list[tuple[str, Callable[[Any], Any]]]:
    def batch(c: Any) -> Any:
        return c.execute_item_batch(
            [("create", ({"id": "b1", "pk": "eu"},)), ("upsert", ({"id": "b2", "pk": "eu"},))],
            partition_key="eu",
        )

    return [
        ("create_item", lambda c: c.create_item({"id": "o1", "pk": "eu", "qty": 1})),
        ("upsert_item", lambda c: c.upsert_item({"id": "o2", "pk": "us", "qty": 2})),
        ("replace_item", lambda c: c.replace_item("o1", {"id": "o1", "pk": "eu", "qty": 3})),
        (
            "patch_item",
            lambda c: c.patch_item(
                "o1",
                partition_key="eu",
                patch_operations=[{"op": "set", "path": "/qty", "value": 4}],
            ),
        ),
        ("read_item", lambda c: c.read_item("o1", partition_key="eu")),
        ("query_single", lambda c: list(c.query_items("SELECT * FROM c", partition_key="eu"))),
        (
            "query_cross",
            lambda c: list(c.query_items("SELECT * FROM c", enable_cross_partition_query=True)),
        ),
        (
            "query_with_plan",
            lambda c: list(
                c.query_items(
                    "SELECT * FROM c WHERE c.pk = 'eu'", enable_cross_partition_query=True
                )
            ),
        ),
        ("read_all_items", lambda c: list(c.read_all_items())),
        ("batch", batch),
        ("read_container", lambda c: c.read()),
        ("delete_item", lambda c: c.delete_item("o1", partition_key="eu")),
    ]


async def test_sdk_operations_execute_nothing_the_audit_does_not_allow(env: Env) -> None:
    oracle = Oracle(env)
    outcomes: dict[str, dict[str, str]] = {}
    for dag in (WRITER, READER):
        client = await asyncio.to_thread(env.client, dag)
        oracle.check(dag, "connect")
        c = client.get_database_client("sales").get_container_client("orders")
        for label, call in _sdk_steps():
            env.fake.plan_cross_partition = label == "query_with_plan"
            try:
                await asyncio.to_thread(call, c)
                outcome = "ok"
            except CosmosHttpResponseError as exc:
                outcome = str(exc.status_code)
            outcomes.setdefault(dag, {})[label] = outcome
            oracle.check(dag, f"{label} as {dag}")
    env.fake.plan_cross_partition = False
    assert set(outcomes[WRITER].values()) == {"ok"}, outcomes[WRITER]
    reads = ("read_item", "query_single", "query_cross", "query_with_plan", "read_all_items")
    # (the writer deleted o1 already: a read the gateway let through may find nothing)
    assert all(outcomes[READER][k] in ("ok", "404") for k in reads), outcomes[READER]
    assert outcomes[READER]["create_item"] == "403" and outcomes[READER]["batch"] == "403"
    executed = {op.op for op in env.fake.executed}
    assert executed >= {"query_plan", "batch", "patch", "create", "upsert", "replace", "delete"}
