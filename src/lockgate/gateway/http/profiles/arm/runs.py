"""Which Data Factory pipeline runs were started through Lockgate, and by which DAG run.

A small table (``adf_runs``, domain ``adf_runs`` of the state database: the SQLite file
``adf_runs.db`` in the data directory, or the shared PostgreSQL database), filled from the
upstream's answer to ``createRun``. It answers two questions on the data path: which
pipeline a run id belongs to (a run is judged on its pipeline), and whether a run was
started by a given deployment, DAG and DAG run (what a triggerer's poll token may read).
On PostgreSQL a run started through one replica is known to every other: the row is
committed before the client learns the run id, so its next status read may land anywhere.

Reads go through a cache of recent rows, writes are committed before the client learns the
run id and kept in memory while PostgreSQL is away; the data path never waits on it (a miss
then answers "unknown" and the caller refuses): :mod:`lockgate.gateway.http.profiles.run_rows`.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from lockgate import _log
from lockgate.gateway.http.profiles.run_rows import RunRows
from lockgate.identity.once import open_database
from lockgate.store import Database, Migration, migrate, register_domain

if TYPE_CHECKING:
    from lockgate.identity import Claims

log = _log.get("gateway.http.arm")

DOMAIN = "adf_runs"
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
        db, owned = open_database(where)
        migrate(db, DOMAIN, MIGRATIONS)
        self._rows: RunRows[AdfRun] = RunRows(
            db, owned, insert=_INSERT, select=_SELECT, what="pipeline run registry", log=log
        )
        self.db = db

    def add(
        self, resource: str, factory: str, run_id: str, pipeline: str, claims: Claims | None
    ) -> None:
        """Record that ``claims``' task try started ``run_id`` of ``pipeline``."""
        self._rows.keep(AdfRun(
            resource, factory, run_id, pipeline, getattr(claims, "deployment", None),
            getattr(claims, "dag_id", None), getattr(claims, "run_id", None),
            getattr(claims, "task_id", None), time.time(),
        ))  # fmt: skip

    def get(self, resource: str, factory: str, run_id: str) -> AdfRun | None:
        """The run ``resource`` started as ``run_id`` in ``factory``; None when Lockgate did not
        start it (or the database cannot say right now)."""
        key = (resource, factory, run_id)
        run = self._rows.cached(key)
        if run is not None:
            return run
        row = self._rows.read(key)
        if row is None:
            return None
        run = AdfRun.from_row(row)
        self._rows.remember(run)
        return run

    def pipeline_of(self, resource: str, factory: str, run_id: str) -> str | None:
        run = self.get(resource, factory, run_id)
        return None if run is None else run.pipeline

    def close(self) -> None:
        self._rows.close()


__all__ = ["DOMAIN", "MIGRATIONS", "AdfRun", "AdfRuns"]
