"""Token revocations and mint blocks: SQLite (WAL) on disk, answered from memory.

Three kinds of revocation and one kill switch, each a table:

- ``revoked_jti``   one token, kept until the token would have expired anyway; scoped to the
  deployment that revoked it (``*`` for an operator), since a jti is no secret — task logs and
  audit records show it — so one deployment naming another's jti must revoke nothing;
- ``revoked_dag``   every token of a DAG (optionally one run) issued at or before a moment;
  ``dag_id`` ``*`` stands for every DAG of the deployment;
- ``revoked_try``   every token of one task try (the Airflow listener sends this when a
  try ends, so a leaked token dies with its task);
- ``mint_block``    the kill switch: a DAG (or, with ``dag_id`` ``*``, a whole deployment)
  gets no new token until unblocked, and every token it holds is refused meanwhile,
  whenever issued. Blocks never expire; they are persisted with who set them, when and why.

Rules: :meth:`is_revoked` never touches SQLite; it reads sets and dicts rebuilt by
:meth:`refresh`, which is cheap when nothing changed (``PRAGMA data_version`` only moves when
*another* connection commits — our own writes update memory directly). The gateway calls
:meth:`refresh` every :data:`REFRESH_INTERVAL` seconds, so a revocation stored by any process
(the CLI, another worker) is enforced everywhere well within a second. Revocation rows are
purged once no token they could match can still be valid (``retention`` seconds, default a
day, longer than any token's max TTL).
"""

from __future__ import annotations

import sqlite3
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from lockgate.identity.model import Claims

ANY_DEPLOYMENT = "*"  # stored for revoke_dag(deployment=None)
ANY_DAG = "*"  # every DAG of a deployment (Airflow dag_ids cannot contain "*")
#: Seconds between two :meth:`RevocationStore.refresh` calls of a running gateway: one
#: ``PRAGMA data_version`` each when nothing changed, so revocations land in well under 1 s.
REFRESH_INTERVAL = 0.2

_SCHEMA = """
CREATE TABLE IF NOT EXISTS revoked_jti (
    jti TEXT NOT NULL, deployment TEXT NOT NULL,
    expires_at REAL NOT NULL, reason TEXT NOT NULL, revoked_at REAL NOT NULL,
    PRIMARY KEY (jti, deployment)
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
CREATE TABLE IF NOT EXISTS mint_block (
    deployment TEXT NOT NULL, dag_id TEXT NOT NULL,
    blocked_at REAL NOT NULL, blocked_by TEXT NOT NULL, reason TEXT NOT NULL,
    PRIMARY KEY (deployment, dag_id)
);
"""

# Stores written before jti revocations were scoped to a deployment hold them for any.
_MIGRATE_UNSCOPED_JTI = """
ALTER TABLE revoked_jti RENAME TO revoked_jti_unscoped;
CREATE TABLE revoked_jti (
    jti TEXT NOT NULL, deployment TEXT NOT NULL,
    expires_at REAL NOT NULL, reason TEXT NOT NULL, revoked_at REAL NOT NULL,
    PRIMARY KEY (jti, deployment)
);
INSERT INTO revoked_jti
    SELECT jti, '*', expires_at, reason, revoked_at FROM revoked_jti_unscoped;
DROP TABLE revoked_jti_unscoped;
"""

TryKey = tuple[str, str, str, str, int, int]


# What a revocation names, as listed: field -> value (None: every one).
RevocationTarget = dict[str, str | int | float | None]


@dataclass(frozen=True, slots=True)
class Revocation:
    """One row, as :meth:`RevocationStore.list` shows it."""

    kind: str  # "jti" | "dag" | "task_try" | "block"
    target: RevocationTarget
    reason: str
    expires_at: float | None  # None: a block, which lasts until unblocked
    by: str | None = None  # blocks: who set it
    since: float | None = None  # blocks: when


