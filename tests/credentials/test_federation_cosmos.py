"""Cosmos DB with ``upstream_auth: aad`` and a federated credential: the account has no keys
(local auth disabled), the gateway holds no Entra secret, and the real azure-cosmos SDK writes
through the gateway while Lockgate's RS256 signing key is rotated.

Entra tokens live 2 s, so the broker exchanges a fresh assertion about every second of the
load; the test Entra ID checks each one against Lockgate's discovery and JWKS over HTTPS.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import jwt
import pytest

from lockgate.config import parse_config
from lockgate.demo.standins.cosmos import CosmosFake, new_key, start_cosmos
from lockgate.demo.standins.entra import FakeEntra
from lockgate.demo.standins.entra import start as start_entra
from lockgate.gateway.http import HttpEngine
from lockgate.gateway.http.profiles.cosmos.profile import CosmosProfile
from lockgate.identity import TaskIdentity
from lockgate.server import Gateway
from tests.credentials._federation import lockgate_issuer

azure_cosmos = pytest.importorskip("azure.cosmos")

APP = "lockgate-cosmos-app"
CRED = "cosmos-federated"
POLICY = """\
rules:
  - id: orders-load-writes
    effect: allow
    principals: ["airflow:prod/orders_load/*"]
    actions: [read, write]
    resources: [cosmos]
    objects: ["sales", "sales/orders"]
"""


@dataclass
class Env:
    gateway: Gateway
    cosmos: CosmosFake
    entra: FakeEntra
    rejected: list[str]

    def container(self) -> Any:
        token, claims = self.gateway.issuer.mint(
            TaskIdentity("prod", "orders_load", "load", "r1", 1), "cosmos", 600
        )
        engine = cast(HttpEngine, self.gateway.engines["http"])
        profile = cast(CosmosProfile, engine.proxy.resources["cosmos"].profile)
        key = profile.task_key(claims.jti)
        base = f"http://127.0.0.1:{self.gateway.http_port}/cosmos/_t/{token}/"
        client = azure_cosmos.CosmosClient(base, {"masterKey": key})
        return client.get_database_client("sales").get_container_client("orders")

    def kids(self) -> list[str]:
        return [str(r.assertion_header["kid"]) for r in self.entra.token_requests
                if r.assertion_header is not None and r.status == 200]  # fmt: skip


@pytest.fixture
async def env(tmp_path: Path) -> AsyncIterator[Env]:
    lockgate = lockgate_issuer(tmp_path / "tls")
    entra = FakeEntra(federation_ca=lockgate.ca, token_ttl=2)
    entra.add_federated_credential(APP, issuer=lockgate.url, subject=f"lockgate:credential:{CRED}")
    entra_runner = await start_entra(entra)
    rejected: list[str] = []
    audience: dict[str, str] = {}

    def verify_bearer(token: str) -> bool:
        # Cosmos DB's data plane: the tenant's signature, the account audience, unexpired
        try:
            claims = entra.verify(token, audience=audience["account"])
        except jwt.PyJWTError as exc:
            rejected.append(type(exc).__name__)
            return False
        return bool(claims.get("appid") == APP)

    cosmos = await start_cosmos(master_keys=[new_key()], aad_verifier=verify_bearer)
    cosmos.keys = []  # local (key) auth disabled: only Entra tokens open the account
    audience["account"] = cosmos.url.rstrip("/")
    assert cosmos.store.create_database({"id": "sales"})
    cosmos.store.create_container(
        "sales", {"id": "orders", "partitionKey": {"paths": ["/pk"], "kind": "Hash"}}
    )
    (tmp_path / "p.yaml").write_text(POLICY)
    cfg = parse_config(
        {"data_dir": str(tmp_path / "data"),
         "listeners": {"control": lockgate.control, "http": {"port": 0}},
         "signing": {"algorithms": ["EdDSA", "RS256"], "publish_ahead": 1},
         "deployments": [{"name": "prod", "dags": ["*"],
                          "proof": {"type": "client_secret", "secret_sha256": "0" * 64}}],
         "resources": [
             {"name": "cosmos", "kind": "http", "upstream": cosmos.url, "credential": CRED,
              "conn_id": "cosmos_default", "profile": "cosmos",
              "cosmos": {"upstream_auth": "aad", "database": "sales", "container": "orders",
                         "partition_key": "/pk"}}],
         "credentials": [
             {"name": CRED, "type": "federated", "provider": "entra",
              "token_url": entra.token_url, "client_id": APP,
              "scope": f"{audience['account']}/.default"}],
         "policies": [str(tmp_path / "p.yaml")]},
        tmp_path / "lockgate.yaml",
    )  # fmt: skip
    gateway = Gateway(cfg)
    await gateway.start()
    try:
        yield Env(gateway, cosmos, entra, rejected)
    finally:
        await gateway.stop()
        await cosmos.close()
        await entra_runner.cleanup()


async def test_signing_key_rotation_under_write_load_fails_no_write(env: Env) -> None:
    threads, per_thread = 3, 40
    containers = await asyncio.to_thread(lambda: [env.container() for _ in range(threads)])
    errors: list[BaseException] = []
    lock = threading.Lock()

    def load(n: int) -> None:
        for i in range(per_thread):
            try:
                containers[n].upsert_item({"id": f"t{n}-{i}", "pk": f"p{n}", "i": i})
            except BaseException as exc:  # counted below
                with lock:
                    errors.append(exc)
            time.sleep(0.1)  # ~4 s of writes: several 2 s token lifetimes

    keys = env.gateway.state.keys
    before = keys.current("RS256").kid
    load_task = asyncio.gather(*(asyncio.to_thread(load, n) for n in range(threads)))
    await asyncio.sleep(1.0)
    keys.rotate(retire_after=30, algorithms=["RS256"])  # published now, signs 1 s later
    await load_task

    assert errors == [], [str(e)[:300] for e in errors[:3]]
    docs = env.cosmos.store.container("sales", "orders").items(None)
    assert len(docs) == threads * per_thread
    after = keys.current("RS256").kid
    kids = env.kids()
    assert after != before and kids[0] == before and kids[-1] == after
    assert len(kids) >= 3  # refreshed during the load, a fresh assertion each time
    assert env.entra.refusals == [] and env.rejected == []
    assert {r.auth_type for r in env.cosmos.requests} == {"aad"}
    assert env.gateway.state.credentials.names() == []  # no secret stored anywhere
