"""Credentials a replica cannot reload count against the staleness bound: the change feed
answering is not enough, the rotation it announced must be in memory too."""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Callable

import psycopg

from lockgate.config import PostgresStateSettings
from lockgate.credentials import CredentialStore
from lockgate.errors import StoreUnavailable
from lockgate.store import PostgresDatabase


def test_credentials_that_cannot_be_reloaded_count_as_stale(
    pg_state: Callable[..., PostgresStateSettings],
) -> None:
    """A session holds a lock on ``credential_versions``. Replica A hears of B's rotation
    through the change feed, but every reload of the rows times out: past
    ``max_staleness`` A's state is stale (requests are refused) instead of serving the
    rotated-out secret for as long as the lock is held. Once the lock goes, A reloads and
    is fresh again, no restart."""
    settings = pg_state(catch_up_interval=0.2, max_staleness=1.0, statement_timeout=0.5)
    master_key = os.urandom(32)
    db_a = PostgresDatabase(settings, replica_id="a")
    db_b = PostgresDatabase(settings, replica_id="b")
    try:
        db_a.start_watching()
        a, b = CredentialStore(db_a, master_key), CredentialStore(db_b, master_key)
        b.set("warehouse", "first")
        a.reload()
        b.rotate("warehouse", "second")
        assert settings.password_file is not None
        locker = psycopg.connect(settings.dsn, password=settings.password_file.read_text().strip())
        try:
            locker.execute("LOCK TABLE credential_versions IN ACCESS EXCLUSIVE MODE")
            deadline = time.monotonic() + 3 * settings.max_staleness
            while time.monotonic() < deadline:
                with contextlib.suppress(StoreUnavailable):  # the lock: statements time out
                    a.reload()  # the broker's tick
                time.sleep(0.2)
            current = a.current("warehouse", fresh=False)
            rotated = current is not None and current.value == "second"
            assert rotated or db_a.stale_for() > settings.max_staleness, (
                f"not loaded, yet stale_for() = {db_a.stale_for():.2f} s"
            )
        finally:
            locker.close()
        a.reload()
        current = a.current("warehouse", fresh=False)
        assert current is not None and current.value == "second"
        assert db_a.stale_for() < settings.max_staleness
    finally:
        db_a.close()
        db_b.close()
