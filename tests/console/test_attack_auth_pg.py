"""The pending sign-ins' cap on the shared PostgreSQL: a full table drops its oldest
(the same statement as on SQLite), so a burst of unsigned starts shuts nobody out."""

from __future__ import annotations

from pathlib import Path

import pytest

from lockgate.console import sessions
from lockgate.console.sessions import ConsoleStore, Pending
from lockgate.store import PostgresDatabase
from tests.pgserver import PgServer
from tests.pgserver.state import shared_state_settings


def test_a_full_pending_table_drops_its_oldest(
    pg_server: PgServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(sessions, "MAX_PENDING", 3)
    db = PostgresDatabase(shared_state_settings(pg_server, tmp_path), replica_id="a")
    try:
        store = ConsoleStore(db)
        pending = Pending("n", "v", "/console/")
        for i in range(5):
            store.remember(f"burst-{i}", pending, now=1000 + i)
        store.remember("person", pending, now=1010)
        with db.read() as cur:
            cur.execute("SELECT COUNT(*) FROM console_pending")
            row = cur.fetchone()
        assert row is not None and row[0] == 3
        assert store.take("burst-0", now=1011) is None
        assert store.take("person", now=1011) == pending
    finally:
        db.close()
