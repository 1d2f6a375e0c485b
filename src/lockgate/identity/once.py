"""A ledger of one-time values (client-assertion jtis) shared by every process of a gateway.

Why not memory: ``lockgate serve --workers N`` runs N token services behind one port, a
restart starts a fresh process and a shared deployment runs replicas behind a load
balancer, so a "seen" set in memory lets a captured assertion be replayed to a sibling
worker, another replica, or after a restart, until it expires (RFC 7523 §3 asks that a jti
be used once). The ledger lives in the state database (domain ``assertions``): the SQLite
file ``assertions.db`` in the data directory that every worker shares, or the shared
PostgreSQL database that every replica shares.

Strategy: :meth:`OnceLedger.claim` is one ``INSERT ... ON CONFLICT`` on a primary key, atomic
across processes and replicas; its row count says whether this caller was first (a row
whose value expired long ago is taken over: it is no evidence of a replay). Rows live until
their value's own expiry (the caller adds ``tokens.leeway``) plus :data:`CLOCK_SKEW_MARGIN`
(5 minutes), and are purged at most once a minute. The margin is there because the purging
and claiming replicas read different clocks: a replica whose clock runs ahead (NTP not yet
settled after a boot) must not forget a value another replica still accepts, so neither the
purge nor a take-over of an expired row acts on a row expired by less than the margin; such
a claim is decided by the row (refused), never by purging first. A ledger that cannot answer (disk
full, locked past the busy timeout, PostgreSQL unreachable) raises, and the caller refuses
the proof: fail closed.
"""

from __future__ import annotations

import sqlite3
import threading
from pathlib import Path

from lockgate.errors import StoreUnavailable

# open_database and upgrade_allowed: named here too for the stores that import them from here
from lockgate.store import (
    Database,
    Migration,
    open_database,
    open_store,
    register_domain,
    upgrade_allowed,
)

DOMAIN = "assertions"
MIGRATIONS = (
    Migration(
        1,
        "one-time values (client-assertion jtis) and their expiry",
        # IF NOT EXISTS: a ledger file written before schema versions has the table already.
        "CREATE TABLE IF NOT EXISTS used_once (\n"
        "    scope TEXT NOT NULL, value TEXT NOT NULL, expires_at REAL NOT NULL,\n"
        "    PRIMARY KEY (scope, value)\n"
        ")",
    ),
)
register_domain(DOMAIN, MIGRATIONS)

#: Errors that mean "the ledger cannot answer" (the caller fails closed on them).
LedgerUnavailable = (StoreUnavailable, sqlite3.Error)

_PURGE_EVERY = 60.0
#: Seconds a row is held past its value's expiry: more than the clocks of any two replicas
#: (or one process before and after a clock step) may disagree.
CLOCK_SKEW_MARGIN = 300.0
_CLAIM = (
    "INSERT INTO used_once (scope, value, expires_at) VALUES (?, ?, ?) "
    "ON CONFLICT (scope, value) DO UPDATE SET expires_at = excluded.expires_at "
    "WHERE used_once.expires_at < ?"
)


class OnceLedger:
    """``claim(scope, value, expires_at, now)`` is True for the first caller only, across every
    process on the same database (a path: that SQLite file; ``None``: this process only, for
    tools and tests; a :class:`Database`: the state's, shared by every replica)."""

    def __init__(
        self, where: Path | Database | None, *, migrate_schema: bool | None = None
    ) -> None:
        self.db, self._owned = open_store(where, DOMAIN, MIGRATIONS, migrate_schema=migrate_schema)
        self.path = Path(self.db.label) if self.db.dialect == "sqlite" and where else None
        self._lock = threading.Lock()  # guards the purge clock only
        self._last_purge = float("-inf")

    def claim(self, scope: str, value: str, expires_at: float, now: float) -> bool:
        """Record ``value`` as used in ``scope`` until ``expires_at``; False if it already was.

        Raises one of :data:`LedgerUnavailable` when the ledger cannot answer."""
        with self._lock:
            purge = now - self._last_purge >= _PURGE_EVERY
            if purge:
                self._last_purge = now
        with self.db.transaction() as cur:
            forgettable = now - CLOCK_SKEW_MARGIN  # expired by more than any clock skew
            if purge:
                cur.execute("DELETE FROM used_once WHERE expires_at < ?", (forgettable,))
            cur.execute(_CLAIM, (scope, value, expires_at, forgettable))
            return cur.rowcount == 1

    def close(self) -> None:
        if self._owned:
            self.db.close()


__all__ = [
    "CLOCK_SKEW_MARGIN",
    "DOMAIN",
    "MIGRATIONS",
    "LedgerUnavailable",
    "OnceLedger",
    "open_database",
    "upgrade_allowed",
]
