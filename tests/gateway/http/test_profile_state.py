"""Profiles take their state from the gateway's State: the Databricks run registry lives in
the state database (a run started through one replica is known to another, and closing a
profile leaves the shared database open), and Cosmos task keys derive from the State's
master key (the one the control plane's /v1/cosmos-key derives them from)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from lockgate.config import HttpResource, PostgresStateSettings
from lockgate.credentials import cosmos as sig
from lockgate.gateway.http.profiles import make_profile
from lockgate.gateway.http.profiles.cosmos import CosmosProfile
from lockgate.gateway.http.profiles.databricks import DatabricksProfile, RunRecord
from lockgate.gateway.http.resources import ResourceState
from lockgate.store import Database, PostgresDatabase

WORKSPACE = "https://adb-1.azuredatabricks.net"


def _databricks() -> HttpResource:
    return HttpResource(
        name="dbx", kind="http", upstream=WORKSPACE, credential="c", profile="databricks"
    )


async def test_replicas_profiles_share_the_run_registry(
    pg_state: Callable[..., PostgresStateSettings], tmp_path: Path
) -> None:
    settings = pg_state()
    databases = [PostgresDatabase(settings, replica_id=f"replica-{n}") for n in (1, 2)]
    try:
        profiles = []
        for db in databases:

            def database_for(name: str, db: Database = db) -> Database:
                assert name in ("databricks_runs", "adf_runs")
                return db

            r = _databricks()
            profile = make_profile(r, ResourceState(r).target, tmp_path, database_for)
            assert isinstance(profile, DatabricksProfile)
            profiles.append(profile)
        profiles[0].registry.add(RunRecord("dbx", 42, "prod", "etl", "r1", "t", 7,
                                           workspace=WORKSPACE))  # fmt: skip
        rec = profiles[1].registry.get("dbx", 42, WORKSPACE)
        assert rec is not None and rec.dag_id == "etl"
        assert not (tmp_path / "databricks_runs.db").exists()  # nothing local
        for profile in profiles:
            await profile.close()
        with databases[0].read() as cur:  # still open: the State closes it, not a profile
            assert cur.execute("SELECT count(*) FROM databricks_runs").fetchone() == (1,)
    finally:
        for db in databases:
            db.close()


def test_cosmos_task_keys_derive_from_the_states_master_key(tmp_path: Path) -> None:
    r = HttpResource(
        name="cosmos", kind="http", upstream="http://127.0.0.1:9", credential="c",
        profile="cosmos", cosmos={"database": "sales"},
    )  # fmt: skip
    master = b"m" * 32
    profile = make_profile(r, ResourceState(r).target, tmp_path, None, master)
    assert isinstance(profile, CosmosProfile)
    expected = sig.derive_task_key(sig.task_key_secret(master, "cosmos"), "jti-1")
    assert profile.task_key("jti-1") == expected
    assert not (tmp_path / "master.key").exists()  # no key of its own made beside it
