"""Sessions open now: every CQL and PostgreSQL session the gateway accepted, in every worker
and replica, so the console can list them (and an operator revoke their tokens).

An engine calls :meth:`SessionRegistry.opened` once a session logged in (its token verified,
the client greeted) and :meth:`SessionRegistry.closed` when it ends, whatever ends it. Both
are memory operations on the event loop: the rows are written by :meth:`SessionRegistry.run`
every :data:`FLUSH_INTERVAL` seconds in a worker thread, a batch of opens in a few
multi-row statements and a session that opened and closed between two flushes never
written at all, so a flood of logins costs a handful of round trips and no login waits on
the database. The tables live in the state database of domain ``live`` (the SQLite file
``live.db`` on one host, the shared PostgreSQL across replicas)::

    live_sessions(replica, worker, session_id, kind, resource, principal, deployment,
                  dag_id, run_id, task_id, try_number, map_index, jti, opened_at, peer)
    live_workers(replica, worker, last_seen)

Each worker heartbeats its ``live_workers`` row every :data:`HEARTBEAT_INTERVAL` seconds.
A worker that died (``kill -9``, a lost node) cannot delete its rows: rows of a worker
not seen for :data:`STALE_AFTER` seconds are ignored by :meth:`SessionRegistry.
open_sessions` and purged by any worker's heartbeat; a worker starting under the same
replica and number deletes its predecessor's rows first. A token or password is never
stored: the jti names the token.

Layer: gateway (it reads the store and the identity model, and imports no engine).
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from lockgate import _log
from lockgate.store import Database, Migration, StoreUnavailable, open_store, register_domain

if TYPE_CHECKING:
    from lockgate.identity import Claims

log = _log.get("gateway.live_sessions")
_T = TypeVar("_T")

DOMAIN = "live"
MIGRATIONS = (
    Migration(
        1,
        "sessions open now, per worker; worker heartbeats",
        """
        CREATE TABLE live_sessions (
            replica TEXT NOT NULL,
            worker INTEGER NOT NULL,
            session_id TEXT NOT NULL,
            kind TEXT NOT NULL,
            resource TEXT NOT NULL,
            principal TEXT NOT NULL,
            deployment TEXT,
            dag_id TEXT,
            run_id TEXT,
            task_id TEXT,
            try_number INTEGER,
            map_index INTEGER,
            jti TEXT,
            opened_at REAL NOT NULL,
            peer TEXT NOT NULL,
            PRIMARY KEY (replica, worker, session_id)
        );
        CREATE TABLE live_workers (
            replica TEXT NOT NULL,
            worker INTEGER NOT NULL,
            last_seen REAL NOT NULL,
            PRIMARY KEY (replica, worker)
        );
        """,
    ),
)
register_domain(DOMAIN, MIGRATIONS)

#: Seconds between two writes of what opened and closed meanwhile.
FLUSH_INTERVAL = 0.5
#: Seconds between two heartbeats of a worker.
HEARTBEAT_INTERVAL = 5.0
#: Seconds without a heartbeat after which a worker's sessions are taken for gone.
STALE_AFTER = 15.0
#: Rows per INSERT statement (15 parameters each: far below either database's limit).
ROWS_PER_STATEMENT = 200

_ROW = "(" + ", ".join("?" * 15) + ")"  # one session's values (the 15 columns)
_INSERT = (
    "INSERT INTO live_sessions (replica, worker, session_id, kind, resource, principal, "
    "deployment, dag_id, run_id, task_id, try_number, map_index, jti, opened_at, peer) VALUES "
)
_DELETE = "DELETE FROM live_sessions WHERE replica = ? AND worker = ? AND session_id IN "
_HEARTBEAT = (
    "INSERT INTO live_workers (replica, worker, last_seen) VALUES (?, ?, ?) "
    "ON CONFLICT (replica, worker) DO UPDATE SET last_seen = excluded.last_seen"
)
# Rows of a worker that has not beaten since ``?`` (or never did) are a dead worker's.
_PURGE_SESSIONS = (
    "DELETE FROM live_sessions WHERE NOT EXISTS (SELECT 1 FROM live_workers w "
    "WHERE w.replica = live_sessions.replica AND w.worker = live_sessions.worker "
    "AND w.last_seen >= ?)"
)
_PURGE_WORKERS = "DELETE FROM live_workers WHERE last_seen < ?"
_SELECT = (
    "SELECT s.replica, s.worker, s.session_id, s.kind, s.resource, s.principal, "
    "s.deployment, s.dag_id, s.run_id, s.task_id, s.try_number, s.map_index, s.jti, "
    "s.opened_at, s.peer FROM live_sessions s JOIN live_workers w "
    "ON w.replica = s.replica AND w.worker = s.worker WHERE w.last_seen >= ? "
    "ORDER BY s.opened_at DESC LIMIT ?"
)

#: A session's row, as written: the values of its 15 columns, in the table's order.
Row = tuple[object, ...]


@dataclass(frozen=True, slots=True)
class LiveSession:
    """A session open now, somewhere (never its token: ``jti`` names it)."""

    replica: str
    worker: int
    session_id: str
    kind: str  # "cql" | "postgres"
    resource: str
    principal: str
    deployment: str | None
    dag_id: str | None
    run_id: str | None
    task_id: str | None
    try_number: int | None
    map_index: int | None
    jti: str | None
    opened_at: float
    peer: str

    @property
    def where(self) -> str:
        """``<replica>/<worker>``: the process that holds it."""
        return f"{self.replica}/{self.worker}"


class SessionRegistry:
    """This worker's sessions, written to the ``live`` tables in batches (see the module
    docstring); :meth:`open_sessions` reads every live worker's. ``where``: the state's
    database, a SQLite path, or ``None`` (memory: tests)."""

    def __init__(
        self,
        where: Path | Database | None,
        replica: str,
        worker: int = 0,
        *,
        clock: Callable[[], float] = time.time,
        stale_after: float = STALE_AFTER,
        heartbeat_interval: float = HEARTBEAT_INTERVAL,
        flush_interval: float = FLUSH_INTERVAL,
        migrate_schema: bool | None = None,
    ) -> None:
        self.db, self._owned = open_store(where, DOMAIN, MIGRATIONS, migrate_schema=migrate_schema)
        self.replica = replica
        self.worker = int(worker)
        self.stale_after = stale_after
        self.heartbeat_interval = heartbeat_interval
        self.flush_interval = flush_interval
        self._clock = clock
        # Session ids: unique in this process (random prefix: a restart never reuses one).
        self._prefix = uuid.uuid4().hex[:8]
        self._ids = itertools.count(1)
        self._lock = threading.Lock()  # pending changes: the loop adds, a flush takes them
        self._opens: dict[str, Row] = {}
        self._closes: set[str] = set()
        self._last_beat = float("-inf")
        self._task: asyncio.Task[None] | None = None

    # -- what engines call (memory only) -------------------------------------------------------
    def opened(self, kind: str, resource: str, claims: Claims, peer: str) -> str:
        """A session of ``claims``' token logged in to ``resource``; its id for
        :meth:`closed`. Written at the next flush."""
        session_id = f"{self._prefix}-{next(self._ids)}"
        row: Row = (
            self.replica, self.worker, session_id, kind, resource, claims.sub,
            claims.deployment, claims.dag_id, claims.run_id, claims.task_id,
            claims.try_number, claims.map_index, claims.jti, self._clock(), peer[:200],
        )  # fmt: skip
        with self._lock:
            self._opens[session_id] = row
        return session_id

    def closed(self, session_id: str) -> None:
        """The session ended (any way): its row goes at the next flush (one never written
        is simply forgotten)."""
        with self._lock:
            if self._opens.pop(session_id, None) is None:
                self._closes.add(session_id)

    @property
    def pending(self) -> int:
        """Changes not yet written."""
        return len(self._opens) + len(self._closes)

    # -- writes ---------------------------------------------------------------------------------
    def start(self) -> None:
        """Forget what a previous process under this replica and worker number left, and
        heartbeat (synchronous: call before serving, off the loop on shared state)."""
        now = self._clock()
        with self.db.transaction() as cur:
            cur.execute(
                "DELETE FROM live_sessions WHERE replica = ? AND worker = ?",
                (self.replica, self.worker),
            )
            cur.execute(_HEARTBEAT, (self.replica, self.worker, now))
        self._last_beat = now

    def flush(self) -> int:
        """Write what opened and closed since the last flush, and heartbeat when due (one
        transaction); how many changes were written. On a database that refuses, the
        changes stay pending and :class:`StoreUnavailable` is raised."""
        with self._lock:
            opens, self._opens = self._opens, {}
            closes, self._closes = self._closes, set()
        now = self._clock()
        beat = now - self._last_beat >= self.heartbeat_interval
        if not (opens or closes or beat):
            return 0
        try:
            with self.db.transaction() as cur:
                if beat:
                    cur.execute(_HEARTBEAT, (self.replica, self.worker, now))
                    cur.execute(_PURGE_SESSIONS, (now - self.stale_after,))
                    cur.execute(_PURGE_WORKERS, (now - self.stale_after,))
                rows = list(opens.values())
                for chunk in _chunks(rows, ROWS_PER_STATEMENT):
                    values = ", ".join([_ROW] * len(chunk))
                    cur.execute(_INSERT + values, [v for row in chunk for v in row])
                for ids in _chunks(sorted(closes), ROWS_PER_STATEMENT):
                    marks = ", ".join("?" * len(ids))
                    cur.execute(_DELETE + "(" + marks + ")", (self.replica, self.worker, *ids))
        except BaseException:
            self._keep(opens, closes)
            raise
        if beat:
            self._last_beat = now
        return len(opens) + len(closes)

    def _keep(self, opens: dict[str, Row], closes: set[str]) -> None:
        """Put back changes a failed flush did not write (ahead of those made meanwhile)."""
        with self._lock:
            for session_id, row in opens.items():
                if session_id in self._closes:  # closed meanwhile: never written, forget both
                    self._closes.discard(session_id)
                else:
                    self._opens[session_id] = row
            self._closes |= closes

    def stop(self) -> None:
        """This worker stops: its rows and heartbeat go (what is pending is dropped)."""
        with self._lock:
            self._opens.clear()
            self._closes.clear()
        with self.db.transaction() as cur:
            cur.execute(
                "DELETE FROM live_sessions WHERE replica = ? AND worker = ?",
                (self.replica, self.worker),
            )
            cur.execute(
                "DELETE FROM live_workers WHERE replica = ? AND worker = ?",
                (self.replica, self.worker),
            )

    async def run(self) -> None:
        """Flush every ``flush_interval`` seconds, in a worker thread, until cancelled; a
        database that refuses is logged and tried again at the next round."""
        while True:
            await asyncio.sleep(self.flush_interval)
            try:
                await asyncio.to_thread(self.flush)
            except StoreUnavailable as exc:
                log.warning("live sessions not written", extra={"fields": {"error": str(exc)}})

    def serve(self) -> None:
        """Start :meth:`run` as a task of the running loop (:meth:`aclose` ends it)."""
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self.run(), name="live-sessions")

    async def aclose(self) -> None:
        """End the flushing task and delete this worker's rows (off the loop)."""
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        try:
            await asyncio.to_thread(self.stop)
        except StoreUnavailable as exc:  # its rows lapse with its heartbeat
            log.warning("live sessions not cleared", extra={"fields": {"error": str(exc)}})
        self.close()

    def close(self) -> None:
        """Close the database if this registry opened it (a path or memory)."""
        if self._owned:
            self.db.close()

    # -- reads ----------------------------------------------------------------------------------
    def open_sessions(self, limit: int = 1000) -> list[LiveSession]:
        """Sessions open now in every worker seen within ``stale_after`` seconds, newest
        first (as of their workers' last flush)."""
        with self.db.read() as cur:
            rows = cur.execute(_SELECT, (self._clock() - self.stale_after, int(limit))).fetchall()
        return [_session(row) for row in rows]


