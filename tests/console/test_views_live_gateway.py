"""The live page over a running gateway: a CQL session logged in shows up with a revoke link;
revoking its token from the console ends the session within a second (the engine's
revocation path), takes it off the page, and the token's next login is refused."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from pathlib import Path
from urllib.parse import unquote

import pytest
from aiohttp import ClientSession
from aiohttp.test_utils import TestServer

from lockgate.console import views_live
from lockgate.console.web import ConsoleContext
from lockgate.gateway.cql import codec
from lockgate.gateway.live_sessions import SessionRegistry
from tests.console._views import CSRF_TOKEN, signed_in, views_app
from tests.gateway.cql.engine_stack import RawClient, Stack, cql_context, stack_fixture


@pytest.fixture
async def stack(tmp_path: Path) -> AsyncIterator[tuple[Stack, SessionRegistry]]:
    async for s in stack_fixture(tmp_path):
        registry = SessionRegistry(s.gw.state.database("live"), "r1", 0, flush_interval=0.05)
        registry.start()
        registry.serve()
        cql_context(s).shared.live = registry
        yield s, registry
        await registry.aclose()


async def _page(http: ClientSession, server: TestServer) -> str:
    async with http.get(server.make_url("/console/live")) as r:
        assert r.status == 200
        return await r.text()


async def test_revoking_a_sessions_token_from_the_console_ends_the_session(
    stack: tuple[Stack, SessionRegistry],
) -> None:
    s, registry = stack
    gw = s.gw
    ctx = ConsoleContext(
        config=gw.config, audit_reader=gw.state.audit_reader, audit=gw.audit,
        policy=gw.policy, revocations=gw.state.revocations, credentials=gw.state.credentials,
        database=gw.state.database, live=views_live.LiveSessionsView(registry),
    )  # fmt: skip
    token = s.token()
    client = await RawClient.open(s.port)
    server = TestServer(views_app(ctx, views_live.add_routes, signed_in("operator", "olga")))
    await server.start_server()
    try:
        assert isinstance(await client.login(token), codec.AuthSuccess)
        async with ClientSession() as http:
            for _ in range(100):  # written by the registry's flush
                page = await _page(http, server)
                if "Revoke token" in page:
                    break
                await asyncio.sleep(0.05)
            link = page.split('href="/console/live/confirm?act=revoke_token&amp;jti=')[1]
            jti = unquote(link.split('"')[0])
            origin = str(server.make_url("/")).rstrip("/")
            t0 = time.monotonic()
            async with http.post(
                server.make_url("/console/live/act"),
                data={"act": "revoke_token", "jti": jti, "csrf": CSRF_TOKEN},
                headers={"Origin": origin}, allow_redirects=False,
            ) as r:  # fmt: skip
                assert r.status == 303
            assert await client.closed(timeout=5.0)
            took = time.monotonic() - t0
            assert took < 1.5, f"session ended {took:.3f}s after the revocation"
            for _ in range(100):
                if jti not in await _page(http, server):
                    break
                await asyncio.sleep(0.05)
            assert jti not in await _page(http, server)
        again = await RawClient.open(s.port)
        try:
            refusal = await again.login(token)
            assert isinstance(refusal, codec.Error) and "revoked" in refusal.message
        finally:
            again.close()
    finally:
        client.close()
        await server.close()
    gw.audit.flush(2.0)
    [record] = [r for r in gw.audit.tail(200) if r.event == "token_revoked"]
    assert (record.jti, record.principal) == (jti, "console:olga")
    assert record.detail["role"] == "operator"
