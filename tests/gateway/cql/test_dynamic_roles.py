"""DbRoles, every dynamic_roles resource's roles as one set: revocations reach the roles of
the revoking deployment's tokens only, and a revocation made elsewhere drops them soon."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import pytest

from lockgate.gateway.cql.dynamic_roles import DbRoles
from lockgate.identity import Claims, KeyStore, RevocationStore, TaskIdentity, TokenIssuer


class RecordingRoles:
    """Stands in for one resource's DynamicRoles: records which jtis it was told to drop."""

    def __init__(self) -> None:
        self.dropped: list[str] = []
        self.swept = 0
        self.issued: dict[str, object] = {}

    async def revoke_jti(self, jti: str) -> list[str]:
        self.dropped.append(jti)
        return [f"lg_{jti}"]

    async def sweep(self, now: float | None = None) -> list[str]:
        self.swept += 1
        await asyncio.sleep(0.05)  # a slow cluster
        return []


async def _no_password(_resource: object) -> str:
    raise AssertionError("no role is issued here")


@pytest.fixture
def store(tmp_path: Path) -> Iterator[RevocationStore]:
    revocations = RevocationStore(tmp_path / "revocations.db")
    yield revocations
    revocations.close()


def mint(tmp_path: Path, deployment: str = "prod") -> Claims:
    identity = TaskIdentity(deployment, "etl", "load", "run-1", 1)
    return TokenIssuer(KeyStore(tmp_path / "keys"), "https://lockgate.test").mint(
        identity, "orders-cql", 600
    )[1]


def roles_with_fake(store: RevocationStore) -> tuple[DbRoles, RecordingRoles]:
    db = DbRoles([], _no_password, policy=None, revocations=store)  # type: ignore[arg-type]
    fake = RecordingRoles()
    db.roles["orders-cql"] = fake  # type: ignore[assignment]
    return db, fake


async def test_a_jti_revoked_by_another_deployment_keeps_the_role(
    tmp_path: Path, store: RevocationStore
) -> None:
    db, fake = roles_with_fake(store)
    claims = mint(tmp_path)  # deployment prod
    db._claims[("orders-cql", f"lg_{claims.jti}")] = claims
    db._forget_dropped = lambda: None  # type: ignore[method-assign]
    assert await db.on_revoke("jti", {"deployment": "staging", "jti": claims.jti}) == []
    assert fake.dropped == []
    dropped = await db.on_revoke("jti", {"deployment": "prod", "jti": claims.jti})
    assert dropped == [f"lg_{claims.jti}"] and fake.dropped == [claims.jti]


async def test_a_refresh_that_saw_revocations_drops_roles_once_at_a_time(
    store: RevocationStore,
) -> None:
    db, fake = roles_with_fake(store)
    db.after_refresh(changed=False)
    await asyncio.sleep(0.01)
    assert fake.swept == 0  # nothing new, nothing to do
    db.after_refresh(changed=True)
    db.after_refresh(changed=True)  # while the first drop runs: remembered, not doubled
    await asyncio.sleep(0.01)
    assert fake.swept == 1
    await asyncio.sleep(0.1)
    db.after_refresh(changed=False)  # the change seen meanwhile starts the next drop now
    await asyncio.sleep(0.01)
    assert fake.swept == 2
    await db.close()
