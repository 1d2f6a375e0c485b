"""Attacks on upstream federation and the token requests it shares with client secrets:
a network position between the gateway and a token endpoint reached over plain HTTP, a token
endpoint that echoes what it was sent, one that hangs while a cached token is valid, and a
task that makes the upstream refuse its access token on purpose.

The real broker against the token endpoints of :mod:`tests.credentials.test_federation`
(which verify every assertion against real RSA and P-256 keys), reached through a resolver
that sends a cloud's host name to 127.0.0.1, as DNS would send it to the cloud."""

from __future__ import annotations

import asyncio
import logging
import socket
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import aiohttp
import pytest
from aiohttp import web
from aiohttp.abc import AbstractResolver, ResolveResult
from pydantic import ValidationError

from lockgate.config import FederatedCredential, LockgateConfig, OAuth2ClientCredential
from lockgate.credentials import CredentialBroker, CredentialStore
from lockgate.credentials.broker import REFRESH_RETRY_AFTER, REFRESH_WAIT, REFUSED_REFETCH_INTERVAL
from lockgate.credentials.federation import TOKEN_EXCHANGE_GRANT
from lockgate.errors import CredentialError
from lockgate.gateway.caches import SecretCache

from .test_federation import Cloud, Signer, broker, clock, cloud, make_config, signer, store

__all__ = ["broker", "clock", "cloud", "signer", "store"]  # the fixtures, shared

CLOUD_HOST = "login.cloud.example"  # stands for login.microsoftonline.com / a workspace


class ToLoopback(AbstractResolver):
    """Resolves every name to 127.0.0.1: the test clouds listen there."""

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        return [{"hostname": host, "host": "127.0.0.1", "port": port,
                 "family": socket.AF_INET, "proto": 0, "flags": socket.AI_NUMERICHOST}]  # fmt: skip

    async def close(self) -> None:
        return None


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(resolver=ToLoopback())) as s:
        yield s


def over_the_network(cloud: Cloud) -> str:
    """The cloud's base URL under a host name that is not this machine's: plain HTTP."""
    port = urlsplit(cloud.base).port
    return f"http://{CLOUD_HOST}:{port}"


def secret_config(base: str) -> LockgateConfig:
    return LockgateConfig.model_validate(
        {"credentials": [{"name": "app-entra", "type": "oauth2_client_credentials",
                          "token_url": f"{base}/entra", "client_id": "cid",
                          "scope": "api://orders/.default"}]}
    )  # fmt: skip


def past_the_config(build: Callable[[str], LockgateConfig], cloud: Cloud) -> LockgateConfig:
    """``build``'s config with its token URLs over the network. The config refuses such a
    URL at load; this one got past it (built in code, an older check): what the broker does
    with it is its own line of defence."""
    with pytest.raises(ValidationError, match="https"):
        build(over_the_network(cloud))
    config = build(cloud.base)
    moved = [
        c.model_copy(update={"token_url": c.token_url.replace(cloud.base, over_the_network(cloud))})
        if isinstance(c, OAuth2ClientCredential | FederatedCredential)
        else c
        for c in config.credentials
    ]
    return config.model_copy(update={"credentials": moved})


# -- plain HTTP: what a network position reads ------------------------------------------------
@pytest.mark.parametrize("credential", ["cosmos-fed", "dbx-fed"])
async def test_an_assertion_never_crosses_the_network_in_clear(
    cloud: Cloud,
    store: CredentialStore,
    clock: Any,
    signer: Signer,
    http: aiohttp.ClientSession,
    credential: str,
) -> None:
    """A token_url of http:// to another host would hand anyone on the path a Lockgate-signed
    assertion the cloud accepts (for assertion_ttl, from any client): refused before any
    assertion is signed or sent, with a message that says why."""
    config = past_the_config(make_config, cloud)
    broker = CredentialBroker(config, store, http, clock=clock, assertion_signer=signer)
    try:
        with pytest.raises(CredentialError) as refused:
            await broker.upstream_secret(credential)
    finally:
        await broker.close()
    assert cloud.forms == [] and signer.calls == []
    assert f"credential {credential!r}" in str(refused.value)
    assert "https" in str(refused.value) and CLOUD_HOST in str(refused.value)


async def test_a_client_secret_never_crosses_the_network_in_clear(
    cloud: Cloud, tmp_path: Path, http: aiohttp.ClientSession, clock: Any
) -> None:
    """The same for a stored client secret (the request every grant shares)."""
    store = CredentialStore(tmp_path / "secrets.db", b"k" * 32, clock=clock)
    store.set("app-entra", "client-secret-value")
    broker = CredentialBroker(past_the_config(secret_config, cloud), store, http, clock=clock)
    try:
        with pytest.raises(CredentialError, match="https") as refused:
            await broker.upstream_secret("app-entra")
    finally:
        await broker.close()
    assert cloud.forms == [] and "client-secret-value" not in str(refused.value)


