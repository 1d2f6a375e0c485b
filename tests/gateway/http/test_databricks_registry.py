"""The Databricks run registry: a run id belongs to the workspace that handed it out, a
registry written before workspaces were recorded opens and keeps its runs, and on shared
state (a real PostgreSQL server) a run started through one replica is known to another."""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from lockgate.config import PostgresStateSettings
from lockgate.gateway.http.profiles.databricks.registry import RunRecord, RunRegistry
from lockgate.store import PostgresDatabase
from tests.pgserver import PgServer
from tests.pgserver.state import shared_state_settings

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


def test_a_run_started_through_one_replica_is_known_to_another(
    pg_state: Callable[..., PostgresStateSettings],
) -> None:
    """Replica 1 records the run before its client learns the id; the client's next
    ``runs/get`` may land on replica 2, which must find it (ownership, poll window)."""
    settings = pg_state()
    db_1 = PostgresDatabase(settings, replica_id="replica-1")
    db_2 = PostgresDatabase(settings, replica_id="replica-2")
    try:
        replica_1, replica_2 = RunRegistry(db_1), RunRegistry(db_2)
        assert replica_2.get("dbx", 7, OLD) is None
        replica_1.add(_run(7, OLD))
        rec = replica_2.get("dbx", 7, OLD)
        assert rec is not None and (rec.deployment, rec.dag_id, rec.job_id) == ("prod", "etl", 101)
        assert rec.created_at > 0 and replica_2.get("dbx", 7, NEW) is None
        replica_2.set_page_url("dbx", 7, "https://old/#run/7", OLD)
        fresh = RunRegistry(db_1)  # replica 1 after a restart: nothing cached
        again = fresh.get("dbx", 7, OLD)
        assert again is not None and again.run_page_url == "https://old/#run/7"
        assert [r.run_id for r in fresh.for_dag("etl")] == [7]
        replica_2.close()  # the state's database is not the registry's to close
        assert RunRegistry(db_2).get("dbx", 7) is not None
    finally:
        db_1.close()
        db_2.close()


def test_a_stale_but_answering_database_is_still_asked(
    pg_state: Callable[..., PostgresStateSettings], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Staleness is about what memory holds (a store stuck behind one locked table); the
    runs' own table still answers, so a run started through one replica is found by
    another whose state went stale."""
    settings = pg_state()
    db_1 = PostgresDatabase(settings, replica_id="replica-1")
    db_2 = PostgresDatabase(settings, replica_id="replica-2")
    try:
        replica_1, replica_2 = RunRegistry(db_1), RunRegistry(db_2)
        monkeypatch.setattr(db_2, "stale_for", lambda: 60.0)
        replica_1.add(_run(9, OLD))
        assert replica_2.get("dbx", 9, OLD) is not None
    finally:
        db_1.close()
        db_2.close()


def test_an_unreachable_database_never_stalls_the_data_path(
    pg_server_factory: Callable[..., PgServer], tmp_path: Path
) -> None:
    """PostgreSQL away: after the one call that finds it gone, a miss answers "unknown" at
    once (ownership refuses), a started run is served from memory and written once the
    database answers again."""
    server = pg_server_factory()
    settings = shared_state_settings(server, tmp_path / "state", connect_timeout=1)
    db = PostgresDatabase(settings, replica_id="replica-1")
    try:
        registry = RunRegistry(db)
        registry.add(_run(1, OLD))
        server.pause()
        try:
            registry.add(_run(2, OLD))  # the write fails: the run is kept in memory
            started = time.monotonic()
            assert registry.get("dbx", 3, OLD) is None  # not asked while it is away
            assert registry.get("dbx", 2, OLD) is not None  # served from memory
            assert time.monotonic() - started < 0.5
        finally:
            server.resume()
        other = PostgresDatabase(settings, replica_id="replica-2")
        try:
            deadline = time.monotonic() + 30
            while RunRegistry(other).get("dbx", 2) is None and time.monotonic() < deadline:
                time.sleep(0.5)
                db.start_watching()  # contact again, as the server's watcher does
                registry.get("dbx", 1)  # a later request finds the database back: flushed
            assert RunRegistry(other).get("dbx", 2) is not None
        finally:
            other.close()
    finally:
        db.close()
