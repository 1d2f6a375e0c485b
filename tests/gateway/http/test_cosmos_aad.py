"""Cosmos DB with ``upstream_auth: aad``: the gateway signs upstream with an Entra ID token
obtained by the credential broker (client credentials against src/lockgate/demo/standins/entra),
and the
Entra client secret is rotated while the real azure-cosmos SDK writes through the gateway.

The fake account accepts only bearer tokens that the fake Entra ID signed, for the account's
audience, unexpired; master-key signatures are refused (the account has no keys). Entra
tokens live 2 s, so the broker has to fetch new ones during the load, and after the old
secret is withdrawn those fetches only succeed with the rotated one.
"""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any, cast

import aiohttp
import jwt
import pytest
from azure.cosmos import CosmosClient

from lockgate import cli
from lockgate.config import LockgateConfig, load_config
from lockgate.credentials.cosmos import sign
from lockgate.demo.standins.cosmos import CosmosFake, new_key, start_cosmos
from lockgate.demo.standins.entra import FakeEntra
from lockgate.demo.standins.entra import start as start_entra
from lockgate.gateway.http import HttpEngine
from lockgate.identity import TaskIdentity
from lockgate.server import Gateway, State

POLICY = """\
rules:
  - id: orders-load-writes
    effect: allow
    principals: ["airflow:prod/orders_load/*"]
    actions: [read, write]
    resources: [cosmos]
    objects: ["sales", "sales/orders"]
"""
CRED = "cosmos-entra"
CLIENT_ID = "lockgate-cosmos-app"
SECRET_V1, SECRET_V2 = "entra-secret-v1", "entra-secret-v2"
SECRET_ENV = "LOCKGATE_TEST_ENTRA_SECRET"


class RecordingEntra(FakeEntra):
    """The fake Entra ID, noting which client secret each accepted token request used."""

    def __post_init__(self) -> None:
        super().__post_init__()
        self.accepted: list[tuple[float, str]] = []  # (time, "v1" | "v2")

    def _check_secret(self, client_id: str, secret: str) -> str | None:
        why = super()._check_secret(client_id, secret)
        if why is None:
            label = {SECRET_V1: "v1", SECRET_V2: "v2"}.get(secret, "?")
            self.accepted.append((time.time(), label))
        return why


class Env:
    def __init__(
        self, gw: Gateway, fake: CosmosFake, entra: RecordingEntra, config_path: Path
    ) -> None:
        self.gw, self.fake, self.entra, self.config_path = gw, fake, entra, config_path
        self.base = f"http://127.0.0.1:{gw.http_port}/cosmos"
        self.rejected: list[str] = []  # why the account refused a bearer token
        self.revoked: set[str] = set()  # token ids (uti) the account no longer accepts

    def client(self) -> CosmosClient:
        token, claims = self.gw.issuer.mint(
            TaskIdentity("prod", "orders_load", "load", "r1", 1), "cosmos", 600
        )
        profile = cast(HttpEngine, self.gw.engines["http"]).proxy.resources["cosmos"].profile
        return CosmosClient(f"{self.base}/_t/{token}/", {"masterKey": profile.task_key(claims.jti)})


