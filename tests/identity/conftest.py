"""Shared fixtures: a key store, revocation store, issuer and verifier on a settable clock."""

from __future__ import annotations

from pathlib import Path

import pytest

from lockgate.identity import KeyStore, RevocationStore, TaskIdentity, TokenIssuer, TokenVerifier

ISSUER = "https://lockgate.test"
T0 = 1_800_000_000.0


class Clock:
    """A settable clock: tests move time instead of sleeping."""

    def __init__(self, t: float = T0) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def keys(tmp_path: Path, clock: Clock) -> KeyStore:
    return KeyStore(tmp_path, clock=clock)


@pytest.fixture
def revocations(tmp_path: Path, clock: Clock) -> RevocationStore:
    store = RevocationStore(tmp_path / "revocations.db", clock=clock)
    yield store
    store.close()


@pytest.fixture
def issuer(keys: KeyStore, clock: Clock) -> TokenIssuer:
    return TokenIssuer(keys, ISSUER, clock=clock)


@pytest.fixture
def verifier(keys: KeyStore, revocations: RevocationStore, clock: Clock) -> TokenVerifier:
    return TokenVerifier(keys, revocations, ISSUER, leeway=5, clock=clock)


@pytest.fixture
def identity() -> TaskIdentity:
    return TaskIdentity("prod", "finance_daily", "load_orders", "manual__2025-01-01", 1)
