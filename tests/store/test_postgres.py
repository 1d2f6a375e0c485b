"""PostgreSQL specifics: failure and recovery, staleness, notifications lost and caught up,
passwords (rotated, wrong, never shown)."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from pathlib import Path

import psycopg
import pytest

from lockgate.config import PostgresStateSettings
from lockgate.errors import StoreUnavailable
from lockgate.store import CORE_DOMAIN, CORE_MIGRATIONS, PostgresDatabase, migrate
from tests.pgserver import PgServer
from tests.pgserver.fixtures import PgServerFactory
from tests.pgserver.state import shared_state_settings


def _wait_for(check: Callable[[], bool], timeout: float) -> float:
    """Seconds until ``check()`` held; fails after ``timeout``."""
    start = time.monotonic()
    while not check():
        if time.monotonic() - start > timeout:
            pytest.fail(f"not within {timeout} s")
        time.sleep(0.01)
    return time.monotonic() - start


@pytest.fixture
def settings(pg_state: Callable[..., PostgresStateSettings]) -> PostgresStateSettings:
    return pg_state(catch_up_interval=0.3)


@pytest.fixture
def db(settings: PostgresStateSettings) -> Iterator[PostgresDatabase]:
    database = PostgresDatabase(settings, replica_id="test")
    migrate(database, CORE_DOMAIN, CORE_MIGRATIONS)
    try:
        yield database
    finally:
        database.close()


def _raw(settings: PostgresStateSettings) -> psycopg.Connection[tuple[object, ...]]:
    assert settings.password_file is not None
    password = settings.password_file.read_text().strip()
    return psycopg.connect(settings.dsn, password=password, autocommit=True)


def test_notification_from_another_connection_moves_version(
    db: PostgresDatabase, settings: PostgresStateSettings
) -> None:
    db.start_watching()
    _wait_for(lambda: db.stale_for() < 0.3, 5)
    with _raw(settings) as conn:
        conn.execute(
            "INSERT INTO lockgate_changes VALUES ('keys', 41) "
            "ON CONFLICT (topic) DO UPDATE SET version = 41"
        )
        conn.execute("SELECT pg_notify('lockgate_state', 'keys')")
    # Far sooner than the 0.3 s catch-up poll would.
    assert _wait_for(lambda: db.version("keys") == 41, 1.0) < 0.25


def test_lost_notification_is_caught_up_by_the_poll(
    db: PostgresDatabase, settings: PostgresStateSettings
) -> None:
    db.start_watching()
    with _raw(settings) as conn:  # a change whose notification never comes
        conn.execute("INSERT INTO lockgate_changes VALUES ('roles', 7)")
    assert _wait_for(lambda: db.version("roles") == 7, 2.0) <= 0.3 + 0.3


def test_server_down_then_back_stale_grows_and_recovers_by_itself(
    pg_server_factory: PgServerFactory, tmp_path: Path
) -> None:
    server = pg_server_factory()
    settings = shared_state_settings(
        server, tmp_path, catch_up_interval=0.2, connect_timeout=1, max_staleness=10
    )
    other = PostgresDatabase(settings, replica_id="other")
    db = PostgresDatabase(settings, replica_id="watched")
    try:
        migrate(db, CORE_DOMAIN, CORE_MIGRATIONS)
        db.start_watching()
        _wait_for(lambda: db.stale_for() < 0.3, 5)
        server.pause()
        _wait_for(lambda: db.stale_for() > 1.0, 5)
        with pytest.raises(StoreUnavailable) as err, db.transaction() as cur:
            cur.touch("revocations")
        assert db.label in str(err.value)
        assert settings.password_file is not None
        assert settings.password_file.read_text().strip() not in str(err.value)
        assert db.version("revocations") == 0  # memory still answers
        server.resume()
        _wait_for(lambda: db.stale_for() < 0.5, 10)
        with other.transaction() as cur:  # the pool reconnects too: no restart of anything
            cur.touch("revocations")
        _wait_for(lambda: db.version("revocations") == 1, 1.0)
    finally:
        db.close()
        other.close()


def test_restart_costs_no_failed_call_once_back(
    pg_server_factory: PgServerFactory, tmp_path: Path
) -> None:
    server = pg_server_factory()
    db = PostgresDatabase(shared_state_settings(server, tmp_path), replica_id="r")
    try:
        migrate(db, CORE_DOMAIN, CORE_MIGRATIONS)
        with db.read() as cur:
            cur.execute("SELECT 1")
        server.restart()  # the pool's idle connection is now dead
        with db.read() as cur:
            assert cur.execute("SELECT 1").fetchone() == (1,)
    finally:
        db.close()


def test_rotated_password_is_read_at_the_next_connection(
    pg_server: PgServer, db: PostgresDatabase, settings: PostgresStateSettings
) -> None:
    role = psycopg.conninfo.conninfo_to_dict(settings.dsn)["user"]
    assert settings.password_file is not None
    pg_server.psql(f"ALTER ROLE \"{role}\" PASSWORD 'rotated-secret-1'")
    settings.password_file.write_text("rotated-secret-1\n")
    kill = "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = '%s'"
    pg_server.psql(kill % role)  # the pool's connections die; new ones need the new password
    with db.transaction() as cur:
        cur.touch("credentials")
    assert db.version("credentials") == 1


def test_wrong_password_is_a_clear_error_without_the_password(
    pg_state: Callable[..., PostgresStateSettings], tmp_path: Path
) -> None:
    wrong = tmp_path / "wrong.password"
    wrong.write_text("not-the-password-xyz\n")
    db = PostgresDatabase(pg_state(password_file=wrong, connect_timeout=1), replica_id="r")
    try:
        start = time.monotonic()
        with pytest.raises(StoreUnavailable) as err, db.read() as cur:
            cur.execute("SELECT 1")
        assert time.monotonic() - start < 3
        message = str(err.value)
        assert "password authentication failed" in message
        assert db.label in message
        assert "not-the-password-xyz" not in message
        assert db.stale_for() == float("inf")  # never reached it
    finally:
        db.close()


def test_statement_timeout_is_set_per_connection(
    pg_state: Callable[..., PostgresStateSettings],
) -> None:
    db = PostgresDatabase(pg_state(statement_timeout=0.2), replica_id="r")
    try:
        with pytest.raises(StoreUnavailable, match="statement timeout"), db.read() as cur:
            cur.execute("SELECT pg_sleep(2)")
    finally:
        db.close()


def test_close_stops_the_watcher(db: PostgresDatabase) -> None:
    db.start_watching()
    watcher = db._watcher
    assert watcher is not None and watcher.is_alive()
    start = time.monotonic()
    db.close()
    assert not watcher.is_alive()
    assert time.monotonic() - start < 2


def test_password_from_the_environment(
    settings: PostgresStateSettings, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert settings.password_file is not None
    monkeypatch.setenv("TEST_LOCKGATE_DB_PASSWORD", settings.password_file.read_text().strip())
    from_env = settings.model_copy(
        update={"password_file": None, "password_env": "TEST_LOCKGATE_DB_PASSWORD"}
    )
    db = PostgresDatabase(from_env, replica_id="env")
    try:
        with db.read() as cur:
            assert cur.execute("SELECT 1").fetchone() == (1,)
        monkeypatch.delenv("TEST_LOCKGATE_DB_PASSWORD")
        assert "TEST_LOCKGATE_DB_PASSWORD is not set" in str(db.unavailable(_connect_error(db)))
    finally:
        db.close()


def _connect_error(db: PostgresDatabase) -> BaseException:
    try:
        db._connections.kwargs()
    except psycopg.Error as exc:
        return exc
    raise AssertionError("expected the missing variable to fail the connection")


@pytest.mark.slow
def test_long_outage_then_writes_work_again_within_seconds(
    pg_server_factory: PgServerFactory, tmp_path: Path
) -> None:
    """The pool's reconnection backoff must not outlast the outage by much: writes work
    again within seconds of the server's return, not a minute later."""
    server = pg_server_factory()
    settings = shared_state_settings(server, tmp_path, connect_timeout=1, max_staleness=10)
    db = PostgresDatabase(settings, replica_id="r")
    try:
        migrate(db, CORE_DOMAIN, CORE_MIGRATIONS)
        db.start_watching()
        server.pause()
        outage_end = time.monotonic() + 12
        while time.monotonic() < outage_end:  # clients keep trying all along
            with pytest.raises(StoreUnavailable), db.transaction() as cur:
                cur.touch("runs")
            time.sleep(0.5)
        server.resume()
        back = time.monotonic()

        def write() -> bool:
            try:
                with db.transaction() as cur:
                    cur.touch("runs")
            except StoreUnavailable:
                return False
            return True

        _wait_for(write, 5)
        print(f"\nfirst write {time.monotonic() - back:.2f} s after the server came back")
        _wait_for(lambda: db.stale_for() < 1, 2)
    finally:
        db.close()
