"""A secret held in Azure Key Vault, read through the broker with the gateway's own Entra ID
token (client credentials against the test Entra ID), against the test Key Vault."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from lockgate.config import LockgateConfig
from lockgate.credentials import CredentialBroker, CredentialStore
from lockgate.credentials.key_vault import challenge, challenged_audience
from lockgate.demo.standins.entra import EntraTrust, FakeEntra
from lockgate.demo.standins.entra import start as start_entra
from lockgate.demo.standins.key_vault import FakeKeyVault
from lockgate.demo.standins.key_vault import start as start_key_vault
from lockgate.errors import CredentialError

APP_SECRET = "gw-app-secret-value"


@dataclass
class Azure:
    entra: FakeEntra
    vault: FakeKeyVault


@pytest.fixture
async def azure() -> AsyncIterator[Azure]:
    entra = FakeEntra()
    entra.client_secrets["gw-app"] = {APP_SECRET}
    entra_runner = await start_entra(entra)
    vault = FakeKeyVault(EntraTrust.of(entra), tenant=entra.tenant)
    vault_runner = await start_key_vault(vault)
    yield Azure(entra, vault)
    await vault_runner.cleanup()
    await entra_runner.cleanup()


def _config(tmp_path: Path, azure: Azure, **kv: Any) -> LockgateConfig:
    return LockgateConfig.model_validate({
        "data_dir": str(tmp_path),
        "resources": [{"name": "orders-api", "kind": "http", "upstream": "http://127.0.0.1:1",
                       "credential": "orders-key"}],
        "credentials": [
            {"name": "kv-reader", "type": "oauth2_client_credentials",
             "token_url": azure.entra.token_url, "client_id": "gw-app",
             "scope": "https://vault.azure.net/.default"},
            {"name": "orders-key", "type": "azure_key_vault", "vault_url": azure.vault.base_url,
             "secret": "orders-api-key", "identity": "kv-reader", **kv},
        ],
    })  # fmt: skip


def _broker(
    tmp_path: Path, config: LockgateConfig, clock: Callable[[], float] = time.time
) -> CredentialBroker:
    store = CredentialStore(tmp_path / "c.db", b"k" * 32)
    store.set("kv-reader", APP_SECRET)
    return CredentialBroker(config, store, clock=clock)


class Clock:
    def __init__(self) -> None:
        self.offset = 0.0

    def __call__(self) -> float:
        return time.time() + self.offset


async def test_reads_the_latest_version_and_follows_a_rotation(
    tmp_path: Path, azure: Azure
) -> None:
    v1 = azure.vault.set_secret("orders-api-key", "key-one")
    clock = Clock()
    broker = _broker(tmp_path, _config(tmp_path, azure, ttl=60, overlap=120), clock)
    try:
        first = await broker.upstream_secret("orders-key")
        assert first is not None and first.value == "key-one" and first.expires_at is None
        assert "key-one" not in repr(first)
        status = broker.vault_status()["orders-key"]
        assert status.vault_version == v1 and status.fetched_at is not None
        assert broker._store.fetches()["orders-key"][1] == v1  # for `creds list` elsewhere
        generation = broker.generation
        azure.vault.set_secret("orders-api-key", "key-two")
        assert (await broker.upstream_secret("orders-key")).value == "key-one"  # within ttl
        clock.offset = 61
        second = await broker.upstream_secret("orders-key")
        assert second.value == "key-two" and second.version == first.version + 1
        assert broker.generation != generation  # the engines' secret caches follow
        # An upstream 401 with the new key: the previous one is retried inside the overlap.
        fallback = await broker.fallback_secret("orders-key", second)
        assert fallback is not None and fallback.value == "key-one"
        assert (await broker.upstream_secret("orders-key", previous=True)).value == "key-one"
        clock.offset = 61 + 121
        assert await broker.fallback_secret("orders-key", second) is None
        # Every request carried a bearer token for Key Vault, never a secret.
        assert {r.status for r in azure.vault.requests} == {200}
        assert {r.appid for r in azure.vault.requests} == {"gw-app"}
    finally:
        await broker.close()


async def test_pinned_version(tmp_path: Path, azure: Azure) -> None:
    v1 = azure.vault.set_secret("orders-api-key", "key-one")
    azure.vault.set_secret("orders-api-key", "key-two")
    broker = _broker(tmp_path, _config(tmp_path, azure, version=v1))
    try:
        assert (await broker.upstream_secret("orders-key")).value == "key-one"
        assert azure.vault.requests[-1].path.endswith(f"/secrets/orders-api-key/{v1}")
    finally:
        await broker.close()


async def test_refusals_say_what_to_fix_and_never_a_secret(tmp_path: Path, azure: Azure) -> None:
    broker = _broker(tmp_path, _config(tmp_path, azure))
    try:
        with pytest.raises(CredentialError) as err:
            await broker.upstream_secret("orders-key")
        assert "HTTP 404, SecretNotFound" in str(err.value)
        azure.vault.set_secret("orders-api-key", "key-one")
        azure.vault.readers = {"someone-else"}
        broker._vaults.clear()
        with pytest.raises(CredentialError) as err:
            await broker.upstream_secret("orders-key")
        text = str(err.value)
        assert "HTTP 403, Forbidden, ForbiddenByRbac" in text and "Key Vault Secrets User" in text
        assert APP_SECRET not in text and "key-one" not in text
        status = broker.vault_status()["orders-key"]
        assert status.vault_version is None and status.error is not None
    finally:
        await broker.close()


async def test_a_firewall_or_access_policy_refusal_says_which(tmp_path: Path, azure: Azure) -> None:
    # Key Vault names the cause of a 403 in its inner error: ForbiddenByFirewall (the
    # client's address), AccessDenied (an access-policy vault), ForbiddenByRbac (a role).
    azure.vault.set_secret("orders-api-key", "key-one")
    azure.vault.allowed_addresses = {"10.1.2.3"}
    broker = _broker(tmp_path, _config(tmp_path, azure))
    try:
        with pytest.raises(CredentialError) as err:
            await broker.upstream_secret("orders-key")
        assert "(HTTP 403, Forbidden, ForbiddenByFirewall): the vault's firewall" in str(err.value)
        azure.vault.allowed_addresses = None
        azure.vault.access_policies = {"someone-else": {"get"}}
        broker._vaults.clear()
        with pytest.raises(CredentialError) as err:
            await broker.upstream_secret("orders-key")
        assert "(HTTP 403, Forbidden, AccessDenied): the vault uses access policies" in str(
            err.value
        )
        assert "key-one" not in str(err.value)
    finally:
        await broker.close()


async def test_a_refused_token_is_fetched_anew_once(tmp_path: Path, azure: Azure) -> None:
    azure.vault.set_secret("orders-api-key", "key-one")
    broker = _broker(tmp_path, _config(tmp_path, azure))
    try:
        await broker.upstream_secret("orders-key")
        tokens_before = azure.entra.token_calls
        # The vault can no longer check the tenant's tokens: the cached token is refused
        # (401), the broker drops it, gets a new one, is refused again, and says so.
        azure.vault.trust.keys.forget()
        azure.vault.trust.jwks_uri = "http://127.0.0.1:1/keys"
        broker._vaults.clear()
        with pytest.raises(CredentialError) as err:
            await broker.upstream_secret("orders-key")
        assert "HTTP 401" in str(err.value)
        assert azure.entra.token_calls == tokens_before + 1
    finally:
        await broker.close()


def test_challenge_parsing() -> None:
    params = challenge(
        'Bearer authorization="https://login.microsoftonline.com/t", resource="https://vault.azure.net"'
    )
    assert params["authorization"].endswith("/t")
    assert challenged_audience(params) == "https://vault.azure.net"
    assert challenged_audience(challenge('Bearer scope="https://vault.azure.net/.default"')) == (
        "https://vault.azure.net"
    )
    assert challenge("Basic realm=x") == {} and challenged_audience({}) is None


async def test_a_challenge_for_another_resource_says_which(tmp_path: Path, azure: Azure) -> None:
    azure.vault.set_secret("orders-api-key", "key-one")
    config = _config(tmp_path, azure)
    # The identity asks for China cloud Key Vault tokens; this vault wants the public one.
    reader = config.credentials[0].model_copy(update={"scope": "https://vault.azure.cn/.default"})
    config = config.model_copy(update={"credentials": [reader, config.credentials[1]]})
    broker = _broker(tmp_path, config)
    try:
        with pytest.raises(CredentialError) as err:
            await broker.upstream_secret("orders-key")
        assert str(err.value) == (
            "credential 'orders-key': Key Vault asks for a token for https://vault.azure.net, "
            "but identity 'kv-reader' gets tokens for https://vault.azure.cn"
        )
    finally:
        await broker.close()


async def test_the_servers_tick_fetches_before_the_first_request(
    tmp_path: Path, azure: Azure
) -> None:
    azure.vault.set_secret("orders-api-key", "key-one")
    broker = _broker(tmp_path, _config(tmp_path, azure))
    try:
        assert broker.vault_status()["orders-key"].fetched_at is None
        broker.refresh()  # the server's tick
        for _ in range(100):
            if broker.vault_status()["orders-key"].fetched_at is not None:
                break
            await asyncio.sleep(0.02)
        assert broker.vault_status()["orders-key"].fetched_at is not None
        requests_made = len(azure.vault.requests)
        assert (await broker.upstream_secret("orders-key")).value == "key-one"
        assert len(azure.vault.requests) == requests_made  # served from the cache
    finally:
        await broker.close()


async def test_a_disabled_pinned_version_says_so(tmp_path: Path, azure: Azure) -> None:
    v1 = azure.vault.set_secret("orders-api-key", "key-one")
    azure.vault.disable("orders-api-key", v1)
    broker = _broker(tmp_path, _config(tmp_path, azure, version=v1))
    try:
        with pytest.raises(CredentialError) as err:
            await broker.upstream_secret("orders-key")
        assert "(HTTP 403, Forbidden, SecretDisabled): that version is disabled" in str(err.value)
    finally:
        await broker.close()