def _session(row: Sequence[Any]) -> LiveSession:
    (replica, worker, session_id, kind, resource, principal, deployment, dag_id, run_id,
     task_id, try_number, map_index, jti, opened_at, peer) = row  # fmt: skip
    return LiveSession(
        str(replica), int(worker), str(session_id), str(kind), str(resource), str(principal),
        _text(deployment), _text(dag_id), _text(run_id), _text(task_id), _int(try_number),
        _int(map_index), _text(jti), float(opened_at), str(peer),
    )  # fmt: skip


def _text(value: object) -> str | None:
    return None if value is None else str(value)


def _int(value: Any) -> int | None:
    return None if value is None else int(value)


def _chunks(items: Sequence[_T], size: int) -> list[Sequence[_T]]:
    return [items[i : i + size] for i in range(0, len(items), size)]


class NoLiveSessions:
    """What engines are given when nothing keeps a registry (tests, the CLI)."""

    def opened(self, kind: str, resource: str, claims: Claims, peer: str) -> str | None:
        return None

    def closed(self, session_id: str) -> None:
        return None


__all__ = [
    "DOMAIN",
    "FLUSH_INTERVAL",
    "HEARTBEAT_INTERVAL",
    "MIGRATIONS",
    "STALE_AFTER",
    "LiveSession",
    "NoLiveSessions",
    "SessionRegistry",
]
