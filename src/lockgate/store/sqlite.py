"""The embedded backend: one SQLite file (or memory), today's default.

One connection behind a lock serves every thread of the process; other processes (``serve
--workers``, the CLI) open the same file and meet in SQLite's own locking: WAL, a busy
timeout, ``BEGIN IMMEDIATE`` for writes so two writers never deadlock on an upgrade. Change
versions live in the file (``lockgate_changes``), so ``version()`` is one indexed read.
"""

from __future__ import annotations

import os
import sqlite3
import threading
from collections.abc import Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager
from pathlib import Path
from typing import Any

from lockgate.errors import StoreUnavailable
from lockgate.store.base import Cursor, Dialect

BUSY_TIMEOUT_MS = 5000

# Present in every file from its first open: touch() and version() need it before any
# store's migrations (a read-only CLI on a fresh file included).
CHANGES_DDL = (
    "CREATE TABLE IF NOT EXISTS lockgate_changes (topic TEXT PRIMARY KEY, version INTEGER NOT NULL)"
)
TOUCH_SQL = (
    "INSERT INTO lockgate_changes (topic, version) VALUES (?, 1) "
    "ON CONFLICT (topic) DO UPDATE SET version = lockgate_changes.version + 1 "
    "RETURNING version"
)
VERSION_SQL = "SELECT version FROM lockgate_changes WHERE topic = ?"


class SqliteCursor:
    """A :class:`~lockgate.store.base.Cursor` over one ``sqlite3`` cursor."""

    def __init__(self, db: SqliteDatabase, raw: sqlite3.Cursor) -> None:
        self._db = db
        self._raw = raw
        self._touched: set[str] = set()

    @property
    def rowcount(self) -> int:
        return self._raw.rowcount

    def execute(self, sql: str, params: Sequence[object] = ()) -> SqliteCursor:
        try:
            self._raw.execute(sql, tuple(params))
        except sqlite3.Error as exc:
            raise self._db.unavailable(exc) from exc
        return self

    def fetchone(self) -> tuple[Any, ...] | None:
        row: tuple[Any, ...] | None = self._raw.fetchone()
        return row

    def fetchall(self) -> list[tuple[Any, ...]]:
        return list(self._raw.fetchall())

    def touch(self, topic: str) -> None:
        if topic not in self._touched:
            self._touched.add(topic)
            self.execute(TOUCH_SQL, (topic,))
            self._raw.fetchall()


class SqliteDatabase:
    """A SQLite file (``None``: a private in-memory database)."""

    dialect: Dialect = "sqlite"

    def __init__(self, path: Path | None) -> None:
        self.path = None if path is None else Path(path)
        self.label = ":memory:" if self.path is None else str(self.path)
        if self.path is not None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            # State names deployments, DAGs and (encrypted) secrets: the gateway's alone.
            os.close(os.open(self.path, os.O_CREAT | os.O_RDWR, 0o600))
        self._lock = threading.RLock()
        self._owner: int | None = None  # thread inside a transaction (nesting is a bug)
        try:
            self._conn = sqlite3.connect(
                ":memory:" if self.path is None else self.path,
                check_same_thread=False,
                isolation_level=None,  # transactions are explicit
                timeout=BUSY_TIMEOUT_MS / 1000,
            )
            self._conn.execute(f"PRAGMA busy_timeout={BUSY_TIMEOUT_MS}")
            if self.path is not None:
                self._conn.execute("PRAGMA journal_mode=WAL")
                # A commit survives the process; only a power loss can forget the last ones.
                self._conn.execute("PRAGMA synchronous=NORMAL")
            self._conn.execute(CHANGES_DDL)
        except sqlite3.Error as exc:
            raise self.unavailable(exc) from exc

    def unavailable(self, exc: BaseException) -> StoreUnavailable:
        return StoreUnavailable(f"SQLite database {self.label}: {exc}")

    @contextmanager
    def _begin(self, begin: str, *, query_only: bool) -> Iterator[SqliteCursor]:
        with self._lock:
            if self._owner == threading.get_ident():
                raise RuntimeError(f"{self.label}: nested transaction on one thread")
            self._owner = threading.get_ident()
            try:
                raw = self._conn.cursor()
                cur = SqliteCursor(self, raw)
                if query_only:
                    cur.execute("PRAGMA query_only=ON")
                try:
                    cur.execute(begin)
                    try:
                        yield cur
                    except BaseException:
                        if self._conn.in_transaction:
                            self._conn.execute("ROLLBACK")
                        raise
                    cur.execute("COMMIT")
                finally:
                    if query_only:
                        self._conn.execute("PRAGMA query_only=OFF")
                    raw.close()
            finally:
                self._owner = None

    def transaction(self) -> AbstractContextManager[Cursor]:
        """``BEGIN IMMEDIATE``: the write lock is taken up front, so a writer waits (up to
        the busy timeout) instead of failing half-way on a lock upgrade."""
        return self._begin("BEGIN IMMEDIATE", query_only=False)

    def read(self) -> AbstractContextManager[Cursor]:
        return self._begin("BEGIN", query_only=True)

    def version(self, topic: str) -> int:
        with self._lock:
            try:
                row = self._conn.execute(VERSION_SQL, (topic,)).fetchone()
            except sqlite3.Error as exc:
                raise self.unavailable(exc) from exc
        return int(row[0]) if row else 0

    def stale_for(self) -> float:
        return 0.0

    def unreached_for(self) -> float:
        return 0.0

    def mark_loaded(self, follower: object, topic: str, version: int) -> None:
        """Nothing to follow: stores read the file itself, never a feed that can run ahead."""

    def start_watching(self) -> None:
        """Nothing to watch: ``version()`` reads the file, which every process shares."""

    def close(self) -> None:
        with self._lock:
            self._conn.close()

    def __repr__(self) -> str:
        return f"SqliteDatabase({self.label!r})"


__all__ = ["SqliteCursor", "SqliteDatabase"]