@pytest.fixture
async def env(tmp_path: Path) -> AsyncIterator[Env]:
    entra = RecordingEntra(client_secrets={CLIENT_ID: {SECRET_V1}}, token_ttl=2)
    entra_runner = await start_entra(entra)  # plain HTTP: only the gateway's broker calls it
    box: dict[str, Any] = {}

    def verify_bearer(token: str) -> bool:
        # what Cosmos DB does with a data-plane AAD token: signature by the tenant's key,
        # audience = the account, issuer = the tenant, not expired, and a known app
        try:
            claims = entra.verify(token, audience=box["audience"])
        except jwt.PyJWTError as exc:
            box["env"].rejected.append(type(exc).__name__)
            return False
        if claims.get("uti") in box["env"].revoked:
            box["env"].rejected.append("revoked")
            return False
        return bool(claims.get("appid") == CLIENT_ID)

    fake = await start_cosmos(master_keys=[new_key()], aad_verifier=verify_bearer)
    fake.keys = []  # local (key) auth disabled: only Entra tokens are accepted
    fake.public_url = "http://127.0.0.1:9/"  # a client that skipped the gateway would fail
    box["audience"] = fake.url.rstrip("/")
    assert fake.store.create_database({"id": "sales"})
    fake.store.create_container(
        "sales", {"id": "orders", "partitionKey": {"paths": ["/pk"], "kind": "Hash"}}
    )
    (tmp_path / "p.yaml").write_text(POLICY)
    data = {
        "data_dir": str(tmp_path / "data"),
        "listeners": {"control": {"port": 0}, "http": {"port": 0}},
        "deployments": [
            {"name": "prod", "proof": {"type": "client_secret", "secret_sha256": "0" * 64},
             "dags": ["*"]}
        ],
        "resources": [
            {"name": "cosmos", "kind": "http", "upstream": fake.url, "credential": CRED,
             "conn_id": "cosmos_default", "profile": "cosmos",
             "cosmos": {"upstream_auth": "aad", "database": "sales", "container": "orders",
                        "partition_key": "/pk"}}
        ],
        "credentials": [
            {"name": CRED, "type": "oauth2_client_credentials", "token_url": entra.token_url,
             "client_id": CLIENT_ID, "scope": f"{box['audience']}/.default", "overlap": 600}
        ],
        "policies": [str(tmp_path / "p.yaml")],
    }  # fmt: skip
    config_path = tmp_path / "lockgate.yaml"
    config_path.write_text(json.dumps(data))  # JSON is YAML: the CLI reads the same file
    cfg: LockgateConfig = load_config(config_path)
    State(cfg).credentials.set(CRED, SECRET_V1)
    gw = Gateway(cfg)
    await gw.start()
    box["env"] = Env(gw, fake, entra, config_path)
    try:
        yield box["env"]
    finally:
        await gw.stop()
        await fake.close()
        await entra_runner.cleanup()


async def test_master_key_auth_is_refused_by_the_account(env: Env) -> None:
    # the premise of the rotation test: nothing but an Entra token opens this account
    x_date = time.strftime("%a, %d %b %Y %H:%M:%S GMT", time.gmtime())
    auth = sign(new_key(), "GET", "dbs", "dbs/sales", x_date)
    async with (
        aiohttp.ClientSession() as s,
        s.get(
            f"{env.fake.url}dbs/sales", headers={"authorization": auth, "x-ms-date": x_date}
        ) as r,
    ):
        assert r.status == 401
    bogus = jwt.encode({"aud": env.fake.url.rstrip("/"), "appid": CLIENT_ID}, "k" * 32)
    async with (
        aiohttp.ClientSession() as s,
        s.get(f"{env.fake.url}dbs/sales", headers={"authorization": f"type=aad&ver=1.0&sig={bogus}",
                                                   "x-ms-date": x_date}) as r,
    ):  # fmt: skip
        assert r.status == 401
    assert env.rejected  # the verifier, not a missing header, refused it


