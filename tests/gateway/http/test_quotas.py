"""Quotas in the HTTP engine: asked after policy allowed and before write-ahead, a throttled
request answered 429 with ``Retry-After`` and audited ``throttled``, and every slot given
back whichever way the request ends (a test fails when one leaks)."""

from __future__ import annotations

import asyncio
import json
import socket
import struct
import time

import aiohttp
from requests.adapters import HTTPAdapter
from urllib3.util.retry import Retry

from lockgate.metrics import REGISTRY
from tests.gateway.quota_fakes import FakeGate

from ..fakes import claims_for
from .conftest import bearer, raw_request, resource


def _throttled_count(limit: str) -> float:
    return (
        REGISTRY.get_sample_value(
            "lockgate_quota_throttled_total",
            {"resource": "orders", "limit": limit, "kind": "rate"},
        )
        or 0.0
    )


async def test_over_quota_is_429_with_retry_after_audited_and_counted(make_gateway, upstream):
    gate = FakeGate(admits=2, limit="orders-writes", retry_after=1.2)
    gw = await make_gateway(quotas=gate)
    before = _throttled_count("orders-writes")
    async with aiohttp.ClientSession() as s:
        for _ in range(2):
            async with s.get(f"{gw.url}/orders/items/1", headers=bearer()) as r:
                assert r.status == 200
        async with s.put(f"{gw.url}/orders/items/1", data=b"x", headers=bearer()) as r:
            assert r.status == 429
            assert r.headers["Retry-After"] == "2"  # 1.2 s, whole seconds rounded up
            body = await r.json()
    assert body == {
        "error": "throttled",
        "principal": "airflow:prod/finance_daily/load_orders",
        "action": "write",
        "resource": "orders",
        "object": "/items/1",
        "limit": "orders-writes",
        "kind": "rate",
        "retry_after": 1.2,
        "reason": "over quota orders-writes (rate): retry after 1.2 s",
    }
    assert len(upstream.seen) == 2  # the throttled request never went upstream
    assert len(gw.audit.ahead) == 2  # nor was it written ahead as admitted
    rec = gw.audit.records[-1]
    assert rec.event == "throttled" and rec.decision == "deny" and rec.reason == "throttled"
    assert rec.status == 429 and rec.action == "write" and rec.object == "/items/1"
    assert rec.rule is not None  # the rule that allowed it
    assert rec.detail == {"limit": "orders-writes", "kind": "rate", "retry_after": 1.2}
    assert _throttled_count("orders-writes") == before + 1
    assert gate.leaked == 0


async def test_a_denied_request_never_asks_the_quota(make_gateway, upstream):
    gate = FakeGate(statements="throttle")
    gw = await make_gateway(allow=[("read", "/public/*")], quotas=gate)
    async with (
        aiohttp.ClientSession() as s,
        s.delete(f"{gw.url}/orders/public/1", headers=bearer()) as r,
    ):
        assert r.status == 403
    assert gate.asked == []
    assert gw.audit.events() == ["denied"]


async def test_http_hook_with_a_retry_adapter_honours_retry_after(
    make_gateway, upstream, monkeypatch
):
    """The stock HttpHook with urllib3's retry mounted (``adapter=``) waits the gateway's
    Retry-After, then gets through."""
    from airflow.providers.http.hooks.http import HttpHook

    gate = FakeGate(statements="throttle", retry_after=0.4)  # throttled until freed below
    gw = await make_gateway(quotas=gate)
    monkeypatch.setenv(
        "AIRFLOW_CONN_LOCKGATE_ORDERS",
        json.dumps({"conn_type": "http", "host": "127.0.0.1", "port": gw.port}),
    )

    async def free_after(seconds: float) -> None:
        await asyncio.sleep(seconds)
        gate.statements = "admit"

    def one_get() -> tuple[int, float]:
        retry = Retry(total=3, status_forcelist=[429], backoff_factor=0)
        hook = HttpHook("GET", "lockgate_orders", adapter=HTTPAdapter(max_retries=retry))
        t0 = time.monotonic()
        r = hook.run("orders/items/1", headers=bearer())
        return r.status_code, time.monotonic() - t0

    freeing = asyncio.create_task(free_after(0.2))
    status, took = await asyncio.to_thread(one_get)
    await freeing
    assert status == 200
    assert took >= 0.9  # Retry-After: 1 (0.4 s rounded up) was waited
    assert [r.event for r in gw.audit.records] == ["throttled", "allowed"]
    assert gate.leaked == 0


