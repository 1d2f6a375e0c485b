"""Dynamic PostgreSQL roles end to end: ``POST /v1/db-role`` on a real gateway, the task logging
in DIRECTLY to a real PostgreSQL server with psycopg, the server enforcing the grants (42501),
and the role dropped -- its open session ended -- by task-end revocation, by the sweeper at
expiry and at gateway stop. The catalog and the secrets backend hand the task an Airflow
Connection that PostgresHook uses unchanged."""

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
import psycopg
import pytest

from lockgate.config import load_config
from lockgate.server import Gateway
from tests.gateway.role_route import DEPLOYMENT_SECRET, RoleRoute, task_coords
from tests.pgserver import PgServer

from .test_dynamic_roles import DATABASE, GATEWAY_PASSWORD, GATEWAY_USER, live_roles, prepare

CONFIG = """\
data_dir: {data}
listeners:
  control: {{host: 127.0.0.1, port: 0}}
  http: {{host: 127.0.0.1, port: 0}}
  postgres: {{host: 127.0.0.1, port: 0, allow_plaintext: true}}
deployments:
  - name: prod
    proof: {{type: client_secret, secret_sha256: {sha}}}
    dags: ["etl", "marketing", "reporting"]
resources:
  - name: shop
    kind: postgres
    host: 127.0.0.1
    port: {port}
    database: {database}
    username: {user}
    credential: shop-pw
    ca_file: {ca}
    conn_id: shop_direct
    connect_timeout: 2
    dynamic_roles: true
credentials:
  - {{name: shop-pw, type: static}}
policies: ["policies/*.yaml"]
audit: {{write_timeout: 1.0, jsonl: {data}/audit.jsonl}}
"""
POLICY = """\
rules:
  - id: etl-reads-sales
    effect: allow
    principals: ["airflow:prod/etl/*"]
    actions: [read]
    resources: [shop]
    objects: ["sales.*"]
  - id: etl-writes-orders
    effect: allow
    principals: ["airflow:prod/etl/*"]
    actions: [write, admin]
    resources: [shop]
    objects: ["sales.orders"]
  - id: reporting-elsewhere
    effect: allow
    principals: ["airflow:prod/reporting/*"]
    actions: [read]
    resources: [shop]
    objects: ["nowhere.*"]
"""


@dataclass
class Stack(RoleRoute):
    RESOURCE = "shop"
    gw: Gateway
    pg: PgServer
    http: aiohttp.ClientSession
    data: Path


def coords(dag: str = "etl", try_number: int = 1, resource: str = "shop") -> dict[str, Any]:
    return task_coords(resource, dag, try_number)


@pytest.fixture
async def stack(pg_server: PgServer, tmp_path: Path) -> AsyncIterator[Stack]:
    prepare(pg_server)
    (tmp_path / "policies").mkdir()
    (tmp_path / "policies" / "shop.yaml").write_text(POLICY)
    cfg = tmp_path / "lockgate.yaml"
    sha = hashlib.sha256(DEPLOYMENT_SECRET.encode()).hexdigest()
    cfg.write_text(
        CONFIG.format(
            data=tmp_path / "data", sha=sha, port=pg_server.port, database=DATABASE,
            user=GATEWAY_USER, ca=pg_server.ca_file,
        )
    )  # fmt: skip
    gw = Gateway(load_config(cfg))
    gw.state.credentials.set("shop-pw", GATEWAY_PASSWORD)
    gw.db_role_sweep_interval = 0.2
    await gw.start()
    http = aiohttp.ClientSession()
    try:
        yield Stack(gw, pg_server, http, tmp_path / "data")
    finally:
        await http.close()
        await gw.stop()


def direct(stack: Stack, role: dict[str, Any]) -> psycopg.Connection[Any]:
    """psycopg straight to the server as the dynamic role, as the route describes it."""
    return psycopg.connect(
        host=role["host"], port=role["port"], dbname=role["database"], user=role["username"],
        password=role["password"], sslmode=role["sslmode"], sslrootcert=role["sslrootcert"],
        autocommit=True,
    )  # fmt: skip


async def test_role_gets_exactly_the_policy_grants_enforced_by_the_server(stack: Stack) -> None:
    role = await stack.role()
    assert role["username"].startswith("lg_")
    assert (role["host"], role["port"], role["database"]) == ("127.0.0.1", stack.pg.port, DATABASE)
    assert (role["sslmode"], role["sslrootcert"]) == ("verify-full", str(stack.pg.ca_file))
    # admin is allowed by policy on sales.orders but never granted to a dynamic role
    assert sorted(role["grants"]) == [
        'DELETE ON TABLE "sales"."orders"',
        'INSERT ON TABLE "sales"."orders"',
        'SELECT ON TABLE "sales"."order_items"',
        'SELECT ON TABLE "sales"."orders"',
        'UPDATE ON TABLE "sales"."orders"',
    ]
    assert abs(role["expires_at"] - (time.time() + role["expires_in"])) < 5

    def work() -> None:
        with direct(stack, role) as conn:
            assert conn.execute("SELECT count(*) FROM sales.orders").fetchone() == (2,)
            for forbidden in ("SELECT * FROM other.secret", "DROP TABLE sales.orders"):
                with pytest.raises(psycopg.errors.InsufficientPrivilege):
                    conn.execute(forbidden)

    await asyncio.to_thread(work)


