"""Dynamic Cassandra roles end to end: ``POST /v1/db-role`` on a real gateway, the task logging
in DIRECTLY to the fake node with the real cassandra-driver, the node enforcing the grants,
and the role dropped by task-end revocation, by the sweeper at expiry and at gateway stop."""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import aiohttp
import pytest
from cassandra import Unauthorized
from cassandra.cluster import NoHostAvailable

from lockgate.config import load_config
from lockgate.demo.standins.cqlserver import CqlServer, start_cql_server
from lockgate.server import Gateway
from tests.gateway.role_route import DEPLOYMENT_SECRET, RoleRoute, task_coords

from .engine_stack import POLICY, SCHEMA, UPSTREAM_PASSWORD, UPSTREAM_USER, connect, run_on_fake

CONFIG = """\
data_dir: {data}
listeners:
  control: {{host: 127.0.0.1, port: 0}}
  http: {{host: 127.0.0.1, port: 0}}
  cql: {{host: 127.0.0.1, port: 0}}
deployments:
  - name: prod
    proof: {{type: client_secret, secret_sha256: {sha}}}
    dags: ["etl", "marketing", "reporting"]
resources:
  - name: cass
    kind: cql
    contact_points: ["127.0.0.1:{live}"]
    username: lockgate
    credential: cass-pw
    conn_id: cass_direct
    keyspace: ks
    connect_timeout: 1
    dynamic_roles: true
  - name: cass-gw
    kind: cql
    contact_points: ["127.0.0.1:{live}"]
    username: lockgate
    credential: cass-pw
credentials:
  - {{name: cass-pw, type: static}}
policies: ["policies/*.yaml"]
audit: {{write_timeout: 1.0, jsonl: {data}/audit.jsonl}}
"""
# reporting may mint for cass but is allowed only on a keyspace with no tables: no grants.
EXTRA_POLICY = """\
rules:
  - id: reporting-elsewhere
    effect: allow
    principals: ["airflow:prod/reporting/*"]
    actions: [read]
    resources: [cass]
    objects: ["nowhere.*"]
  - id: etl-gw
    effect: allow
    principals: ["airflow:prod/etl/*"]
    actions: [read]
    resources: [cass-gw]
"""


@dataclass
class Stack(RoleRoute):
    RESOURCE = "cass"
    gw: Gateway
    fake: CqlServer
    http: aiohttp.ClientSession
    data: Path


def coords(dag: str = "etl", try_number: int = 1, resource: str = "cass") -> dict[str, Any]:
    return task_coords(resource, dag, try_number)


@pytest.fixture
async def stack(tmp_path: Path) -> AsyncIterator[Stack]:
    fake = await start_cql_server(
        users={"cassandra": "cassandra", UPSTREAM_USER: UPSTREAM_PASSWORD},
        superusers=("cassandra", UPSTREAM_USER),
    )
    for text in SCHEMA:
        run_on_fake(fake, text)
    (tmp_path / "policies").mkdir()
    (tmp_path / "policies" / "team.yaml").write_text(POLICY)
    (tmp_path / "policies" / "extra.yaml").write_text(EXTRA_POLICY)
    cfg = tmp_path / "lockgate.yaml"
    sha = hashlib.sha256(DEPLOYMENT_SECRET.encode()).hexdigest()
    cfg.write_text(CONFIG.format(data=tmp_path / "data", live=fake.port, sha=sha))
    gw = Gateway(load_config(cfg))
    gw.state.credentials.set("cass-pw", UPSTREAM_PASSWORD)
    gw.db_role_sweep_interval = 0.2
    await gw.start()
    http = aiohttp.ClientSession()
    try:
        yield Stack(gw, fake, http, tmp_path / "data")
    finally:
        await http.close()
        await gw.stop()
        await fake.close()


def direct(stack: Stack, role: dict[str, Any]) -> Any:
    """The real driver, straight to the node as the dynamic role (blocking)."""
    return connect(stack.fake.port, role["password"], "ks", user=role["username"])


async def test_role_gets_exactly_the_policy_grants_enforced_by_the_node(stack: Stack) -> None:
    role = await stack.role()
    assert role["username"].startswith("lg_") and role["keyspace"] == "ks"
    assert role["contact_points"] == [f"127.0.0.1:{stack.fake.port}"]
    assert sorted(role["grants"]) == [
        'MODIFY ON TABLE "ks"."orders"',
        'SELECT ON TABLE "ks"."orders"',
        'SELECT ON TABLE "ks"."secrets"',
    ]
    assert abs(role["expires_at"] - (time.time() + role["expires_in"])) < 5

    def work() -> None:
        session = direct(stack, role)
        try:
            session.execute("INSERT INTO orders (id, item) VALUES (7, 'x')")
            assert [r.item for r in session.execute("SELECT * FROM orders")] == ["x"]
            session.execute("SELECT * FROM secrets")
            with pytest.raises(Unauthorized):
                session.execute("INSERT INTO secrets (id, v) VALUES (1, 'no')")
        finally:
            session.cluster.shutdown()

    await asyncio.to_thread(work)
    assert list(stack.fake.store.table("ks", "secrets").rows()) == []  # the refused write


