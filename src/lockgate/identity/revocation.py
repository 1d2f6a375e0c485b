"""Token revocations and mint blocks: stored in a :class:`~lockgate.store.Database` (the
SQLite file ``revocations.db`` or the shared PostgreSQL), answered from memory.

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

Rules: :meth:`is_revoked` and :meth:`blocked` never touch the database; they read sets and
dicts rebuilt by :meth:`refresh`, which is cheap when nothing changed: every write touches
the ``revocations`` topic, and :meth:`refresh` reloads only when
``database.version("revocations")`` moved (a file read on SQLite, a memory read on
PostgreSQL, where LISTEN/NOTIFY moves it). The gateway calls :meth:`refresh` every
:data:`REFRESH_INTERVAL` seconds (in a worker thread on PostgreSQL), so a revocation stored
by any process — the CLI, another worker, another replica — is enforced everywhere well
within a second. Our own writes update memory at once. Revocation rows are purged once no
token they could match can still be valid (``retention`` seconds, default a day, longer
than any token's max TTL).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import ParamSpec, TypeVar

from lockgate import _log
from lockgate.errors import StoreUnavailable
from lockgate.identity.model import Claims
from lockgate.identity.revocation_schema import (
    DOMAIN,
    EXPIRING_TABLES,
    MIGRATE_UNSCOPED_JTI,
    MIGRATIONS,
    TOPIC,
    UPSERT_BLOCK,
    UPSERT_DAG,
    UPSERT_JTI,
    UPSERT_TRY,
)
from lockgate.store import Cursor, Database, off_loop, open_store, register_domain

ANY_DEPLOYMENT = "*"  # stored for revoke_dag(deployment=None)
ANY_DAG = "*"  # every DAG of a deployment (Airflow dag_ids cannot contain "*")
#: Seconds between two :meth:`RevocationStore.refresh` calls of a running gateway: one
#: version read each when nothing changed, so revocations land in well under 1 s.
REFRESH_INTERVAL = 0.2
#: Seconds between two purges of expired rows (each also reloads memory).
PURGE_INTERVAL = 60.0
register_domain(DOMAIN, MIGRATIONS)

log = _log.get("identity.revocation")
_P = ParamSpec("_P")
_T = TypeVar("_T")

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
    """Revocations and blocks over one :class:`~lockgate.store.Database` (a path opens the
    SQLite file there), answered from memory."""

    def __init__(
        self,
        database: Path | Database,
        *,
        retention: int = 86400,
        clock: Callable[[], float] = time.time,
        migrate_schema: bool | None = None,
    ) -> None:
        # a path is a SQLite file this store opens (and closes)
        self.path = Path(database) if isinstance(database, Path | str) else None
        self.database, self._owns_database = open_store(
            database, DOMAIN, MIGRATIONS, migrate_schema=migrate_schema
        )
        self._retention = retention
        self._clock = clock
        # Held while a write or a reload runs, never by the in-memory reads: a reload that
        # read the rows before our write committed must not swap in over its memory update.
        self._lock = threading.Lock()
        if self.database.dialect == "sqlite":  # files older than schema versions
            self._scope_unscoped_jtis()
        # jti -> the deployments whose token of that jti is revoked (ANY_DEPLOYMENT: any).
        self._jtis: dict[str, frozenset[str]] = {}
        # (deployment, dag_id) -> {run_id or "": before}; "" means every run.
        self._dags: dict[tuple[str, str], dict[str, float]] = {}
        self._tries: set[TryKey] = set()
        self._blocks: dict[tuple[str, str], Block] = {}
        self._version: int | None = None
        self._last_purge = float("-inf")
        self.refresh(force=True)

    @property
    def shared(self) -> bool:
        """True on PostgreSQL: every call that reaches the database is a network round
        trip, to be made off the event loop (:meth:`off_loop`)."""
        return self.database.dialect == "postgresql"

    def stale_for(self) -> float:
        """Seconds since the database's changes were last read, or since they moved past
        what this store could reload, whichever is longer (0.0 on SQLite)."""
        return self.database.stale_for()

    async def off_loop(self, fn: Callable[_P, _T], *args: _P.args, **kwargs: _P.kwargs) -> _T:
        """``fn(*args, **kwargs)`` in a worker thread when the database is shared, inline on
        SQLite (a local file write is quicker than the thread hop)."""
        return await off_loop(self.database, fn, *args, **kwargs)

    def close(self) -> None:
        """Close the database if this store opened it (a path); a shared one is its
        owner's to close."""
        if self._owns_database:
            with self._lock:
                self.database.close()

    def _scope_unscoped_jtis(self) -> None:
        """Give a file written before jti revocations were scoped its ``deployment`` column
        (rows kept, for any deployment)."""
        with self.database.read() as cur:
            if _jti_scoped(cur):
                return
        with self.database.transaction() as cur:  # another process may convert the same file
            if not _jti_scoped(cur):
                for statement in MIGRATE_UNSCOPED_JTI:
                    cur.execute(statement)
                cur.touch(TOPIC)

    def _write(self, *statements: tuple[str, tuple[object, ...]]) -> int:
        """Run ``statements`` in one transaction that touches the topic; rows changed by
        the last one. Called with the lock held."""
        with self.database.transaction() as cur:
            for sql, params in statements:
                cur.execute(sql, params)
            changed = cur.rowcount
            cur.touch(TOPIC)
        return changed

    # -- writes -------------------------------------------------------------------------------
    def revoke_jti(
        self, jti: str, expires_at: float, reason: str = "", deployment: str | None = None
    ) -> None:
        """Revoke token ``jti`` if ``deployment`` issued it (``None``: whoever did)."""
        now = self._clock()
        dep = deployment or ANY_DEPLOYMENT
        with self._lock:
            self._write((UPSERT_JTI, (jti, dep, expires_at, reason, now)))
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
            self._write((UPSERT_DAG, (dep, dag_id, run, now, now + self._retention, reason)))
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
            self._write((UPSERT_TRY, (*key, now + self._retention, reason, now)))
            self._tries.add(key)

    def block(self, deployment: str | None, dag_id: str | None, by: str, reason: str = "") -> Block:
        """Kill switch: no new token for ``dag_id`` (``None``: every DAG of ``deployment``)
        until :meth:`unblock`, and every live token of it revoked."""
        if deployment is None and dag_id is None:
            raise ValueError("block needs a DAG, a deployment or both")
        now = self._clock()
        blk = Block(deployment or ANY_DEPLOYMENT, dag_id or ANY_DAG, now, by, reason)
        with self._lock:
            self._write(
                (UPSERT_BLOCK, (blk.deployment, blk.dag_id, now, by, reason)),
                # The revocation outlives the block: tokens issued before it stay dead after
                # an unblock.
                (UPSERT_DAG, (blk.deployment, blk.dag_id, "", now, now + self._retention,
                               reason)),
            )  # fmt: skip
            self._dags.setdefault((blk.deployment, blk.dag_id), {})[""] = now
            self._blocks = {**self._blocks, (blk.deployment, blk.dag_id): blk}
        return blk

    def unblock(self, deployment: str | None, dag_id: str | None) -> bool:
        """Lift a block set with the same arguments. False if there was none."""
        key = (deployment or ANY_DEPLOYMENT, dag_id or ANY_DAG)
        with self._lock:
            gone = self._write(("DELETE FROM mint_block WHERE deployment = ? AND dag_id = ?", key))
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

    def blocks(self) -> list[Block]:
        """Every block in force, oldest first (from memory)."""
        return sorted(self._blocks.values(), key=lambda blk: blk.since)

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
        """Reload from the database if anyone wrote since the last reload (and once a
        :data:`PURGE_INTERVAL` regardless, purging expired rows first). Returns True if it
        reloaded. On a shared database that cannot be reached, memory stays as it was (the
        verifier's staleness bound decides how long that may serve) and False is returned;
        ``force`` raises instead."""
        with self._lock:
            now = self._clock()
            # Read the version before the rows: a write landing in between is then seen
            # again at the next call, never skipped.
            version = self.database.version(TOPIC)
            purge_due = now - self._last_purge >= PURGE_INTERVAL
            if not force and version == self._version and not purge_due:
                return False
            try:
                if purge_due:
                    self._last_purge = now  # tried once per interval, even if it fails
                    self._purge(now)
                with self.database.read() as cur:
                    jtis, dags, tries, blocks = _load(cur)
            except StoreUnavailable as exc:
                if force:
                    raise
                log.warning("revocations not reloaded", extra={"fields": {"error": str(exc)}})
                return False
            # Swap whole objects so concurrent readers never see a half-built view.
            self._jtis, self._dags, self._tries = jtis, dags, tries
            self._blocks = blocks
            self._version = version
            # A reload that keeps failing then counts against the staleness bound.
            self.database.mark_loaded(self, TOPIC, version)
            return True

    def list(self) -> list[Revocation]:
        """Every stored revocation and block, oldest first within each kind (read from the
        database, not memory)."""
        out: list[Revocation] = []
        with self.database.read() as cur:
            for jti, dep, exp, reason in cur.execute(
                "SELECT jti, deployment, expires_at, reason FROM revoked_jti ORDER BY revoked_at"
            ).fetchall():
                target: RevocationTarget = {
                    "jti": jti,
                    "deployment": None if dep == ANY_DEPLOYMENT else dep,
                }
                out.append(Revocation("jti", target, reason, exp))
            for dep, dag, run, before, exp, reason in cur.execute(
                "SELECT deployment, dag_id, run_id, before, expires_at, reason FROM revoked_dag "
                "ORDER BY before"
            ).fetchall():
                target = {
                    "deployment": None if dep == ANY_DEPLOYMENT else dep,
                    "dag_id": None if dag == ANY_DAG else dag,
                    "run_id": run or None,
                    "issued_before": before,
                }
                out.append(Revocation("dag", target, reason, exp))
            cols = ("deployment", "dag_id", "task_id", "run_id", "try_number", "map_index")
            for row in cur.execute(
                f"SELECT {', '.join(cols)}, expires_at, reason FROM revoked_try "  # noqa: S608
                "ORDER BY revoked_at"
            ).fetchall():
                out.append(
                    Revocation("task_try", dict(zip(cols, row[:6], strict=True)), row[7], row[6])
                )
            for dep, dag, since, by, reason in cur.execute(
                "SELECT deployment, dag_id, blocked_at, blocked_by, reason FROM mint_block "
                "ORDER BY blocked_at"
            ).fetchall():
                target = {
                    "deployment": None if dep == ANY_DEPLOYMENT else dep,
                    "dag_id": None if dag == ANY_DAG else dag,
                }
                out.append(Revocation("block", target, reason, None, by, since))
        return out

    def _purge(self, now: float) -> None:
        # Called with the lock held, once a PURGE_INTERVAL. Only delete when there is
        # something to delete, and touch nothing: a row that can no longer match a valid
        # token changes no decision, so other processes need not reload for it.
        with self.database.transaction() as cur:
            for table in EXPIRING_TABLES:
                sql = f"SELECT 1 FROM {table} WHERE expires_at < ? LIMIT 1"  # noqa: S608
                if cur.execute(sql, (now,)).fetchone() is not None:
                    cur.execute(f"DELETE FROM {table} WHERE expires_at < ?", (now,))  # noqa: S608


