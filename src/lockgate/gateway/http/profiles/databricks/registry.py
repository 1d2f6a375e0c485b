"""Which Databricks runs were started through Lockgate, and by whom.

A small SQLite table in the data directory (``databricks_runs.db``), filled from the
upstream's answers to ``jobs/run-now`` and ``jobs/runs/submit``. It lets the gateway answer
"may this caller read or cancel run N?" (only the DAG that started it, or a triggerer poll
token of the same deployment) and lets an auditor map runs back to DAG runs.

Rows are keyed by (resource, run_id) and name the workspace (the upstream URL) that handed
out the run id: a resource moved to another workspace (a reload, an edited file) owns
nothing there, since run ids are small integers per workspace. Rows written before the
workspace was recorded match any workspace. Reads
are served from an in-memory cache of recent rows; writes go straight to SQLite (one small
INSERT per started run, not per request).
"""

from __future__ import annotations

import json
import sqlite3
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

_SCHEMA = """
CREATE TABLE IF NOT EXISTS databricks_runs (
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
)
"""
_INSERT = (
    "INSERT OR REPLACE INTO databricks_runs (resource, run_id, deployment, dag_id, "
    "airflow_run_id, task_id, job_id, clusters, run_page_url, created_at, workspace) "
    "VALUES (?,?,?,?,?,?,?,?,?,?,?)"
)
_SELECT = (
    "SELECT resource, run_id, deployment, dag_id, airflow_run_id, task_id, job_id, clusters, "
    "run_page_url, created_at, workspace FROM databricks_runs WHERE resource = ? AND run_id = ?"
)
_CACHE_MAX = 4096


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

    def of(self, workspace: str | None) -> bool:
        """The run id was handed out by ``workspace`` (or by an unrecorded one)."""
        return self.workspace is None or workspace is None or self.workspace == workspace


class RunRegistry:
    """Runs started through Lockgate; ``path=None`` keeps them in memory (tests)."""

    def __init__(self, path: Path | None) -> None:
        self._db = sqlite3.connect(
            str(path) if path is not None else ":memory:",
            check_same_thread=False,
            isolation_level=None,
        )
        if path is not None:
            self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute(_SCHEMA)
        columns = {row[1] for row in self._db.execute("PRAGMA table_info(databricks_runs)")}
        if "workspace" not in columns:  # a registry written before workspaces were recorded
            self._db.execute("ALTER TABLE databricks_runs ADD COLUMN workspace TEXT")
        self._lock = threading.Lock()
        self._cache: dict[tuple[str, int], RunRecord] = {}

    def add(self, rec: RunRecord) -> None:
        with self._lock:
            self._db.execute(
                _INSERT,
                (
                    rec.resource, rec.run_id, rec.deployment, rec.dag_id, rec.airflow_run_id,
                    rec.task_id, rec.job_id, json.dumps(rec.clusters, sort_keys=True),
                    rec.run_page_url, rec.created_at or time.time(), rec.workspace,
                ),
            )  # fmt: skip
            self._remember(rec)

    def get(self, resource: str, run_id: int, workspace: str | None = None) -> RunRecord | None:
        """The run ``resource`` started as ``run_id`` on ``workspace`` (None: any)."""
        rec = self._cache.get((resource, run_id))
        if rec is None:
            with self._lock:
                row = self._db.execute(_SELECT, (resource, run_id)).fetchone()
            if row is None:
                return None  # not cached: a run registered by another replica shows up later
            rec = RunRecord(
                row[0], row[1], row[2], row[3], row[4], row[5], row[6], json.loads(row[7]),
                row[8], row[9], row[10],
            )  # fmt: skip
            self._remember(rec)
        return rec if rec.of(workspace) else None

    def set_page_url(
        self, resource: str, run_id: int, url: str, workspace: str | None = None
    ) -> None:
        rec = self.get(resource, run_id, workspace)
        if rec is None or rec.run_page_url == url:
            return
        with self._lock:
            self._db.execute(
                "UPDATE databricks_runs SET run_page_url = ? WHERE resource = ? AND run_id = ?",
                (url, resource, run_id),
            )
        self._remember(
            RunRecord(
                rec.resource,
                rec.run_id,
                rec.deployment,
                rec.dag_id,
                rec.airflow_run_id,
                rec.task_id,
                rec.job_id,
                rec.clusters,
                url,
                rec.created_at,
                rec.workspace,
            )
        )

    def for_dag(self, dag_id: str) -> list[RunRecord]:
        with self._lock:
            rows = self._db.execute(
                "SELECT run_id, resource FROM databricks_runs WHERE dag_id = ? ORDER BY created_at",
                (dag_id,),
            ).fetchall()
        return [r for run_id, res in rows if (r := self.get(res, run_id)) is not None]

    def _remember(self, rec: RunRecord) -> None:
        if len(self._cache) >= _CACHE_MAX:
            self._cache.clear()
        self._cache[(rec.resource, rec.run_id)] = rec

    def close(self) -> None:
        with self._lock:
            self._db.close()