@pytest.mark.parametrize("host", ["127.0.0.1", "localhost"])
async def test_plain_http_to_this_machine_stays_allowed(
    cloud: Cloud, store: CredentialStore, clock: Any, signer: Signer, http: aiohttp.ClientSession,
    host: str,
) -> None:  # fmt: skip
    """The control: a token endpoint on this machine (a sidecar, the test clouds) is reached
    over plain HTTP as before; nothing crosses a network."""
    base = f"http://{host}:{urlsplit(cloud.base).port}"
    broker = CredentialBroker(make_config(base), store, http, clock=clock, assertion_signer=signer)
    try:
        secret = await broker.upstream_secret("dbx-fed")
    finally:
        await broker.close()
    assert secret is not None and secret.value.startswith("access-")


# -- what a refusal or a log line may carry ---------------------------------------------------
@pytest.mark.parametrize("credential", ["cosmos-fed", "dbx-fed"])
async def test_an_endpoint_that_echoes_the_assertion_gets_it_into_no_message_or_log(
    store: CredentialStore, clock: Any, signer: Signer, caplog: pytest.LogCaptureFixture,
    credential: str,
) -> None:  # fmt: skip
    """Not a hole: a token endpoint that repeats the request in every field of its refusal
    (error, error_description, error_codes) finds none of it in the error or the log."""
    caplog.set_level(logging.DEBUG)
    echoed: list[str] = []

    async def echo(request: web.Request) -> web.Response:
        form = {k: str(v) for k, v in (await request.post()).items()}
        sent = form.get("client_assertion") or form["subject_token"]
        echoed.append(sent)
        return web.json_response(
            {"error": sent, "error_description": f"AADSTS{sent} {form}",
             "error_codes": [sent]}, status=400,
        )  # fmt: skip

    app = web.Application()
    app.router.add_post("/entra", echo)
    app.router.add_post("/oidc/v1/token", echo)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    base = f"http://127.0.0.1:{runner.addresses[0][1]}"
    broker = CredentialBroker(make_config(base), store, clock=clock, assertion_signer=signer)
    try:
        with pytest.raises(CredentialError) as refused:
            await broker.upstream_secret(credential)
    finally:
        await broker.close()
        await runner.cleanup()
    assert echoed, "the refusal did not come from the echoing endpoint"
    said = str(refused.value) + caplog.text
    header, payload, signature = echoed[0].split(".")
    assert header not in said and payload not in said and signature not in said
    assert "HTTP 400" in str(refused.value)


@pytest.mark.parametrize("status", [200, 400])
async def test_an_answer_nested_past_the_parsers_depth_is_a_credential_error(
    store: CredentialStore, clock: Any, signer: Signer, status: int
) -> None:
    """json raises RecursionError, not ValueError, on [[[[...]]]]: the answer names nothing
    and the exchange fails as a CredentialError, never an unexpected exception."""

    async def nested(_request: web.Request) -> web.Response:
        body = "[" * 50_000 + "]" * 50_000
        return web.Response(text=body, status=status, content_type="application/json")

    app = web.Application()
    app.router.add_post("/entra", nested)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    base = f"http://127.0.0.1:{runner.addresses[0][1]}"
    broker = CredentialBroker(make_config(base), store, clock=clock, assertion_signer=signer)
    try:
        with pytest.raises(CredentialError, match="'cosmos-fed'"):
            await broker.upstream_secret("cosmos-fed")
    finally:
        await broker.close()
        await runner.cleanup()


# -- a token endpoint that hangs (or a path that holds its packets) ---------------------------
async def test_a_hanging_refresh_stalls_no_request_while_the_cached_token_is_valid(
    store: CredentialStore, clock: Any, signer: Signer, cloud: Cloud
) -> None:
    """In the refresh window, with the cloud answering only after 3 s: the first request
    waits at most REFRESH_WAIT, the next ones not at all, each served the still-valid cached
    token; the refresh goes on and its token is served once it lands. Past the cached
    token's expiry a request waits for the exchange (nothing valid to serve)."""
    broker = CredentialBroker(make_config(cloud.base), store, clock=clock, assertion_signer=signer)
    try:
        cloud.expires_in = 20  # refresh_before=5: refreshed from t+15
        first = await broker.upstream_secret("cosmos-fed")
        assert first is not None
        cloud.delay = 1.5
        clock.t += 16
        started = time.monotonic()
        kept = await broker.upstream_secret("cosmos-fed")
        assert time.monotonic() - started < REFRESH_WAIT + 0.4
        started = time.monotonic()
        again = await broker.upstream_secret("cosmos-fed")
        assert time.monotonic() - started < 0.1
        assert kept is not None and again is not None and kept.value == again.value == first.value
        await asyncio.sleep(1.5)  # the refresh lands
        fresh = await broker.upstream_secret("cosmos-fed")
        assert fresh is not None and fresh.value == "access-2" and len(cloud.forms) == 2
        clock.t += 60  # expired, nothing cached is valid: wait for the exchange
        cloud.delay = 0.8
        started = time.monotonic()
        waited = await broker.upstream_secret("cosmos-fed")
        assert waited is not None and waited.value == "access-3"
        assert time.monotonic() - started >= 0.8
    finally:
        await broker.close()


