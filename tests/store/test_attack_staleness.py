"""Attacks on the staleness bound of shared state: can a replica decide from memory that no
longer follows the database, past ``max_staleness``, without noticing?

``stale_for()`` is what every engine's token check, the token service and ``/readyz`` trust.
It must grow whenever the replica stops learning of other replicas' writes, whatever the
reason; only a contact that also re-read the change versions may reset it.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator

import pytest

from lockgate.config import PostgresStateSettings
from lockgate.store import CORE_DOMAIN, CORE_MIGRATIONS, TOPICS, PostgresDatabase, migrate
from tests.pgserver import PgServer
from tests.pgserver.fixtures import SharedStateFactory

pytestmark = pytest.mark.filterwarnings("ignore::pytest.PytestUnhandledThreadExceptionWarning")


def _wait(cond: Callable[[], bool], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        time.sleep(0.02)


def _touch(db: PostgresDatabase, topic: str) -> None:
    with db.transaction() as cur:
        cur.touch(topic)


def _terminate(server: PgServer, replica: str) -> None:
    """Cut every server connection of ``replica`` (what a PostgreSQL failover does)."""
    sql = "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = "
    server.psql(sql + f"'lockgate/{replica}'")


@pytest.fixture
def pair(
    pg_state: SharedStateFactory,
) -> Iterator[tuple[PostgresStateSettings, PostgresDatabase, PostgresDatabase]]:
    settings = pg_state(catch_up_interval=0.2, max_staleness=1.0)
    mine = PostgresDatabase(settings, replica_id="mine")
    other = PostgresDatabase(settings, replica_id="other")
    migrate(mine, CORE_DOMAIN, CORE_MIGRATIONS)
    try:
        yield settings, mine, other
    finally:
        mine.close()
        other.close()


def test_a_watching_replica_follows_and_stays_fresh(
    pair: tuple[PostgresStateSettings, PostgresDatabase, PostgresDatabase],
) -> None:
    """What holds: with the watcher alive, another replica's write moves our version at once
    and ``stale_for`` stays below a catch-up interval or two."""
    _, mine, other = pair
    mine.start_watching()
    before = mine.version("revocations")
    _touch(other, "revocations")
    _wait(lambda: mine.version("revocations") > before, timeout=2)
    time.sleep(0.5)
    assert mine.stale_for() < 0.5


def test_stale_for_ignores_wall_clock_jumps(
    pair: tuple[PostgresStateSettings, PostgresDatabase, PostgresDatabase],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """What holds: a wall clock set back (or forward) by an hour changes nothing: the bound
    is measured on the monotonic clock."""
    _, mine, _ = pair
    mine.start_watching()
    _wait(lambda: mine.stale_for() < 0.5)
    real = time.time
    monkeypatch.setattr(time, "time", lambda: real() - 3600)
    assert 0.0 <= mine.stale_for() < 1.0
    monkeypatch.setattr(time, "time", lambda: real() + 3600)
    assert 0.0 <= mine.stale_for() < 1.0


def test_a_database_never_reached_is_stale_at_once(pg_state: SharedStateFactory) -> None:
    """What holds: a replica that never reached PostgreSQL has no fresh memory to serve."""
    settings = pg_state()
    down = PostgresStateSettings.model_validate(
        {**settings.model_dump(), "dsn": "postgresql://nobody@127.0.0.1:1/none"}
    )
    db = PostgresDatabase(down, replica_id="lonely")
    try:
        assert db.stale_for() == float("inf")
    finally:
        db.close()


def test_a_dead_watcher_is_stale_even_while_transactions_succeed(
    pair: tuple[PostgresStateSettings, PostgresDatabase, PostgresDatabase],
    pg_server: PgServer,
) -> None:
    """The watcher thread dies on any error that is not a psycopg one (here: the password
    file holds bytes that are not UTF-8 while it reconnects, e.g. caught mid-rotation).
    Afterwards the pool reconnects fine and the data path keeps writing (the replay ledger
    on every client assertion, run registries, role leases), each write resetting
    ``stale_for``; the versions never move again, so revocations made on other replicas are
    never loaded -- with no bound at all."""
    settings, mine, other = pair
    assert settings.password_file is not None
    password = settings.password_file.read_bytes()
    mine.start_watching()
    _wait(lambda: mine.stale_for() < 0.3)

    settings.password_file.write_bytes(b"\xff\xfe" + password)  # mid-rotation garbage
    _terminate(pg_server, "mine")
    time.sleep(1.0)  # the watcher tries to reconnect, and dies
    settings.password_file.write_bytes(password)

    before = mine.version("revocations")
    _touch(other, "revocations")  # a revocation on another replica
    deadline = time.monotonic() + 3 * settings.max_staleness
    while time.monotonic() < deadline:
        with mine.transaction() as cur:  # this replica's own traffic
            cur.execute("SELECT 1")
        time.sleep(0.05)

    learned = mine.version("revocations") > before
    assert learned or mine.stale_for() > settings.max_staleness, (
        f"version stuck at {before}, yet stale_for() = {mine.stale_for():.2f} s"
    )


def test_a_watcher_thread_that_dies_is_stale_and_started_again(
    pair: tuple[PostgresStateSettings, PostgresDatabase, PostgresDatabase],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """What holds: whatever ends the watcher thread, its own traffic keeps nothing fresh:
    ``stale_for`` passes the bound while no thread reads the versions, and a new thread
    (started by ``stale_for``) makes the replica fresh again once it can read them."""
    settings, mine, _ = pair
    mine.start_watching()
    _wait(lambda: mine.stale_for() < 0.3)

    def die(conn: object) -> None:
        raise SystemExit  # ends the thread past every ``except Exception``

    monkeypatch.setattr(mine, "_reload_versions", die)
    _wait(lambda: mine.stale_for() > settings.max_staleness, timeout=5)
    with mine.transaction() as cur:
        cur.execute("SELECT 1")
    assert mine.stale_for() > settings.max_staleness

    monkeypatch.undo()
    _wait(lambda: mine.stale_for() < 0.5, timeout=5)


def test_a_store_behind_the_feed_counts_from_when_the_feed_moved(
    pair: tuple[PostgresStateSettings, PostgresDatabase, PostgresDatabase],
) -> None:
    """What holds: a store that said what it loaded is stale from the moment the feed moved
    past it (not from its last load: a quiet hour costs nothing), and fresh again once it
    says it loaded the new version."""

    class Store:
        pass

    settings, mine, other = pair
    mine.start_watching()
    store = Store()
    mine.mark_loaded(store, "revocations", mine.version("revocations"))
    time.sleep(1.5 * settings.max_staleness)  # quiet: nothing to reload
    assert mine.stale_for() < settings.max_staleness

    before = mine.version("revocations")
    _touch(other, "revocations")
    _wait(lambda: mine.version("revocations") != before, timeout=2)
    assert mine.stale_for() < settings.max_staleness  # just moved
    _wait(lambda: mine.stale_for() > settings.max_staleness, timeout=3)  # never reloaded
    assert mine.unreached_for() < 0.5  # the database itself is reached all along

    mine.mark_loaded(store, "revocations", mine.version("revocations"))
    assert mine.stale_for() < 0.5
    del store  # a store gone is no longer waited for


def test_a_history_rewound_behind_a_reconnect_moves_every_topic(
    pair: tuple[PostgresStateSettings, PostgresDatabase, PostgresDatabase],
    pg_server: PgServer,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """What holds: after a failover that lost commits, versions may climb back to the very
    values a replica holds while its watcher reconnects; the server's WAL position, behind
    the highest one seen, tells, and every topic is moved so every replica reloads."""
    _, mine, other = pair
    other.start_watching()
    mine.start_watching()
    _wait(lambda: mine._wal_high > 0)
    before = {topic: other.version(topic) for topic in TOPICS}

    monkeypatch.setattr(mine, "_wal_position", lambda conn: 1)  # the promoted standby's WAL
    _terminate(pg_server, "mine")  # the failover cuts every connection
    _wait(lambda: all(other.version(t) != before[t] for t in TOPICS), timeout=5)
