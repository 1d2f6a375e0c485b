"""Both backends behind one fixture: a test that takes ``db`` runs on SQLite and on a real
PostgreSQL server (a fresh database each time)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TypeVar

import pytest

from lockgate.config import PostgresStateSettings
from lockgate.store import (
    CORE_DOMAIN,
    CORE_MIGRATIONS,
    Database,
    PostgresDatabase,
    SqliteDatabase,
    migrate,
)

OpenDatabase = Callable[[], Database]
T = TypeVar("T")


def on_threads(work: Callable[[Database], T], handles: list[Database]) -> list[T]:
    """``work(handle)`` on one thread per handle, all at once; the results (any order), or
    the first exception a thread raised."""
    with ThreadPoolExecutor(len(handles)) as pool:
        return list(pool.map(work, handles))


@pytest.fixture(params=["sqlite", "postgresql"])
def open_db(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[OpenDatabase]:
    """``open_db()``: another handle on the same database (another process's view)."""
    opened: list[Database] = []
    if request.param == "sqlite":
        path = tmp_path / "state.db"

        def make() -> Database:
            return SqliteDatabase(path)
    else:
        settings: PostgresStateSettings = request.getfixturevalue("pg_state")()

        def make() -> Database:
            return PostgresDatabase(settings, replica_id=f"r{len(opened)}")

    def opener() -> Database:
        db = make()
        opened.append(db)
        migrate(db, CORE_DOMAIN, CORE_MIGRATIONS)  # what any store's migrate() does first
        return db

    try:
        yield opener
    finally:
        for db in opened:
            db.close()


@pytest.fixture
def db(open_db: OpenDatabase) -> Database:
    return open_db()
