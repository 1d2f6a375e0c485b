"""A real upstream (aiohttp on 127.0.0.1) and a real gateway in front of it."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
from collections import defaultdict
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from lockgate.config import HttpResource as Resource
from lockgate.gateway.engine import Collaborators
from lockgate.gateway.http import HttpEngine
from lockgate.quotas import NO_QUOTAS, QuotaGate

from ..fakes import (
    FakeAudit,
    FakeBroker,
    FakePolicy,
    FakePolicySet,
    FakeSigner,
    FakeVerifier,
    claims_for,
)

SECRETS = ["up-secret-v1", "up-secret-v2"]
TOKEN = "tok-orders"
OTHER_TOKEN = "tok-billing"


@dataclass
class Upstream:
    url: str
    accepted: set[str]
    peers: set[Any] = field(default_factory=set)
    hits: dict[str, int] = field(default_factory=lambda: defaultdict(int))
    seen: list[dict[str, Any]] = field(default_factory=list)
    received: list[str] = field(default_factory=list)  # every request's path, before auth


def _authorized(up: Upstream, request: web.Request) -> bool:
    got = request.headers.get("Authorization", "")
    return any(hmac.compare_digest(got, f"Bearer {s}") for s in up.accepted)


def make_app(up: Upstream) -> web.Application:
    async def echo(request: web.Request) -> web.StreamResponse:
        up.peers.add(request.transport.get_extra_info("peername") if request.transport else None)
        up.received.append(request.path)
        if not _authorized(up, request):
            return web.json_response({"error": "upstream_unauthorized"}, status=401)
        key = request.path
        up.hits[key] += 1
        name = request.match_info.get("tail", "")
        if name.startswith("flaky"):
            if up.hits[key] <= 2:
                return web.json_response({"error": "busy"}, status=503)
        elif name.startswith("throttle"):
            if up.hits[key] <= 1:
                return web.Response(status=429, headers={"x-ms-retry-after-ms": "300"})
        elif name.startswith("always503"):
            return web.Response(status=503, headers={"Retry-After": "0"})
        elif name.startswith("download"):
            size = int(request.query["size"])
            resp = web.StreamResponse()
            resp.content_length = size
            await resp.prepare(request)
            block = b"x" * (256 * 1024)
            left = size
            while left:
                n = min(left, len(block))
                await resp.write(block[:n])
                left -= n
            await resp.write_eof()
            return resp
        elif name.startswith("slow"):
            await asyncio.sleep(float(request.query.get("s", "1")))
        digest = hashlib.sha256()
        size = 0
        async for data in request.content.iter_any():
            digest.update(data)
            size += len(data)
        info = {
            "method": request.method,
            "path": request.raw_path.split("?")[0],
            "query": request.raw_path.partition("?")[2],
            "headers": {k: v for k, v in request.headers.items()},
            "sha256": digest.hexdigest(),
            "size": size,
        }
        up.seen.append(info)
        return web.json_response(info)

    app = web.Application(client_max_size=2**40)
    app.router.add_route("*", "/{tail:.*}", echo)
    return app


@pytest.fixture
async def upstream() -> AsyncIterator[Upstream]:
    up = Upstream(url="", accepted={SECRETS[-1]})
    runner = web.AppRunner(make_app(up), access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    up.url = f"http://127.0.0.1:{port}"
    yield up
    await runner.cleanup()


@dataclass
class Gateway:
    engine: HttpEngine
    url: str
    port: int
    verifier: FakeVerifier
    policy: FakePolicySet
    broker: FakeBroker
    audit: FakeAudit
    signer: FakeSigner


def resource(name: str, upstream_url: str, **kw: Any) -> Resource:
    return Resource(name=name, kind="http", upstream=upstream_url, credential="orders-key", **kw)


@pytest.fixture
async def make_gateway(upstream: Upstream) -> AsyncIterator[Any]:
    engines: list[HttpEngine] = []

    async def factory(
        resources: list[Resource] | None = None,
        allow: list[tuple[str, str]] | None = None,
        deny: list[tuple[str, str]] | None = None,
        quotas: QuotaGate = NO_QUOTAS,
        **engine_kw: Any,
    ) -> Gateway:
        res = resources or [
            resource("orders", upstream.url, retry={"base_delay": 0.01, "max_delay": 0.05}),
            resource("billing", upstream.url),
        ]
        verifier = FakeVerifier({TOKEN: claims_for("orders"), OTHER_TOKEN: claims_for("billing")})
        pset = FakePolicySet(allow if allow is not None else [("*", "*")], deny or [])
        broker = FakeBroker({"orders-key": list(SECRETS)})
        audit = FakeAudit()
        signer = FakeSigner()
        shared = Collaborators(verifier, FakePolicy(pset), broker, audit, signer, quotas=quotas)
        engine = HttpEngine(res, shared, **engine_kw)
        await engine.start("127.0.0.1", 0)
        engines.append(engine)
        port = engine.port
        return Gateway(
            engine, f"http://127.0.0.1:{port}", port, verifier, pset, broker, audit, signer
        )

    yield factory
    for engine in engines:
        await engine.close()


def bearer(token: str = TOKEN) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def basic(token: str = TOKEN) -> dict[str, str]:
    return {"Authorization": "Basic " + base64.b64encode(f"airflow:{token}".encode()).decode()}


async def raw_request(port: int, data: bytes, *, timeout: float = 3.0) -> bytes:
    """Send raw bytes, read until the gateway closes (or timeout); return what came back."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(data)
    await writer.drain()
    chunks = []
    try:
        async with asyncio.timeout(timeout):
            while True:
                got = await reader.read(65536)
                if not got:
                    break
                chunks.append(got)
    except TimeoutError:
        chunks.append(b"<timeout>")
    writer.close()
    return b"".join(chunks)


async def call(method: str, url: str, **kw: Any) -> tuple[int, dict[str, str], Any]:
    """One request on a fresh session: (status, headers, JSON body or None)."""
    async with aiohttp.ClientSession() as s, s.request(method, url, **kw) as r:
        try:
            body = await r.json(content_type=None)
        except ValueError:
            body = None
        return r.status, dict(r.headers), body


def pytest_asyncio_loop_factories(config: Any, item: Any) -> dict[str, Any]:
    """Every async test runs on the stock loop and on uvloop (what the server installs)."""
    import uvloop

    return {"asyncio": asyncio.new_event_loop, "uvloop": uvloop.new_event_loop}