async def test_no_slot_leaks_on_any_path(make_gateway, upstream):
    """Relayed (fast and task paths), upstream 5xx, retried, streamed, client gone
    mid-response and while upstream is slow, upstream unreachable: every slot comes back."""
    dead = socket.socket()
    dead.bind(("127.0.0.1", 0))
    dead_port = dead.getsockname()[1]
    dead.close()
    gate = FakeGate()
    gw = await make_gateway(
        resources=[
            resource("orders", upstream.url, retry={"base_delay": 0.01, "max_delay": 0.02}),
            resource(
                "gone",
                f"http://127.0.0.1:{dead_port}",
                retry={"base_delay": 0.01, "max_delay": 0.02, "deadline": 0.5},
            ),
        ],
        quotas=gate,
    )
    async with aiohttp.ClientSession() as s:
        for path in ("items/1", "items/2", "flaky-1", "always503", "throttle-1"):
            async with s.get(f"{gw.url}/orders/{path}", headers=bearer()) as r:
                await r.read()
        async with s.post(f"{gw.url}/orders/big", data=b"y" * 300_000, headers=bearer()) as r:
            await r.read()
    gw.verifier.tokens["tok-gone"] = claims_for("gone")
    async with (
        aiohttp.ClientSession() as s,
        s.get(f"{gw.url}/gone/x", headers=bearer("tok-gone")) as r,
    ):
        assert r.status == 502
    # client gone while the upstream is slow, and mid-body of a large download
    for target in (b"/orders/slow?s=2", b"/orders/download?size=50000000"):
        reader, writer = await asyncio.open_connection("127.0.0.1", gw.port)
        writer.write(
            b"GET " + target + b" HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer tok-orders\r\n\r\n"
        )
        await writer.drain()
        await reader.read(1000) if b"download" in target else await asyncio.sleep(0.3)
        writer.transport.abort()
        await asyncio.sleep(0.3)
    for _ in range(50):
        if gate.leaked == 0:
            break
        await asyncio.sleep(0.05)
    assert len(gate.tickets) >= 9
    assert gate.leaked == 0, gate.outstanding
    assert all(t.released >= 1 for t in gate.tickets)


async def test_a_paced_request_is_held_then_served(make_gateway, upstream):
    gate = FakeGate(statements="pace", delay=0.3)
    gw = await make_gateway(quotas=gate)
    loop = asyncio.get_running_loop()
    t0 = loop.time()
    async with (
        aiohttp.ClientSession() as s,
        s.get(f"{gw.url}/orders/items/1", headers=bearer()) as r,
    ):
        assert r.status == 200
    assert loop.time() - t0 >= 0.3
    assert gw.audit.events() == ["allowed"] and len(gw.audit.ahead) == 1
    assert gate.leaked == 0


async def test_a_paced_throttle_is_answered_429(make_gateway, upstream):
    gate = FakeGate(statements="pace", delay=0.05, admits=0)
    gw = await make_gateway(quotas=gate)
    raw = await raw_request(
        gw.port,
        b"GET /orders/items/1 HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer tok-orders\r\n"
        b"Connection: close\r\n\r\n",
    )
    assert raw.startswith(b"HTTP/1.1 429 Too Many Requests\r\n")
    assert b"\r\nRetry-After: 2\r\n" in raw
    assert gw.audit.events() == ["throttled"] and gw.audit.ahead == []
    assert upstream.seen == []


async def test_a_client_gone_while_held_leaves_nothing_taken(make_gateway, upstream):
    gate = FakeGate(statements="pace", delay=5.0)
    gw = await make_gateway(quotas=gate)
    _reader, writer = await asyncio.open_connection("127.0.0.1", gw.port)
    writer.write(
        b"GET /orders/items/1 HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer tok-orders\r\n\r\n"
    )
    await writer.drain()
    await asyncio.sleep(0.2)
    # A reset, not a FIN: after a FIN (half-close) the gateway still answers the request.
    sock = writer.transport.get_extra_info("socket")
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    writer.transport.abort()
    for _ in range(40):
        if gate.cancelled:
            break
        await asyncio.sleep(0.05)
    assert gate.cancelled == 1  # the gate's wait was given up with the client
    assert gate.tickets == [] and gate.leaked == 0
    assert upstream.seen == [] and gw.audit.ahead == []
