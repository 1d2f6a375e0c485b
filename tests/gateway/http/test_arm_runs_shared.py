"""The Data Factory run registry over the state database: a file written before schema
versions still answers, and on PostgreSQL a run started through one replica is known to
every other (the trigger's poll may land on any replica)."""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Callable
from pathlib import Path

from lockgate.config import PostgresStateSettings
from lockgate.gateway.http.profiles.arm import AdfRuns, poll_refusal
from lockgate.store import PostgresDatabase
from tests.gateway.fakes import FakeClaims

from .test_arm_poll_tokens import poll_claims, started_by

LEGACY_SCHEMA = """
CREATE TABLE adf_runs (
    resource TEXT NOT NULL, factory TEXT NOT NULL, run_id TEXT NOT NULL, pipeline TEXT NOT NULL,
    deployment TEXT, dag_id TEXT, airflow_run_id TEXT, task_id TEXT, created_at REAL NOT NULL,
    PRIMARY KEY (resource, factory, run_id)
)
"""


def test_a_file_written_before_schema_versions_still_answers(tmp_path: Path) -> None:
    path = tmp_path / "adf_runs.db"
    db = sqlite3.connect(path)
    db.execute(LEGACY_SCHEMA)
    db.execute(
        "INSERT INTO adf_runs VALUES (?,?,?,?,?,?,?,?,?)",
        ("arm", "adf-prod", "r1", "load", "prod", "adf_load", "manual__1", "t", time.time()),
    )
    db.commit()
    db.close()
    runs = AdfRuns(path)
    try:
        run = runs.get("arm", "adf-prod", "r1")
        assert run is not None and run.pipeline == "load"
        assert poll_refusal(poll_claims(), "r1", run) is None  # still pollable after upgrade
        runs.add("arm", "adf-prod", "r2", "load", started_by("adf_load", "manual__1"))
        assert runs.get("arm", "adf-prod", "r2") is not None
    finally:
        runs.close()


def test_a_run_started_through_one_replica_is_known_to_another(
    pg_state: Callable[..., PostgresStateSettings],
) -> None:
    settings = pg_state()
    db_1 = PostgresDatabase(settings, replica_id="replica-1")
    db_2 = PostgresDatabase(settings, replica_id="replica-2")
    try:
        replica_1, replica_2 = AdfRuns(db_1), AdfRuns(db_2)
        assert replica_2.get("arm", "adf-prod", "r1") is None
        starter: FakeClaims = started_by("adf_load", "manual__1")
        replica_1.add("arm", "adf-prod", "r1", "load", starter)
        run = replica_2.get("arm", "adf-prod", "r1")
        assert run is not None
        assert (run.pipeline, run.deployment, run.dag_id, run.airflow_run_id) == (
            "load", "prod", "adf_load", "manual__1")  # fmt: skip
        assert poll_refusal(poll_claims(), "r1", run) is None
        assert poll_refusal(poll_claims(run_id="manual__2"), "r1", run) is not None
        replica_2.close()  # the state's database is not the registry's to close
        assert AdfRuns(db_2).get("arm", "adf-prod", "r1") is not None
    finally:
        db_1.close()
        db_2.close()
