"""An upstream behind Entra-style OAuth2 client credentials, through the real gateway.

The test upstream has its own token endpoint (``/tenant/oauth2/v2.0/token``: form POST,
``grant_type=client_credentials``, client_id + client_secret, scope) that issues short-lived
bearer tokens, and an API that accepts only those tokens while they are valid. The gateway
holds the client secret; tasks only ever hold Lockgate tokens.
"""

from __future__ import annotations

import asyncio
import secrets
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web

from lockgate.demo.standins._serving import serve
from lockgate.identity import TaskIdentity
from lockgate.server import Gateway, State
from tests.credentials._upstream_gateway import gateway_config

CLIENT_ID = "lockgate-gw"
SCOPE = "api://orders/.default"


@dataclass
class EntraLike:
    client_secrets: set[str]
    ttl: float = 2.0
    issued: dict[str, float] = field(default_factory=dict)
    token_calls: int = 0
    api_calls: int = 0

    async def token(self, request: web.Request) -> web.Response:
        self.token_calls += 1
        form = await request.post()
        if form.get("grant_type") != "client_credentials" or form.get("scope") != SCOPE:
            return web.json_response({"error": "invalid_request"}, status=400)
        if (
            form.get("client_id") != CLIENT_ID
            or form.get("client_secret") not in self.client_secrets
        ):
            return web.json_response({"error": "invalid_client"}, status=401)
        tok = secrets.token_urlsafe(16)
        self.issued[tok] = time.time() + self.ttl
        return web.json_response(
            {"access_token": tok, "token_type": "Bearer", "expires_in": self.ttl}
        )

    async def api(self, request: web.Request) -> web.Response:
        self.api_calls += 1
        tok = request.headers.get("Authorization", "").removeprefix("Bearer ")
        if self.issued.get(tok, 0) < time.time():
            return web.json_response({"error": "invalid_token"}, status=401)
        return web.json_response({"path": request.path})

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_post("/tenant/oauth2/v2.0/token", self.token)
        app.router.add_route("*", "/api/{tail:.*}", self.api)
        return app


POLICY = """\
rules:
  - id: etl-reads-api
    effect: allow
    principals: ["airflow:prod/etl_*/*"]
    actions: [read, write]
    resources: [entra-api]
"""


@pytest.fixture
async def setup(tmp_path: Path) -> AsyncIterator[tuple[Gateway, EntraLike, Path]]:
    entra = EntraLike(client_secrets={"first-secret"})
    served = await serve(entra.app())
    runner = served.runner
    credential = {
        "name": "entra-app", "type": "oauth2_client_credentials",
        "token_url": f"{served.url}/tenant/oauth2/v2.0/token",
        "client_id": CLIENT_ID, "scope": SCOPE, "refresh_before": 1,
    }  # fmt: skip
    cfg = gateway_config(
        tmp_path, f"{served.url}/api", [credential],
        resource="entra-api", credential="entra-app", policy=POLICY,
    )  # fmt: skip
    State(cfg).credentials.set("entra-app", "first-secret")
    gw = Gateway(cfg)
    await gw.start()
    try:
        yield gw, entra, tmp_path
    finally:
        await gw.stop()
        await runner.cleanup()


async def test_gateway_fetches_caches_refreshes_and_rotates_the_upstream_token(
    setup: tuple[Gateway, EntraLike, Path],
) -> None:
    gw, entra, _ = setup
    token = gw.issuer.mint(TaskIdentity("prod", "etl_daily", "pull", "r1", 1), "entra-api", 300)[0]
    url = f"http://127.0.0.1:{gw.http_port}/entra-api/items"
    headers = {"Authorization": f"Bearer {token}"}
    async with aiohttp.ClientSession() as http:

        async def get() -> int:
            async with http.get(url, headers=headers) as r:
                await r.read()
                return r.status

        assert [await get() for _ in range(5)] == [200] * 5
        assert entra.token_calls == 1  # cached
        await asyncio.sleep(2.2)  # past the upstream token's lifetime
        assert await get() == 200
        assert entra.token_calls == 2  # refreshed before use

        # Rotate the client secret: the app accepts both during the overlap, then only the new.
        entra.client_secrets.add("second-secret")
        State(gw.config).credentials.rotate("entra-app", "second-secret")
        entra.client_secrets.discard("first-secret")
        await asyncio.sleep(2.2)  # cached upstream token expires; the next fetch must use v2
        assert [await get() for _ in range(3)] == [200] * 3
        assert entra.api_calls >= 9

        # The upstream refuses the current token before its expiry (revoked): the gateway
        # drops it and fetches a fresh one once, and the caller never sees the 401.
        entra.ttl = 3600.0
        assert await get() == 200
        calls = entra.token_calls
        entra.issued.clear()
        assert await get() == 200
        assert entra.token_calls == calls + 1
    gw.audit.flush(5.0)
    records = gw.audit.search(resource="entra-api", event="allowed")
    assert len(records) == 11
    assert all(r.status == 200 for r in records)
