"""The cache every vault-held credential gets: ttl, rotation with overlap, outage grace,
single flight, refresh timeouts -- against a scripted vault, on a hand-moved clock."""

from __future__ import annotations

import asyncio

import pytest

from lockgate.config.credentials import VaultKvCredential
from lockgate.credentials.vaults import RETRY_AFTER, Fetched, VaultHeldSecret
from lockgate.errors import CredentialError


class Clock:
    def __init__(self) -> None:
        self.now = 1_000_000.0

    def __call__(self) -> float:
        return self.now


class ScriptedVault:
    def __init__(self) -> None:
        self.value, self.version = "key-1", "1"
        self.calls = 0
        self.down = False
        self.delay = 0.0

    async def fetch(self) -> Fetched:
        self.calls += 1
        if self.delay:
            await asyncio.sleep(self.delay)
        if self.down:
            raise CredentialError("credential 'k': Vault http://127.0.0.1:1 unreachable")
        return Fetched(self.value, self.version)

    def rotate(self, value: str) -> None:
        self.value, self.version = value, str(int(self.version) + 1)


def _cfg(**kw: object) -> VaultKvCredential:
    fields: dict[str, object] = {
        "name": "k", "type": "vault_kv", "address": "http://127.0.0.1:8200", "path": "app/k",
        "auth": {"method": "approle", "role_id": "r"}, "ttl": 60, "overlap": 120,
        "grace": 300, "timeout": 1.0,
    }  # fmt: skip
    fields.update(kw)
    return VaultKvCredential.model_validate(fields)


@pytest.fixture
def clock() -> Clock:
    return Clock()


async def test_cached_for_ttl_then_a_rotation_is_picked_up(clock: Clock) -> None:
    vault, changes = ScriptedVault(), []
    held = VaultHeldSecret(_cfg(), vault.fetch, clock=clock, on_change=lambda: changes.append(1))
    first = await held.get()
    assert (first.value, first.version, first.vault_version) == ("key-1", 1, "1")
    vault.rotate("key-2")
    clock.now += 59
    assert (await held.get()).value == "key-1" and vault.calls == 1  # within ttl: no request
    assert held.previous_within_overlap() is None
    clock.now += 2
    second = await held.get()
    assert (second.value, second.version) == ("key-2", 2) and len(changes) == 2
    prev = held.previous_within_overlap()
    assert prev is not None and (prev.value, prev.version) == ("key-1", 1)
    clock.now += 119
    assert held.previous_within_overlap() is not None
    clock.now += 1
    assert held.previous_within_overlap() is None  # the overlap is over


async def test_same_value_again_is_no_rotation(clock: Clock) -> None:
    vault = ScriptedVault()
    held = VaultHeldSecret(_cfg(), vault.fetch, clock=clock)
    await held.get()
    clock.now += 61
    again = await held.get()
    assert again.version == 1 and vault.calls == 2 and held.previous is None


async def test_outage_serves_the_cache_until_ttl_plus_grace(clock: Clock) -> None:
    vault = ScriptedVault()
    held = VaultHeldSecret(_cfg(), vault.fetch, clock=clock)
    await held.get()
    vault.down = True
    clock.now += 61
    assert (await held.get()).value == "key-1"
    assert held.status().error is not None and "unreachable" in held.status().error
    calls = vault.calls
    clock.now += RETRY_AFTER - 1
    await held.get()
    assert vault.calls == calls  # a failed refresh is not retried at the rate requests come
    clock.now = 1_000_000.0 + 60 + 300 + 1  # past ttl + grace
    with pytest.raises(CredentialError, match="unreachable"):
        await held.get()
    calls = vault.calls
    vault.down = False
    with pytest.raises(CredentialError, match="unreachable"):
        await held.get()  # the vault that just failed is not asked at the rate requests come
    assert vault.calls == calls
    clock.now += RETRY_AFTER
    assert (await held.get()).value == "key-1"
    assert held.status().error is None


async def test_never_fetched_fails_with_the_reason(clock: Clock) -> None:
    vault = ScriptedVault()
    vault.down = True
    held = VaultHeldSecret(_cfg(), vault.fetch, clock=clock)
    assert held.status().fetched_at is None and held.status().vault_version is None
    with pytest.raises(CredentialError, match="unreachable"):
        await held.get()


async def test_single_flight_and_a_slow_vault_does_not_stall_requests(clock: Clock) -> None:
    vault = ScriptedVault()
    held = VaultHeldSecret(_cfg(timeout=5.0), vault.fetch, clock=clock)
    first = await asyncio.gather(*(held.get() for _ in range(20)))
    assert vault.calls == 1 and {h.value for h in first} == {"key-1"}
    vault.delay = 2.0
    vault.rotate("key-2")
    clock.now += 61
    loop = asyncio.get_running_loop()
    started = loop.time()
    served = await asyncio.gather(*(held.get() for _ in range(20)))
    assert loop.time() - started < 1.5  # waited REFRESH_WAIT at most, then the cache
    assert {h.value for h in served} == {"key-1"} and vault.calls == 2
    await asyncio.sleep(2.1)
    assert (await held.get()).value == "key-2" and vault.calls == 2


async def test_refresh_timeout_is_a_credential_error(clock: Clock) -> None:
    vault = ScriptedVault()
    vault.delay = 3.0
    held = VaultHeldSecret(_cfg(timeout=0.2), vault.fetch, clock=clock)
    with pytest.raises(CredentialError, match=r"did not answer in 0.2s"):
        await held.get()


async def test_background_refresh_fetches_ahead(clock: Clock) -> None:
    vault = ScriptedVault()
    held = VaultHeldSecret(_cfg(), vault.fetch, clock=clock)
    assert held.due()
    held.refresh_soon()
    held.refresh_soon()  # one in flight: no second
    await asyncio.sleep(0.05)
    assert vault.calls == 1 and held.current is not None and not held.due()


def test_value_never_in_repr(clock: Clock) -> None:
    assert "key-1" not in repr(Fetched("key-1", "1"))
