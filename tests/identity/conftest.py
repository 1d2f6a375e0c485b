"""Shared fixtures: a key store, revocation store, issuer and verifier on a settable clock;
two revocation stores on one file (the gateway's and a CLI command's); claims to revoke."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest

from lockgate.identity import (
    Claims,
    KeyStore,
    RevocationStore,
    TaskIdentity,
    TokenIssuer,
    TokenVerifier,
)

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
def revocations(tmp_path: Path, clock: Clock) -> Iterator[RevocationStore]:
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


@pytest.fixture
def gateway_and_cli(
    tmp_path: Path, clock: Clock
) -> Iterator[tuple[RevocationStore, RevocationStore]]:
    """Two stores on one file, as the gateway and a CLI command in another process hold it:
    what one writes, the other sees only after its ``refresh()``."""
    gateway = RevocationStore(tmp_path / "shared.db", clock=clock)
    cli = RevocationStore(tmp_path / "shared.db", clock=clock)
    yield gateway, cli
    gateway.close()
    cli.close()


def mint_claims(issuer: TokenIssuer, **changes: object) -> Claims:
    """The claims of a token for ``prod/finance_daily/load_orders`` run1 try 1, with the
    identity fields in ``changes`` replaced."""
    ident = TaskIdentity("prod", "finance_daily", "load_orders", "run1", 1)
    return issuer.mint(replace(ident, **changes), "orders-api", 600)[1]  # type: ignore[arg-type]
