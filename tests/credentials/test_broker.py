"""CredentialBroker against a real OAuth2 token endpoint on 127.0.0.1."""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from lockgate.config import LockgateConfig
from lockgate.credentials import CredentialBroker, CredentialStore
from lockgate.errors import CredentialError
from lockgate.metrics import REGISTRY

CLIENT_SECRET = "client-Secret-Value-9f8e7d"


class Clock:
    def __init__(self) -> None:
        self.t = 1_000_000.0

    def __call__(self) -> float:
        return self.t


class TokenEndpoint:
    """Counts calls; accepts only the secrets in ``valid``; answers ``status`` if set."""

    def __init__(self) -> None:
        self.calls: list[dict[str, str]] = []
        self.valid = {CLIENT_SECRET}
        self.expires_in: Any = 3600
        self.delay = 0.0
        self.status: int | None = None
        self.refusal: dict[str, Any] | None = None  # the body of a 401, when set
        self.url = ""

    async def handle(self, request: web.Request) -> web.Response:
        form = dict(await request.post())
        self.calls.append({k: str(v) for k, v in form.items()})
        if self.delay:
            await asyncio.sleep(self.delay)
        if self.status:
            return web.json_response({"error": "server_error"}, status=self.status)
        if form.get("client_secret") not in self.valid or form.get("client_id") != "cid":
            return web.json_response(
                self.refusal
                or {
                    "error": "invalid_client",
                    # echoes the secret: the broker must never repeat a description
                    "error_description": f"bad {form.get('client_secret')!r}",
                },
                status=401,
            )
        n = len(self.calls)
        return web.json_response(
            {"access_token": f"access-{n}", "token_type": "Bearer", "expires_in": self.expires_in}
        )


@pytest.fixture
async def endpoint() -> AsyncIterator[TokenEndpoint]:
    ep = TokenEndpoint()
    app = web.Application()
    app.router.add_post("/token", ep.handle)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    host, port = runner.addresses[0][:2]
    ep.url = f"http://{host}:{port}/token"
    yield ep
    await runner.cleanup()


def make_config(token_url: str, refresh_before: int = 300) -> LockgateConfig:
    return LockgateConfig.model_validate(
        {
            "credentials": [
                {
                    "name": "app-entra",
                    "type": "oauth2_client_credentials",
                    "token_url": token_url,
                    "client_id": "cid",
                    "scope": "api://orders/.default",
                    "overlap": 60,
                    "refresh_before": refresh_before,
                },
                {"name": "orders-key", "type": "static", "overlap": 60},
            ]
        }
    )


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def key() -> bytes:
    return os.urandom(32)


@pytest.fixture
def store(tmp_path: Path, key: bytes, clock: Clock) -> CredentialStore:
    return CredentialStore(tmp_path / "credentials.db", key, clock=clock)


@pytest.fixture
async def broker(
    endpoint: TokenEndpoint, store: CredentialStore, clock: Clock
) -> AsyncIterator[CredentialBroker]:
    store.set("app-entra", CLIENT_SECRET)
    store.set("orders-key", "static-v1")
    b = CredentialBroker(make_config(endpoint.url, refresh_before=5), store, None, clock=clock)
    yield b
    await b.close()


async def test_static_secret_and_rotation_overlap(
    tmp_path: Path, key: bytes, broker: CredentialBroker, clock: Clock
) -> None:
    s = await broker.upstream_secret("orders-key")
    assert s is not None and (s.value, s.version, s.credential) == ("static-v1", 1, "orders-key")
    assert "static-v1" not in repr(s)
    assert await broker.upstream_secret("orders-key", previous=True) is None
    # the CLI, another process with its own store, rotates
    CredentialStore(tmp_path / "credentials.db", key, clock=clock).rotate("orders-key", "static-v2")
    s2 = await broker.upstream_secret("orders-key")
    assert s2 is not None and (s2.value, s2.version) == ("static-v2", 2)  # used at once
    prev = await broker.upstream_secret("orders-key", previous=True)
    assert prev is not None and (prev.value, prev.version) == ("static-v1", 1)
    # upstream 401 with the newest: retry once with the previous one, and only that once
    fb = await broker.fallback_secret("orders-key", s2)
    assert fb is not None and fb.version == 1
    assert await broker.fallback_secret("orders-key", fb) is None
    clock.t += 61
    assert await broker.upstream_secret("orders-key", previous=True) is None
    assert await broker.fallback_secret("orders-key", s2) is None


