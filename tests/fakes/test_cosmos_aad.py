"""The Cosmos DB stand-in with Entra ID tokens checked as the service does: signature with the
tenant's key set (fetched over https), issuer, audience, expiry; data-plane RBAC with the
built-in Data Reader / Data Contributor roles; and local (key) auth disabled.
"""

from __future__ import annotations

import ssl
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote

import aiohttp
import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import rsa

from lockgate.credentials.cosmos import sign
from lockgate.demo.standins.cosmos import CosmosFake, start_cosmos
from lockgate.demo.standins.cosmos.server import DATA_CONTRIBUTOR, DATA_READER, AadTrust
from lockgate.demo.standins.entra import FakeEntra
from lockgate.demo.standins.entra import start as start_entra
from lockgate.demo.standins.entra.thread import server_tls

ACCOUNT = "orders-acct"
RESOURCE = f"https://{ACCOUNT}.documents.azure.com"
READER, WRITER, NOBODY = "app-reader", "app-writer", "app-nobody"


@dataclass
class Env:
    entra: FakeEntra
    cosmos: CosmosFake
    http: aiohttp.ClientSession
    tls: ssl.SSLContext

    async def token(self, client_id: str, resource: str = RESOURCE) -> str:
        async with self.http.post(
            self.entra.token_url, ssl=self.tls,
            data={"grant_type": "client_credentials", "client_id": client_id,
                  "client_secret": f"{client_id}-secret", "scope": f"{resource}/.default"},
        ) as answer:  # fmt: skip
            assert answer.status == 200, await answer.text()
            token: str = (await answer.json())["access_token"]
            return token

    async def call(
        self, method: str, path: str, token: str, body: Any = None, **headers: str
    ) -> tuple[int, Any, dict[str, str]]:
        auth = quote(f"type=aad&ver=1.0&sig={token}", safe="")
        sent = {"authorization": auth, "x-ms-version": "2018-12-31", **headers}
        if isinstance(body, dict) and "pk" in body:
            sent["x-ms-documentdb-partitionkey"] = f'["{body["pk"]}"]'
        async with self.http.request(
            method, self.cosmos.url + path.lstrip("/"), json=body, headers=sent
        ) as answer:
            return answer.status, await answer.json(content_type=None), dict(answer.headers)


def oid(token: str) -> str:
    value: str = jwt.decode(token, options={"verify_signature": False})["oid"]
    return value


@pytest.fixture
async def env(tmp_path: Path) -> AsyncIterator[Env]:
    server_ctx, ca = server_tls(tmp_path / "tls")
    entra = FakeEntra(client_secrets={c: {f"{c}-secret"} for c in (READER, WRITER, NOBODY)})
    runner = await start_entra(entra, 0, server_ctx)
    trust = AadTrust(f"{entra.base_url}/{entra.tenant}/discovery/v2.0/keys", entra.issuer, ca)
    cosmos = await start_cosmos(aad=trust, disable_local_auth=True, account=ACCOUNT)
    db = cosmos.store
    db.create_database({"id": "sales"})
    for name in ("orders", "audit"):
        db.create_container("sales", {"id": name, "partitionKey": {"paths": ["/pk"]}})
    db.container("sales", "orders").put('["a"]', {"id": "1", "pk": "a", "n": 1}, mode="create")
    async with aiohttp.ClientSession() as http:
        yield Env(entra, cosmos, http, ssl.create_default_context(cafile=str(ca)))
    await cosmos.close()
    await runner.cleanup()


async def test_reader_reads_and_queries_but_cannot_write(env: Env) -> None:
    token = await env.token(READER)
    env.cosmos.assign_role(oid(token), "reader")
    assert (await env.call("GET", "/", token))[0] == 200
    status, doc, _ = await env.call(
        "GET", "/dbs/sales/colls/orders/docs/1", token, **{"x-ms-documentdb-partitionkey": '["a"]'}
    )
    assert status == 200 and doc["n"] == 1
    status, _, _ = await env.call(
        "POST", "/dbs/sales/colls/orders/docs", token, {"query": "SELECT * FROM c"},
        **{"x-ms-documentdb-isquery": "True", "content-type": "application/query+json",
           "x-ms-documentdb-query-enablecrosspartition": "True"},
    )  # fmt: skip
    assert status == 200
    status, err, headers = await env.call(
        "POST", "/dbs/sales/colls/orders/docs", token, {"id": "2", "pk": "a"}
    )
    assert status == 403 and headers["x-ms-substatus"] == "5301"
    assert f"principal [{oid(token)}]" in err["message"]
    assert "containers/items/create" in err["message"]
    assert env.cosmos.requests[-1].principal == oid(token)
    assert env.cosmos.requests[-1].operation is None  # nothing ran


