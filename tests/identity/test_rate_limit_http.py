"""Rate limits through the real control listener: 429 with ``Retry-After`` and an OAuth2
error body, and an audit record of the refusal (reason ``rate_limited``, the limit named)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import aiohttp

from lockgate.audit import AuditRow
from lockgate.server import Gateway
from tests.control._stack import basic, deployment, running_gateway

SECRET = "limits-secret-Vb3"
OTHER_SECRET = "limits-other-Kd8"
POLICY = """\
rules:
  - id: everyone
    effect: allow
    principals: ["airflow:*/*/*"]
    actions: [read]
    resources: ["*"]
"""
TASK = {"dag_id": "etl", "task_id": "load", "run_id": "r1", "try_number": "1", "resource": "api"}


@asynccontextmanager
async def gateway(tmp_path: Path, **rate_limit: float) -> AsyncIterator[Gateway]:
    async with running_gateway(
        tmp_path,
        policy=POLICY,
        deployments=[deployment("prod", SECRET), deployment("other", OTHER_SECRET)],
        resources=[
            {"name": "api", "kind": "http", "upstream": "http://127.0.0.1:9"},
            {
                "name": "databricks",
                "kind": "http",
                "upstream": "http://127.0.0.1:9",
                "conn_id": "databricks_default",
                "profile": "databricks",
            },
        ],
        tokens={"rate_limit": rate_limit},
    ) as gw:
        yield gw


async def post(
    gw: Gateway, route: str, headers: Mapping[str, str] | None = None, **form: str
) -> tuple[int, dict[str, Any], Mapping[str, str]]:
    url = f"http://127.0.0.1:{gw.control_port}{route}"
    async with aiohttp.ClientSession() as s, s.post(url, data=form, headers=headers) as r:
        return r.status, await r.json(content_type=None), dict(r.headers)


def refusals(gw: Gateway) -> list[AuditRow]:
    gw.audit.flush(5.0)
    return [r for r in gw.audit.search() if r.reason == "rate_limited"]


async def test_a_deployment_minting_too_fast_gets_429_with_retry_after(tmp_path: Path) -> None:
    async with gateway(tmp_path, mint_per_second=0.01, burst=2) as gw:
        for _ in range(2):
            status, body, _ = await post(gw, "/v1/token", basic("prod", SECRET), **TASK)
            assert status == 200, body
        status, body, headers = await post(gw, "/v1/token", basic("prod", SECRET), **TASK)
        assert status == 429
        assert body["error"] == "slow_down" and "access_token" not in body
        assert int(headers["Retry-After"]) >= 1
        assert headers["Cache-Control"] == "no-store"
        # another deployment has a budget of its own
        status, _, _ = await post(gw, "/v1/token", basic("other", OTHER_SECRET), **TASK)
        assert status == 200
        [record] = refusals(gw)
        assert record.decision == "deny" and record.deployment == "prod"
        assert record.detail["limit"] == "mint"
        assert record.detail["retry_after"] >= 1


async def test_every_minting_door_draws_from_the_deployment_s_one_budget(
    tmp_path: Path,
) -> None:
    async with gateway(tmp_path, mint_per_second=0.01, burst=2) as gw:
        status, body, _ = await post(gw, "/v1/token", basic("prod", SECRET), **TASK)
        assert status == 200, body
        poll = {"conn_id": "databricks_default", "dag_id": "etl"}
        status, body, _ = await post(gw, "/v1/poll-token", basic("prod", SECRET), **poll)
        assert status == 200, body
        status, body, headers = await post(gw, "/v1/poll-token", basic("prod", SECRET), **poll)
        assert status == 429 and body["error"] == "slow_down", body
        assert int(headers["Retry-After"]) >= 1
        [record] = refusals(gw)
        assert record.detail["limit"] == "mint" and record.detail["route"] == "/v1/poll-token"


async def test_failed_authentications_cool_a_deployment_down_whatever_it_then_presents(
    tmp_path: Path,
) -> None:
    async with gateway(tmp_path, failed_auth_per_client=3, failed_auth_per_remote=0) as gw:
        for _ in range(3):
            status, _, _ = await post(gw, "/v1/token", basic("prod", "guess"), **TASK)
            assert status == 401
        # the right secret now gets the same answer as a wrong one: no oracle for guessing
        for auth in (basic("prod", SECRET), basic("prod", "guess")):
            status, body, headers = await post(gw, "/v1/token", auth, **TASK)
            assert status == 429, body
            assert body["error"] == "temporarily_unavailable"
            assert int(headers["Retry-After"]) >= 1
        # every door that authenticates a deployment holds it back (client_secret_post too)
        status, _, _ = await post(gw, "/v1/catalog", client_id="prod", client_secret=SECRET)
        assert status == 429
        status, _, _ = await post(gw, "/v1/token", basic("other", OTHER_SECRET), **TASK)
        assert status == 200
        records = refusals(gw)
        assert records and all(r.detail["limit"] == "failed_auth_client" for r in records)


async def test_failed_authentications_from_one_address_cool_that_address_down(
    tmp_path: Path,
) -> None:
    async with gateway(tmp_path, failed_auth_per_client=0, failed_auth_per_remote=3) as gw:
        for name in ("nobody", "prod", "other"):
            status, _, _ = await post(gw, "/v1/revoke", basic(name, "guess"), jti="0" * 32)
            assert status == 401
        status, body, headers = await post(gw, "/v1/token", basic("other", OTHER_SECRET), **TASK)
        assert status == 429 and int(headers["Retry-After"]) >= 1, body
        [record] = refusals(gw)
        assert record.detail["limit"] == "failed_auth_remote"
        assert record.detail["remote"] == "127.0.0.1"


async def test_the_default_limits_leave_a_busy_deployment_alone(tmp_path: Path) -> None:
    async with gateway(tmp_path) as gw:
        for _ in range(30):
            status, body, _ = await post(gw, "/v1/token", basic("prod", SECRET), **TASK)
            assert status == 200, body
        assert refusals(gw) == []