async def test_unknown_and_unset_credentials(
    broker: CredentialBroker, store: CredentialStore
) -> None:
    with pytest.raises(CredentialError, match="'nope' is not configured"):
        await broker.upstream_secret("nope")
    store.delete("orders-key")
    with pytest.raises(CredentialError, match="'orders-key' has no value"):
        await broker.upstream_secret("orders-key")


async def test_oauth2_token_is_cached(broker: CredentialBroker, endpoint: TokenEndpoint) -> None:
    a = await broker.upstream_secret("app-entra")
    b = await broker.upstream_secret("app-entra")
    assert a is not None and b is not None
    assert a.value == b.value == "access-1" and a.version == 1
    assert len(endpoint.calls) == 1
    assert endpoint.calls[0] == {
        "grant_type": "client_credentials",
        "client_id": "cid",
        "client_secret": CLIENT_SECRET,
        "scope": "api://orders/.default",
    }


async def test_refreshed_before_expiry(
    broker: CredentialBroker, endpoint: TokenEndpoint, clock: Clock
) -> None:
    endpoint.expires_in = 20  # refresh_before=5: refresh from t+15
    first = await broker.upstream_secret("app-entra")
    assert first is not None and first.expires_at == clock.t + 20
    clock.t += 14
    assert (await broker.upstream_secret("app-entra")).value == "access-1"  # type: ignore[union-attr]
    clock.t += 2
    assert (await broker.upstream_secret("app-entra")).value == "access-2"  # type: ignore[union-attr]
    assert len(endpoint.calls) == 2


async def test_short_lived_token_refresh_lead_is_capped(
    endpoint: TokenEndpoint, store: CredentialStore, clock: Clock
) -> None:
    store.set("app-entra", CLIENT_SECRET)
    endpoint.expires_in = "10"  # string, as some endpoints send; refresh_before 300 > 10
    b = CredentialBroker(make_config(endpoint.url, refresh_before=300), store, clock=clock)
    try:
        for _ in range(5):
            await b.upstream_secret("app-entra")
        assert len(endpoint.calls) == 1  # not refetched on every call
        clock.t += 6
        await b.upstream_secret("app-entra")
        assert len(endpoint.calls) == 2
    finally:
        await b.close()


async def test_single_flight_under_concurrency(
    broker: CredentialBroker, endpoint: TokenEndpoint
) -> None:
    endpoint.delay = 0.1
    results = await asyncio.gather(*(broker.upstream_secret("app-entra") for _ in range(50)))
    assert len(endpoint.calls) == 1
    assert {r.value for r in results if r} == {"access-1"}


async def test_cancelled_caller_does_not_cancel_the_shared_fetch(
    broker: CredentialBroker, endpoint: TokenEndpoint
) -> None:
    endpoint.delay = 0.1
    impatient = asyncio.ensure_future(broker.upstream_secret("app-entra"))
    patient = asyncio.ensure_future(broker.upstream_secret("app-entra"))
    await asyncio.sleep(0.02)
    impatient.cancel()
    got = await patient
    assert got is not None and got.value == "access-1"
    assert len(endpoint.calls) == 1


async def test_rotated_client_secret_used_at_once(
    tmp_path: Path, key: bytes, broker: CredentialBroker, endpoint: TokenEndpoint
) -> None:
    await broker.upstream_secret("app-entra")
    endpoint.valid = {CLIENT_SECRET, "client-secret-v2"}
    CredentialStore(tmp_path / "credentials.db", key).rotate("app-entra", "client-secret-v2")
    s = await broker.upstream_secret("app-entra")
    assert s is not None and s.version == 2 and s.value == "access-2"
    assert endpoint.calls[-1]["client_secret"] == "client-secret-v2"
    prev = await broker.upstream_secret("app-entra", previous=True)
    assert prev is not None and prev.version == 1 and prev.value == "access-1"  # still cached
    assert len(endpoint.calls) == 2