async def test_contributor_writes_items_but_not_databases(env: Env) -> None:
    token = await env.token(WRITER)
    env.cosmos.assign_role(oid(token), DATA_CONTRIBUTOR)
    status, _, _ = await env.call(
        "POST", "/dbs/sales/colls/orders/docs", token, {"id": "2", "pk": "a"}
    )
    assert status == 201
    status, err, _ = await env.call("POST", "/dbs", token, {"id": "newdb", "pk": "x"})
    assert status == 403 and "sqlDatabases/write" in err["message"]
    assert "newdb" not in env.cosmos.store.databases


async def test_scoped_assignment_and_no_assignment(env: Env) -> None:
    token = await env.token(WRITER)
    env.cosmos.assign_role(oid(token), "contributor", "/dbs/sales/colls/audit")
    assert (await env.call("GET", "/", token))[0] == 200
    ok, _, _ = await env.call("POST", "/dbs/sales/colls/audit/docs", token, {"id": "9", "pk": "z"})
    assert ok == 201
    no, _, _ = await env.call("POST", "/dbs/sales/colls/orders/docs", token, {"id": "9", "pk": "z"})
    assert no == 403
    stranger = await env.token(NOBODY)
    assert (await env.call("GET", "/", stranger))[0] == 403
    env.cosmos.unassign_roles(oid(token))
    assert (await env.call("GET", "/", token))[0] == 403


async def test_tokens_for_elsewhere_forged_or_expired_are_401(env: Env) -> None:
    token = await env.token(READER)
    env.cosmos.assign_role(oid(token), "reader")
    arm = await env.token(READER, "https://management.azure.com")
    assert (await env.call("GET", "/", arm))[0] == 401
    claims = jwt.decode(token, options={"verify_signature": False})
    stranger = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    forged = jwt.encode(claims, stranger, algorithm="RS256", headers={"kid": env.entra.kid})
    assert (await env.call("GET", "/", forged))[0] == 401
    hs = jwt.encode(claims, "k" * 32, algorithm="HS256", headers={"kid": env.entra.kid})
    assert (await env.call("GET", "/", hs))[0] == 401
    now = int(time.time())
    old = jwt.encode(
        {**claims, "exp": now - 600, "nbf": now - 4000}, env.entra.key, algorithm="RS256",
        headers={"kid": env.entra.kid},
    )  # fmt: skip
    status, err, _ = await env.call("GET", "/", old)
    assert status == 401 and "expired" in err["message"]
    other = jwt.encode(
        {**claims, "iss": "https://sts.windows.net/other/"}, env.entra.key, algorithm="RS256",
        headers={"kid": env.entra.kid},
    )  # fmt: skip
    assert (await env.call("GET", "/", other))[0] == 401


async def test_local_auth_disabled_refuses_the_master_key(env: Env) -> None:
    date = time.strftime("%a, %d %b %Y %H:%M:%S GMT", time.gmtime())
    auth = sign(env.cosmos.keys[0], "GET", "", "", date)
    async with env.http.get(
        env.cosmos.url, headers={"authorization": auth, "x-ms-date": date}
    ) as answer:
        body = await answer.json()
    assert answer.status == 401 and "Local Authorization is disabled" in body["message"]
    env.cosmos.disable_local_auth = False
    async with env.http.get(
        env.cosmos.url, headers={"authorization": auth, "x-ms-date": date}
    ) as answer:
        assert answer.status == 200


async def test_trust_entra_served_over_plain_http_and_role_names() -> None:
    entra = FakeEntra(client_secrets={WRITER: {f"{WRITER}-secret"}})
    runner = await start_entra(entra)  # plain HTTP, as the demo stack serves it
    cosmos = await start_cosmos(account=ACCOUNT)
    try:
        cosmos.trust_entra(entra, disable_local_auth=True)
        assert cosmos.disable_local_auth
        cosmos.store.create_database({"id": "sales"})
        cosmos.store.create_container("sales", {"id": "orders", "partitionKey": {"paths": ["/pk"]}})
        async with aiohttp.ClientSession() as http:
            env = Env(entra, cosmos, http, ssl.create_default_context())
            token = await env.token(WRITER)
            assert oid(token) == entra.principal_id(WRITER)
            no, _, _ = await env.call(
                "POST", "/dbs/sales/colls/orders/docs", token, {"id": "1", "pk": "a"}
            )
            assert no == 403
            cosmos.assign_role(entra.principal_id(WRITER), "Data Contributor")
            ok, _, _ = await env.call(
                "POST", "/dbs/sales/colls/orders/docs", token, {"id": "1", "pk": "a"}
            )
            assert ok == 201
        with pytest.raises(ValueError, match="no such built-in data role"):
            cosmos.assign_role("x", "Owner")
        cosmos.assign_role("y", "Cosmos DB Built-in Data Reader")
        assert cosmos.role_assignments["y"] == [(DATA_READER, "/")]
    finally:
        await cosmos.close()
        await runner.cleanup()
