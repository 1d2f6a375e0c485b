"""The orders API stand-in (App Service) taking Entra ID access tokens for its audience,
checked against the test Entra ID's key set over https, alongside its bearer secrets.
"""

from __future__ import annotations

import ssl
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import rsa

from lockgate.demo.standins.entra import FakeEntra
from lockgate.demo.standins.entra import start as start_entra
from lockgate.demo.standins.entra.thread import server_tls
from lockgate.demo.upstream import DemoUpstream, start_upstream

API = "api://orders"
CLIENT, OTHER_CLIENT = "lockgate-orders", "someone-else"


@dataclass
class Env:
    entra: FakeEntra
    upstream: DemoUpstream
    base: str
    http: aiohttp.ClientSession
    tls: ssl.SSLContext

    async def token(self, client_id: str = CLIENT, resource: str = API) -> str:
        async with self.http.post(
            self.entra.token_url, ssl=self.tls,
            data={"grant_type": "client_credentials", "client_id": client_id,
                  "client_secret": "s", "scope": f"{resource}/.default"},
        ) as answer:  # fmt: skip
            assert answer.status == 200, await answer.text()
            token: str = (await answer.json())["access_token"]
            return token

    async def status(self, bearer: str) -> int:
        async with self.http.get(
            f"{self.base}/orders", headers={"Authorization": f"Bearer {bearer}"}
        ) as answer:
            return answer.status


@pytest.fixture
async def env(tmp_path: Path) -> AsyncIterator[Env]:
    server_ctx, ca = server_tls(tmp_path / "tls")
    entra = FakeEntra(client_secrets={CLIENT: {"s"}, OTHER_CLIENT: {"s"}})
    entra_runner = await start_entra(entra, 0, server_ctx)
    entra.ca_file = ca
    upstream = DemoUpstream({"static-secret"})
    upstream.trust_entra(entra, audience=API, allowed_applications=(CLIENT,))
    runner, port = await start_upstream(upstream)
    async with aiohttp.ClientSession() as http:
        yield Env(
            entra, upstream, f"http://127.0.0.1:{port}", http,
            ssl.create_default_context(cafile=str(ca)),
        )  # fmt: skip
    await runner.cleanup()
    await entra_runner.cleanup()


async def test_entra_token_for_the_api_is_accepted(env: Env) -> None:
    token = await env.token()
    assert await env.status(token) == 200
    assert (
        env.upstream.seen[-1].principal
        == jwt.decode(token, options={"verify_signature": False})["oid"]
    )
    assert await env.status("static-secret") == 200  # what it accepted before still works
    assert env.upstream.seen[-1].principal is None


async def test_refused_tokens(env: Env) -> None:
    assert await env.status(await env.token(resource="https://management.azure.com")) == 401
    assert await env.status(await env.token(OTHER_CLIENT)) == 401  # not an allowed client
    claims = jwt.decode(await env.token(), options={"verify_signature": False})
    stranger = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    kid = {"kid": env.entra.kid}
    assert await env.status(jwt.encode(claims, stranger, algorithm="RS256", headers=kid)) == 401
    assert await env.status(jwt.encode(claims, "k" * 32, algorithm="HS256", headers=kid)) == 401
    now = int(time.time())
    expired = {**claims, "exp": now - 400, "nbf": now - 4000}
    assert (
        await env.status(jwt.encode(expired, env.entra.key, algorithm="RS256", headers=kid)) == 401
    )
    other_iss = {**claims, "iss": "https://sts.windows.net/other/"}
    assert (
        await env.status(jwt.encode(other_iss, env.entra.key, algorithm="RS256", headers=kid))
        == 401
    )
    assert all(s.principal is None for s in env.upstream.seen)


async def test_without_entra_settings_tokens_are_not_accepted(env: Env) -> None:
    token = await env.token()
    env.upstream.entra = None
    assert await env.status(token) == 401