async def test_entra_secret_rotation_under_write_load_fails_no_write(
    env: Env, monkeypatch: pytest.MonkeyPatch
) -> None:
    threads, per_thread = 4, 50
    clients = await asyncio.to_thread(lambda: [env.client() for _ in range(threads)])
    containers = [c.get_database_client("sales").get_container_client("orders") for c in clients]
    errors: list[BaseException] = []
    done_at: list[float] = []
    lock = threading.Lock()

    def load(n: int) -> None:
        c = containers[n]
        for i in range(per_thread):
            try:
                c.upsert_item({"id": f"t{n}-{i}", "pk": f"p{n}", "i": i})
                with lock:
                    done_at.append(time.time())
            except BaseException as exc:  # counted below
                with lock:
                    errors.append(exc)
            time.sleep(0.1)  # spread ~200 writes over ~5 s: several 2 s token lifetimes

    load_task = asyncio.gather(*(asyncio.to_thread(load, n) for n in range(threads)))
    await asyncio.sleep(1.0)
    # 1. Entra: the app gets a second secret; 2. Lockgate moves to it (CLI, audited)
    env.entra.client_secrets[CLIENT_ID].add(SECRET_V2)
    monkeypatch.setenv(SECRET_ENV, SECRET_V2)
    argv = ["--config", str(env.config_path), "creds", "rotate", CRED, "--from-env", SECRET_ENV]
    assert await asyncio.to_thread(cli.main, argv) == 0
    await asyncio.sleep(0.5)
    # 3. Entra: the first secret is withdrawn; tokens issued with it run out within 2 s
    env.entra.client_secrets[CLIENT_ID].discard(SECRET_V1)
    withdrawn = time.time()
    await load_task

    assert errors == [], [str(e)[:300] for e in errors[:3]]
    docs = env.fake.store.container("sales", "orders").items(None)
    assert len(docs) == threads * per_thread
    assert {d["id"] for d in docs} == {
        f"t{n}-{i}" for n in range(threads) for i in range(per_thread)
    }
    # writes kept going well past the old tokens' expiry, on tokens got with the new secret
    assert sum(1 for t in done_at if t > withdrawn + 2.5) >= 20
    used = [label for _t, label in env.entra.accepted]
    assert "v1" in used and "v2" in used
    assert all(label == "v2" for t, label in env.entra.accepted if t > withdrawn)
    assert sum(1 for t, _label in env.entra.accepted if t > withdrawn) >= 2  # refetched
    assert "invalid_client" not in env.entra.refusals  # v1 was never tried after withdrawal
    # the account only ever saw Entra tokens, and every data write was authorised
    assert {r.auth_type for r in env.fake.requests} == {"aad"}
    posts = [
        r for r in env.fake.requests if r.method == "POST" and r.path.rstrip("/").endswith("/docs")
    ]
    assert posts and all(r.status in (200, 201) for r in posts)
    # the audit shows the rotation and every write
    env.gw.audit.flush(5.0)
    rotated = env.gw.audit.search(event="credential_rotated")
    assert [(r.object, r.detail.get("version")) for r in rotated] == [(CRED, 2)]
    writes = [r for r in env.gw.audit.search(resource="cosmos", event="allowed", limit=1000)
              if r.action == "write"]  # fmt: skip
    assert len(writes) == threads * per_thread
    assert all(r.status in (200, 201) for r in writes)


async def test_a_refused_bearer_is_replaced_by_a_fresh_token_of_the_current_secret(
    env: Env,
) -> None:
    # Long-lived tokens: the broker would serve its cached one for an hour. The account
    # refuses it (revoked, or expired by the account's clock); the retry must fetch a new
    # token with the current secret, not fall back to the withdrawn one.
    env.entra.token_ttl = 3600
    c = await asyncio.to_thread(
        lambda: env.client().get_database_client("sales").get_container_client("orders")
    )
    await asyncio.to_thread(c.upsert_item, {"id": "a", "pk": "p"})
    env.entra.client_secrets[CLIENT_ID].add(SECRET_V2)
    State(env.gw.config).credentials.rotate(CRED, SECRET_V2)
    env.entra.client_secrets[CLIENT_ID].discard(SECRET_V1)
    cast(HttpEngine, env.gw.engines["http"]).secrets.invalidate()  # skip the 1 s cache
    await asyncio.to_thread(c.upsert_item, {"id": "b", "pk": "p"})
    assert [label for _t, label in env.entra.accepted] == ["v1", "v2"]
    issued = len(env.entra.issued)
    env.revoked |= {claims["uti"] for claims in env.entra.issued}
    await asyncio.to_thread(c.upsert_item, {"id": "c", "pk": "p"})
    docs = env.fake.store.container("sales", "orders").items(None)
    assert sorted(d["id"] for d in docs) == ["a", "b", "c"]
    assert "revoked" in env.rejected and env.fake.count(status=401) == 1
    assert len(env.entra.issued) == issued + 1  # one fresh token ...
    assert env.entra.accepted[-1][1] == "v2" and env.entra.refusals == []  # ... with v2
    env.gw.audit.flush(5.0)
    writes = [r for r in env.gw.audit.search(resource="cosmos", event="allowed", limit=100)
              if r.action == "write"]  # fmt: skip
    assert writes[-1].status in (200, 201) and writes[-1].detail.get("retries") == 1