async def test_refusals_at_the_route(stack: Stack) -> None:
    status, body = await stack.post("/v1/db-role", **coords("marketing"))
    assert status == 403 and body["reason"].startswith("no rule allows")
    status, body = await stack.post("/v1/db-role", **coords("reporting"))
    assert status == 403 and body["reason"] == "no_grants"
    status, body = await stack.post("/v1/db-role", **coords("etl", resource="cass-gw"))
    assert status == 400 and body["error"] == "invalid_target"
    status, body = await stack.post("/v1/db-role", **{**coords(), "client_secret": "wrong"})
    assert status == 401
    roles = {r for r in stack.fake.store.roles if r.startswith("lg_")}
    assert roles == set()  # nothing was created for any refusal
    stack.gw.audit.flush(2.0)
    denied = [r for r in stack.gw.audit.tail(50) if r.event == "denied"]
    assert {r.reason for r in denied} >= {"policy_denied", "no_grants"}


async def test_task_end_revocation_drops_the_role_at_once(stack: Stack) -> None:
    role = await stack.role(try_number=3)
    other = await stack.role(try_number=4)
    assert role["username"] in stack.fake.store.roles
    status, body = await stack.post("/v1/revoke", **{**coords(try_number=3), "resource": None})
    assert status == 200 and body == {"revoked": "task_try"}
    assert role["username"] not in stack.fake.store.roles
    assert other["username"] in stack.fake.store.roles  # another try keeps its role
    with pytest.raises(NoHostAvailable):
        await asyncio.to_thread(direct, stack, role)


async def test_the_sweeper_drops_the_role_when_the_token_expires(stack: Stack) -> None:
    role = await stack.role(requested_ttl=1)
    assert role["expires_in"] == 1 and role["username"] in stack.fake.store.roles
    async with asyncio.timeout(5):
        while role["username"] in stack.fake.store.roles:
            await asyncio.sleep(0.1)
    assert stack.gw.db_roles is not None and stack.gw.db_roles.roles["cass"].issued == {}


async def test_a_stop_drops_every_live_role(stack: Stack) -> None:
    role = await stack.role()
    assert stack.gw.db_roles is not None
    await stack.gw.db_roles.close()
    assert role["username"] not in stack.fake.store.roles


async def test_password_never_in_audit_or_logs(
    stack: Stack, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.DEBUG):
        role = await stack.role()
        await stack.post("/v1/revoke", **{**coords(), "resource": None})
    issued = [r for r in stack.gw.audit.tail(50) if r.event == "token_issued"]
    assert issued and issued[-1].detail["dynamic_role"] == role["username"]
    assert sorted(issued[-1].detail["grants"]) == sorted(role["grants"])
    secret = role["password"]
    assert secret.encode() not in stack.audit_bytes()
    logged = caplog.text + "".join(json.dumps(getattr(r, "fields", {})) for r in caplog.records)
    assert role["username"] in logged and secret not in logged


async def test_catalog_and_secrets_backend_give_a_direct_connection(
    stack: Stack, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    pytest.importorskip("airflow.sdk")
    from lockgate.airflow import secrets

    status, body = await stack.post("/v1/catalog")
    assert status == 200
    entry = next(e for e in body["connections"] if e["conn_id"] == "cass_direct")
    assert entry["mode"] == "dynamic_role"
    assert entry["connection"]["host"] == "127.0.0.1"
    assert entry["connection"]["port"] == stack.fake.port

    secret_file = tmp_path / "secret"
    secret_file.write_text(DEPLOYMENT_SECRET)
    backend = secrets.LockgateSecretsBackend(
        url=stack.url, deployment="prod", client_secret_file=str(secret_file)
    )
    ti = SimpleNamespace(
        dag_id="etl", task_id="load", run_id="run-1", try_number=1, map_index=-1,
        task=SimpleNamespace(execution_timeout=None),
    )  # fmt: skip
    monkeypatch.setattr(secrets, "task_coordinates", lambda: secrets.coordinates_of(ti))
    conn = await asyncio.to_thread(backend.get_connection, "cass_direct")
    assert conn.conn_type == "cassandra" and conn.host == "127.0.0.1"
    assert conn.port == stack.fake.port and conn.schema == "ks"
    assert conn.login.startswith("lg_") and conn.extra_dejson == {"protocol_version": 4}
    again = await asyncio.to_thread(backend.get_connection, "cass_direct")
    assert again.login == conn.login  # cached for the try

    def work() -> list[Any]:
        session = connect(conn.port, conn.password, conn.schema, user=conn.login)
        try:
            return list(session.execute("SELECT * FROM orders"))
        finally:
            session.cluster.shutdown()

    assert await asyncio.to_thread(work) == []
    await asyncio.to_thread(secrets.end_task_try, ti)
    assert conn.login not in stack.fake.store.roles
