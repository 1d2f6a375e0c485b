"""The Cosmos DB profile through the real gateway, with the real azure-cosmos SDK, to the fake
account (src/lockgate/demo/standins/cosmos). The SDK is synchronous: its calls run in a thread
while the
gateway and the fake share the test's loop."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any, cast

import aiohttp
import pytest
from azure.cosmos import CosmosClient
from azure.cosmos.exceptions import CosmosHttpResponseError

from lockgate.config import parse_config
from lockgate.credentials.cosmos import derive_task_key, sign, task_key_secret
from lockgate.demo.standins.cosmos import CosmosFake, start_cosmos
from lockgate.gateway.http import HttpEngine
from lockgate.identity import TaskIdentity
from lockgate.server import Gateway, State

POLICY = """\
rules:
  - id: finance-read-orders
    effect: allow
    principals: ["airflow:prod/finance_*/*"]
    actions: [read]
    resources: [cosmos]
    objects: ["sales", "sales/orders"]
  - id: orders-load-writes
    effect: allow
    principals: ["airflow:prod/orders_load/*"]
    actions: [read, write]
    resources: [cosmos]
    objects: ["sales", "sales/orders"]
  - id: no-ddl
    effect: deny
    principals: ["*"]
    actions: [admin]
    resources: [cosmos]
