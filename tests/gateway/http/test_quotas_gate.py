"""The HTTP engine with the real quota gate (policy ``quotas:``, in-memory budgets): a rate
with ``max_delay`` paces instead of refusing, an in-flight cap frees its slot when the
response is relayed, and Data Factory run caps count createRun to a terminal pipeline run
(against the Data Factory test service)."""

from __future__ import annotations

import asyncio
import socket
import struct
import textwrap
import time
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from lockgate.demo.standins.adf import FakeAdf
from lockgate.demo.standins.adf.app import start as start_adf
from lockgate.identity import Claims
from lockgate.policy import parse_policy_texts
from lockgate.quotas.budgets import MemoryBudgets
from lockgate.quotas.gate import PolicyQuotaGate

from .conftest import SECRETS, TOKEN, bearer
from .test_forward_proxy_arm import PREFIX, arm_resource

RULES = """\
rules:
  - id: etl-all
    effect: allow
    principals: ["airflow:prod/*"]
    actions: ["*"]
    resources: ["*"]
"""


def task_claims() -> Claims:
    """Real claims (the gate reads ``principal``), for the engine's fake verifier."""
    return Claims(
        iss="lockgate", sub="airflow:prod/finance_daily/load_orders", aud="orders",
        exp=time.time() + 600, iat=time.time(), nbf=time.time(), jti="jti-q",
        deployment="prod", dag_id="finance_daily", task_id="load_orders",
        run_id="manual__1", try_number=1, map_index=-1,
    )  # fmt: skip


async def gateway(make_gateway: Any, quotas: str, **kw: Any) -> Any:
    gw = await make_gateway(quotas=gate(quotas), **kw)
    gw.verifier.tokens[TOKEN] = task_claims()
    return gw


def gate(quotas: str) -> PolicyQuotaGate:
    policy = parse_policy_texts([("team.yaml", RULES + textwrap.dedent(quotas))])
    return PolicyQuotaGate(lambda: policy, MemoryBudgets())


async def test_a_rate_with_max_delay_paces_every_request_through(make_gateway, upstream):
    gw = await gateway(
        make_gateway,
        """\
        quotas:
          - id: paced-reads
            principals: ["airflow:prod/*"]
            resources: [orders]
            rate: 10/s
            burst: 1
            max_delay: 2s
    """,
    )
    t0 = time.monotonic()
    async with aiohttp.ClientSession() as s:

        async def one(i: int) -> int:
            async with s.get(f"{gw.url}/orders/items/{i}", headers=bearer()) as r:
                await r.read()
                return r.status

        statuses = await asyncio.gather(*(one(i) for i in range(8)))
    took = time.monotonic() - t0
    assert statuses == [200] * 8
    assert took >= 0.6, took  # 7 requests past the burst at 10/s
    assert gw.audit.events() == ["allowed"] * 8


async def test_an_in_flight_cap_frees_its_slot_once_the_response_is_relayed(make_gateway, upstream):
    gw = await gateway(
        make_gateway,
        """\
        quotas:
          - id: one-at-a-time
            principals: ["airflow:prod/*"]
            resources: [orders]
            concurrency: 1
    """,
    )
    async with aiohttp.ClientSession() as s:
        slow = asyncio.create_task(s.get(f"{gw.url}/orders/slow?s=0.5", headers=bearer()))
        await asyncio.sleep(0.2)
        async with s.get(f"{gw.url}/orders/items/1", headers=bearer()) as r:
            assert r.status == 429
            body = await r.json()
            assert r.headers["Retry-After"] == "1"
        assert body["limit"] == "one-at-a-time" and body["kind"] == "concurrency"
        resp = await slow
        assert resp.status == 200
        resp.release()
        for _ in range(3):  # the slot is back after each relayed response
            async with s.get(f"{gw.url}/orders/items/2", headers=bearer()) as r:
                assert r.status == 200
    assert gw.audit.events().count("throttled") == 1


@pytest.fixture
async def adf() -> AsyncIterator[tuple[FakeAdf, str]]:
    def verify(token: str, audience: str) -> dict[str, Any]:
        if token not in SECRETS:
            raise ValueError("not the gateway's credential")
        return {"aud": audience}

    fake = FakeAdf(verify, factories={"adf-prod": {"load"}}, queued_polls=1, running_polls=1)
    runner: web.AppRunner = await start_adf(fake)
    port = runner.addresses[0][1]
    yield fake, f"http://127.0.0.1:{port}"
    await runner.cleanup()


async def test_data_factory_run_cap_counts_runs_until_a_poll_shows_them_finished(make_gateway, adf):
    fake, url = adf
    gw = await gateway(
        make_gateway,
        """\
        quotas:
          - id: one-pipeline-run
            principals: ["airflow:prod/*"]
            resources: [orders]
            actions: [run]
            runs: 1
    """,
        resources=[arm_resource(url)],
    )
    factory = f"{gw.url}/orders{PREFIX}/factories/adf-prod"
    query = "?api-version=2018-06-01"
    async with aiohttp.ClientSession() as s:
        async with s.post(f"{factory}/pipelines/load/createRun{query}", headers=bearer()) as r:
            assert r.status == 200, await r.text()
            run_id = (await r.json())["runId"]
        async with s.post(f"{factory}/pipelines/load/createRun{query}", headers=bearer()) as r:
            assert r.status == 429
            assert r.headers["Retry-After"] == "1"
            err = (await r.json())["error"]
        assert err["code"] == "TooManyRequests" and "one-pipeline-run" in err["message"]
        statuses = []
        for _ in range(3):  # Queued, InProgress, Succeeded
            async with s.get(f"{factory}/pipelineruns/{run_id}{query}", headers=bearer()) as r:
                assert r.status == 200
                statuses.append((await r.json())["status"])
        assert statuses[-1] == "Succeeded", statuses
        async with s.post(f"{factory}/pipelines/load/createRun{query}", headers=bearer()) as r:
            assert r.status == 200, await r.text()
    assert len(fake.calls("createRun")) == 2  # the throttled start never reached ARM
    throttled = [r for r in gw.audit.records if r.event == "throttled"]
    assert len(throttled) == 1
    assert throttled[0].detail["limit"] == "one-pipeline-run"
    assert throttled[0].detail["kind"] == "runs"


async def test_a_client_gone_while_held_by_a_cap_leaves_its_slot_free(make_gateway, upstream):
    gw = await gateway(
        make_gateway,
        """\
        quotas:
          - id: one-at-a-time
            principals: ["airflow:prod/*"]
            resources: [orders]
            concurrency: 1
            max_delay: 5s
    """,
    )
    request = b"GET /orders/%s HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer tok-orders\r\n\r\n"
    async with aiohttp.ClientSession() as s:
        slow = asyncio.create_task(s.get(f"{gw.url}/orders/slow?s=0.6", headers=bearer()))
        await asyncio.sleep(0.2)
        # held behind the slow one, then gone (a reset: after a FIN it would be answered)
        _, writer = await asyncio.open_connection("127.0.0.1", gw.port)
        writer.write(request % b"items/held")
        await writer.drain()
        await asyncio.sleep(0.2)
        sock = writer.transport.get_extra_info("socket")
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        writer.transport.abort()
        resp = await slow
        assert resp.status == 200
        resp.release()
        t0 = time.monotonic()
        async with s.get(f"{gw.url}/orders/items/next", headers=bearer()) as r:
            assert r.status == 200
        assert time.monotonic() - t0 < 1.0  # no slot was left taken by the request gone
    assert "/items/held" not in upstream.received
