"""Following the committed audit trail from where the alerts last stopped, and who sends.

Tables (domain ``alerts``, in ``data_dir/alerts.db`` or the shared PostgreSQL database):

- ``alerts_cursor (chain, seq)``: the last record read, per chain: ``local`` for this
  gateway's own chain (SQLite state), else one row per replica of the shared trail. The
  first start begins at the tail (history is never alerted on); a restart resumes at the
  cursor, and records older than :data:`HORIZON` are skipped anyway, so a long outage or a
  replica never seen before does not bring a flood of old news.
- ``alerts_lease (name, holder, expires_at)``: with several replicas (or several gateways
  on one data directory) exactly one sends what the trail and the shared state say. Each
  renews or takes the lease in one ``UPDATE ... WHERE holder = me OR expires_at < now``,
  which PostgreSQL serialises on the row: whoever updates first holds it, the other sees
  zero rows. A holder that stops renewing loses it after ``ttl`` seconds; the next one
  resumes at the stored cursor. A row lock, not a session's advisory lock, because the
  store hands out pooled connections and a lease survives a reconnect.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path

from lockgate.alerts.trail_rules import SQL_CANDIDATES
from lockgate.audit import chain
from lockgate.audit.record import RECORD_FIELDS, AuditRow
from lockgate.store import Database, Migration, migrate, register_domain

DOMAIN = "alerts"
MIGRATIONS = (
    Migration(
        1,
        "alerts_cursor and alerts_lease: where the alerts read the trail to, and who sends",
        """
        CREATE TABLE IF NOT EXISTS alerts_cursor (
            chain TEXT PRIMARY KEY, seq INTEGER NOT NULL, updated_at REAL NOT NULL);
        CREATE TABLE IF NOT EXISTS alerts_lease (
            name TEXT PRIMARY KEY, holder TEXT NOT NULL, expires_at REAL NOT NULL);
        """,
    ),
)
register_domain(DOMAIN, MIGRATIONS)

#: Records older than this (seconds) are never alerted on, whatever the cursor says.
HORIZON = 3600.0
LOCAL = "local"
_COLUMNS = f"seq, {', '.join(RECORD_FIELDS)}, prev_hash, hash"
# Past the cursor, up to the head read before, only what a rule may take (constants only)
_LOCAL_SELECT = (
    f"SELECT {_COLUMNS} FROM audit WHERE seq > ? AND seq <= ? AND {SQL_CANDIDATES} "  # noqa: S608
    "ORDER BY seq LIMIT ?"
)
_SHARED_SELECT = (
    f"SELECT {_COLUMNS} FROM audit_records WHERE replica = ? AND seq > ? AND seq <= ? "  # noqa: S608
    f"AND {SQL_CANDIDATES} ORDER BY seq LIMIT ?"
)
# Every replica with a shipped row, one index probe each (a loose index scan: a plain
# DISTINCT would read the whole table)
_REPLICAS = """
WITH RECURSIVE r(replica) AS (
    SELECT MIN(replica) FROM audit_records
    UNION ALL
    SELECT (SELECT MIN(replica) FROM audit_records WHERE replica > r.replica)
    FROM r WHERE r.replica IS NOT NULL
)
SELECT replica FROM r WHERE replica IS NOT NULL"""


def open_alerts_db(db: Database) -> Database:
    """``db`` with the alerts tables (migrated as the store's settings allow)."""
    from lockgate.store import upgrade_allowed

    migrate(db, DOMAIN, MIGRATIONS, allowed=upgrade_allowed(db, None))
    return db


class Lease:
    """Who sends: one holder at a time, renewed on every round."""

    def __init__(self, db: Database, holder: str, *, ttl: float, name: str = "sender") -> None:
        self.db = db
        self.holder = holder
        self.ttl = ttl
        self.name = name

    def hold(self, now: float) -> bool:
        """Take or renew the lease; True while this holder has it."""
        with self.db.transaction() as cur:
            cur.execute(
                "INSERT INTO alerts_lease (name, holder, expires_at) VALUES (?, ?, ?) "
                "ON CONFLICT (name) DO NOTHING",
                (self.name, self.holder, now + self.ttl),
            )
            cur.execute(
                "UPDATE alerts_lease SET holder = ?, expires_at = ? "
                "WHERE name = ? AND (holder = ? OR expires_at < ?)",
                (self.holder, now + self.ttl, self.name, self.holder, now),
            )
            return cur.rowcount == 1

    def release(self) -> None:
        """Give the lease up now, so another replica need not wait for it to expire."""
        with self.db.transaction() as cur:
            cur.execute(
                "UPDATE alerts_lease SET expires_at = 0 WHERE name = ? AND holder = ?",
                (self.name, self.holder),
            )


class TrailFollower:
    """Reads committed records past the stored cursor, a batch at a time (blocking calls:
    run them off the event loop)."""

    def __init__(self, db: Database, audit_db: Path, *, shared_trail: Database | None) -> None:
        self.db = db  # the alerts tables
        self.audit_db = audit_db  # this gateway's local chain (SQLite state)
        self.shared_trail = shared_trail  # the shared trail's database (PostgreSQL state)
        self.cursor: dict[str, int] = {}

    # -- the cursor ------------------------------------------------------------------------
    def load(self, now: float) -> None:
        """The stored cursor; at the first start, the current tail (stored at once)."""
        with self.db.read() as cur:
            rows = cur.execute("SELECT chain, seq FROM alerts_cursor").fetchall()
        self.cursor = {str(c): int(s) for c, s in rows}
        if not self.cursor:
            self.cursor = self.heads()
            if self.shared_trail is None:
                self.cursor.setdefault(LOCAL, 0)
            self.save(now)

    def save(self, now: float) -> None:
        with self.db.transaction() as cur:
            for name, seq in self.cursor.items():
                cur.execute(
                    "INSERT INTO alerts_cursor (chain, seq, updated_at) VALUES (?, ?, ?) "
                    "ON CONFLICT (chain) DO UPDATE SET seq = excluded.seq, "
                    "updated_at = excluded.updated_at",
                    (name, seq, now),
                )

    # -- reading ---------------------------------------------------------------------------
    def heads(self) -> dict[str, int]:
        """The last seq of every chain there is (index probes only)."""
        if self.shared_trail is None:
            conn = self._local()
            if conn is None:
                return {}
            try:
                return {LOCAL: chain.read_head(conn)[0]}
            finally:
                conn.close()
        if self._shared_pending():
            return {}
        with self.shared_trail.read() as cur:
            replicas = [str(r[0]) for r in cur.execute(_REPLICAS).fetchall()]
            heads = {}
            for name in replicas:
                row = cur.execute(
                    "SELECT MAX(seq) FROM audit_records WHERE replica = ?", (name,)
                ).fetchone()
                heads[name] = int(row[0]) if row and row[0] is not None else 0
        return heads

    def read(self, now: float, limit: int = 1000) -> list[AuditRow]:
        """The records past the cursor a rule may take (at most ``limit`` per chain), the
        cursor moved past everything read up to the head (in memory: :meth:`save` stores
        it). Records older than HORIZON are left out."""
        out: list[AuditRow] = []
        for name, head in self.heads().items():
            after = self.cursor.get(name, 0)
            if head <= after:
                continue
            rows = self._between(name, after, head, limit)
            # fewer than asked: nothing else up to the head is of interest
            self.cursor[name] = rows[-1].seq if len(rows) == limit else head
            out.extend(r for r in rows if r.ts >= now - HORIZON)
        out.sort(key=lambda r: r.ts)
        return out

    def _between(self, name: str, after: int, head: int, limit: int) -> list[AuditRow]:
        if self.shared_trail is None:
            conn = self._local()
            if conn is None:
                return []
            try:
                rows = conn.execute(_LOCAL_SELECT, (after, head, limit)).fetchall()
            finally:
                conn.close()
            return [chain.row_from_columns(r) for r in rows]
        with self.shared_trail.read() as cur:
            rows = cur.execute(_SHARED_SELECT, (name, after, head, limit)).fetchall()
        found = [chain.row_from_columns(r) for r in rows]
        for row in found:
            row.replica = name
        return found

    def _local(self) -> sqlite3.Connection | None:
        if not self.audit_db.exists():
            return None
        conn = chain.connect(self.audit_db, readonly=True)
        has = conn.execute("SELECT 1 FROM sqlite_master WHERE type='table' AND name='audit'")
        if has.fetchone() is None:
            conn.close()
            return None
        return conn

    def _shared_pending(self) -> bool:
        """No shared trail to read yet: its tables are missing (a step that only adds
        indexes may still be pending: the trail reads the same without it)."""
        from lockgate.audit.shared import readable

        assert self.shared_trail is not None
        return not readable(self.shared_trail)


__all__ = ["DOMAIN", "HORIZON", "LOCAL", "MIGRATIONS", "Lease", "TrailFollower", "open_alerts_db"]
