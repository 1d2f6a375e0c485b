"""Signing keys a replica cannot reload count against the staleness bound: the change feed
answering is not enough, the keys it announced must be in memory too."""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Callable

import psycopg

from lockgate.config import PostgresStateSettings
from lockgate.errors import LockgateError
from lockgate.identity import KeyStore
from lockgate.store import PostgresDatabase


def test_keys_that_cannot_be_reloaded_count_as_stale(
    pg_state: Callable[..., PostgresStateSettings],
) -> None:
    """A session holds a lock on ``signing_keys``. Replica A hears of B's rotation through
    the change feed, but every reload of the rows times out: past ``max_staleness`` A's
    state is stale (tokens are refused) instead of serving without B's new key for as long
    as the lock is held. Once the lock goes, A reloads and is fresh again, no restart."""
    settings = pg_state(catch_up_interval=0.2, max_staleness=1.0, statement_timeout=0.5)
    master_key = os.urandom(32)
    db_a = PostgresDatabase(settings, replica_id="a")
    db_b = PostgresDatabase(settings, replica_id="b")
    try:
        db_a.start_watching()
        a = KeyStore(db_a, master_key=master_key)
        b = KeyStore(db_b, master_key=master_key)
        new = b.rotate(retire_after=3600)
        assert settings.password_file is not None
        locker = psycopg.connect(settings.dsn, password=settings.password_file.read_text().strip())
        try:
            locker.execute("LOCK TABLE signing_keys IN ACCESS EXCLUSIVE MODE")
            deadline = time.monotonic() + 3 * settings.max_staleness
            while time.monotonic() < deadline:
                with contextlib.suppress(LockgateError):  # the lock: statements time out
                    a.reload()  # the gateway's tick
                time.sleep(0.2)
            loaded = a.public_key(new.kid) is not None
            assert loaded or db_a.stale_for() > settings.max_staleness, (
                f"not loaded, yet stale_for() = {db_a.stale_for():.2f} s"
            )
        finally:
            locker.close()
        a.reload()
        assert a.public_key(new.kid) is not None
        assert db_a.stale_for() < settings.max_staleness
    finally:
        db_a.close()
        db_b.close()
