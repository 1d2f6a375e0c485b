"""A ledger of one-time values (client-assertion jtis) shared by every process on a data dir.

Why on disk: ``lockgate serve --workers N`` runs N token services behind one port and a
restart starts a fresh process, so a "seen" set in memory lets a captured assertion be
replayed to a sibling worker, or after a restart, until it expires (RFC 7523 §3 asks that a
jti be used once). One SQLite file (WAL) in the data directory is what every worker of a
gateway shares already, as the revocation store does.

Strategy: :meth:`OnceLedger.claim` is one ``INSERT OR IGNORE`` on a primary key, atomic
across processes; it says whether this caller was first. Rows live until their value's own
expiry (plus leeway), after which the value is refused on its ``exp`` anyway, and are purged
at most once a minute. A ledger that cannot answer (disk full, locked past the busy timeout)
raises, and the caller refuses the proof: fail closed.
"""

from __future__ import annotations

import os
import sqlite3
import threading
from pathlib import Path

_SCHEMA = """
CREATE TABLE IF NOT EXISTS used_once (
    scope TEXT NOT NULL, value TEXT NOT NULL, expires_at REAL NOT NULL,
    PRIMARY KEY (scope, value)
) WITHOUT ROWID
"""
_PURGE_EVERY = 60.0


class OnceLedger:
    """``claim(scope, value, expires_at, now)`` is True for the first caller only, across every
    process that opens the same ``path`` (``None``: this process only, for tools and tests)."""

    def __init__(self, path: Path | None) -> None:
        if path is not None:
            Path(path).parent.mkdir(parents=True, exist_ok=True)
            # The file names deployments and when they authenticated: keep it to the gateway.
            os.close(os.open(path, os.O_CREAT | os.O_RDWR, 0o600))
        self.path = path
        self._db = sqlite3.connect(
            ":memory:" if path is None else path, check_same_thread=False, isolation_level=None
        )
        self._db.execute("PRAGMA busy_timeout=5000")
        if path is not None:
            self._db.execute("PRAGMA journal_mode=WAL")
            # A commit survives the process (what a replay across workers or a restart needs);
            # only a power loss within an assertion's 5 minutes could forget one.
            self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.execute(_SCHEMA)
        self._lock = threading.Lock()
        self._last_purge = float("-inf")

    def claim(self, scope: str, value: str, expires_at: float, now: float) -> bool:
        """Record ``value`` as used in ``scope`` until ``expires_at``; False if it already was.

        Raises :class:`sqlite3.Error` when the ledger cannot answer."""
        with self._lock:
            if now - self._last_purge >= _PURGE_EVERY:
                self._db.execute("DELETE FROM used_once WHERE expires_at < ?", (now,))
                self._last_purge = now
            cursor = self._db.execute(
                "INSERT OR IGNORE INTO used_once VALUES (?, ?, ?)", (scope, value, expires_at)
            )
            if cursor.rowcount == 1:
                return True
            # A row whose value expired but is not purged yet is no evidence of a replay.
            cursor = self._db.execute(
                "UPDATE used_once SET expires_at = ? "
                "WHERE scope = ? AND value = ? AND expires_at < ?",
                (expires_at, scope, value, now),
            )
            return cursor.rowcount == 1

    def close(self) -> None:
        with self._lock:
            self._db.close()
