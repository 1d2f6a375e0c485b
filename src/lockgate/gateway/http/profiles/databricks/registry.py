"""Which Databricks runs were started through Lockgate, and by whom.

A small SQLite table in the data directory (``databricks_runs.db``), filled from the
upstream's answers to ``jobs/run-now`` and ``jobs/runs/submit``. It lets the gateway answer
"may this caller read or cancel run N?" (only the DAG that started it, or a triggerer poll
token of the same deployment) and lets an auditor map runs back to DAG runs.

Rows are keyed by (resource, run_id): two workspaces may hand out the same run id. Reads
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
    PRIMARY KEY (resource, run_id)
)
"""
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
        self._lock = threading.Lock()
        self._cache: dict[tuple[str, int], RunRecord] = {}

    def add(self, rec: RunRecord) -> None:
        with self._lock:
            self._db.execute(
                "INSERT OR REPLACE INTO databricks_runs VALUES (?,?,?,?,?,?,?,?,?,?)",
                (
                    rec.resource, rec.run_id, rec.deployment, rec.dag_id, rec.airflow_run_id,
                    rec.task_id, rec.job_id, json.dumps(rec.clusters, sort_keys=True),
                    rec.run_page_url, rec.created_at or time.time(),
                ),
            )  # fmt: skip
            self._remember(rec)

    def get(self, resource: str, run_id: int) -> RunRecord | None:
        cached = self._cache.get((resource, run_id))
        if cached is not None:
            return cached
        with self._lock:
            row = self._db.execute(
                "SELECT * FROM databricks_runs WHERE resource = ? AND run_id = ?",
                (resource, run_id),
            ).fetchone()
        if row is None:
            return None  # not cached: a run registered by another replica shows up later
        rec = RunRecord(
            row[0], row[1], row[2], row[3], row[4], row[5], row[6], json.loads(row[7]),
            row[8], row[9],
        )  # fmt: skip
        self._remember(rec)
        return rec

    def set_page_url(self, resource: str, run_id: int, url: str) -> None:
        rec = self.get(resource, run_id)
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
