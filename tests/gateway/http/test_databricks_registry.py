"""The Databricks run registry: a run id belongs to the workspace that handed it out, and a
registry written before workspaces were recorded opens and keeps its runs."""

from __future__ import annotations

import sqlite3
from pathlib import Path

from lockgate.gateway.http.profiles.databricks.registry import RunRecord, RunRegistry

OLD = "https://old.azuredatabricks.net"
NEW = "https://new.azuredatabricks.net"


def _run(run_id: int, workspace: str | None) -> RunRecord:
    return RunRecord("dbx", run_id, "prod", "etl", "r1", "t", 101, workspace=workspace)


def test_a_run_id_belongs_to_its_workspace_only() -> None:
    registry = RunRegistry(None)
    registry.add(_run(7, OLD))
    assert registry.get("dbx", 7, OLD) is not None
    assert registry.get("dbx", 7, NEW) is None  # the same id on another workspace: not ours
    registry.add(_run(7, NEW))  # the new workspace handed out 7 to us: that run is ours now
    rec = registry.get("dbx", 7, NEW)
    assert rec is not None and rec.workspace == NEW
    assert registry.get("dbx", 7, OLD) is None


def test_the_workspace_survives_a_restart(tmp_path: Path) -> None:
    path = tmp_path / "databricks_runs.db"
    first = RunRegistry(path)
    first.add(_run(7, OLD))
    first.close()
    again = RunRegistry(path)
    assert again.get("dbx", 7, NEW) is None
    rec = again.get("dbx", 7, OLD)
    assert rec is not None and rec.dag_id == "etl"


def test_a_registry_from_before_workspaces_opens_and_keeps_its_runs(tmp_path: Path) -> None:
    path = tmp_path / "databricks_runs.db"
    db = sqlite3.connect(path)
    db.execute(
        "CREATE TABLE databricks_runs (resource TEXT NOT NULL, run_id INTEGER NOT NULL, "
        "deployment TEXT, dag_id TEXT, airflow_run_id TEXT, task_id TEXT, job_id INTEGER, "
        "clusters TEXT NOT NULL DEFAULT '{}', run_page_url TEXT, created_at REAL NOT NULL, "
        "PRIMARY KEY (resource, run_id))"
    )
    db.execute(
        "INSERT INTO databricks_runs VALUES ('dbx', 7, 'prod', 'etl', 'r1', 't', 101, '{}', "
        "NULL, 1.0)"
    )
    db.commit()
    db.close()
    registry = RunRegistry(path)
    rec = registry.get("dbx", 7, OLD)  # a run started before the upgrade stays pollable
    assert rec is not None and rec.workspace is None and rec.deployment == "prod"
    registry.add(_run(8, NEW))
    assert registry.get("dbx", 8, OLD) is None
