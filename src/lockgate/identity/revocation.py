"""Token revocations: SQLite (WAL) on disk, answered from memory on the hot path.

Three kinds of revocation, each a table:

- ``revoked_jti``   one token, kept until the token would have expired anyway;
- ``revoked_dag``   every token of a DAG (optionally one run) issued at or before a moment;
- ``revoked_try``   every token of one task try (the Airflow listener sends this when a
  try ends, so a leaked token dies with its task).

Rules: :meth:`is_revoked` never touches SQLite; it reads sets and dicts rebuilt by
:meth:`refresh`, which is cheap when nothing changed (``PRAGMA data_version`` only moves when
*another* connection commits — our own writes update memory directly). Rows are purged once
no token they could match can still be valid (``retention`` seconds, default a day, longer
than any token's max TTL).
"""

from __future__ import annotations

import sqlite3
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lockgate.identity.model import Claims

ANY_DEPLOYMENT = "*"  # stored for revoke_dag(deployment=None)

_SCHEMA = """
CREATE TABLE IF NOT EXISTS revoked_jti (
    jti TEXT PRIMARY KEY, expires_at REAL NOT NULL, reason TEXT NOT NULL, revoked_at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS revoked_dag (
    deployment TEXT NOT NULL, dag_id TEXT NOT NULL, run_id TEXT NOT NULL DEFAULT '',
    before REAL NOT NULL, expires_at REAL NOT NULL, reason TEXT NOT NULL,
    PRIMARY KEY (deployment, dag_id, run_id)
);
CREATE TABLE IF NOT EXISTS revoked_try (
    deployment TEXT NOT NULL, dag_id TEXT NOT NULL, task_id TEXT NOT NULL, run_id TEXT NOT NULL,
    try_number INTEGER NOT NULL, map_index INTEGER NOT NULL,
    expires_at REAL NOT NULL, reason TEXT NOT NULL, revoked_at REAL NOT NULL,
    PRIMARY KEY (deployment, dag_id, task_id, run_id, try_number, map_index)
);
"""

TryKey = tuple[str, str, str, str, int, int]


@dataclass(frozen=True, slots=True)
class Revocation:
    """One row, as :meth:`RevocationStore.list` shows it."""

    kind: str  # "jti" | "dag" | "task_try"
    target: dict[str, Any]
    reason: str
    expires_at: float


