"""Which Data Factory pipeline runs were started through Lockgate, and by which DAG run.

A small table (``adf_runs``, domain ``adf_runs`` of the state database: the SQLite file
``adf_runs.db`` in the data directory, or the shared PostgreSQL database), filled from the
upstream's answer to ``createRun``. It answers two questions on the data path: which
pipeline a run id belongs to (a run is judged on its pipeline), and whether a run was
started by a given deployment, DAG and DAG run (what a triggerer's poll token may read).
On PostgreSQL a run started through one replica is known to every other: the row is
committed before the client learns the run id, so its next status read may land anywhere.

Reads are served from an in-memory cache of recent rows (a row never changes); a miss is one
primary-key read. The data path never waits on an unreachable PostgreSQL: while the database
has been out of touch for more than :data:`UNREACHABLE_AFTER` seconds (or a call just
failed) a miss answers "unknown" (the run is then judged as one Lockgate did not start, and
a poll token is refused: deny by default), and a started run is kept in memory and written
when the database answers again.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from lockgate import _log
from lockgate.identity.once import LedgerUnavailable, open_database
from lockgate.store import Database, Migration, migrate, register_domain

if TYPE_CHECKING:
    from lockgate.identity import Claims

log = _log.get("gateway.http.arm")

DOMAIN = "adf_runs"
TOPIC = "runs"
MIGRATIONS = (
    Migration(
        1,
        "pipeline runs started through the gateway and the DAG run that started them",
        # IF NOT EXISTS: a file written before schema versions has the table already.
        """CREATE TABLE IF NOT EXISTS adf_runs (
            resource TEXT NOT NULL, factory TEXT NOT NULL, run_id TEXT NOT NULL,
            pipeline TEXT NOT NULL, deployment TEXT, dag_id TEXT, airflow_run_id TEXT,
            task_id TEXT, created_at REAL NOT NULL,
            PRIMARY KEY (resource, factory, run_id)
        )""",
    ),
)
register_domain(DOMAIN, MIGRATIONS)

_COLUMNS = (
    "resource, factory, run_id, pipeline, deployment, dag_id, airflow_run_id, task_id, created_at"
)
# A run id is ADF's, handed out once; a second answer naming it changes nothing.
_INSERT = (
    f"INSERT INTO adf_runs ({_COLUMNS}) VALUES (?,?,?,?,?,?,?,?,?) "  # noqa: S608
    "ON CONFLICT (resource, factory, run_id) DO NOTHING"
)
_SELECT = (
    f"SELECT {_COLUMNS} FROM adf_runs "  # noqa: S608
    "WHERE resource = ? AND factory = ? AND run_id = ?"
)
_CACHE_MAX = 4096
#: seconds out of touch after which the database is not asked on the data path
UNREACHABLE_AFTER = 3.0
#: seconds the database is not asked again after a call failed
_BACKOFF = 5.0

RunKey = tuple[str, str, str]  # (resource, factory, run id)


@dataclass(frozen=True, slots=True)
class AdfRun:
    """One pipeline run started through Lockgate, and the task try that started it."""

    resource: str
    factory: str
    run_id: str
    pipeline: str
    deployment: str | None
    dag_id: str | None
    airflow_run_id: str | None
    task_id: str | None
    created_at: float

    @property
    def key(self) -> RunKey:
        return (self.resource, self.factory, self.run_id)

    def row(self) -> tuple[object, ...]:
        return (
            self.resource, self.factory, self.run_id, self.pipeline, self.deployment,
            self.dag_id, self.airflow_run_id, self.task_id, self.created_at,
        )  # fmt: skip

    @classmethod
    def from_row(cls, row: tuple[Any, ...]) -> AdfRun:
        return cls(
            str(row[0]), str(row[1]), str(row[2]), str(row[3]), row[4], row[5], row[6],
            row[7], float(row[8]),
        )  # fmt: skip


class AdfRuns:
    """Pipeline runs started through Lockgate: a SQLite file (a path), the state's database
    (shared by every replica on PostgreSQL), or ``None``: in memory (tests)."""

    def __init__(self, where: Path | Database | None) -> None:
        self.db, self._owned = open_database(where)
        migrate(self.db, DOMAIN, MIGRATIONS)
        self._lock = threading.Lock()
        self._cache: dict[RunKey, AdfRun] = {}
        self._unwritten: dict[RunKey, AdfRun] = {}  # kept while the database is away
        self._failed_at = float("-inf")

    def add(
        self, resource: str, factory: str, run_id: str, pipeline: str, claims: Claims | None
    ) -> None:
        """Record that ``claims``' task try started ``run_id`` of ``pipeline``."""
        run = AdfRun(
            resource, factory, run_id, pipeline, getattr(claims, "deployment", None),
            getattr(claims, "dag_id", None), getattr(claims, "run_id", None),
            getattr(claims, "task_id", None), time.time(),
        )  # fmt: skip
        self._remember(run)
        with self._lock:
            self._unwritten[run.key] = run
        self._flush()

    def get(self, resource: str, factory: str, run_id: str) -> AdfRun | None:
        """The run ``resource`` started as ``run_id`` in ``factory``; None when Lockgate did not
        start it (or the database cannot say right now)."""
        key = (resource, factory, run_id)
        run = self._cache.get(key)
        if self._unwritten:
            self._flush()  # the database is back: other replicas learn these runs now
        if run is not None:
            return run
        row = self._read(key)
        if row is None:
            return None
        run = AdfRun.from_row(row)
        self._remember(run)
        return run

    def pipeline_of(self, resource: str, factory: str, run_id: str) -> str | None:
        run = self.get(resource, factory, run_id)
        return None if run is None else run.pipeline

    def close(self) -> None:
        self._flush()
        if self._owned:
            self.db.close()

    # -- the database, never waited on while it is away -----------------------------------
    def _reachable(self) -> bool:
        return (
            self.db.unreached_for() <= UNREACHABLE_AFTER
            and time.monotonic() - self._failed_at >= _BACKOFF
        )

    def _read(self, key: RunKey) -> tuple[Any, ...] | None:
        if not self._reachable():
            return None
        try:
            with self.db.read() as cur:
                return cur.execute(_SELECT, key).fetchone()
        except LedgerUnavailable as exc:
            self._failed(exc)
            return None

    def _flush(self) -> None:
        """Write the runs kept in memory (the one just started, and any the database missed)."""
        with self._lock:
            pending = list(self._unwritten.values())
        if not pending or not self._reachable():
            return
        try:
            with self.db.transaction() as cur:
                for run in pending:
                    cur.execute(_INSERT, run.row())
                cur.touch(TOPIC)
        except LedgerUnavailable as exc:
            self._failed(exc)
            return
        with self._lock:
            for run in pending:
                if self._unwritten.get(run.key) is run:
                    del self._unwritten[run.key]

    def _failed(self, exc: BaseException) -> None:
        self._failed_at = time.monotonic()
        log.warning(
            "pipeline run registry unavailable: runs are kept in memory and written later",
            extra={"fields": {"database": self.db.label, "error": str(exc)}},
        )

    def _remember(self, run: AdfRun) -> None:
        with self._lock:
            if len(self._cache) >= _CACHE_MAX:
                self._cache.clear()
            self._cache[run.key] = run


__all__ = ["DOMAIN", "MIGRATIONS", "AdfRun", "AdfRuns"]
