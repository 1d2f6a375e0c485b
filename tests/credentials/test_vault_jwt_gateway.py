"""A running gateway logs in to Vault with a JWT it signs with its own RS256 key (published at
its control listener's JWKS), reads the upstream key from KV v2, and serves a request with it.
Nothing is stored in the gateway for this credential."""

from __future__ import annotations

from pathlib import Path

import aiohttp
from aiohttp import web

from lockgate.demo.standins._serving import serve
from lockgate.demo.standins.vault import FakeVault, JwtRole
from lockgate.demo.standins.vault import start as start_vault
from lockgate.identity import TaskIdentity
from lockgate.server import Gateway

from ._upstream_gateway import ORDERS_READ, gateway_config

ISSUER = "https://lockgate.example"


async def test_jwt_login_with_the_gateways_own_key(tmp_path: Path) -> None:
    seen: list[str] = []

    async def api(request: web.Request) -> web.Response:
        seen.append(request.headers.get("Authorization", ""))
        return web.json_response({"ok": True})

    app = web.Application()
    app.router.add_get("/api/{tail:.*}", api)
    api_served = await serve(app)
    vault = FakeVault(policies=ORDERS_READ, bound_issuer=ISSUER)
    vault.jwt_roles["lockgate"] = JwtRole(
        bound_audiences=["vault.example"], bound_subject="lockgate:credential:orders-key",
        policies=["orders"],
    )  # fmt: skip
    vault.put("orders/api", {"value": "key-from-vault"})
    vault_runner = await start_vault(vault)
    credential = {
        "name": "orders-key", "type": "vault_kv", "address": vault.base_url, "path": "orders/api",
        "auth": {"method": "jwt", "role": "lockgate", "audience": "vault.example"},
    }  # fmt: skip
    cfg = gateway_config(tmp_path, f"{api_served.url}/api", [credential], issuer=ISSUER)
    gw = Gateway(cfg)
    await gw.start()
    try:
        vault.jwks_url = f"http://127.0.0.1:{gw.control_port}/.well-known/jwks.json"
        token = gw.issuer.mint(TaskIdentity("prod", "etl_daily", "pull", "r1", 1), "orders-api",
                               300)[0]  # fmt: skip
        async with (
            aiohttp.ClientSession() as http,
            http.get(
                f"http://127.0.0.1:{gw.http_port}/orders-api/orders",
                headers={"Authorization": f"Bearer {token}"},
            ) as r,
        ):
            assert r.status == 200, await r.text()
        assert seen == ["Bearer key-from-vault"]
        assert gw.state.credentials.names() == []  # nothing stored for it
        logins = [q for q in vault.requests if q.path == "/v1/auth/jwt/login"]
        assert [q.status for q in logins] == [200]
    finally:
        await gw.stop()
        await vault_runner.cleanup()
        await api_served.runner.cleanup()
