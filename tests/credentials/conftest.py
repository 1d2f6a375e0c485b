"""Fixtures of the vault attack tests: a hostile server (and another host a redirect may
point at), the Entra ID and Key Vault stand-ins."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from lockgate.demo.standins.entra import EntraTrust, FakeEntra
from lockgate.demo.standins.entra import start as start_entra
from lockgate.demo.standins.key_vault import FakeKeyVault
from lockgate.demo.standins.key_vault import start as start_key_vault
from tests.credentials._hostile_vault import APP_SECRET, Hostile, serve_hostile


@pytest.fixture
async def hostile() -> AsyncIterator[Hostile]:
    h = Hostile()
    runner = await serve_hostile(h)
    yield h
    await runner.cleanup()


@pytest.fixture
async def elsewhere() -> AsyncIterator[Hostile]:
    """Another host a redirect may point at."""
    h = Hostile()
    runner = await serve_hostile(h)
    yield h
    await runner.cleanup()


@pytest.fixture
async def entra() -> AsyncIterator[FakeEntra]:
    e = FakeEntra()
    e.client_secrets["gw-app"] = {APP_SECRET}
    runner = await start_entra(e)
    yield e
    await runner.cleanup()


@pytest.fixture
async def key_vault(entra: FakeEntra) -> AsyncIterator[FakeKeyVault]:
    vault = FakeKeyVault(EntraTrust.of(entra), tenant=entra.tenant)
    runner = await start_key_vault(vault)
    yield vault
    await runner.cleanup()