@dataclass(frozen=True, slots=True)
class Block:
    """A kill switch on a DAG, or on every DAG of a deployment (``dag_id`` :data:`ANY_DAG`)."""

    deployment: str  # or ANY_DEPLOYMENT
    dag_id: str  # or ANY_DAG
    since: float
    by: str
    reason: str

    def message(self, dag_id: str | None = None) -> str:
        """What a refused mint tells DAG ``dag_id``; without it, what the block covers."""
        whole = self.dag_id == ANY_DAG
        target = "every DAG" if whole and not dag_id else f"DAG {dag_id or self.dag_id}"
        where = f" of deployment {self.deployment}" if self.deployment != ANY_DEPLOYMENT else ""
        scope = " (the whole deployment is)" if whole and dag_id else ""
        when = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(self.since))
        why = f": {self.reason}" if self.reason else ""
        return f"{target}{where} is blocked{scope} by {self.by} since {when}{why}"


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
        self._migrate()
        # jti -> the deployments whose token of that jti is revoked (ANY_DEPLOYMENT: any).
        self._jtis: dict[str, frozenset[str]] = {}
        # (deployment, dag_id) -> {run_id or "": before}; "" means every run.
        self._dags: dict[tuple[str, str], dict[str, float]] = {}
        self._tries: set[TryKey] = set()
        self._blocks: dict[tuple[str, str], Block] = {}
        self._version: int | None = None
        self._last_purge = float("-inf")
        self.refresh(force=True)

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def _migrate(self) -> None:
        self._db.execute("BEGIN IMMEDIATE")  # another process may be migrating the same file
        try:
            columns = {row[1] for row in self._db.execute("PRAGMA table_info(revoked_jti)")}
            if "deployment" not in columns:
                for statement in _MIGRATE_UNSCOPED_JTI.split(";"):
                    if statement.strip():
                        self._db.execute(statement)
            self._db.execute("COMMIT")
        except BaseException:
            self._db.execute("ROLLBACK")
            raise

    # -- writes -------------------------------------------------------------------------------
    def revoke_jti(
        self, jti: str, expires_at: float, reason: str = "", deployment: str | None = None
    ) -> None:
        """Revoke token ``jti`` if ``deployment`` issued it (``None``: whoever did)."""
        now = self._clock()
        dep = deployment or ANY_DEPLOYMENT
        with self._lock:
            self._db.execute(
                "INSERT OR REPLACE INTO revoked_jti VALUES (?, ?, ?, ?, ?)",
                (jti, dep, expires_at, reason, now),
            )
            self._jtis = {**self._jtis, jti: self._jtis.get(jti, frozenset()) | {dep}}

    def revoke_dag(
        self, deployment: str | None, dag_id: str, run_id: str | None = None, reason: str = ""
    ) -> None:
        """Revoke every token of ``dag_id`` (and ``run_id``) issued up to now; ``dag_id``
        :data:`ANY_DAG` revokes every token of ``deployment``."""
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

    def block(self, deployment: str | None, dag_id: str | None, by: str, reason: str = "") -> Block:
        """Kill switch: no new token for ``dag_id`` (``None``: every DAG of ``deployment``)
        until :meth:`unblock`, and every live token of it revoked."""
        if deployment is None and dag_id is None:
            raise ValueError("block needs a DAG, a deployment or both")
        now = self._clock()
        blk = Block(deployment or ANY_DEPLOYMENT, dag_id or ANY_DAG, now, by, reason)
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                self._db.execute(
                    "INSERT OR REPLACE INTO mint_block VALUES (?, ?, ?, ?, ?)",
                    (blk.deployment, blk.dag_id, now, by, reason),
                )
                # The revocation outlives the block: tokens issued before it stay dead after
                # an unblock.
                self._db.execute(
                    "INSERT OR REPLACE INTO revoked_dag VALUES (?, ?, '', ?, ?, ?)",
                    (blk.deployment, blk.dag_id, now, now + self._retention, reason),
                )
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._dags.setdefault((blk.deployment, blk.dag_id), {})[""] = now
            self._blocks = {**self._blocks, (blk.deployment, blk.dag_id): blk}
        return blk

    def unblock(self, deployment: str | None, dag_id: str | None) -> bool:
        """Lift a block set with the same arguments. False if there was none."""
        key = (deployment or ANY_DEPLOYMENT, dag_id or ANY_DAG)
        with self._lock:
            gone = self._db.execute(
                "DELETE FROM mint_block WHERE deployment = ? AND dag_id = ?", key
            ).rowcount
            self._blocks = {k: v for k, v in self._blocks.items() if k != key}
        return bool(gone)

    # -- reads --------------------------------------------------------------------------------
    def blocked(self, deployment: str, dag_id: str) -> Block | None:
        """The block that stops ``dag_id`` of ``deployment`` from getting tokens, if any."""
        blocks = self._blocks
        if not blocks:
            return None
        for key in (
            (deployment, dag_id),
            (ANY_DEPLOYMENT, dag_id),
            (deployment, ANY_DAG),
        ):
            blk = blocks.get(key)
            if blk is not None:
                return blk
        return None

    def is_revoked(self, claims: Claims) -> bool:
        deployments = self._jtis.get(claims.jti)
        if deployments is not None and (
            ANY_DEPLOYMENT in deployments or claims.deployment in deployments
        ):
            return True
        if self._blocks and self.blocked(claims.deployment, claims.dag_id) is not None:
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
            for key in (
                (claims.deployment, claims.dag_id),
                (ANY_DEPLOYMENT, claims.dag_id),
                (claims.deployment, ANY_DAG),
            ):
                runs = self._dags.get(key)
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
            scopes: dict[str, set[str]] = {}
            for jti, dep in self._db.execute("SELECT jti, deployment FROM revoked_jti"):
                scopes.setdefault(jti, set()).add(dep)
            jtis = {jti: frozenset(deps) for jti, deps in scopes.items()}
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
            blocks = {
                (row[0], row[1]): Block(*row)
                for row in self._db.execute(
                    "SELECT deployment, dag_id, blocked_at, blocked_by, reason FROM mint_block"
                )
            }
            # Swap whole objects so concurrent readers never see a half-built view.
            self._jtis, self._dags, self._tries = jtis, dags, tries
            self._blocks = blocks
            self._version = self._db.execute("PRAGMA data_version").fetchone()[0]
            return True

    def list(self) -> list[Revocation]:
        out: list[Revocation] = []
        with self._lock:
            for jti, dep, exp, reason in self._db.execute(
                "SELECT jti, deployment, expires_at, reason FROM revoked_jti ORDER BY revoked_at"
            ):
                target: RevocationTarget = {
                    "jti": jti,
                    "deployment": None if dep == ANY_DEPLOYMENT else dep,
                }
                out.append(Revocation("jti", target, reason, exp))
            for dep, dag, run, before, exp, reason in self._db.execute(
                "SELECT deployment, dag_id, run_id, before, expires_at, reason FROM revoked_dag "
                "ORDER BY before"
            ):
                target = {
                    "deployment": None if dep == ANY_DEPLOYMENT else dep,
                    "dag_id": None if dag == ANY_DAG else dag,
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
            for dep, dag, since, by, reason in self._db.execute(
                "SELECT deployment, dag_id, blocked_at, blocked_by, reason FROM mint_block "
                "ORDER BY blocked_at"
            ):
                target = {
                    "deployment": None if dep == ANY_DEPLOYMENT else dep,
                    "dag_id": None if dag == ANY_DAG else dag,
                }
                out.append(Revocation("block", target, reason, None, by, since))
        return out

    def _purge(self, now: float) -> None:
        # Called with the lock held, at most once a minute. Only delete when there is something
        # to delete: a write here moves data_version for every other process.
        self._last_purge = now
        for table in ("revoked_jti", "revoked_dag", "revoked_try"):
            sql = f"SELECT EXISTS (SELECT 1 FROM {table} WHERE expires_at < ?)"  # noqa: S608
            if self._db.execute(sql, (now,)).fetchone()[0]:
                self._db.execute(f"DELETE FROM {table} WHERE expires_at < ?", (now,))  # noqa: S608