def _jti_scoped(cur: Cursor) -> bool:
    """SQLite: does ``revoked_jti`` have its ``deployment`` column (migration 1 made the
    table, so it exists)."""
    columns = {row[1] for row in cur.execute("PRAGMA table_info(revoked_jti)").fetchall()}
    return "deployment" in columns


def _load(
    cur: Cursor,
) -> tuple[
    dict[str, frozenset[str]],
    dict[tuple[str, str], dict[str, float]],
    set[TryKey],
    dict[tuple[str, str], Block],
]:
    """Every revocation and block, as :class:`RevocationStore` keeps them in memory."""
    scopes: dict[str, set[str]] = {}
    for jti, dep in cur.execute("SELECT jti, deployment FROM revoked_jti").fetchall():
        scopes.setdefault(jti, set()).add(dep)
    jtis = {jti: frozenset(deps) for jti, deps in scopes.items()}
    dags: dict[tuple[str, str], dict[str, float]] = {}
    for dep, dag, run, before in cur.execute(
        "SELECT deployment, dag_id, run_id, before FROM revoked_dag"
    ).fetchall():
        dags.setdefault((dep, dag), {})[run] = before
    tries: set[TryKey] = {
        (dep, dag, task, run, int(try_number), int(map_index))
        for dep, dag, task, run, try_number, map_index in cur.execute(
            "SELECT deployment, dag_id, task_id, run_id, try_number, map_index FROM revoked_try"
        ).fetchall()
    }
    blocks = {
        (row[0], row[1]): Block(*row)
        for row in cur.execute(
            "SELECT deployment, dag_id, blocked_at, blocked_by, reason FROM mint_block"
        ).fetchall()
    }
    return jtis, dags, tries, blocks
