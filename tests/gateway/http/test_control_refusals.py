"""Refusals of the deployment-authenticated profile routes are audited like /v1/token's.

``/v1/cosmos-key`` (a task key for a Cosmos token) and ``/v1/poll-token`` (a triggerer's
Databricks token) each refuse a bad deployment proof, a token that is not the caller's, and a
resource that is not theirs to ask for. Every such answer must leave a ``decision: deny``
record with a reason slug, and none of them may issue anything.
"""

from __future__ import annotations

import base64
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from lockgate.identity import TaskIdentity
from lockgate.server import Gateway
from tests.control._stack import basic, deployment, post_form, running_gateway

SECRET = "control-refusal-secret"
POLICY = """\
rules:
  - id: everyone-reads
    effect: allow
    principals: ["airflow:*"]
    actions: [read, write]
    resources: [cosmos, api, dbx]
"""


RESOURCES = [
    {"name": "cosmos", "kind": "http", "upstream": "http://127.0.0.1:9", "credential": "k",
     "conn_id": "cosmos_default", "profile": "cosmos",
     "cosmos": {"database": "sales", "container": "orders"}},
    {"name": "api", "kind": "http", "upstream": "http://127.0.0.1:9", "credential": "k",
     "conn_id": "api"},
    {"name": "dbx", "kind": "http", "upstream": "http://127.0.0.1:9", "credential": "k",
     "conn_id": "dbx", "profile": "databricks"},
]  # fmt: skip


@pytest.fixture
async def gw(tmp_path: Path) -> AsyncIterator[Gateway]:
    async with running_gateway(
        tmp_path,
        policy=POLICY,
        deployments=[deployment("prod", SECRET), deployment("other", SECRET)],
        resources=RESOURCES,
        secrets={"k": base64.b64encode(b"x" * 32).decode()},
    ) as gateway:
        yield gateway


async def post(gw: Gateway, route: str, deployment: str, secret: str, **form: str) -> int:
    status, body = await post_form(gw, route, basic(deployment, secret), **form)
    assert "key" not in body and "access_token" not in body
    return status


def refusals(gw: Gateway, route: str) -> list[Any]:
    gw.audit.flush(5.0)
    return [r for r in gw.audit.search(limit=1000) if (r.detail or {}).get("route") == route]


@pytest.mark.parametrize("route", ["/v1/cosmos-key", "/v1/poll-token"])
async def test_a_bad_deployment_proof_is_audited(gw: Gateway, route: str) -> None:
    assert await post(gw, route, "prod", "wrong", token="x", resource="api") == 401
    [rec] = refusals(gw, route)
    assert rec.decision == "deny" and rec.reason and rec.event == "auth_failed"


async def test_cosmos_key_refusals_are_audited(gw: Gateway) -> None:
    route = "/v1/cosmos-key"
    assert await post(gw, route, "prod", SECRET, token="not-a-token") == 400
    theirs, _ = gw.issuer.mint(TaskIdentity("other", "d", "t", "r", 1), "cosmos", 60)
    assert await post(gw, route, "prod", SECRET, token=theirs) == 400
    http_token, _ = gw.issuer.mint(TaskIdentity("prod", "d", "t", "r", 1), "api", 60)
    assert await post(gw, route, "prod", SECRET, token=http_token) == 400
    records = refusals(gw, route)
    assert [r.decision for r in records] == ["deny"] * 3
    assert records[0].reason.startswith("token_")
    assert {r.reason for r in records[1:]} == {"not_own_cosmos_token"}
    assert all(r.deployment == "prod" for r in records)
    assert not any(SECRET in str(r.to_dict()) or theirs in str(r.to_dict()) for r in records)


async def test_poll_token_for_a_resource_that_is_not_pollable_is_audited(gw: Gateway) -> None:
    route = "/v1/poll-token"
    assert await post(gw, route, "prod", SECRET, resource="api") == 400
    [rec] = refusals(gw, route)
    assert (rec.decision, rec.reason, rec.deployment) == ("deny", "not_pollable", "prod")


async def test_poll_token_ids_are_checked_like_the_token_routes(gw: Gateway) -> None:
    # "finance_daily\n" is not the blocked DAG to the kill switch, yet a DAG to delegation.
    route = "/v1/poll-token"
    gw.state.revocations.block("prod", "finance_daily", "operator", "incident")
    assert await post(gw, route, "prod", SECRET, resource="dbx", dag_id="finance_daily") == 403
    for bad in ({"dag_id": "finance_daily\n"}, {"dag_id": "a/b"}, {"run_id": "r\x01"}):
        assert await post(gw, route, "prod", SECRET, resource="dbx", **bad) == 400, bad
    records = refusals(gw, route)
    assert [r.decision for r in records] == ["deny"] * 4
    assert [r.reason for r in records[1:]] == ["invalid_request"] * 3


async def test_a_granted_poll_token_is_recorded_before_it_is_handed_out(gw: Gateway) -> None:
    url = f"http://127.0.0.1:{gw.control_port}/v1/poll-token"
    async with (
        aiohttp.ClientSession() as s,
        s.post(url, data={"resource": "dbx"}, headers=basic("prod", SECRET)) as r,
    ):
        assert r.status == 200 and r.headers["Cache-Control"] == "no-store"
        body: dict[str, Any] = await r.json()
    claims = gw.verifier.verify(body["access_token"], "dbx")
    assert (claims.task_id, claims.dag_id, claims.jti) == ("@poll", "@triggerer", body["jti"])
    gw.audit.flush(5.0)
    [rec] = [r for r in gw.audit.search(limit=1000) if r.event == "token_issued"]
    assert (rec.decision, rec.jti, rec.task_id, rec.run_id) == ("allow", claims.jti, "@poll", None)
    assert (rec.reason, rec.principal, rec.resource) == ("poll token", claims.sub, "dbx")
    assert body["access_token"] not in str(rec.to_dict())
