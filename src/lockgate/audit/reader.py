"""Read side of the audit trail: tail, search, verify and the head anchor.

Every call opens its own short-lived read-only connection, so the CLI (another process) can
query while the server writes: WAL lets readers see the last committed state without
blocking the writer.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path

from lockgate.audit import chain
from lockgate.audit.chain import VerifyResult
from lockgate.audit.journal import Backlog, backlog, journal_dir
from lockgate.audit.record import GENESIS, AuditRow


class AuditReader:
    def __init__(self, db_path: Path) -> None:
        self.db_path = Path(db_path)

    @contextmanager
    def _conn(self) -> Iterator[sqlite3.Connection | None]:
        if not self.db_path.exists():  # nothing written yet; do not create an empty file
            yield None
            return
        conn = chain.connect(self.db_path, readonly=True)
        try:
            yield conn
        finally:
            conn.close()

    def tail(self, n: int = 20) -> list[AuditRow]:
        with self._conn() as conn:
            return chain.tail(conn, n) if conn and _has_schema(conn) else []

    def search(
        self,
        dag: str | None = None,
        run: str | None = None,
        decision: str | None = None,
        event: str | None = None,
        resource: str | None = None,
        since: float | datetime | None = None,
        limit: int = 100,
    ) -> list[AuditRow]:
        """Newest ``limit`` rows matching all given filters, oldest first. ``since``: unix ts."""
        if isinstance(since, datetime):
            since = since.timestamp()
        with self._conn() as conn:
            if not conn or not _has_schema(conn):
                return []
            return chain.search(
                conn,
                dag=dag,
                run=run,
                decision=decision,
                event=event,
                resource=resource,
                since=since,
                limit=limit,
            )

    def verify(self, anchors: Iterable[tuple[int, str]] = ()) -> VerifyResult:
        """Check the whole chain (see :func:`lockgate.audit.chain.verify`)."""
        with self._conn() as conn:
            if not conn or not _has_schema(conn):
                return VerifyResult(ok=True, checked=0)
            # one read transaction: a consistent snapshot while the server keeps appending
            conn.execute("BEGIN")
            try:
                return chain.verify(conn, anchors)
            finally:
                conn.execute("ROLLBACK")

    def journal_backlog(self) -> list[Backlog]:
        """Written-ahead records not in the chain yet, per sender (see :func:`backlog`)."""
        with self._conn() as conn:
            marks = chain.read_senders(conn) if conn and _has_schema(conn) else {}
        return backlog(journal_dir(self.db_path), marks)

    def head(self) -> tuple[int, str]:
        """(last seq, its hash): an anchor worth keeping outside the database."""
        with self._conn() as conn:
            if not conn or not _has_schema(conn):
                return (0, GENESIS)
            return chain.read_head(conn)


def _has_schema(conn: sqlite3.Connection) -> bool:
    row = conn.execute("SELECT 1 FROM sqlite_master WHERE type='table' AND name='audit'")
    return row.fetchone() is not None
