"""Which Databricks runs were started through Lockgate, and by whom.

A small table (``databricks_runs``, domain ``databricks_runs`` of the state database: the
SQLite file ``databricks_runs.db`` in the data directory, or the shared PostgreSQL database),
filled from the upstream's answers to ``jobs/run-now`` and ``jobs/runs/submit``. It lets the
gateway answer "may this caller read or cancel run N?" (only the DAG that started it, or a
triggerer poll token of the same deployment) and lets an auditor map runs back to DAG runs.
On PostgreSQL a run started through one replica is known to every other: the row is
committed before the client learns the run id, so its next ``runs/get`` may land anywhere.

Rows are keyed by (resource, run_id) and name the workspace (the upstream URL) that handed
out the run id: a resource moved to another workspace (a reload, an edited file) owns
nothing there, since run ids are small integers per workspace. Rows written before the
workspace was recorded match any workspace.

Reads go through a cache of recent rows, writes are committed before the client learns the
run id and kept in memory while PostgreSQL is away; the data path never waits on it (a miss
then answers "unknown" and the caller refuses): :mod:`lockgate.gateway.http.profiles.run_rows`.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from lockgate import _log
from lockgate.gateway.http.profiles.run_rows import RunRows
from lockgate.identity.once import open_database, upgrade_allowed
from lockgate.store import Database, Migration, migrate, register_domain

log = _log.get("gateway.http.databricks")

DOMAIN = "databricks_runs"
MIGRATIONS = (
    Migration(
        1,
        "runs started through the gateway and who started them",
        # IF NOT EXISTS: a registry file written before schema versions has the table already.
        """CREATE TABLE IF NOT EXISTS databricks_runs (
            resource TEXT NOT NULL,
            run_id INTEGER NOT NULL,
            deployment TEXT,
            dag_id TEXT,
            airflow_run_id TEXT,
            task_id TEXT,
            job_id INTEGER,
            clusters TEXT NOT NULL DEFAULT '{}',
            run_page_url TEXT,
            created_at REAL NOT NULL,
            workspace TEXT,
            PRIMARY KEY (resource, run_id)
        )""",
    ),
)
register_domain(DOMAIN, MIGRATIONS)

_COLUMNS = (
    "resource, run_id, deployment, dag_id, airflow_run_id, task_id, job_id, clusters, "
    "run_page_url, created_at, workspace"
)
_UPDATED = ", ".join(f"{c} = excluded.{c}" for c in _COLUMNS.split(", ")[2:])
_INSERT = (
    f"INSERT INTO databricks_runs ({_COLUMNS}) VALUES (?,?,?,?,?,?,?,?,?,?,?) "  # noqa: S608
    f"ON CONFLICT (resource, run_id) DO UPDATE SET {_UPDATED}"
)
_SELECT = f"SELECT {_COLUMNS} FROM databricks_runs WHERE resource = ? AND run_id = ?"  # noqa: S608


@dataclass(frozen=True, slots=True)
class RunRecord:
    resource: str
    run_id: int
    deployment: str | None
    dag_id: str | None
    airflow_run_id: str | None
    task_id: str | None
    job_id: int | None
    clusters: dict[str, Any] = field(default_factory=dict)
    run_page_url: str | None = None
    created_at: float = 0.0
    workspace: str | None = None  # the upstream that handed out run_id (None: not recorded)

    @property
    def key(self) -> tuple[str, int]:
        return (self.resource, self.run_id)

    def of(self, workspace: str | None) -> bool:
        """The run id was handed out by ``workspace`` (or by an unrecorded one)."""
        return self.workspace is None or workspace is None or self.workspace == workspace

    def row(self) -> tuple[object, ...]:
        return (
            self.resource, self.run_id, self.deployment, self.dag_id, self.airflow_run_id,
            self.task_id, self.job_id, json.dumps(self.clusters, sort_keys=True),
            self.run_page_url, self.created_at or time.time(), self.workspace,
        )  # fmt: skip

    @classmethod
    def from_row(cls, row: tuple[Any, ...]) -> RunRecord:
        return cls(
            row[0], int(row[1]), row[2], row[3], row[4], row[5],
            None if row[6] is None else int(row[6]), json.loads(row[7]), row[8],
            float(row[9]), row[10],
        )  # fmt: skip


class RunRegistry:
    """Runs started through Lockgate: a SQLite file (a path), the state's database (shared
    by every replica on PostgreSQL), or ``None``: in memory (tests)."""

    def __init__(
        self, where: Path | Database | None, *, migrate_schema: bool | None = None
    ) -> None:
        db, owned = open_database(where)
        if db.dialect == "sqlite":
            _add_workspace_column(db)
        migrate(db, DOMAIN, MIGRATIONS, allowed=upgrade_allowed(db, migrate_schema))
        self._rows: RunRows[RunRecord] = RunRows(
            db, owned, insert=_INSERT, select=_SELECT, what="run registry", log=log
        )
        self.db = db

    def add(self, rec: RunRecord) -> None:
        self._rows.keep(rec if rec.created_at else replace(rec, created_at=time.time()))

    def get(self, resource: str, run_id: int, workspace: str | None = None) -> RunRecord | None:
        """The run ``resource`` started as ``run_id`` on ``workspace`` (None: any)."""
        rec = self._rows.cached((resource, run_id))
        if rec is None:
            row = self._rows.read((resource, run_id))
            if row is None:
                return None  # not started through Lockgate (or the database is away)
            rec = RunRecord.from_row(row)
            self._rows.remember(rec)
        return rec if rec.of(workspace) else None

    def set_page_url(
        self, resource: str, run_id: int, url: str, workspace: str | None = None
    ) -> None:
        rec = self.get(resource, run_id, workspace)
        if rec is None or rec.run_page_url == url:
            return
        self.add(replace(rec, run_page_url=url))

    def for_dag(self, dag_id: str) -> list[RunRecord]:
        """The runs a DAG started, oldest first (an auditor's question, not the data path)."""
        with self.db.read() as cur:
            rows = cur.execute(
                f"SELECT {_COLUMNS} FROM databricks_runs WHERE dag_id = ? "  # noqa: S608
                "ORDER BY created_at",
                (dag_id,),
            ).fetchall()
        return [RunRecord.from_row(row) for row in rows]

    def close(self) -> None:
        self._rows.close()


def _add_workspace_column(db: Database) -> None:
    """A SQLite registry written before workspaces were recorded gains the column (its rows
    keep matching any workspace)."""
    with db.transaction() as cur:
        columns = {row[1] for row in cur.execute("PRAGMA table_info(databricks_runs)").fetchall()}
        if columns and "workspace" not in columns:
            cur.execute("ALTER TABLE databricks_runs ADD COLUMN workspace TEXT")


__all__ = ["DOMAIN", "MIGRATIONS", "RunRecord", "RunRegistry"]
