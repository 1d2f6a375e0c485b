"""Dynamic roles whose holder cannot follow revocations: a role is a login upstream that the
gateway never sees again, so it must not outlive what the shared state says of its token.

- Past the staleness bound a replica drops every live role it issued and issues none until
  the shared state is reached again (fail closed).
- A lease names its token, so any replica whose revocations say the token is revoked drops
  another replica's role (exactly one, through the lease claim), whether or not the holder
  ever learns of the revocation.

Bookkeeping on both backends; the drops on real roles of a real PostgreSQL upstream, whose
``pg_roles`` is the oracle."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path

import pytest

from lockgate.config import PostgresStateSettings
from lockgate.errors import UpstreamUnavailable
from lockgate.gateway.dynamic_roles import DbRoles
from lockgate.gateway.postgres.dynamic_roles import PostgresRoles
from lockgate.gateway.role_leases import RoleLeases, reap_revoked
from lockgate.identity.revocation import RevocationStore
from lockgate.identity.staleness import StalenessBound
from lockgate.store import PostgresDatabase, SqliteDatabase
from tests.gateway.postgres.test_dynamic_roles import (
    GATEWAY_PASSWORD,
    _password,
    live_roles,
    mint,
    prepare,
    resource,
)
from tests.pgserver import PgServer
from tests.store import conftest as store_fixtures
from tests.store.conftest import OpenDatabase

from .fakes import FakePolicy, FakePolicySet

open_db = store_fixtures.open_db  # every test taking it runs on SQLite and on PostgreSQL
ALLOW = [("read", "sales.*")]


# -- bookkeeping ---------------------------------------------------------------------------
def test_a_lease_names_its_token_for_every_other_process(
    open_db: OpenDatabase, tmp_path: Path
) -> None:
    a = RoleLeases(open_db(), "a")
    b = RoleLeases(open_db(), "b")
    claims = mint(tmp_path, try_number=3)
    a.record("shop-pg", "lg_task", claims.exp, claims)
    a.record("shop-pg", "lg_older", claims.exp)  # recorded before leases named tokens
    (held,) = b.held_elsewhere()
    assert (held.role, held.replica_id, held.claims) == ("lg_task", "a", claims)
    assert a.held_elsewhere() == []  # its own roles it follows in memory
    assert b.claim(held)
    assert b.held_elsewhere() == []  # claimed: offered to nobody else


def test_a_lease_whose_claims_do_not_parse_names_no_token(open_db: OpenDatabase) -> None:
    a = RoleLeases(open_db(), "a")
    a.record("shop-pg", "lg_x", 2e9)
    with a.db.transaction() as cur:  # a damaged row: dropped as an orphan only, never trusted
        cur.execute("UPDATE role_leases SET claims = ? WHERE role = ?", ('{"jti": 1', "lg_x"))
    assert [x.claims for x in a.leases()] == [None]
    assert RoleLeases(open_db(), "b").held_elsewhere() == []


# -- real roles on a real PostgreSQL upstream ----------------------------------------------
@pytest.fixture
def upstream(pg_server: PgServer) -> PgServer:
    prepare(pg_server)
    return pg_server


async def _password_for(_resource: object, previous: bool = False) -> str:
    return GATEWAY_PASSWORD


def _holder(
    settings: PostgresStateSettings, upstream: PgServer
) -> tuple[PostgresDatabase, PostgresRoles]:
    """Replica "a": issues a role, then never hears of a revocation (cut off, or slow)."""
    db = PostgresDatabase(settings, replica_id="a")
    roles = PostgresRoles(resource(upstream), _password, FakePolicy(FakePolicySet(ALLOW)))
    roles.leases = RoleLeases(db, "a")
    return db, roles


async def test_a_token_revoked_on_another_replica_loses_its_role_there(
    upstream: PgServer, pg_state: Callable[..., PostgresStateSettings], tmp_path: Path
) -> None:
    settings = pg_state()
    db_a, roles_a = _holder(settings, upstream)
    db_b = PostgresDatabase(settings, replica_id="b")
    revocations = RevocationStore(tmp_path / "revocations.db")
    other = DbRoles(
        [resource(upstream)], _password_for, FakePolicy(FakePolicySet(ALLOW)), revocations,
        leases=RoleLeases(db_b, "b"),
    )  # fmt: skip
    try:
        claims = mint(tmp_path, try_number=21)
        kept = mint(tmp_path, try_number=22)
        cred = await roles_a.issue(claims)
        other_cred = await roles_a.issue(kept)
        assert await other.sweep() == []  # nothing revoked: a's roles are a's
        revocations.revoke_jti(claims.jti, claims.exp, deployment=claims.deployment)
        assert await other.sweep() == [cred.username]
        assert cred.username not in live_roles(upstream)
        assert other_cred.username in live_roles(upstream)
        assert [x.role for x in RoleLeases(db_b, "b").leases()] == [other_cred.username]
        # a DAG revocation reaches the rest, as it would through the holder itself
        revocations.revoke_dag("prod", "etl")
        assert await other.sweep() == [other_cred.username]
        assert not {cred.username, other_cred.username} & live_roles(upstream)
    finally:
        await other.close()
        await roles_a.retire()
        revocations.close()
        db_a.close()
        db_b.close()


async def test_exactly_one_replica_drops_a_revoked_tokens_role(
    upstream: PgServer, pg_state: Callable[..., PostgresStateSettings], tmp_path: Path
) -> None:
    settings = pg_state()
    db_a, roles_a = _holder(settings, upstream)
    revocations = RevocationStore(tmp_path / "revocations.db")
    names = ("b", "c", "d")
    others = [PostgresDatabase(settings, replica_id=r) for r in names]
    try:
        creds = [await roles_a.issue(mint(tmp_path, try_number=n)) for n in (31, 32, 33)]
        revocations.revoke_dag("prod", "etl")
        reapers = [
            (RoleLeases(db, name), PostgresRoles(
                resource(upstream), _password, FakePolicy(FakePolicySet(ALLOW))))
            for db, name in zip(others, names, strict=True)
        ]  # fmt: skip
        dropped: list[str] = []
        # Concurrent DROP ROLEs can fail upstream ("tuple concurrently updated" on the shared
        # catalog); the sweeper retries a failed drop at its next pass, as here (bounded).
        for _ in range(5):
            results = await asyncio.gather(*(
                reap_revoked(leases, {"shop-pg": roles}, revocations.is_revoked)
                for leases, roles in reapers
            ))  # fmt: skip
            dropped += [x.role for result in results for x in result]
            if len(dropped) >= len(creds):
                break
            await asyncio.sleep(0.1)
        assert sorted(dropped) == sorted(c.username for c in creds)  # each once, none twice
        assert not {c.username for c in creds} & live_roles(upstream)
    finally:
        await roles_a.retire()
        revocations.close()
        for db in (db_a, *others):
            db.close()


class Unreachable(SqliteDatabase):
    """A state database out of reach for ``age`` seconds (what the bound reads)."""

    def __init__(self) -> None:
        super().__init__(None)
        self.age = 0.0

    def stale_for(self) -> float:
        return self.age


async def test_past_the_staleness_bound_every_role_goes_and_none_is_issued(
    upstream: PgServer, tmp_path: Path
) -> None:
    state = Unreachable()
    revocations = RevocationStore(tmp_path / "revocations.db")
    roles = DbRoles(
        [resource(upstream)], _password_for, FakePolicy(FakePolicySet(ALLOW)), revocations,
        staleness=StalenessBound(state, max_staleness=30),
    )  # fmt: skip
    shop = roles.roles["shop-pg"]
    try:
        creds = [await shop.issue(mint(tmp_path, try_number=n)) for n in (41, 42)]
        state.age = 29.0  # within the bound: decided from memory, roles live on
        roles.after_refresh(changed=False)
        assert await roles.sweep() == []
        state.age = 31.0
        roles.after_refresh(changed=False)  # the revocation tick: the drop starts at once
        assert roles._drop is not None
        await roles._drop
        names = {c.username for c in creds}
        assert not names & live_roles(upstream) and shop.issued == {}
        with pytest.raises(UpstreamUnavailable, match="staleness"):
            await shop.issue(mint(tmp_path, try_number=43))
        assert await roles.sweep() == []  # nothing left; the sweeper keeps failing closed
        state.age = 0.0  # reached again: roles are issued again
        again = await shop.issue(mint(tmp_path, try_number=44))
        assert again.username in live_roles(upstream)
    finally:
        await roles.close()
        revocations.close()
        state.close()
