"""Revocations shared through PostgreSQL: two replicas' stores on one real server.

What one replica stores, the other enforces after its next ``refresh()`` (the gateway calls it
every 0.2 s), within a second of the write; a replica cut off from the database keeps
deciding from memory up to ``max_staleness``, then refuses every token with
``shared_state_stale``; the database back (or restarted), replicas catch up by themselves.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from lockgate.config import PostgresStateSettings
from lockgate.errors import AuthenticationError, StoreUnavailable
from lockgate.identity import KeyStore, RevocationStore, TaskIdentity, TokenIssuer, TokenVerifier
from lockgate.identity.model import Claims
from lockgate.identity.staleness import STALE_REASON, StalenessBound
from lockgate.store import PostgresDatabase
from tests.pgserver import PgServer
from tests.pgserver.state import shared_state_settings

from .conftest import ISSUER, Clock
from .conftest import mint_claims as mint

OpenReplica = Callable[[str], RevocationStore]
PROPAGATION_BOUND = 1.0  # seconds: issue 11's bound for a revocation to hold everywhere


def opener(
    settings: PostgresStateSettings, clock: Clock
) -> tuple[OpenReplica, list[PostgresDatabase]]:
    opened: list[PostgresDatabase] = []

    def open_replica(replica_id: str) -> RevocationStore:
        db = PostgresDatabase(settings, replica_id=replica_id)
        opened.append(db)
        db.start_watching()
        return RevocationStore(db, clock=clock)

    return open_replica, opened


@pytest.fixture
def replicas(pg_state: Callable[..., PostgresStateSettings], clock: Clock) -> Iterator[OpenReplica]:
    open_replica, opened = opener(pg_state(), clock)
    yield open_replica
    for db in opened:
        db.close()


def seen_within(store: RevocationStore, check: Callable[[], bool], limit: float) -> float:
    """Seconds until ``check()`` holds, refreshing ``store`` as the gateway's tick does."""
    start = time.monotonic()
    while True:
        store.refresh()
        if check():
            return time.monotonic() - start
        assert time.monotonic() - start < limit, f"not seen within {limit} s"
        time.sleep(0.02)


def test_every_kind_written_on_one_replica_holds_on_another_within_a_second(
    replicas: OpenReplica, issuer: TokenIssuer
) -> None:
    one, two = replicas("r1"), replicas("r2")
    a, b, c = mint(issuer), mint(issuer, dag_id="orders_x"), mint(issuer, try_number=7)
    d = mint(issuer, dag_id="blocked_dag")
    assert two.refresh() is False  # nothing moved: no reload
    one.revoke_jti(a.jti, a.exp, "leaked", deployment="prod")
    assert one.is_revoked(a)  # the writer's memory at once
    assert seen_within(two, lambda: two.is_revoked(a), PROPAGATION_BOUND) < PROPAGATION_BOUND
    one.revoke_dag("prod", "orders_x", None, "incident")
    one.revoke_task_try("prod", "finance_daily", "load_orders", "run1", 7, -1)
    one.block("prod", "blocked_dag", "operator", "incident 42")
    seen_within(
        two,
        lambda: (
            all(two.is_revoked(x) for x in (b, c, d))
            and two.blocked("prod", "blocked_dag") is not None
        ),
        PROPAGATION_BOUND,
    )
    blk = two.blocked("prod", "blocked_dag")
    assert blk is not None and (blk.by, blk.reason) == ("operator", "incident 42")
    assert {r.kind for r in two.list()} == {"jti", "dag", "task_try", "block"}
    assert two.unblock("prod", "blocked_dag") is True
    seen_within(one, lambda: one.blocked("prod", "blocked_dag") is None, PROPAGATION_BOUND)
    assert one.is_revoked(d)  # tokens issued before the block stay dead after an unblock