async def test_refusals_at_the_route(stack: Stack) -> None:
    before = live_roles(stack.pg)
    status, body = await stack.post("/v1/db-role", **coords("marketing"))
    assert status == 403 and body["reason"].startswith("no rule allows")
    status, body = await stack.post("/v1/db-role", **coords("reporting"))
    assert status == 403 and body["reason"] == "no_grants"
    status, body = await stack.post("/v1/db-role", **{**coords(), "client_secret": "wrong"})
    assert status == 401
    assert live_roles(stack.pg) == before  # nothing was created for any refusal
    stack.gw.audit.flush(2.0)
    denied = [r for r in stack.gw.audit.tail(50) if r.event == "denied"]
    assert {r.reason for r in denied} >= {"policy_denied", "no_grants"}


async def test_task_end_revocation_drops_the_role_and_ends_its_session(stack: Stack) -> None:
    role = await stack.role(try_number=3)
    other = await stack.role(try_number=4)
    conn = await asyncio.to_thread(direct, stack, role)
    try:
        status, body = await stack.post("/v1/revoke", **{**coords(try_number=3), "resource": None})
        assert status == 200 and body == {"revoked": "task_try"}
        assert role["username"] not in live_roles(stack.pg)
        assert other["username"] in live_roles(stack.pg)  # another try keeps its role
        with pytest.raises(psycopg.OperationalError):
            await asyncio.to_thread(conn.execute, "SELECT 1")
    finally:
        conn.close()
    with pytest.raises(psycopg.OperationalError):
        await asyncio.to_thread(direct, stack, role)


async def test_the_sweeper_drops_the_role_when_the_token_expires(stack: Stack) -> None:
    role = await stack.role(requested_ttl=1)
    assert role["expires_in"] == 1 and role["username"] in live_roles(stack.pg)
    async with asyncio.timeout(5):
        while role["username"] in live_roles(stack.pg):
            await asyncio.sleep(0.1)
    assert stack.gw.db_roles is not None and stack.gw.db_roles.roles["shop"].issued == {}


async def test_a_stop_drops_every_live_role(stack: Stack) -> None:
    role = await stack.role()
    assert stack.gw.db_roles is not None
    await stack.gw.db_roles.close()
    assert role["username"] not in live_roles(stack.pg)


async def test_password_never_in_audit_logs_or_the_servers_log(
    stack: Stack, caplog: pytest.LogCaptureFixture
) -> None:
    since = stack.pg.log_position()
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
    statements = [s.text for s in stack.pg.statements(since)]
    assert any(role["username"] in t for t in statements)
    assert not [t for t in statements if secret in t]
    assert secret.encode() not in stack.pg.log_file.read_bytes()


async def test_catalog_and_secrets_backend_give_a_direct_connection(
    stack: Stack, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    pytest.importorskip("airflow.sdk")
    pytest.importorskip("airflow.providers.postgres")
    from airflow.providers.postgres.hooks.postgres import PostgresHook

    from lockgate.airflow import secrets

    status, body = await stack.post("/v1/catalog")
    assert status == 200
    entry = next(e for e in body["connections"] if e["conn_id"] == "shop_direct")
    assert entry["mode"] == "dynamic_role" and entry["kind"] == "postgres"
    assert entry["connection"]["host"] == "127.0.0.1"
    assert entry["connection"]["port"] == stack.pg.port
    assert entry["upstream_ca"] == stack.pg.ca_file.read_text()

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
    conn = await asyncio.to_thread(backend.get_connection, "shop_direct")
    assert conn.conn_type == "postgres" and conn.host == "127.0.0.1"
    assert conn.port == stack.pg.port and conn.schema == DATABASE
    assert conn.login.startswith("lg_")
    extra = conn.extra_dejson
    assert extra["sslmode"] == "verify-full"
    assert Path(extra["sslrootcert"]).read_text() == stack.pg.ca_file.read_text()
    again = await asyncio.to_thread(backend.get_connection, "shop_direct")
    assert again.login == conn.login  # cached for the try

    def work() -> list[Any]:
        hook = PostgresHook(connection=conn)
        return list(hook.get_records("SELECT item FROM sales.orders ORDER BY id"))

    assert [tuple(r) for r in await asyncio.to_thread(work)] == [("apple",), ("pear",)]
    await asyncio.to_thread(secrets.end_task_try, ti)
    assert conn.login not in live_roles(stack.pg)
