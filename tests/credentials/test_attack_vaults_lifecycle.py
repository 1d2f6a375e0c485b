"""Attacks on the life of a vault-held value: versions the vault takes back (disabled,
expired, deleted, destroyed), leases of any size, namespaces and paths that would point
elsewhere, wrapped answers, rollbacks, and an overlap that upstream refusals cannot stretch."""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path

import pytest
from aiohttp import web

from lockgate.config import LockgateConfig
from lockgate.credentials import CredentialBroker, CredentialStore
from lockgate.demo.standins.entra import FakeEntra
from lockgate.demo.standins.key_vault import FakeKeyVault
from lockgate.demo.standins.vault import FakeVault
from lockgate.demo.standins.vault import start as start_vault
from lockgate.errors import CredentialError
from tests.credentials._hostile_vault import (
    VALUE,
    VAULT_TOKEN,
    Clock,
    Hostile,
    everything_said,
    key_vault_broker,
    kv_answer,
    vault_broker,
    vault_login,
)


# -- values the vault takes back ------------------------------------------------------------
async def test_an_expired_or_not_yet_valid_key_vault_secret_is_never_used(
    tmp_path: Path, entra: FakeEntra, key_vault: FakeKeyVault
) -> None:
    now = int(time.time())
    key_vault.set_secret("orders-api-key", "expired-key", expires=now - 60)
    broker = key_vault_broker(tmp_path, entra, key_vault.base_url)
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
    broker = key_vault_broker(
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
        # A new version: used at the next refresh (RETRY_AFTER later), under a local version
        # number the withdrawn value never had (engines compare them).
        key_vault.set_secret("orders-api-key", "key-two")
        clock.offset = 110
        two = await broker.upstream_secret("orders-key")
        assert two is not None and two.value == "key-two" and two.version > one.version
    finally:
        await broker.close()


async def test_a_version_disabled_in_key_vault_is_dropped_not_served_through_grace(
    tmp_path: Path, entra: FakeEntra, key_vault: FakeKeyVault
) -> None:
    clock = Clock()
    v1 = key_vault.set_secret("orders-api-key", "leaked-key")
    broker = key_vault_broker(tmp_path, entra, key_vault.base_url, clock, ttl=60, grace=900)
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
        return web.json_response(kv_answer({"value": VALUE}))

    hostile.routes["/v1/auth/approle/login"] = login
    hostile.routes["/v1/secret/data/"] = read
    clock = Clock()
    broker = vault_broker(tmp_path, hostile.url, clock, ttl=60)
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
    broker = vault_broker(tmp_path, hostile.url)
    caplog.set_level(logging.DEBUG)
    try:
        with pytest.raises(CredentialError, match="response-wrapped") as err:
            await broker.upstream_secret("orders-key")
        assert wrapping_token not in str(err.value) + everything_said(broker, caplog)
        hostile.routes["/v1/auth/approle/login"] = vault_login
        hostile.routes["/v1/secret/data/"] = wrapped
        broker._vaults.clear()
        with pytest.raises(CredentialError, match="response-wrapped") as err:
            await broker.upstream_secret("orders-key")
        assert wrapping_token not in str(err.value) + everything_said(broker, caplog)
    finally:
        await broker.close()


async def test_a_vault_rolled_back_to_an_older_version_is_used_but_said_loudly(
    tmp_path: Path, hostile: Hostile, caplog: pytest.LogCaptureFixture
) -> None:
    answer = [("key-one", 1)]

    async def read(request: web.Request) -> web.Response:
        value, version = answer[0]
        return web.json_response(kv_answer({"value": value}, version))

    hostile.routes["/v1/auth/approle/login"] = vault_login
    hostile.routes["/v1/secret/data/"] = read
    clock = Clock()
    broker = vault_broker(tmp_path, hostile.url, clock, ttl=60, overlap=120)
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


async def test_upstream_refusals_never_stretch_the_overlap(
    tmp_path: Path, hostile: Hostile
) -> None:
    answer = [("key-one", 1)]

    async def read(request: web.Request) -> web.Response:
        value, version = answer[0]
        return web.json_response(kv_answer({"value": value}, version))

    hostile.routes["/v1/auth/approle/login"] = vault_login
    hostile.routes["/v1/secret/data/"] = read
    clock = Clock()
    broker = vault_broker(tmp_path, hostile.url, clock, ttl=60, overlap=120)
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