def test_propagation_over_many_revocations(replicas: OpenReplica, issuer: TokenIssuer) -> None:
    one, two = replicas("r1"), replicas("r2")
    delays = []
    for _ in range(100):
        claims = mint(issuer)
        one.revoke_jti(claims.jti, claims.exp, "x")
        delays.append(seen_within(two, _revoked_on(two, claims), PROPAGATION_BOUND))
    delays.sort()
    p50, p99 = delays[len(delays) // 2], delays[int(len(delays) * 0.99) - 1]
    print(f"revocation propagation (refresh polled every 20 ms): p50 {p50 * 1000:.1f} ms, "
          f"p99 {p99 * 1000:.1f} ms over {len(delays)}")  # fmt: skip
    assert delays[-1] < PROPAGATION_BOUND, delays


def test_a_quiet_refresh_sends_nothing_to_the_database(
    pg_server: PgServer, replicas: OpenReplica, issuer: TokenIssuer
) -> None:
    one, two = replicas("r1"), replicas("r2")
    one.revoke_jti(mint(issuer).jti, 2e9, "x")
    seen_within(two, lambda: len(two._jtis) == 1, PROPAGATION_BOUND)
    since = pg_server.log_position()
    for _ in range(50):
        assert two.refresh() is False
    reads = [s.text for s in pg_server.statements(since) if "revoked_" in s.text]
    assert reads == []  # the data path's refresh reads a version from memory, nothing else


def test_expired_rows_are_purged_on_postgresql(
    replicas: OpenReplica, issuer: TokenIssuer, clock: Clock
) -> None:
    store = replicas("r1")
    a = mint(issuer)
    store.revoke_jti(a.jti, clock.t + 50, "x")
    store.revoke_dag("prod", "finance_daily")
    assert len(store.list()) == 2
    clock.t += 2 * 86400
    assert store.refresh() is True
    assert store.list() == [] and not store.is_revoked(a)


def test_an_unreachable_database_is_served_from_memory_then_refused_then_recovered(
    pg_server: PgServer,
    pg_state: Callable[..., PostgresStateSettings],
    tmp_path: Path,
) -> None:
    keys = KeyStore(tmp_path / "keys")  # real time: the token must verify now
    issuer = TokenIssuer(keys, ISSUER)
    settings = pg_state(max_staleness=1.5, catch_up_interval=0.25, connect_timeout=1)
    role = settings.dsn.split("://", 1)[1].split("@", 1)[0]
    open_replica, opened = opener(settings, Clock(time.time()))
    try:
        one, two = open_replica("r1"), open_replica("r2")
        bound = StalenessBound(two.database, settings.max_staleness, settings.catch_up_interval)
        verifier = TokenVerifier(keys, two, ISSUER, staleness=bound)
        token, claims = issuer.mint(_identity(), "orders-api", 600)
        live = issuer.mint(_identity(), "orders-api", 600)[0]
        assert verifier.verify(token, "orders-api").jti == claims.jti
        assert bound.status() == (True, "ok")

        _cut_off(pg_server, role)
        try:
            # Within the bound: decided from memory.
            assert verifier.verify(token, "orders-api").jti == claims.jti
            assert two.refresh() is False  # nothing to reload, and no error either
            deadline = time.monotonic() + 10
            while bound.refusal() is None:
                assert time.monotonic() < deadline, "never went stale"
                time.sleep(0.05)
            with pytest.raises(AuthenticationError) as refused:
                verifier.verify(token, "orders-api")
            assert refused.value.reason == STALE_REASON
            assert refused.value.claims is not None  # audited with the token's jti and DAG
            text = str(refused.value)
            assert text.startswith("shared state (PostgreSQL) unreachable for ")
            assert text.endswith("decisions stop after max_staleness 1.5 s")
            within, says = bound.status()
            assert not within and "past the bound of 1.5 s" in says
        finally:
            pg_server.psql(f'ALTER ROLE "{role}" LOGIN')

        # Back: contact resumes by itself, and what was written meanwhile is enforced.
        deadline = time.monotonic() + 10
        while bound.refusal() is not None:
            assert time.monotonic() < deadline, "never recovered"
            time.sleep(0.05)
        assert verifier.verify(token, "orders-api").jti == claims.jti
        _revoke_with_retry(one, claims)
        seen_within(two, lambda: two.is_revoked(claims), PROPAGATION_BOUND)
        with pytest.raises(AuthenticationError, match="revoked"):
            verifier.verify(token, "orders-api")
        assert verifier.verify(live, "orders-api")
    finally:
        for db in opened:
            db.close()


@pytest.mark.slow
def test_a_postgresql_restart_needs_no_gateway_restart(
    pg_server_factory: Callable[..., PgServer], tmp_path: Path, issuer: TokenIssuer
) -> None:
    server = pg_server_factory()
    settings = shared_state_settings(server, tmp_path / "state", catch_up_interval=0.25)
    open_replica, opened = opener(settings, Clock(time.time()))
    try:
        one, two = open_replica("r1"), open_replica("r2")
        before = mint(issuer)
        one.revoke_jti(before.jti, before.exp, "x")
        seen_within(two, lambda: two.is_revoked(before), PROPAGATION_BOUND)
        server.restart()
        after = mint(issuer)
        _revoke_with_retry(one, after)
        delay = seen_within(two, lambda: two.is_revoked(after), 5.0)
        assert delay < PROPAGATION_BOUND + 1.0  # a reconnecting watcher, then the usual bound
        assert two.is_revoked(before)
        assert two.database.stale_for() < 2 * settings.catch_up_interval + 1
    finally:
        for db in opened:
            db.close()


def _identity() -> TaskIdentity:
    return TaskIdentity("prod", "finance_daily", "load_orders", "run1", 1)


def _revoked_on(store: RevocationStore, claims: Claims) -> Callable[[], bool]:
    return lambda: store.is_revoked(claims)


def _cut_off(server: PgServer, role: str) -> None:
    """The database becomes unreachable for ``role``: no new login, every session ended."""
    server.psql(
        f'ALTER ROLE "{role}" NOLOGIN;\n'
        f"SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = '{role}';\n"
    )


def _revoke_with_retry(store: RevocationStore, claims: Claims, limit: float = 15.0) -> None:
    """Revoke once the database takes writes again (the pool reconnects by itself)."""
    deadline = time.monotonic() + limit
    while True:
        try:
            store.revoke_jti(claims.jti, claims.exp, "after the outage")
            return
        except StoreUnavailable:
            assert time.monotonic() < deadline, "the database never took the write"
            time.sleep(0.1)