"""
CRED = "cosmos-key"


class Env:
    def __init__(self, gw: Gateway, fake: CosmosFake) -> None:
        self.gw, self.fake = gw, fake
        self.base = f"http://127.0.0.1:{gw.http_port}/cosmos"

    def token(self, dag: str = "orders_load", task: str = "load") -> tuple[str, Any]:
        return self.gw.issuer.mint(TaskIdentity("prod", dag, task, "r1", 1), "cosmos", 600)

    def task_key(self, jti: str) -> str:
        profile = cast(HttpEngine, self.gw.engines["http"]).proxy.resources["cosmos"].profile
        return str(profile.task_key(jti))

    def client(self, dag: str = "orders_load", **kw: Any) -> CosmosClient:
        token, claims = self.token(dag)
        return CosmosClient(f"{self.base}/_t/{token}/", {"masterKey": self.task_key(claims.jti)},
                            **kw)  # fmt: skip

    def audit(self, **kw: Any) -> list[Any]:
        self.gw.audit.flush(5.0)
        return list(self.gw.audit.search(resource="cosmos", **kw))


async def run(fn: Callable[[], Any]) -> Any:
    return await asyncio.to_thread(fn)


@pytest.fixture
async def env(tmp_path: Path) -> AsyncIterator[Env]:
    fake = await start_cosmos()
    fake.public_url = "http://127.0.0.1:9/"  # a client that skipped the gateway would fail
    db = fake.store.create_database({"id": "sales"})
    assert db
    pk = {"paths": ["/pk"], "kind": "Hash"}
    fake.store.create_container("sales", {"id": "orders", "partitionKey": pk})
    (tmp_path / "p.yaml").write_text(POLICY)
    cfg = parse_config(
        {
            "data_dir": str(tmp_path / "data"),
            "listeners": {"control": {"port": 0}, "http": {"port": 0}},
            "deployments": [
                {"name": "prod", "proof": {"type": "client_secret", "secret_sha256": "0" * 64},
                 "dags": ["*"]}
            ],
            "resources": [
                {"name": "cosmos", "kind": "http", "upstream": fake.url, "credential": CRED,
                 "conn_id": "cosmos_default", "profile": "cosmos",
                 "cosmos": {"database": "sales", "container": "orders", "partition_key": "/pk"}}
            ],
            "credentials": [{"name": CRED, "type": "static", "overlap": 600}],
            "policies": [str(tmp_path / "p.yaml")],
        },
        tmp_path / "lockgate.yaml",
    )  # fmt: skip
    State(cfg).credentials.set(CRED, fake.keys[0])
    gw = Gateway(cfg)
    await gw.start()
    try:
        yield Env(gw, fake)
    finally:
        await gw.stop()
        await fake.close()


async def test_sdk_crud_and_queries_through_the_gateway(env: Env) -> None:
    def work() -> list[str]:
        c = env.client().get_database_client("sales").get_container_client("orders")
        c.create_item({"id": "o1", "pk": "eu", "qty": 1})
        c.upsert_item({"id": "o1", "pk": "eu", "qty": 2})
        c.upsert_item({"id": "o2", "pk": "us", "qty": 5})
        assert c.read_item("o1", partition_key="eu")["qty"] == 2
        c.upsert_item({"id": "o3", "pk": "us", "qty": 1})
        found = list(c.query_items("SELECT * FROM c WHERE c.qty = @q",
                                   parameters=[{"name": "@q", "value": 5}],
                                   enable_cross_partition_query=True))  # fmt: skip
        c.replace_item("o2", {"id": "o2", "pk": "us", "qty": 6})
        c.delete_item("o2", partition_key="us")
        return sorted(d["id"] for d in found)

    assert await run(work) == ["o2"]
    # the account only ever saw the real key, through the gateway (discovery was rewritten)
    assert {r.auth_type for r in env.fake.requests} == {"master"}
    assert env.fake.count("GET", "/dbs/sales/colls/orders/pkranges") >= 1
    docs = env.fake.store.container("sales", "orders")
    assert {d["id"] for d in docs.items(None)} == {"o1", "o3"}
    rows = env.audit(event="allowed")
    writes = [r for r in rows if r.action == "write"]
    assert {r.detail["operation"] for r in writes} >= {
        "create_document",
        "upsert_document",
        "replace_document",
        "delete_document",
    }
    assert all(r.object == "sales/orders" and r.detail["db"] == "sales"
               and r.detail["container"] == "orders" for r in writes)  # fmt: skip
    assert any(r.detail.get("operation") == "read_account" for r in rows)


async def test_policy_denials_reach_the_sdk_with_the_reason(env: Env) -> None:
    def ungranted_write() -> CosmosHttpResponseError:
        c = env.client("finance_daily").get_database_client("sales").get_container_client(
            "orders")  # fmt: skip
        assert c.read_item("nope", partition_key="x") is None

    with pytest.raises(CosmosHttpResponseError) as err:
        await run(ungranted_write)
    assert err.value.status_code == 404  # finance may read: the account answered

    def write_as_finance() -> None:
        c = env.client("finance_daily").get_database_client("sales").get_container_client(
            "orders")  # fmt: skip
        c.upsert_item({"id": "x", "pk": "p"})

    with pytest.raises(CosmosHttpResponseError) as err:
        await run(write_as_finance)
    assert err.value.status_code == 403
    assert "Lockgate denied write on sales/orders" in str(err.value)
    assert "airflow:prod/finance_daily/load" in str(err.value)

    def drop_database() -> None:
        env.client().delete_database("sales")

    with pytest.raises(CosmosHttpResponseError) as err:
        await run(drop_database)
    assert err.value.status_code == 403 and "admin on sales" in str(err.value)
    assert "sales" in env.fake.store.databases
    assert (
        env.fake.count("DELETE") == 0
        and env.fake.count("POST", "/dbs/sales/colls/orders/docs") == 0
    )
    denied = env.audit(event="denied")
    assert {(r.action, r.object) for r in denied} >= {("write", "sales/orders"), ("admin", "sales")}


async def test_signature_must_match_the_token(env: Env) -> None:
    token, claims = env.token()
    other_token, other = env.token(task="other")

    async def call(tok: str, key: str, path: str = "dbs/sales", date: str | None = None) -> int:
        x_date = date or time.strftime("%a, %d %b %Y %H:%M:%S GMT", time.gmtime())
        auth = sign(key, "GET", "dbs", "dbs/sales", x_date)
        async with (
            aiohttp.ClientSession() as s,
            s.get(
                f"{env.base}/_t/{tok}/{path}", headers={"authorization": auth, "x-ms-date": x_date}
            ) as r,
        ):
            return r.status

    assert await call(token, env.task_key(claims.jti)) == 200
    assert await call(token, env.task_key(other.jti)) == 401  # a key of another token
    assert await call(token, env.fake.keys[0]) == 401  # even the real key is not accepted
    assert await call(other_token, env.task_key(claims.jti)) == 401
    late = time.strftime("%a, %d %b %Y %H:%M:%S GMT", time.gmtime(time.time() - 3600))
    assert await call(token, env.task_key(claims.jti), date=late) == 401
    async with aiohttp.ClientSession() as s, s.get(f"{env.base}/dbs/sales") as r:
        assert r.status == 401  # no token prefix
    reasons = {r.reason for r in env.audit(event="auth_failed")}
    assert {"bad_signature", "date_skew", "missing"} <= reasons


async def test_derived_key_is_the_one_the_control_plane_hands_out(env: Env) -> None:
    _token, claims = env.token()
    profile_key = env.task_key(claims.jti)
    secret = task_key_secret(env.gw.state.master_key, "cosmos")
    assert derive_task_key(secret, claims.jti) == profile_key
    entries = env.gw._catalog_entries("prod")
    entry = next(e for e in entries if e["conn_id"] == "cosmos_default")
    assert entry["cosmos_key"] is True
    conn = entry["connection"]
    assert conn["conn_type"] == "azure_cosmos" and conn["password"] == "{lockgate_cosmos_key}"
    assert conn["login"].endswith("/cosmos/_t/{lockgate_token}/")
    # ``/pk`` is the container's partition key path, not a value the hook could default to
    assert conn["extra"] == {"database_name": "sales", "collection_name": "orders"}


async def test_rotation_primary_to_secondary_fails_no_write(env: Env) -> None:
    primary, secondary = env.fake.keys
    c = await run(lambda: env.client().get_database_client("sales").get_container_client("orders"))
    state = State(env.gw.config)
    errors: list[BaseException] = []

    def load(n: int) -> None:
        for i in range(n):
            try:
                c.upsert_item({"id": f"d{i}", "pk": "p", "i": i})
            except BaseException as exc:  # counted below
                errors.append(exc)

    task = asyncio.ensure_future(run(lambda: load(150)))
    await asyncio.sleep(0.2)
    state.credentials.rotate(CRED, secondary)  # the gateway moves to the secondary ...
    await asyncio.sleep(0.3)
    env.fake.regenerate("primary")  # ... then Azure regenerates the primary
    await task
    assert errors == []
    assert env.fake.keys[1] == secondary and env.fake.keys[0] != primary
    assert len(env.fake.store.container("sales", "orders").items(None)) == 150


async def test_upstream_401_retries_once_with_the_previous_key(env: Env) -> None:
    from lockgate.demo.standins.cosmos import new_key

    state = State(env.gw.config)
    state.credentials.rotate(CRED, new_key())  # rotated in Lockgate before Azure knows it
    cast(HttpEngine, env.gw.engines["http"]).secrets.invalidate()
    c = await run(lambda: env.client().get_database_client("sales").get_container_client("orders"))
    await run(lambda: c.upsert_item({"id": "r", "pk": "p"}))
    assert env.fake.count(status=401) >= 1
    rows = [r for r in env.audit(event="allowed") if r.action == "write"]
    assert rows and rows[-1].detail.get("retries") == 1


async def test_throttling_storm_is_left_to_the_sdk(env: Env) -> None:
    c = await run(lambda: env.client().get_database_client("sales").get_container_client("orders"))
    await run(lambda: c.read())
    before = env.fake.count("POST", "/dbs/sales/colls/orders/docs")
    env.fake.throttle_for(2.0, retry_after_ms=500)
    writes = 40

    def load() -> None:
        for i in range(writes):
            c.upsert_item({"id": f"s{i}", "pk": "p"})

    await run(load)
    attempts = env.fake.count("POST", "/dbs/sales/colls/orders/docs") - before
    assert len(env.fake.store.container("sales", "orders").items(None)) == writes
    assert env.fake.count(status=429) >= 1
    assert attempts <= 2 * writes, attempts
    throttled = [r for r in env.audit(event="allowed") if r.status == 429]
    assert throttled and all(r.detail.get("retry_after_ms") == "500" for r in throttled)
    assert not any(r.detail.get("retries") for r in throttled)  # the gateway did not retry


def test_container_create_is_admin_and_denied_with_the_hook_pattern() -> None:
    from lockgate.gateway.http.profiles.cosmos import Refused, classify

    q = b'{"query":"SELECT * FROM r WHERE r.id=@id","parameters":[{"name":"@id","value":"orders"}]}'
    h = {"x-ms-documentdb-isquery": "True", "content-type": "application/query+json"}
    assert classify("POST", "/dbs/sales/colls", h, q).obj == "sales/orders"
    assert classify("POST", "/dbs", h, q.replace(b"orders", b"sales")).obj == "sales"
    tricky = q.replace(b"r.id=@id", b"r.id=@id OR true")
    assert classify("POST", "/dbs/sales/colls", h, tricky).obj == "sales"
    assert classify("POST", "/dbs/sales/colls", {}, b'{"id":"x"}').action == "admin"
    assert classify("POST", "/dbs/sales/colls/orders/docs", {}, b"{}").action == "write"
    assert classify("POST", "/dbs/sales/colls/orders/docs", h, b"{}").action == "read"
    assert classify("GET", "/dbs/sales/colls/orders/pkranges", {}, b"").action == "read"
    assert classify("POST", "/dbs/sales/colls/orders/sprocs/s1", {}, b"").action == "write"
    assert classify("DELETE", "/dbs/sales", {}, b"").action == "admin"
    assert classify("GET", "/dbs/sales/users/u1/permissions", {}, b"").action == "admin"
    for method, path in (("POST", "/"), ("GET", "/media/x"), ("GET", "/dbs/abcdEA==/colls")):
        with pytest.raises(Refused):
            classify(method, path, {}, b"")


def test_example_policy_passes_its_own_tests() -> None:
    from lockgate.demo.stack import REPO_ROOT
    from lockgate.policy import cmd_test, load_policy_files

    examples = REPO_ROOT / "examples" / "policies"
    ps = load_policy_files([examples / "cosmos.yaml"], {"orders-cosmos"})
    code, text = cmd_test(ps, examples / "cosmos_tests.yaml")
    assert code == 0, text
