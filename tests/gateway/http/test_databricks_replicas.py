"""Two gateway replicas on one PostgreSQL state database, in front of one Databricks
workspace: a run started through replica 1 is read, polled (a triggerer's poll token) and
cancelled through replica 2, and still refused to another DAG there."""

from __future__ import annotations

import base64
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from lockgate.config import PostgresStateSettings, parse_config
from lockgate.demo.standins.databricks import DEFAULT_CLIENT_ID, FakeDatabricks, start
from lockgate.identity import TaskIdentity
from lockgate.server import Gateway, State

from .test_databricks import JOB_101, POLICY


def _config(
    tmp_path: Path, replica: str, upstream_port: int, state: dict[str, Any]
) -> dict[str, Any]:
    return {
        "data_dir": str(tmp_path / replica),
        "listeners": {"control": {"port": 0}, "http": {"port": 0}},
        "deployments": [
            {"name": "prod", "proof": {"type": "client_secret", "secret_sha256": "0" * 64},
             "dags": ["etl_*"]}
        ],
        "resources": [
            {"name": "dbx", "kind": "http", "upstream": f"http://127.0.0.1:{upstream_port}",
             "credential": "dbx-sp", "listen": {"host": "127.0.0.1", "port": 0},
             "profile": "databricks"}
        ],
        "credentials": [
            {"name": "dbx-sp", "type": "oauth2_client_credentials",
             "token_url": f"http://127.0.0.1:{upstream_port}/oidc/v1/token",
             "client_id": DEFAULT_CLIENT_ID, "scope": "all-apis",
             "token_auth": "client_secret_basic"}
        ],
        "policies": [str(tmp_path / "p.yaml")],
        "state": {"postgresql": {**state, "replica_id": replica}},
    }  # fmt: skip


@pytest.fixture
async def replicas(
    tmp_path: Path,
    pg_state: Callable[..., PostgresStateSettings],
    monkeypatch: pytest.MonkeyPatch,
) -> AsyncIterator[tuple[Gateway, Gateway]]:
    monkeypatch.setenv("LOCKGATE_MASTER_KEY", base64.b64encode(b"d" * 32).decode())
    fake = FakeDatabricks({"sp-secret-1"})
    fake.add_job(101, JOB_101)
    runner, port = await start(fake)
    (tmp_path / "p.yaml").write_text(POLICY)
    shared = pg_state().model_dump(mode="json", exclude_none=True)
    configs = [
        parse_config(_config(tmp_path, name, port, shared), tmp_path / "lockgate.yaml")
        for name in ("replica-1", "replica-2")
    ]
    seed = State(configs[0])
    seed.credentials.set("dbx-sp", "sp-secret-1")  # shared: replica 2 reads it too
    seed.close()
    gateways = [Gateway(cfg) for cfg in configs]
    try:
        for gw in gateways:
            await gw.start()
        yield gateways[0], gateways[1]
    finally:
        for gw in gateways:
            await gw.stop()
        await runner.cleanup()


async def _call(
    http: aiohttp.ClientSession, gw: Gateway, method: str, path: str, token: str,
    body: Any = None, **params: Any,
) -> tuple[int, Any]:  # fmt: skip
    url = f"http://127.0.0.1:{gw.mounted_ports['dbx']}{path}"
    headers = {"Authorization": f"Bearer {token}"}
    async with http.request(method, url, json=body, params=params or None, headers=headers) as r:
        return r.status, await r.json(content_type=None)


async def test_a_run_started_through_one_replica_is_read_through_another(
    replicas: tuple[Gateway, Gateway],
) -> None:
    first, second = replicas
    owner = first.issuer.mint(TaskIdentity("prod", "etl_daily", "run", "r1", 1), "dbx", 600)[0]
    poller = first.issuer.mint(TaskIdentity("prod", "etl_daily", "@poll", "r1", 1), "dbx", 600)[0]
    stranger = first.issuer.mint(TaskIdentity("prod", "etl_other", "run", "r1", 1), "dbx", 600)[0]
    async with aiohttp.ClientSession() as http:
        status, body = await _call(http, first, "POST", "/api/2.2/jobs/run-now", owner,
                                   {"job_id": 101})  # fmt: skip
        assert status == 200, body
        run_id = body["run_id"]
        # The client's very next request lands on the other replica.
        status, run = await _call(http, second, "GET", "/api/2.2/jobs/runs/get", owner,
                                  run_id=run_id)  # fmt: skip
        assert status == 200, run
        status, run = await _call(http, second, "GET", "/api/2.2/jobs/runs/get", poller,
                                  run_id=run_id)  # fmt: skip
        assert status == 200, run
        status, denied = await _call(http, second, "GET", "/api/2.2/jobs/runs/get", stranger,
                                     run_id=run_id)  # fmt: skip
        assert status == 403 and "started by DAG etl_daily" in denied["reason"]
        status, _ = await _call(http, second, "POST", "/api/2.2/jobs/runs/cancel", owner,
                                {"run_id": run_id})  # fmt: skip
        assert status == 200
    assert not (Path(second.config.data_dir) / "databricks_runs.db").exists()
