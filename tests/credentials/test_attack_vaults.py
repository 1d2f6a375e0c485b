"""Attacks on vault-held upstream secrets: a hostile or broken Key Vault / Vault answering
through the real broker (an Entra ID stand-in hands out Key Vault's bearer tokens), checking
that no token, secret id, role id or value reaches an error, a log line or a status, and that
odd answers (huge, deep, wrongly typed, expired, redirected, dripped) are refused in time."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

from lockgate.config import LockgateConfig
from lockgate.config.credentials import VaultKvCredential
from lockgate.credentials import CredentialBroker, CredentialStore
from lockgate.credentials.vaults import Fetched, VaultHeldSecret
from lockgate.demo.standins.entra import EntraTrust, FakeEntra
from lockgate.demo.standins.entra import start as start_entra
from lockgate.demo.standins.key_vault import FakeKeyVault
from lockgate.demo.standins.key_vault import start as start_key_vault
from lockgate.demo.standins.vault import FakeVault
from lockgate.demo.standins.vault import start as start_vault
from lockgate.errors import CredentialError

APP_SECRET = "gw-app-secret-value"
ROLE_ID = "5f1c2a0e-7d3b-4c1e-9a8f-2b6d4e0c1a93"
SECRET_ID = "c0ffee00-1234-4bcd-8ef0-a1b2c3d4e5f6"
VAULT_TOKEN = "s.Qx7Yb2Zk9Wm4Np1Rt6Vc3Hd8"  # an old-style Vault token: short, dotted
VALUE = "the-upstream-secret-value"

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@dataclass
class Hostile:
    """One HTTP server answering whatever the test scripts, recording what it was sent."""

    url: str = ""
    routes: dict[str, Handler] = field(default_factory=dict)
    seen: list[tuple[str, dict[str, str]]] = field(default_factory=list)

    async def dispatch(self, request: web.Request) -> web.StreamResponse:
        self.seen.append((request.path, dict(request.headers)))
        for prefix, handler in self.routes.items():
            if request.path.startswith(prefix):
                return await handler(request)
        return web.json_response({"errors": ["no handler"]}, status=404)


async def _serve(hostile: Hostile) -> web.AppRunner:
    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", hostile.dispatch)
    runner = web.AppRunner(app, access_log=None, handler_cancellation=True)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    hostile.url = f"http://127.0.0.1:{runner.addresses[0][1]}"
    return runner


@pytest.fixture
async def hostile() -> AsyncIterator[Hostile]:
    h = Hostile()
    runner = await _serve(h)
    yield h
    await runner.cleanup()


@pytest.fixture
async def elsewhere() -> AsyncIterator[Hostile]:
    """Another host a redirect may point at."""
    h = Hostile()
    runner = await _serve(h)
    yield h
    await runner.cleanup()


@pytest.fixture
async def entra() -> AsyncIterator[FakeEntra]:
    e = FakeEntra()
    e.client_secrets["gw-app"] = {APP_SECRET}
    runner = await start_entra(e)
    yield e
    await runner.cleanup()


def _key_vault_broker(
    tmp_path: Path, entra: FakeEntra, vault_url: str, clock: Callable[[], float] = time.time,
    **kv: Any,
) -> CredentialBroker:  # fmt: skip
    config = LockgateConfig.model_validate({
        "data_dir": str(tmp_path),
        "resources": [{"name": "orders-api", "kind": "http", "upstream": "http://127.0.0.1:1",
                       "credential": "orders-key"}],
        "credentials": [
            {"name": "kv-reader", "type": "oauth2_client_credentials",
             "token_url": entra.token_url, "client_id": "gw-app",
             "scope": "https://vault.azure.net/.default"},
            {"name": "orders-key", "type": "azure_key_vault", "vault_url": vault_url,
             "secret": "orders-api-key", "identity": "kv-reader", "timeout": 2.0, **kv},
        ],
    })  # fmt: skip
    store = CredentialStore(tmp_path / "c.db", b"k" * 32)
    store.set("kv-reader", APP_SECRET)
    return CredentialBroker(config, store, clock=clock)


def _vault_broker(
    tmp_path: Path, address: str, clock: Callable[[], float] = time.time, **kv: Any
) -> CredentialBroker:
    secret_id_file = tmp_path / "secret-id"
    secret_id_file.write_text(SECRET_ID)
    config = LockgateConfig.model_validate({
        "data_dir": str(tmp_path),
        "resources": [{"name": "orders-api", "kind": "http", "upstream": "http://127.0.0.1:1",
                       "credential": "orders-key"}],
        "credentials": [{"name": "orders-key", "type": "vault_kv", "address": address,
                         "path": "orders/api", "timeout": 2.0,
                         "auth": {"method": "approle", "role_id": ROLE_ID,
                                  "secret_id_file": str(secret_id_file)}, **kv}],
    })  # fmt: skip
    return CredentialBroker(config, CredentialStore(tmp_path / "c.db", b"k" * 32), clock=clock)


def _bearer_of(request: web.Request) -> str:
    return request.headers.get("Authorization", "").removeprefix("Bearer ")


def _kv_answer(data: object, version: object = 1) -> dict[str, Any]:
    return {"data": {"data": data, "metadata": {"version": version}}}


async def _vault_login(request: web.Request) -> web.Response:
    return web.json_response(
        {"auth": {"client_token": VAULT_TOKEN, "lease_duration": 3600, "renewable": True}}
    )


def _everything_said(broker: CredentialBroker, caplog: pytest.LogCaptureFixture) -> str:
    """Errors, logs and what `creds list` / readiness show of the credential."""
    status = broker.vault_status()["orders-key"]
    stored = broker._store.fetches().get("orders-key", ("", "", 0.0))
    return "\n".join(
        [caplog.text, str(status.error), str(status.vault_version), stored[1]]
        + [json.dumps(getattr(r, "fields", {})) for r in caplog.records]
    )


# -- secrets echoed back ------------------------------------------------------------------
async def test_a_vault_echoing_the_secret_id_role_id_and_token_in_errors_is_not_repeated(
    tmp_path: Path, hostile: Hostile, caplog: pytest.LogCaptureFixture
) -> None:
    async def login_refused(request: web.Request) -> web.Response:
        sent = await request.json()
        return web.json_response(
            {"errors": [sent["secret_id"], sent["role_id"], "invalid role or secret ID"]},
            status=400,
        )

    hostile.routes["/v1/auth/approle/login"] = login_refused
    broker = _vault_broker(tmp_path, hostile.url)
    caplog.set_level(logging.DEBUG)
    try:
        with pytest.raises(CredentialError) as err:
            await broker.upstream_secret("orders-key")
        said = str(err.value) + _everything_said(broker, caplog)
        assert "invalid role or secret ID" in str(err.value)  # a plain message is kept
        assert SECRET_ID not in said and ROLE_ID not in said

        async def read_refused(request: web.Request) -> web.Response:
            token = request.headers["X-Vault-Token"]
            return web.json_response({"errors": [token, f"bad token {token}"]}, status=500)

        hostile.routes["/v1/auth/approle/login"] = _vault_login
        hostile.routes["/v1/secret/data/"] = read_refused
        broker._vaults.clear()
        with pytest.raises(CredentialError) as err:
            await broker.upstream_secret("orders-key")
        said = str(err.value) + _everything_said(broker, caplog)
        assert "HTTP 500" in str(err.value) and VAULT_TOKEN not in said
    finally:
        await broker.close()


async def test_field_names_and_version_of_a_hostile_answer_carry_no_token(
    tmp_path: Path, hostile: Hostile, caplog: pytest.LogCaptureFixture
) -> None:
    async def read(request: web.Request) -> web.Response:
        token = request.headers["X-Vault-Token"]
        return web.json_response(_kv_answer({token: "x", "username": "svc"}))

    hostile.routes["/v1/auth/approle/login"] = _vault_login
    hostile.routes["/v1/secret/data/"] = read
    broker = _vault_broker(tmp_path, hostile.url)
    caplog.set_level(logging.DEBUG)
    try:
        with pytest.raises(CredentialError) as err:
            await broker.upstream_secret("orders-key")
        assert "username" in str(err.value)  # what fields there are still helps
        assert VAULT_TOKEN not in str(err.value) + _everything_said(broker, caplog)

        async def version_is_the_token(request: web.Request) -> web.Response:
            return web.json_response(_kv_answer({"value": VALUE}, request.headers["X-Vault-Token"]))

        hostile.routes["/v1/secret/data/"] = version_is_the_token
        broker._vaults.clear()
        secret = await broker.upstream_secret("orders-key")
        assert secret is not None and secret.value == VALUE
        said = _everything_said(broker, caplog)
        assert VAULT_TOKEN not in said and VALUE not in said
    finally:
        await broker.close()


async def test_key_vault_echoing_the_bearer_in_a_challenge_or_error_is_not_repeated(
    tmp_path: Path, hostile: Hostile, entra: FakeEntra, caplog: pytest.LogCaptureFixture
) -> None:
    bearers: list[str] = []

    async def challenge_echo(request: web.Request) -> web.Response:
        bearers.append(_bearer_of(request))
        return web.json_response(
            {"error": {"code": "Unauthorized", "message": bearers[-1]}},
            status=401,
            headers={"WWW-Authenticate": f'Bearer authorization="https://login.example/t", '
                     f'resource="https://{bearers[-1]}.example"'},
        )  # fmt: skip

    hostile.routes["/secrets/"] = challenge_echo
    broker = _key_vault_broker(tmp_path, entra, hostile.url)
    caplog.set_level(logging.DEBUG)
    try:
        with pytest.raises(CredentialError, match="Key Vault asks for a token for another") as err:
            await broker.upstream_secret("orders-key")
        said = str(err.value) + _everything_said(broker, caplog)
        assert bearers and all(b and b not in said for b in bearers)
        # No token for another audience was ever asked of Entra ID.
        assert {r.form.get("scope") for r in entra.token_requests} == {
            "https://vault.azure.net/.default"
        }

        async def error_echo(request: web.Request) -> web.Response:
            bearer = _bearer_of(request)
            bearers.append(bearer)
            short = bearer[:60]  # a code too short to be ruled out by its length alone
            return web.json_response(
                {"error": {"code": short, "innererror": {"code": bearer}}}, status=403
            )

        hostile.routes["/secrets/"] = error_echo
        broker._vaults.clear()
        with pytest.raises(CredentialError, match="HTTP 403") as err:
            await broker.upstream_secret("orders-key")
        said = str(err.value) + _everything_said(broker, caplog)
        assert all(b[:60] not in said for b in bearers)
    finally:
        await broker.close()


# -- hostile answers ----------------------------------------------------------------------
BIG = 100 * 1024 * 1024


def _huge(sent: list[int]) -> Handler:
    """200 with a 100 MB JSON body, streamed; ``sent`` counts what went out."""

    async def answer(request: web.Request) -> web.StreamResponse:
        resp = web.StreamResponse(status=200, headers={"Content-Type": "application/json"})
        resp.enable_chunked_encoding()
        await resp.prepare(request)
        chunk = b" " * (1024 * 1024)
        with contextlib.suppress(ConnectionError, asyncio.CancelledError):
            await resp.write(b'{"value": "')
            while sent[0] < BIG:
                await resp.write(chunk)
                sent[0] += len(chunk)
            await resp.write(b'", "id": "x"}')
            await resp.write_eof()
        return resp

    return answer


@pytest.mark.parametrize("kind", ["key_vault", "vault_kv"])
async def test_a_100_mb_answer_is_cut_short_not_read_whole(
    tmp_path: Path, hostile: Hostile, entra: FakeEntra, kind: str
) -> None:
    sent = [0]
    huge = _huge(sent)
    if kind == "key_vault":
        hostile.routes["/secrets/"] = huge
        broker = _key_vault_broker(tmp_path, entra, hostile.url, timeout=20.0)
    else:
        hostile.routes["/v1/auth/approle/login"] = _vault_login
        hostile.routes["/v1/secret/data/"] = huge
        broker = _vault_broker(tmp_path, hostile.url, timeout=20.0)
    try:
        with pytest.raises(CredentialError, match="answer is larger than"):
            await broker.upstream_secret("orders-key")
        await asyncio.sleep(0.2)
        assert sent[0] < 32 * 1024 * 1024  # read no further than the cap (and buffers)
    finally:
        await broker.close()


async def test_a_deep_or_wrongly_typed_vault_answer_is_refused_plainly(
    tmp_path: Path, hostile: Hostile, caplog: pytest.LogCaptureFixture
) -> None:
    answers: list[tuple[bytes, str]] = [
        (b'{"data": ' * 100_000 + b"1" + b"}" * 100_000, "holds no data"),
        (json.dumps(_kv_answer({"value": 12345})).encode(), "no string field 'value'"),
        (json.dumps(_kv_answer({"value": [VALUE]})).encode(), "no string field 'value'"),
        (json.dumps({"data": {"metadata": {"version": 3}}}).encode(), "holds no data"),
        (json.dumps({"data": [VALUE]}).encode(), "holds no data"),
        (b"[]", "holds no data"),
        (b"not json " + VALUE.encode(), "holds no data"),
    ]
    body: list[bytes] = []

    async def read(request: web.Request) -> web.Response:
        return web.Response(body=body[0], content_type="application/json")

    hostile.routes["/v1/auth/approle/login"] = _vault_login
    hostile.routes["/v1/secret/data/"] = read
    broker = _vault_broker(tmp_path, hostile.url)
    caplog.set_level(logging.DEBUG)
    try:
        for answer, said in answers:
            body[:] = [answer]
            broker._vaults.clear()
            with pytest.raises(CredentialError, match=said) as err:
                await broker.upstream_secret("orders-key")
            assert VALUE not in str(err.value) + caplog.text
        # A version said as a string, a float or a bool: the value is used, the version
        # shown only when it is a plain number.
        for version, shown in (("7", "7"), (7.5, ""), (True, ""), ([1], ""), (-1, "")):
            body[:] = [json.dumps(_kv_answer({"value": VALUE}, version)).encode()]
            broker._vaults.clear()
            secret = await broker.upstream_secret("orders-key")
            assert secret is not None and secret.value == VALUE
            assert broker.vault_status()["orders-key"].vault_version == shown
    finally:
        await broker.close()


@pytest.mark.parametrize("kind", ["key_vault", "vault_kv"])
async def test_a_redirect_elsewhere_is_not_followed_and_carries_no_token(
    tmp_path: Path, hostile: Hostile, elsewhere: Hostile, entra: FakeEntra, kind: str
) -> None:
    async def redirect(request: web.Request) -> web.Response:
        target = elsewhere.url.replace("127.0.0.1", "localhost") + request.path_qs
        raise web.HTTPTemporaryRedirect(target)

    async def leaked(request: web.Request) -> web.Response:
        return web.json_response(_kv_answer({"value": VALUE}) | {"value": VALUE, "id": "x/1"})

    elsewhere.routes["/"] = leaked
    if kind == "key_vault":
        hostile.routes["/secrets/"] = redirect
        broker = _key_vault_broker(tmp_path, entra, hostile.url)
    else:
        hostile.routes["/v1/auth/approle/login"] = redirect
        broker = _vault_broker(tmp_path, hostile.url)
    try:
        with pytest.raises(CredentialError, match="HTTP 307"):
            await broker.upstream_secret("orders-key")
        if kind == "vault_kv":  # the login answered; the read is redirected
            hostile.routes["/v1/auth/approle/login"] = _vault_login
            hostile.routes["/v1/secret/data/"] = redirect
            broker._vaults.clear()
            with pytest.raises(CredentialError, match="HTTP 307"):
                await broker.upstream_secret("orders-key")
        assert elsewhere.seen == []  # neither bearer, token nor secret id went elsewhere
    finally:
        await broker.close()


@pytest.mark.parametrize("kind", ["key_vault", "vault_kv"])
async def test_a_vault_dripping_its_answer_is_given_up_on_at_the_timeout(
    tmp_path: Path, hostile: Hostile, entra: FakeEntra, kind: str
) -> None:
    async def drip(request: web.Request) -> web.StreamResponse:
        resp = web.StreamResponse(status=200, headers={"Content-Type": "application/json"})
        resp.enable_chunked_encoding()
        await resp.prepare(request)
        with contextlib.suppress(ConnectionError, asyncio.CancelledError):
            for _ in range(60):
                await resp.write(b" ")
                await asyncio.sleep(0.1)
        return resp

    if kind == "key_vault":
        hostile.routes["/secrets/"] = drip
        broker = _key_vault_broker(tmp_path, entra, hostile.url, timeout=1.0)
    else:
        hostile.routes["/v1/auth/approle/login"] = drip
        broker = _vault_broker(tmp_path, hostile.url, timeout=1.0)
    try:
        started = time.monotonic()
        with pytest.raises(CredentialError, match=r"did not answer|unreachable"):
            await broker.upstream_secret("orders-key")
        assert time.monotonic() - started < 2.5
    finally:
        await broker.close()


# -- values the vault takes back ------------------------------------------------------------
class Clock:
    def __init__(self) -> None:
        self.offset = 0.0

    def __call__(self) -> float:
        return time.time() + self.offset


@pytest.fixture
async def key_vault(entra: FakeEntra) -> AsyncIterator[FakeKeyVault]:
    vault = FakeKeyVault(EntraTrust.of(entra), tenant=entra.tenant)
    runner = await start_key_vault(vault)
    yield vault
    await runner.cleanup()


async def test_an_expired_or_not_yet_valid_key_vault_secret_is_never_used(
    tmp_path: Path, entra: FakeEntra, key_vault: FakeKeyVault
) -> None:
    now = int(time.time())
    key_vault.set_secret("orders-api-key", "expired-key", expires=now - 60)
    broker = _key_vault_broker(tmp_path, entra, key_vault.base_url)
    try:
        with pytest.raises(CredentialError, match="expired at"):
            await broker.upstream_secret("orders-key")
        key_vault.set_secret("orders-api-key", "future-key", not_before=now + 3600)
        broker._vaults.clear()
        with pytest.raises(CredentialError, match="not valid before"):
            await broker.upstream_secret("orders-key")
        key_vault.set_secret("orders-api-key", "forever-key", expires=10**400)
        broker._vaults.clear()
        assert (await broker.upstream_secret("orders-key")).value == "forever-key"
    finally:
        await broker.close()


async def test_a_cached_value_is_not_used_past_its_expiry_nor_through_grace(
    tmp_path: Path, entra: FakeEntra, key_vault: FakeKeyVault
) -> None:
    clock = Clock()
    now = int(time.time())
    key_vault.set_secret("orders-api-key", "key-one", expires=now + 100)
    broker = _key_vault_broker(
        tmp_path, entra, key_vault.base_url, clock, ttl=300, grace=900, overlap=600
    )
    try:
        one = await broker.upstream_secret("orders-key")
        assert one is not None and one.value == "key-one"
        generation = broker.generation
        clock.offset = 101  # within ttl, past the version's exp
        with pytest.raises(CredentialError, match="has expired"):
            await broker.upstream_secret("orders-key")
        assert broker.generation != generation  # the engines' caches drop it at once
        assert await broker.upstream_secret("orders-key", previous=True) is None
        # A new version: used at the next refresh (RETRY_AFTER later).
        key_vault.set_secret("orders-api-key", "key-two")
        clock.offset = 110
        assert (await broker.upstream_secret("orders-key")).value == "key-two"
    finally:
        await broker.close()


async def test_a_version_disabled_in_key_vault_is_dropped_not_served_through_grace(
    tmp_path: Path, entra: FakeEntra, key_vault: FakeKeyVault
) -> None:
    clock = Clock()
    v1 = key_vault.set_secret("orders-api-key", "leaked-key")
    broker = _key_vault_broker(tmp_path, entra, key_vault.base_url, clock, ttl=60, grace=900)
    try:
        assert (await broker.upstream_secret("orders-key")).value == "leaked-key"
        key_vault.disable("orders-api-key", v1)  # the operator's answer to a leak
        clock.offset = 61
        with pytest.raises(CredentialError, match="disabled"):
            await broker.upstream_secret("orders-key")
        clock.offset = 62  # within RETRY_AFTER: still refused, never the cached value
        with pytest.raises(CredentialError, match="disabled"):
            await broker.upstream_secret("orders-key")
        # An outage, by contrast, serves the cached value through grace.
        key_vault.set_secret("orders-api-key", "new-key")
        clock.offset = 70
        assert (await broker.upstream_secret("orders-key")).value == "new-key"
        key_vault.available = False
        clock.offset = 70 + 61
        assert (await broker.upstream_secret("orders-key")).value == "new-key"
    finally:
        await broker.close()


async def test_a_deleted_or_destroyed_kv_version_is_dropped_not_served_through_grace(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    vault = FakeVault(policies={"read": [("secret/data/orders/*", {"read"})]})
    runner = await start_vault(vault)
    role_id, secret_id = vault.add_approle("gateway", policies=["read"])
    (tmp_path / "sid").write_text(secret_id)
    config = LockgateConfig.model_validate({
        "data_dir": str(tmp_path),
        "resources": [{"name": "orders-api", "kind": "http", "upstream": "http://127.0.0.1:1",
                       "credential": "orders-key"}],
        "credentials": [{"name": "orders-key", "type": "vault_kv", "address": vault.base_url,
                         "path": "orders/api", "ttl": 60, "grace": 900,
                         "auth": {"method": "approle", "role_id": role_id,
                                  "secret_id_file": str(tmp_path / "sid")}}],
    })  # fmt: skip
    clock = Clock()
    broker = CredentialBroker(config, CredentialStore(tmp_path / "c.db", b"k" * 32), clock=clock)
    try:
        vault.put("orders/api", {"value": "key-one"})
        assert (await broker.upstream_secret("orders-key")).value == "key-one"
        vault.delete("orders/api")
        clock.offset = 61
        with pytest.raises(CredentialError, match=r"version 1 .* was deleted in Vault"):
            await broker.upstream_secret("orders-key")
        assert "no longer used" in caplog.text
        vault.put("orders/api", {"value": "key-two"})
        clock.offset = 70
        assert (await broker.upstream_secret("orders-key")).value == "key-two"
        vault.destroy("orders/api", 2)
        clock.offset = 131
        with pytest.raises(CredentialError, match="was destroyed in Vault"):
            await broker.upstream_secret("orders-key")
    finally:
        await broker.close()
        await runner.cleanup()


# -- leases, namespaces, wrapping, rollback --------------------------------------------------
@pytest.mark.parametrize(
    "lease",
    [0, -5, 10 * 365 * 86400, 10**400, "3600", None],
    ids=["zero", "negative", "ten-years", "huge", "string", "null"],
)
async def test_any_lease_a_login_answers_leaves_the_reader_working(
    tmp_path: Path, hostile: Hostile, lease: object
) -> None:
    logins: list[int] = []

    async def login(request: web.Request) -> web.Response:
        logins.append(1)
        auth = {"client_token": VAULT_TOKEN, "lease_duration": lease, "renewable": True}
        text = json.dumps({"auth": auth})  # 10**400 too: JSON has no limit
        return web.Response(text=text, content_type="application/json")

    reads: list[str] = []

    async def read(request: web.Request) -> web.Response:
        reads.append(request.headers["X-Vault-Token"])
        return web.json_response(_kv_answer({"value": VALUE}))

    hostile.routes["/v1/auth/approle/login"] = login
    hostile.routes["/v1/secret/data/"] = read
    clock = Clock()
    broker = _vault_broker(tmp_path, hostile.url, clock, ttl=60)
    try:
        for step in range(3):
            clock.offset = step * 61
            assert (await broker.upstream_secret("orders-key")).value == VALUE
        assert reads == [VAULT_TOKEN] * 3 and len(logins) == 1
    finally:
        await broker.close()


@pytest.mark.parametrize(
    "namespace", ["team-a\r\nX-Vault-Token: stolen", "team-a\nX", "a b", "team-a/../root", ""]
)
def test_a_namespace_that_would_inject_a_header_is_refused_at_load(namespace: str) -> None:
    with pytest.raises(ValueError, match="namespace"):
        LockgateConfig.model_validate({
            "credentials": [{"name": "k", "type": "vault_kv", "address": "http://127.0.0.1:8200",
                             "path": "a/b", "namespace": namespace,
                             "auth": {"method": "approle", "role_id": "r"}}],
        })  # fmt: skip


@pytest.mark.parametrize(
    ("key", "value"), [("path", "orders/../../sys/raw"), ("mount", "secret/.."), ("path", "./a")]
)
def test_a_mount_or_path_pointing_elsewhere_is_refused_at_load(key: str, value: str) -> None:
    with pytest.raises(ValueError, match=key):
        LockgateConfig.model_validate({
            "credentials": [{"name": "k", "type": "vault_kv", "address": "http://127.0.0.1:8200",
                             "path": "a/b", key: value,
                             "auth": {"method": "approle", "role_id": "r"}}],
        })  # fmt: skip
    with pytest.raises(ValueError, match="mount"):  # the login's auth mount too
        LockgateConfig.model_validate({
            "credentials": [{"name": "k", "type": "vault_kv", "address": "http://127.0.0.1:8200",
                             "path": "a/b", "auth": {"method": "jwt", "role": "r",
                                                     "audience": "a", "mount": "jwt/../.."}}],
        })  # fmt: skip


def test_plain_namespaces_are_accepted() -> None:
    for namespace in ("team-a", "admin/team-a", "admin/team_a.b/", "ns1"):
        LockgateConfig.model_validate({
            "credentials": [{"name": "k", "type": "vault_kv", "address": "http://127.0.0.1:8200",
                             "path": "a/b", "namespace": namespace,
                             "auth": {"method": "approle", "role_id": "r"}}],
        })  # fmt: skip


async def test_a_wrapped_answer_is_named_and_its_wrapping_token_never_repeated(
    tmp_path: Path, hostile: Hostile, caplog: pytest.LogCaptureFixture
) -> None:
    wrapping_token = "hvs.CAESIWrapWrapWrapWrapWrapWrap1234567890abcdef"
    wrap_info = {"token": wrapping_token, "accessor": "acc1234567890abcdefXYZ", "ttl": 300,
                 "creation_path": "secret/data/orders/api"}  # fmt: skip

    async def wrapped(request: web.Request) -> web.Response:
        return web.json_response({"data": None, "auth": None, "wrap_info": wrap_info})

    hostile.routes["/v1/auth/approle/login"] = wrapped
    broker = _vault_broker(tmp_path, hostile.url)
    caplog.set_level(logging.DEBUG)
    try:
        with pytest.raises(CredentialError, match="response-wrapped") as err:
            await broker.upstream_secret("orders-key")
        assert wrapping_token not in str(err.value) + _everything_said(broker, caplog)
        hostile.routes["/v1/auth/approle/login"] = _vault_login
        hostile.routes["/v1/secret/data/"] = wrapped
        broker._vaults.clear()
        with pytest.raises(CredentialError, match="response-wrapped") as err:
            await broker.upstream_secret("orders-key")
        assert wrapping_token not in str(err.value) + _everything_said(broker, caplog)
    finally:
        await broker.close()


async def test_a_vault_rolled_back_to_an_older_version_is_used_but_said_loudly(
    tmp_path: Path, hostile: Hostile, caplog: pytest.LogCaptureFixture
) -> None:
    answer = [("key-one", 1)]

    async def read(request: web.Request) -> web.Response:
        value, version = answer[0]
        return web.json_response(_kv_answer({"value": value}, version))

    hostile.routes["/v1/auth/approle/login"] = _vault_login
    hostile.routes["/v1/secret/data/"] = read
    clock = Clock()
    broker = _vault_broker(tmp_path, hostile.url, clock, ttl=60, overlap=120)
    caplog.set_level(logging.INFO)
    try:
        assert (await broker.upstream_secret("orders-key")).value == "key-one"
        answer[0] = ("key-two", 2)
        clock.offset = 61
        assert (await broker.upstream_secret("orders-key")).value == "key-two"
        assert "went back" not in caplog.text
        answer[0] = ("key-one", 1)  # a restored snapshot: the revoked value, an older version
        clock.offset = 122
        assert (await broker.upstream_secret("orders-key")).value == "key-one"
        back = [r for r in caplog.records if "went back" in r.getMessage()]
        assert back and back[0].levelno == logging.WARNING
        fields = back[0].fields  # type: ignore[attr-defined]
        assert fields["vault_version"] == "1" and fields["previous_vault_version"] == "2"
        assert "key-one" not in caplog.text and "key-two" not in caplog.text
    finally:
        await broker.close()


# -- errors that are not the vault's words ---------------------------------------------------
@pytest.mark.parametrize("ca", ["missing.pem", "garbage.pem", "fifo.pem"])
async def test_an_unusable_ca_file_is_a_credential_error_not_a_crash(
    tmp_path: Path, hostile: Hostile, ca: str
) -> None:
    (tmp_path / "garbage.pem").write_text("not a certificate")
    os.mkfifo(tmp_path / "fifo.pem")  # opened for reading, it would wait for a writer
    threading.Thread(target=_unblock, args=(tmp_path / "fifo.pem",), daemon=True).start()
    broker = _vault_broker(tmp_path, hostile.url, ca_file=str(tmp_path / ca))
    try:
        with pytest.raises(CredentialError, match="cannot use ca_file"):
            await broker.upstream_secret("orders-key")
        assert broker.vault_status()["orders-key"].error is not None
    finally:
        await broker.close()


async def test_an_unexpected_failure_of_a_fetch_is_a_credential_error_naming_no_text(
    caplog: pytest.LogCaptureFixture,
) -> None:
    async def broken() -> Fetched:
        raise ValueError(f"cannot parse {VALUE!r}")  # a library's text may hold anything

    cfg = VaultKvCredential.model_validate({
        "name": "k", "type": "vault_kv", "address": "http://127.0.0.1:8200", "path": "a/b",
        "auth": {"method": "approle", "role_id": "r"},
    })  # fmt: skip
    held = VaultHeldSecret(cfg, broken)
    with pytest.raises(CredentialError, match=r"reading the vault failed \(ValueError\)") as err:
        await held.get()
    assert VALUE not in str(err.value) + caplog.text + str(held.status())
    # Nor in the chain a traceback would print.
    cause: BaseException | None = err.value
    while cause is not None:
        assert VALUE not in str(cause)
        cause = cause.__cause__ or (None if cause.__suppress_context__ else cause.__context__)


async def test_upstream_refusals_never_stretch_the_overlap(
    tmp_path: Path, hostile: Hostile
) -> None:
    answer = [("key-one", 1)]

    async def read(request: web.Request) -> web.Response:
        value, version = answer[0]
        return web.json_response(_kv_answer({"value": value}, version))

    hostile.routes["/v1/auth/approle/login"] = _vault_login
    hostile.routes["/v1/secret/data/"] = read
    clock = Clock()
    broker = _vault_broker(tmp_path, hostile.url, clock, ttl=60, overlap=120)
    try:
        await broker.upstream_secret("orders-key")
        answer[0] = ("key-two", 2)
        clock.offset = 61
        new = await broker.upstream_secret("orders-key")
        assert new is not None and new.value == "key-two"
        # A task provoking upstream 401s with the new key at every step: the old key is
        # offered until 120 s after the rotation was seen, never later.
        for offset in range(61, 61 + 300, 10):
            clock.offset = offset
            current = await broker.upstream_secret("orders-key")
            assert current is not None and current.value == "key-two"
            fallback = await broker.fallback_secret("orders-key", current)
            older = await broker.upstream_secret("orders-key", previous=True)
            inside = offset < 61 + 120
            assert (fallback is not None) is inside and (older is not None) is inside
            if fallback is not None:
                assert fallback.value == "key-one"
                # The old key refused too: nothing further back is offered.
                assert await broker.fallback_secret("orders-key", fallback) is None
    finally:
        await broker.close()


async def test_a_jwt_role_named_in_vaults_refusal_is_still_said(
    tmp_path: Path, hostile: Hostile
) -> None:
    jwts: list[str] = []

    async def login(request: web.Request) -> web.Response:
        sent = await request.json()
        jwts.append(sent["jwt"])
        return web.json_response(
            {"errors": [f'role "{sent["role"]}" could not be found', sent["jwt"][:40]]},
            status=400,
        )

    hostile.routes["/v1/auth/jwt/login"] = login
    config = LockgateConfig.model_validate({
        "data_dir": str(tmp_path), "issuer": "https://lockgate.example",
        "resources": [{"name": "orders-api", "kind": "http", "upstream": "http://127.0.0.1:1",
                       "credential": "orders-key"}],
        "credentials": [{"name": "orders-key", "type": "vault_kv", "address": hostile.url,
                         "path": "orders/api",
                         "auth": {"method": "jwt", "role": "lockgate-gw", "audience": "v"}}],
    })  # fmt: skip

    def sign(claims: dict[str, Any], alg: str) -> str:
        return "eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiJsb2NrZ2F0ZSJ9.c2lnbmF0dXJlc2lnbmF0dXJl"

    broker = CredentialBroker(
        config, CredentialStore(tmp_path / "c.db", b"k" * 32), assertion_signer=sign
    )
    try:
        with pytest.raises(CredentialError, match='role "lockgate-gw" could not be found') as err:
            await broker.upstream_secret("orders-key")
        assert jwts and jwts[0][:40] not in str(err.value)
    finally:
        await broker.close()


def _unblock(fifo: Path, data: bytes = b"") -> None:
    """Open ``fifo`` for writing a little later: a reader the code under test should never
    have started is let go (the test fails instead of hanging)."""
    time.sleep(1.5)
    with contextlib.suppress(OSError):
        fd = os.open(fifo, os.O_WRONLY | os.O_NONBLOCK)
        os.write(fd, data)
        os.close(fd)


async def test_a_fifo_or_huge_secret_id_file_neither_holds_the_loop_nor_memory(
    tmp_path: Path, hostile: Hostile
) -> None:
    hostile.routes["/v1/auth/approle/login"] = _vault_login
    broker = _vault_broker(tmp_path, hostile.url)
    fifo = tmp_path / "secret-id"
    fifo.unlink()
    os.mkfifo(fifo)

    writer = threading.Thread(target=_unblock, args=(fifo, SECRET_ID.encode()), daemon=True)
    writer.start()
    try:
        started = time.monotonic()
        with pytest.raises(CredentialError, match="not a regular file"):
            await broker.upstream_secret("orders-key")
        assert time.monotonic() - started < 1.0
        fifo.unlink()
        fifo.write_bytes(b"x" * (10 * 1024 * 1024))
        broker._vaults.clear()
        with pytest.raises(CredentialError, match="larger than 4096 bytes"):
            await broker.upstream_secret("orders-key")
    finally:
        writer.join(3)
        await broker.close()