class RevocationStore:
    def __init__(
        self,
        db_path: Path,
        *,
        retention: int = 86400,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.path = Path(db_path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._retention = retention
        self._clock = clock
        self._lock = threading.Lock()
        self._db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA busy_timeout=5000")
        self._db.executescript(_SCHEMA)
        self._jtis: dict[str, float] = {}
        # (deployment, dag_id) -> {run_id or "": before}; "" means every run.
        self._dags: dict[tuple[str, str], dict[str, float]] = {}
        self._tries: set[TryKey] = set()
        self._version: int | None = None
        self._last_purge = float("-inf")
        self.refresh(force=True)

    def close(self) -> None:
        with self._lock:
            self._db.close()

    # -- writes -------------------------------------------------------------------------------
    def revoke_jti(self, jti: str, expires_at: float, reason: str = "") -> None:
        now = self._clock()
        with self._lock:
            self._db.execute(
                "INSERT OR REPLACE INTO revoked_jti VALUES (?, ?, ?, ?)",
                (jti, expires_at, reason, now),
            )
            self._jtis[jti] = expires_at

    def revoke_dag(
        self, deployment: str | None, dag_id: str, run_id: str | None = None, reason: str = ""
    ) -> None:
        """Revoke every token of ``dag_id`` (and ``run_id``) issued up to now."""
        now = self._clock()
        dep = deployment or ANY_DEPLOYMENT
        run = run_id or ""
        with self._lock:
            self._db.execute(
                "INSERT OR REPLACE INTO revoked_dag VALUES (?, ?, ?, ?, ?, ?)",
                (dep, dag_id, run, now, now + self._retention, reason),
            )
            self._dags.setdefault((dep, dag_id), {})[run] = now

    def revoke_task_try(
        self,
        deployment: str,
        dag_id: str,
        task_id: str,
        run_id: str,
        try_number: int,
        map_index: int = -1,
        reason: str = "",
    ) -> None:
        """Revoke every token of one task try, whenever issued."""
        now = self._clock()
        key: TryKey = (deployment, dag_id, task_id, run_id, int(try_number), int(map_index))
        with self._lock:
            self._db.execute(
                "INSERT OR REPLACE INTO revoked_try VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (*key, now + self._retention, reason, now),
            )
            self._tries.add(key)

    # -- reads --------------------------------------------------------------------------------
    def is_revoked(self, claims: Claims) -> bool:
        if claims.jti in self._jtis:
            return True
        if (
            self._tries
            and (
                claims.deployment,
                claims.dag_id,
                claims.task_id,
                claims.run_id,
                claims.try_number,
                claims.map_index,
            )
            in self._tries
        ):
            return True
        if self._dags:
            for dep in (claims.deployment, ANY_DEPLOYMENT):
                runs = self._dags.get((dep, claims.dag_id))
                if not runs:
                    continue
                # A token issued in the same second as the revocation counts as before it:
                # iat has one-second resolution and erring towards revoked is the safe side.
                for run in ("", claims.run_id):
                    before = runs.get(run)
                    if before is not None and claims.iat <= before:
                        return True
        return False

    def refresh(self, force: bool = False) -> bool:
        """Reload from SQLite if another connection committed. Returns True if it reloaded."""
        with self._lock:
            version = self._db.execute("PRAGMA data_version").fetchone()[0]
            now = self._clock()
            # Reload when someone else committed, and once a minute regardless so rows that
            # expired (including our own writes) also leave memory.
            purge_due = now - self._last_purge >= 60
            if not force and version == self._version and not purge_due:
                return False
            if purge_due:
                self._purge(now)
            jtis = dict(self._db.execute("SELECT jti, expires_at FROM revoked_jti"))
            dags: dict[tuple[str, str], dict[str, float]] = {}
            for dep, dag, run, before in self._db.execute(
                "SELECT deployment, dag_id, run_id, before FROM revoked_dag"
            ):
                dags.setdefault((dep, dag), {})[run] = before
            tries: set[TryKey] = set(
                self._db.execute(
                    "SELECT deployment, dag_id, task_id, run_id, try_number, map_index "
                    "FROM revoked_try"
                )
            )
            # Swap whole objects so concurrent readers never see a half-built view.
            self._jtis, self._dags, self._tries = jtis, dags, tries
            self._version = self._db.execute("PRAGMA data_version").fetchone()[0]
            return True

    def list(self) -> list[Revocation]:
        out: list[Revocation] = []
        with self._lock:
            for jti, exp, reason in self._db.execute(
                "SELECT jti, expires_at, reason FROM revoked_jti ORDER BY revoked_at"
            ):
                out.append(Revocation("jti", {"jti": jti}, reason, exp))
            for dep, dag, run, before, exp, reason in self._db.execute(
                "SELECT deployment, dag_id, run_id, before, expires_at, reason FROM revoked_dag "
                "ORDER BY before"
            ):
                target = {
                    "deployment": None if dep == ANY_DEPLOYMENT else dep,
                    "dag_id": dag,
                    "run_id": run or None,
                    "issued_before": before,
                }
                out.append(Revocation("dag", target, reason, exp))
            cols = ("deployment", "dag_id", "task_id", "run_id", "try_number", "map_index")
            for row in self._db.execute(
                f"SELECT {', '.join(cols)}, expires_at, reason FROM revoked_try "  # noqa: S608
                "ORDER BY revoked_at"
            ):
                out.append(
                    Revocation("task_try", dict(zip(cols, row[:6], strict=True)), row[7], row[6])
                )
        return out

    def _purge(self, now: float) -> None:
        # Called with the lock held, at most once a minute. Only delete when there is something
        # to delete: a write here moves data_version for every other process.
        self._last_purge = now
        for table in ("revoked_jti", "revoked_dag", "revoked_try"):
            sql = f"SELECT EXISTS (SELECT 1 FROM {table} WHERE expires_at < ?)"  # noqa: S608
            if self._db.execute(sql, (now,)).fetchone()[0]:
                self._db.execute(f"DELETE FROM {table} WHERE expires_at < ?", (now,))  # noqa: S608