async def test_refresh_reports_rotation_and_age(
    tmp_path: Path, key: bytes, broker: CredentialBroker, clock: Clock
) -> None:
    assert broker.refresh() is False
    clock.t += 42
    assert broker.age_seconds("orders-key") == 42
    assert (
        REGISTRY.get_sample_value("lockgate_credential_age_seconds", {"credential": "orders-key"})
        == 42
    )
    CredentialStore(tmp_path / "credentials.db", key, clock=clock).rotate("orders-key", "v2")
    assert broker.refresh() is True
    assert broker.age_seconds("orders-key") == 0
    assert broker.age_seconds("app-entra") == 42
    assert broker.age_seconds("never-set") is None


async def test_token_endpoint_401_names_credential_not_secret(
    broker: CredentialBroker, endpoint: TokenEndpoint
) -> None:
    endpoint.valid = set()
    with pytest.raises(CredentialError) as info:
        await broker.upstream_secret("app-entra")
    msg = str(info.value)
    assert msg == (
        "credential 'app-entra': token endpoint refused the client (HTTP 401, invalid_client)"
    )
    assert CLIENT_SECRET not in msg


@pytest.mark.parametrize(
    "body",
    [
        {"error": "invalid_client", "error_codes": [7000215],
         "error_description": "AADSTS7000215: Invalid client secret provided. Trace ID: t"},
        {"error": "invalid_client",  # no error_codes: the description's code is taken
         "error_description": "AADSTS7000215: Invalid client secret provided. Trace ID: t"},
    ],
)  # fmt: skip
async def test_entra_refusal_names_its_aadsts_code_not_its_description(
    broker: CredentialBroker, endpoint: TokenEndpoint, body: dict[str, Any]
) -> None:
    endpoint.valid = set()
    endpoint.refusal = body
    with pytest.raises(CredentialError) as info:
        await broker.upstream_secret("app-entra")
    assert str(info.value) == (
        "credential 'app-entra': token endpoint refused the client "
        "(HTTP 401, invalid_client, AADSTS7000215)"
    )


async def test_token_endpoint_5xx_and_unreachable(
    broker: CredentialBroker, endpoint: TokenEndpoint, store: CredentialStore, clock: Clock
) -> None:
    endpoint.status = 503
    with pytest.raises(CredentialError, match=r"token endpoint failed \(HTTP 503\)"):
        await broker.upstream_secret("app-entra")
    cfg = make_config("http://127.0.0.1:1/token")
    b = CredentialBroker(cfg, store, clock=clock)
    try:
        with pytest.raises(CredentialError, match="token endpoint unreachable"):
            await b.upstream_secret("app-entra")
    finally:
        await b.close()


async def test_cached_token_served_while_refresh_fails(
    broker: CredentialBroker, endpoint: TokenEndpoint, clock: Clock
) -> None:
    endpoint.expires_in = 20
    await broker.upstream_secret("app-entra")
    endpoint.status = 500
    clock.t += 16  # inside the refresh window, token still valid
    s = await broker.upstream_secret("app-entra")
    assert s is not None and s.value == "access-1"
    clock.t += 5  # expired now
    with pytest.raises(CredentialError, match="HTTP 500"):
        await broker.upstream_secret("app-entra")


async def test_shared_http_session_is_used_and_not_closed(
    endpoint: TokenEndpoint, store: CredentialStore
) -> None:
    store.set("app-entra", CLIENT_SECRET)
    async with aiohttp.ClientSession() as http:
        b = CredentialBroker(make_config(endpoint.url), store, http)
        s = await b.upstream_secret("app-entra")
        assert s is not None and s.value == "access-1"
        await b.close()
        assert not http.closed
