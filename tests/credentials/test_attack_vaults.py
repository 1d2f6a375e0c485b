"""Attacks on vault-held upstream secrets: a hostile or broken Key Vault / Vault answering
through the real broker (an Entra ID stand-in hands out Key Vault's bearer tokens), checking
that no token, secret id, role id or value reaches an error, a log line or a status, and that
odd answers (huge, deep, wrongly typed, redirected, dripped) and odd local files are refused
in time."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

from lockgate.config import LockgateConfig
from lockgate.config.credentials import VaultKvCredential
from lockgate.credentials import CredentialBroker, CredentialStore
from lockgate.credentials.vaults import Fetched, VaultHeldSecret
from lockgate.demo.standins.entra import FakeEntra
from lockgate.errors import CredentialError
from tests.credentials._hostile_vault import (
    ROLE_ID,
    SECRET_ID,
    VALUE,
    VAULT_TOKEN,
    Handler,
    Hostile,
    bearer_of,
    everything_said,
    key_vault_broker,
    kv_answer,
    unblock,
    vault_broker,
    vault_login,
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
    broker = vault_broker(tmp_path, hostile.url)
    caplog.set_level(logging.DEBUG)
    try:
        with pytest.raises(CredentialError) as err:
            await broker.upstream_secret("orders-key")
        said = str(err.value) + everything_said(broker, caplog)
        assert "invalid role or secret ID" in str(err.value)  # a plain message is kept
        assert SECRET_ID not in said and ROLE_ID not in said

        async def read_refused(request: web.Request) -> web.Response:
            token = request.headers["X-Vault-Token"]
            return web.json_response({"errors": [token, f"bad token {token}"]}, status=500)

        hostile.routes["/v1/auth/approle/login"] = vault_login
        hostile.routes["/v1/secret/data/"] = read_refused
        broker._vaults.clear()
        with pytest.raises(CredentialError) as err:
            await broker.upstream_secret("orders-key")
        said = str(err.value) + everything_said(broker, caplog)
        assert "HTTP 500" in str(err.value) and VAULT_TOKEN not in said
    finally:
        await broker.close()


async def test_field_names_and_version_of_a_hostile_answer_carry_no_token(
    tmp_path: Path, hostile: Hostile, caplog: pytest.LogCaptureFixture
) -> None:
    async def read(request: web.Request) -> web.Response:
        token = request.headers["X-Vault-Token"]
        return web.json_response(kv_answer({token: "x", "username": "svc"}))

    hostile.routes["/v1/auth/approle/login"] = vault_login
    hostile.routes["/v1/secret/data/"] = read
    broker = vault_broker(tmp_path, hostile.url)
    caplog.set_level(logging.DEBUG)
    try:
        with pytest.raises(CredentialError) as err:
            await broker.upstream_secret("orders-key")
        assert "username" in str(err.value)  # what fields there are still helps
        assert VAULT_TOKEN not in str(err.value) + everything_said(broker, caplog)

        async def many_fields(request: web.Request) -> web.Response:
            return web.json_response(kv_answer({f"field-{i:05}": "x" for i in range(20_000)}))

        hostile.routes["/v1/secret/data/"] = many_fields
        broker._vaults.clear()
        with pytest.raises(CredentialError, match="field-00009, 19990 more") as err:
            await broker.upstream_secret("orders-key")
        assert len(str(err.value)) < 500
        hostile.routes["/v1/secret/data/"] = read

        async def version_is_the_token(request: web.Request) -> web.Response:
            return web.json_response(kv_answer({"value": VALUE}, request.headers["X-Vault-Token"]))

        hostile.routes["/v1/secret/data/"] = version_is_the_token
        broker._vaults.clear()
        secret = await broker.upstream_secret("orders-key")
        assert secret is not None and secret.value == VALUE
        said = everything_said(broker, caplog)
        assert VAULT_TOKEN not in said and VALUE not in said
    finally:
        await broker.close()


async def test_key_vault_echoing_the_bearer_in_a_challenge_or_error_is_not_repeated(
    tmp_path: Path, hostile: Hostile, entra: FakeEntra, caplog: pytest.LogCaptureFixture
) -> None:
    bearers: list[str] = []

    async def challenge_echo(request: web.Request) -> web.Response:
        bearers.append(bearer_of(request))
        return web.json_response(
            {"error": {"code": "Unauthorized", "message": bearers[-1]}},
            status=401,
            headers={"WWW-Authenticate": f'Bearer authorization="https://login.example/t", '
                     f'resource="https://{bearers[-1]}.example"'},
        )  # fmt: skip

    hostile.routes["/secrets/"] = challenge_echo
    broker = key_vault_broker(tmp_path, entra, hostile.url)
    caplog.set_level(logging.DEBUG)
    try:
        with pytest.raises(CredentialError, match="Key Vault asks for a token for another") as err:
            await broker.upstream_secret("orders-key")
        said = str(err.value) + everything_said(broker, caplog)
        assert bearers and all(b and b not in said for b in bearers)
        # No token for another audience was ever asked of Entra ID.
        assert {r.form.get("scope") for r in entra.token_requests} == {
            "https://vault.azure.net/.default"
        }

        async def error_echo(request: web.Request) -> web.Response:
            bearer = bearer_of(request)
            bearers.append(bearer)
            short = bearer[:60]  # a code too short to be ruled out by its length alone
            return web.json_response(
                {"error": {"code": short, "innererror": {"code": bearer}}}, status=403
            )

        hostile.routes["/secrets/"] = error_echo
        broker._vaults.clear()
        with pytest.raises(CredentialError, match="HTTP 403") as err:
            await broker.upstream_secret("orders-key")
        said = str(err.value) + everything_said(broker, caplog)
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
        broker = key_vault_broker(tmp_path, entra, hostile.url, timeout=20.0)
    else:
        hostile.routes["/v1/auth/approle/login"] = vault_login
        hostile.routes["/v1/secret/data/"] = huge
        broker = vault_broker(tmp_path, hostile.url, timeout=20.0)
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
        (json.dumps(kv_answer({"value": 12345})).encode(), "no string field 'value'"),
        (json.dumps(kv_answer({"value": [VALUE]})).encode(), "no string field 'value'"),
        (json.dumps({"data": {"metadata": {"version": 3}}}).encode(), "holds no data"),
        (json.dumps({"data": [VALUE]}).encode(), "holds no data"),
        (b"[]", "holds no data"),
        (b"not json " + VALUE.encode(), "holds no data"),
    ]
    body: list[bytes] = []

    async def read(request: web.Request) -> web.Response:
        return web.Response(body=body[0], content_type="application/json")

    hostile.routes["/v1/auth/approle/login"] = vault_login
    hostile.routes["/v1/secret/data/"] = read
    broker = vault_broker(tmp_path, hostile.url)
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
            body[:] = [json.dumps(kv_answer({"value": VALUE}, version)).encode()]
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
        return web.json_response(kv_answer({"value": VALUE}) | {"value": VALUE, "id": "x/1"})

    elsewhere.routes["/"] = leaked
    if kind == "key_vault":
        hostile.routes["/secrets/"] = redirect
        broker = key_vault_broker(tmp_path, entra, hostile.url)
    else:
        hostile.routes["/v1/auth/approle/login"] = redirect
        broker = vault_broker(tmp_path, hostile.url)
    try:
        with pytest.raises(CredentialError, match="HTTP 307"):
            await broker.upstream_secret("orders-key")
        if kind == "vault_kv":  # the login answered; the read is redirected
            hostile.routes["/v1/auth/approle/login"] = vault_login
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
        broker = key_vault_broker(tmp_path, entra, hostile.url, timeout=1.0)
    else:
        hostile.routes["/v1/auth/approle/login"] = drip
        broker = vault_broker(tmp_path, hostile.url, timeout=1.0)
    try:
        started = time.monotonic()
        with pytest.raises(CredentialError, match=r"did not answer|unreachable"):
            await broker.upstream_secret("orders-key")
        assert time.monotonic() - started < 2.5
    finally:
        await broker.close()


# -- errors that are not the vault's words ---------------------------------------------------
@pytest.mark.parametrize("ca", ["missing.pem", "garbage.pem", "fifo.pem"])
async def test_an_unusable_ca_file_is_a_credential_error_not_a_crash(
    tmp_path: Path, hostile: Hostile, ca: str
) -> None:
    (tmp_path / "garbage.pem").write_text("not a certificate")
    os.mkfifo(tmp_path / "fifo.pem")  # opened for reading, it would wait for a writer
    threading.Thread(target=unblock, args=(tmp_path / "fifo.pem",), daemon=True).start()
    broker = vault_broker(tmp_path, hostile.url, ca_file=str(tmp_path / ca))
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


async def test_a_fifo_or_huge_secret_id_file_neither_holds_the_loop_nor_memory(
    tmp_path: Path, hostile: Hostile
) -> None:
    hostile.routes["/v1/auth/approle/login"] = vault_login
    broker = vault_broker(tmp_path, hostile.url)
    fifo = tmp_path / "secret-id"
    fifo.unlink()
    os.mkfifo(fifo)

    writer = threading.Thread(target=unblock, args=(fifo, SECRET_ID.encode()), daemon=True)
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


@pytest.mark.parametrize("kind", ["key_vault", "vault_kv"])
async def test_an_answer_for_another_version_than_the_pinned_one_is_not_used(
    tmp_path: Path, hostile: Hostile, entra: FakeEntra, kind: str
) -> None:
    async def latest(request: web.Request) -> web.Response:  # the pin ignored on the way
        return web.json_response(
            kv_answer({"value": VALUE}, 7)
            | {"value": VALUE, "id": f"{hostile.url}/secrets/orders-api-key/{'b' * 32}"}
        )

    if kind == "key_vault":
        hostile.routes["/secrets/"] = latest
        broker = key_vault_broker(tmp_path, entra, hostile.url, version="a" * 32)
    else:
        hostile.routes["/v1/auth/approle/login"] = vault_login
        hostile.routes["/v1/secret/data/"] = latest
        broker = vault_broker(tmp_path, hostile.url, version=3)
    try:
        with pytest.raises(CredentialError, match="answered another version"):
            await broker.upstream_secret("orders-key")
    finally:
        await broker.close()


async def test_a_challenge_naming_another_authority_gets_no_token_from_it(
    tmp_path: Path, hostile: Hostile, elsewhere: Hostile, entra: FakeEntra
) -> None:
    async def challenge(request: web.Request) -> web.Response:
        return web.json_response(
            {"error": {"code": "Unauthorized"}},
            status=401,
            headers={"WWW-Authenticate": f'Bearer authorization="{elsewhere.url}/other-tenant", '
                     'resource="https://vault.azure.net"'},
        )  # fmt: skip

    hostile.routes["/secrets/"] = challenge
    broker = key_vault_broker(tmp_path, entra, hostile.url)
    try:
        with pytest.raises(CredentialError, match="HTTP 401"):
            await broker.upstream_secret("orders-key")
        assert elsewhere.seen == []  # the named authority is never asked for anything
        assert len(hostile.seen) == 2  # one retry with a fresh token of our own, no more
        assert len(entra.token_requests) == 2
    finally:
        await broker.close()


async def test_key_vault_answering_with_another_secret_is_not_used(
    tmp_path: Path, hostile: Hostile, entra: FakeEntra
) -> None:
    ids: list[str] = []

    async def other(request: web.Request) -> web.Response:
        return web.json_response({"value": VALUE, "id": ids[0]})

    hostile.routes["/secrets/"] = other
    broker = key_vault_broker(tmp_path, entra, hostile.url)
    try:
        for wrong in ("/secrets/dev-api-key/" + "a" * 32, "/keys/orders-api-key/" + "a" * 32, "x"):
            ids[:] = [hostile.url + wrong]
            broker._vaults.clear()
            with pytest.raises(CredentialError, match="another secret than 'orders-api-key'"):
                await broker.upstream_secret("orders-key")
        ids[:] = [f"{hostile.url}/secrets/Orders-API-Key/{'a' * 32}"]  # names ignore case
        broker._vaults.clear()
        assert (await broker.upstream_secret("orders-key")).value == VALUE
    finally:
        await broker.close()


@pytest.mark.parametrize(
    "token",
    ["s.abc\r\nX-Injected: yes", "s.abc def", "", "x" * 5000],
    ids=["crlf", "space", "empty", "long"],
)
async def test_a_login_answering_a_token_unfit_for_a_header_is_refused(
    tmp_path: Path, hostile: Hostile, token: str
) -> None:
    async def login(request: web.Request) -> web.Response:
        return web.json_response({"auth": {"client_token": token, "lease_duration": 60}})

    hostile.routes["/v1/auth/approle/login"] = login
    broker = vault_broker(tmp_path, hostile.url)
    try:
        with pytest.raises(
            CredentialError, match=r"Vault refused the approle login \(auth/approle\) \(HTTP 200\)"
        ):
            await broker.upstream_secret("orders-key")
        assert [path for path, _ in hostile.seen] == ["/v1/auth/approle/login"]
    finally:
        await broker.close()


async def test_a_value_no_engine_could_encode_is_refused_by_the_vault_layer(
    tmp_path: Path, hostile: Hostile
) -> None:
    async def read(request: web.Request) -> web.Response:
        body = '{"data": {"data": {"value": "key\\ud800one"}, "metadata": {"version": 1}}}'
        return web.Response(text=body, content_type="application/json")

    hostile.routes["/v1/auth/approle/login"] = vault_login
    hostile.routes["/v1/secret/data/"] = read
    broker = vault_broker(tmp_path, hostile.url)
    try:
        with pytest.raises(CredentialError, match="not valid text"):
            await broker.upstream_secret("orders-key")
    finally:
        await broker.close()
