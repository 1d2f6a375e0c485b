"""Dynamic-role leases: a replica that dies leaves no orphan role, another drops it, and
exactly one replica drops a given orphan.

The bookkeeping runs on both backends (SQLite file, real PostgreSQL server) with a hand-set
clock; the end-to-end cases use real roles on a real PostgreSQL upstream (the run's server
again, in a database of its own), whose ``pg_roles`` is the oracle."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from lockgate.config import PostgresStateSettings
from lockgate.errors import UpstreamUnavailable
from lockgate.gateway.dynamic_roles import DbRoles, role_name
from lockgate.gateway.postgres.dynamic_roles import PostgresRoles
from lockgate.gateway.role_leases import Lease, RoleLeases, reap
from lockgate.identity.revocation import RevocationStore
from lockgate.store import PostgresDatabase
from tests.gateway.postgres.test_dynamic_roles import (
    GATEWAY_PASSWORD,
    _password,
    live_roles,
    mint,
    prepare,
    resource,
)
from tests.pgserver import PgServer
from tests.pgserver.state import shared_state_settings
from tests.store import conftest as store_fixtures
from tests.store.conftest import OpenDatabase

from .fakes import FakePolicy, FakePolicySet

open_db = store_fixtures.open_db  # every test taking it runs on SQLite and on PostgreSQL


class Clock:
    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def _names(leases: list[Lease]) -> list[str]:
    return [lease.role for lease in leases]


def test_a_lease_of_a_live_replica_is_nobodys_orphan(open_db: OpenDatabase) -> None:
    clock = Clock()
    a = RoleLeases(open_db(), "a", grace=30, clock=clock)
    b = RoleLeases(open_db(), "b", grace=30, clock=clock)
    clock.now += 1  # both started a moment ago
    a.record("shop", "lg_1", expires_at=clock.now + 600)
    assert [(x.resource, x.role, x.replica_id) for x in b.leases()] == [("shop", "lg_1", "a")]
    clock.now += 20
    a.heartbeat()
    clock.now += 20  # 40 s after the lease, 20 s after a's last beat
    assert a.orphans() == [] and b.orphans() == []
    a.release("shop", "lg_1")
    assert b.leases() == []


def test_a_silent_replicas_leases_and_long_expired_ones_are_orphans(
    open_db: OpenDatabase,
) -> None:
    clock = Clock()
    a = RoleLeases(open_db(), "a", grace=30, clock=clock)
    b = RoleLeases(open_db(), "b", grace=30, clock=clock)
    clock.now += 1
    a.record("shop", "lg_dead", expires_at=clock.now + 600)
    b.record("shop", "lg_expired", expires_at=clock.now + 5)
    clock.now += 31  # a silent for more than grace; b's token over for 26 s only
    b.heartbeat()
    assert _names(b.orphans()) == ["lg_dead"]
    assert a.orphans() == []  # a does not judge itself dead (it is running, after all)
    clock.now += 5  # b's own token expired more than grace ago: anyone may drop it
    b.heartbeat()
    assert sorted(_names(b.orphans())) == ["lg_dead", "lg_expired"]


def test_a_restarted_replica_drops_its_previous_incarnations_roles(
    open_db: OpenDatabase,
) -> None:
    clock = Clock()
    before = RoleLeases(open_db(), "a", clock=clock)
    clock.now += 1
    before.record("shop", "lg_old", expires_at=clock.now + 600)
    clock.now += 1
    again = RoleLeases(open_db(), "a", clock=clock)  # same replica_id, a new process
    clock.now += 1
    again.record("shop", "lg_new", expires_at=clock.now + 600)
    assert again.orphans() == []  # a live sibling may not have beaten yet
    clock.now += again.settle
    assert _names(again.orphans()) == ["lg_old"]  # its own new lease stays live
    other = RoleLeases(open_db(), "b", clock=clock)
    assert other.orphans() == []  # not silent for the grace yet: only "a" judges its past


def test_a_live_process_under_the_same_replica_id_keeps_its_roles(
    open_db: OpenDatabase,
) -> None:
    """Two live processes under one replica id (a misconfiguration, or a worker restarted
    beside its siblings): neither takes the other's roles for a previous incarnation's."""
    clock = Clock()
    first = RoleLeases(open_db(), "host", clock=clock)
    clock.now += 1
    first.record("shop", "lg_task_login", expires_at=clock.now + 600)
    clock.now += 1
    second = RoleLeases(open_db(), "host", clock=clock)
    for _ in range(4):  # both keep beating
        clock.now += first.heartbeat_interval
        first.heartbeat()
        second.heartbeat()
        assert second.orphans() == [] and first.orphans() == []
    clock.now += first.grace + 1  # the first goes silent: then it is an orphan
    second.heartbeat()
    assert _names(second.orphans()) == ["lg_task_login"]


def test_exactly_one_claimer_until_the_claim_lapses(open_db: OpenDatabase) -> None:
    clock = Clock()
    dead = RoleLeases(open_db(), "dead", grace=30, claim_for=60, clock=clock)
    clock.now += 1
    dead.record("shop", "lg_x", expires_at=clock.now + 600)
    clock.now += 31
    b = RoleLeases(open_db(), "b", grace=30, claim_for=60, clock=clock)
    c = RoleLeases(open_db(), "c", grace=30, claim_for=60, clock=clock)
    (orphan,) = b.orphans()
    assert b.claim(orphan)
    assert not c.claim(orphan) and c.orphans() == []  # claimed: not offered to others
    c.release_claimed(orphan)  # not c's claim: nothing deleted
    assert _names(b.leases()) == ["lg_x"]
    clock.now += 61  # b died mid-drop: its claim lapses, c takes over
    (again,) = c.orphans()
    assert c.claim(again) and not b.claim(again)
    c.release_claimed(again)
    assert b.leases() == []


def test_concurrent_claimers_one_winner(open_db: OpenDatabase) -> None:
    clock = Clock()
    dead = RoleLeases(open_db(), "dead", grace=30, clock=clock)
    clock.now += 1
    for i in range(5):
        dead.record("shop", f"lg_{i}", expires_at=clock.now + 600)
    clock.now += 31
    reapers = [RoleLeases(open_db(), f"r{i}", grace=30, clock=clock) for i in range(4)]
    orphans = reapers[0].orphans()
    assert len(orphans) == 5
    wins: list[tuple[str, str]] = []
    barrier = threading.Barrier(len(reapers))

    def race(me: RoleLeases) -> None:
        barrier.wait()
        for lease in orphans:
            if me.claim(lease):
                wins.append((me.replica_id, lease.role))

    threads = [threading.Thread(target=race, args=(r,)) for r in reapers]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert sorted(role for _who, role in wins) == [f"lg_{i}" for i in range(5)]


# -- real roles on a real PostgreSQL upstream ----------------------------------------------
ALLOW = [("read", "sales.*")]


@pytest.fixture
def upstream(pg_server: PgServer) -> PgServer:
    prepare(pg_server)
    return pg_server


def _replica(
    settings: PostgresStateSettings, replica_id: str, upstream: PgServer, *, grace: float
) -> tuple[PostgresDatabase, RoleLeases, PostgresRoles]:
    db = PostgresDatabase(settings, replica_id=replica_id)
    leases = RoleLeases(db, replica_id, grace=grace)
    roles = PostgresRoles(resource(upstream), _password, FakePolicy(FakePolicySet(ALLOW)))
    roles.leases = leases
    return db, leases, roles


async def test_a_dead_replicas_role_is_dropped_by_exactly_one_other(
    upstream: PgServer, pg_state: Callable[..., PostgresStateSettings], tmp_path: Path
) -> None:
    settings = pg_state()
    db_a, _leases_a, roles_a = _replica(settings, "a", upstream, grace=0.5)
    db_b, leases_b, roles_b = _replica(settings, "b", upstream, grace=0.5)
    db_c, leases_c, roles_c = _replica(settings, "c", upstream, grace=0.5)
    try:
        creds = [await roles_a.issue(mint(tmp_path, try_number=n)) for n in (1, 2, 3)]
        names = {c.username for c in creds}
        assert names <= live_roles(upstream)
        assert {x.role for x in leases_b.leases()} == names  # recorded before they existed
        # "a" is killed: no drop, no more heartbeats. b and c keep beating.
        await asyncio.sleep(0.7)
        await asyncio.gather(asyncio.to_thread(leases_b.heartbeat),
                             asyncio.to_thread(leases_c.heartbeat))  # fmt: skip
        dropped: list[str] = []
        # Two sweepers at once, as replicas run them; a row one of them holds while the
        # other looks is left to a later round (a busy machine can stretch a drop past
        # the other's look), so a few rounds, each one both at once.
        for _round in range(3):
            by_b, by_c = await asyncio.gather(
                reap(leases_b, {"shop-pg": roles_b}), reap(leases_c, {"shop-pg": roles_c})
            )
            dropped += [x.role for x in by_b + by_c]
            if len(dropped) >= len(names):
                break
        assert sorted(dropped) == sorted(names)  # each orphan once, none twice
        assert not names & live_roles(upstream)
        assert leases_b.leases() == []
    finally:
        for db in (db_a, db_b, db_c):
            db.close()


async def test_the_sweeper_drops_what_a_dead_replica_left_and_a_stop_releases(
    upstream: PgServer, pg_state: Callable[..., PostgresStateSettings], tmp_path: Path
) -> None:
    """Through DbRoles, as the server runs it: the surviving replica's sweeper heartbeats
    and drops the dead one's role within grace plus one beat; a graceful stop drops its own
    roles and releases their leases."""
    settings = pg_state()
    db_a, leases_a, roles_a = _replica(settings, "a", upstream, grace=0.6)
    db_b = PostgresDatabase(settings, replica_id="b")
    revocations = RevocationStore(tmp_path / "revocations.db")

    async def password_for(_resource: object, previous: bool = False) -> str:
        return GATEWAY_PASSWORD

    survivor = DbRoles(
        [resource(upstream)], password_for, FakePolicy(FakePolicySet(ALLOW)), revocations,
        leases=RoleLeases(db_b, "b", grace=0.6),
    )  # fmt: skip
    try:
        orphan = await roles_a.issue(mint(tmp_path, try_number=7))
        survivor.start()
        own = await survivor.roles["shop-pg"].issue(mint(tmp_path, try_number=8))
        started = time.monotonic()
        while orphan.username in live_roles(upstream) or len(leases_a.leases()) > 1:
            assert time.monotonic() - started < 10, "the dead replica's role was not dropped"
            await asyncio.sleep(0.1)
        assert own.username in live_roles(upstream)  # the survivor's own role lives on
        assert [x.role for x in leases_a.leases()] == [own.username]
        await survivor.close()
        assert own.username not in live_roles(upstream)
        assert leases_a.leases() == []
    finally:
        await survivor.close()
        db_a.close()
        db_b.close()


async def test_a_restart_on_one_host_drops_what_the_crashed_process_left(
    upstream: PgServer, tmp_path: Path
) -> None:
    """SQLite state (one host): the process that issued the role is killed; the next one
    (same replica id, same data directory) drops it at its first beat, not at expiry."""
    crashed = PostgresRoles(resource(upstream), _password, FakePolicy(FakePolicySet(ALLOW)))
    crashed.leases = RoleLeases(tmp_path / "roles.db", "host-1")
    left = await crashed.issue(mint(tmp_path, try_number=11))
    assert left.username in live_roles(upstream)

    async def password_for(_resource: object, previous: bool = False) -> str:
        return GATEWAY_PASSWORD

    restarted = DbRoles(
        [resource(upstream)], password_for, FakePolicy(FakePolicySet(ALLOW)),
        RevocationStore(tmp_path / "revocations.db"),
        leases=RoleLeases(tmp_path / "roles.db", "host-1", grace=2),
    )  # fmt: skip
    try:
        restarted.start()
        started = time.monotonic()
        while left.username in live_roles(upstream):
            assert time.monotonic() - started < 10, "the crashed process's role was not dropped"
            await asyncio.sleep(0.1)
    finally:
        await restarted.close()


async def test_no_lease_no_role(
    upstream: PgServer, pg_server_factory: Callable[..., PgServer], tmp_path: Path
) -> None:
    """The state database is away: the role is refused (a crash would leave it to nobody)
    and nothing is created upstream."""
    state_server = pg_server_factory()
    settings = shared_state_settings(state_server, tmp_path / "state", connect_timeout=1)
    db, _leases, roles = _replica(settings, "a", upstream, grace=30)
    try:
        state_server.pause()
        claims = mint(tmp_path, try_number=12)
        with pytest.raises(UpstreamUnavailable, match="role lease not recorded"):
            await roles.issue(claims)
        assert role_name("shop-pg", claims.jti) not in live_roles(upstream)
        assert roles.issued == {}
    finally:
        db.close()