# -- what a token endpoint says about its token's lifetime ------------------------------------
@pytest.mark.parametrize(
    ("expires_in", "cached_for"),
    [("NaN", 3600), (float("nan"), 3600), ("inf", 86400), (1e12, 86400), (-5, 1)],
    ids=["nan-text", "nan", "inf-text", "huge", "negative"],
)
async def test_a_lifetime_no_token_has_is_bounded(
    broker: CredentialBroker, cloud: Cloud, clock: Any, expires_in: Any, cached_for: int
) -> None:
    """A token endpoint that answers expires_in NaN would make every request exchange again
    (NaN compares false), one that answers inf or 1e12 would make the gateway keep a token
    forever: neither a lifetime a token has. NaN counts as the default hour, anything longer
    than a day as a day, anything under a second as a second."""
    cloud.expires_in = expires_in
    first = await broker.upstream_secret("dbx-fed")
    assert first is not None and first.expires_at == pytest.approx(clock.t + cached_for)
    again = await broker.upstream_secret("dbx-fed")
    assert again is not None and again.value == first.value and len(cloud.forms) == 1
    clock.t += cached_for
    later = await broker.upstream_secret("dbx-fed")
    assert later is not None and later.value != first.value and len(cloud.forms) == 2


# -- a task that makes the upstream answer 401 on purpose -------------------------------------
@pytest.mark.parametrize("credential", ["cosmos-fed", "dbx-fed"])
async def test_upstream_refusals_a_task_provokes_cost_one_exchange_per_interval(
    broker: CredentialBroker, cloud: Cloud, clock: Any, credential: str
) -> None:
    """A task that can make the upstream answer 401 (a route that always does) makes the
    gateway drop its access token after each (the engine's ``forget_token``). Were every drop
    a new exchange, a few hundred requests would be as many token requests, and the cloud
    throttles the app for every task. One exchange per interval; an operator's invalidate
    (no version) still drops at once."""
    secrets = SecretCache(broker, ttl=1.0, clock=clock, wall=clock)
    first = await secrets.get(credential)
    assert first is not None and len(cloud.forms) == 1
    for _ in range(200):  # each request: the token, a 401, the token forgotten
        sent = await secrets.get(credential)
        assert sent is not None
        secrets.forget_token(credential, sent.version)
        clock.t += 0.05
    assert len(cloud.forms) == 2  # one refetch in these 10 s, not 200
    clock.t += REFUSED_REFETCH_INTERVAL
    sent = await secrets.get(credential)
    assert sent is not None
    secrets.forget_token(credential, sent.version)
    assert (await secrets.get(credential)) is not None and len(cloud.forms) == 3
    secrets.invalidate(credential)
    broker.invalidate(credential)  # the operator's
    assert (await secrets.get(credential)) is not None and len(cloud.forms) == 4


async def test_a_failing_refresh_is_not_retried_at_the_rate_requests_come(
    broker: CredentialBroker, cloud: Cloud, clock: Any
) -> None:
    """A cloud that refuses fast (503) in the refresh window: the still-valid token is served
    and the refresh retried every REFRESH_RETRY_AFTER s, not once per request (a few hundred
    token requests a second would get the app throttled past the outage)."""
    credential = "dbx-fed"  # refresh_before 300: a window of 5 minutes
    cloud.expires_in = 600
    first = await broker.upstream_secret(credential)
    assert first is not None and first.expires_at is not None
    cloud.status = 503
    clock.t = first.expires_at - 100
    for _ in range(100):
        kept = await broker.upstream_secret(credential)
        assert kept is not None and kept.value == first.value
        clock.t += 0.01
    assert len(cloud.forms) == 2  # the first exchange and one failed refresh
    clock.t += REFRESH_RETRY_AFTER
    await broker.upstream_secret(credential)
    assert len(cloud.forms) == 3
    cloud.status = None
    clock.t += REFRESH_RETRY_AFTER
    fresh = await broker.upstream_secret(credential)
    assert fresh is not None and fresh.value != first.value and len(cloud.forms) == 4


# -- one credential's token never serves another ---------------------------------------------
async def test_each_credential_is_served_only_the_token_its_own_exchange_got(
    broker: CredentialBroker, cloud: Cloud, clock: Any
) -> None:
    """Not a hole: two federated credentials (Entra ID and Databricks, same subject) fetched
    together, refreshed, one invalidated: each is only ever served a token its own endpoint
    issued (tokens are cached and in flight per credential name)."""
    issued_to: dict[str, str] = {}  # access token -> the grant it answered

    def record() -> None:
        for i, form in enumerate(cloud.forms, start=1):
            issued_to.setdefault(f"access-{i}", form["grant_type"])

    expected = {"cosmos-fed": "client_credentials", "dbx-fed": TOKEN_EXCHANGE_GRANT}
    cloud.expires_in = 20
    for step in range(3):
        got = await asyncio.gather(*(broker.upstream_secret(name) for name in [*expected] * 10))
        record()
        for secret in got:
            assert secret is not None
            assert issued_to[secret.value] == expected[secret.credential], step
        clock.t += 16  # into cosmos-fed's refresh window (refresh_before 5)
        broker.invalidate("dbx-fed")
    assert len(cloud.forms) >= 4
