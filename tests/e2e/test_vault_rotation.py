"""An upstream key held in a vault, rotated in the vault while a client sends requests
through the real gateway without pause.

For each vault (Azure Key Vault read with the gateway's Entra ID token; HashiCorp Vault read
after an AppRole login), the API's key is first ``key-one``. Then the operator writes
``key-two`` into the vault while the API still knows only ``key-one`` (its own propagation
lags); a little later the API takes ``key-two``, then drops ``key-one``. What must hold:

- no request the client sends fails;
- the API sees ``key-two`` within the credential's ttl (plus the engines' one-second cache);
- ``key-one`` keeps being offered, on the API's refusal of ``key-two``, during the overlap;
- and never after it: rotated once more (``key-three``) while the API keeps ``key-two``, the
  API's refusal reaches the client once the overlap is over.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from lockgate.demo.standins._serving import serve
from lockgate.demo.standins.entra import EntraTrust, FakeEntra
from lockgate.demo.standins.entra import start as start_entra
from lockgate.demo.standins.key_vault import FakeKeyVault
from lockgate.demo.standins.key_vault import start as start_key_vault
from lockgate.demo.standins.vault import FakeVault
from lockgate.demo.standins.vault import start as start_vault
from lockgate.identity import TaskIdentity
from lockgate.server import Gateway, State
from tests.credentials._upstream_gateway import (
    ORDERS_READ,
    gateway_config,
    vault_approle_credential,
)

pytestmark = pytest.mark.slow

TTL, OVERLAP = 1, 4
#: The engines' secret cache (about a second) and a tick on top of the vault's ttl.
PICKUP_SLACK = 2.5


@dataclass
class OrdersApi:
    """Accepts ``Authorization: Bearer <key>`` for the keys in ``accepted``; records every
    attempt as (time, key, status)."""

    accepted: set[str]
    seen: list[tuple[float, str, int]] = field(default_factory=list)

    async def handle(self, request: web.Request) -> web.Response:
        key = request.headers.get("Authorization", "").removeprefix("Bearer ")
        status = 200 if key in self.accepted else 401
        self.seen.append((time.monotonic(), key, status))
        return web.json_response({"ok": status == 200}, status=status)


class Rotation:
    """One vault behind the gateway: how to write a new value into it."""

    async def rotate(self, value: str) -> None:
        raise NotImplementedError


@pytest.fixture(params=["azure_key_vault", "vault_kv"])
async def stack(
    request: pytest.FixtureRequest, tmp_path: Path
) -> AsyncIterator[tuple[Gateway, OrdersApi, Any]]:
    api = OrdersApi({"key-one"})
    app = web.Application()
    app.router.add_get("/api/{tail:.*}", api.handle)
    runners: list[web.AppRunner] = []
    api_served = await serve(app)
    runners.append(api_served.runner)
    credentials: list[dict[str, Any]]
    stored: dict[str, str] = {}
    if request.param == "azure_key_vault":
        entra = FakeEntra(client_secrets={"gw-app": {"gw-app-secret"}})
        runners.append(await start_entra(entra))
        key_vault = FakeKeyVault(EntraTrust.of(entra), tenant=entra.tenant)
        runners.append(await start_key_vault(key_vault))
        key_vault.set_secret("orders-api-key", "key-one")

        async def rotate(value: str) -> None:
            key_vault.set_secret("orders-api-key", value)

        credentials = [
            {"name": "kv-reader", "type": "oauth2_client_credentials",
             "token_url": entra.token_url, "client_id": "gw-app",
             "scope": "https://vault.azure.net/.default"},
            {"name": "orders-key", "type": "azure_key_vault", "vault_url": key_vault.base_url,
             "secret": "orders-api-key", "identity": "kv-reader", "ttl": TTL,
             "overlap": OVERLAP},
        ]  # fmt: skip
        stored["kv-reader"] = "gw-app-secret"
    else:
        vault = FakeVault(policies=ORDERS_READ)
        runners.append(await start_vault(vault))
        vault.put("orders/api", {"value": "key-one"})

        async def rotate(value: str) -> None:
            vault.put("orders/api", {"value": value})

        credentials = [vault_approle_credential(vault, tmp_path, ttl=TTL, overlap=OVERLAP)]
    cfg = gateway_config(tmp_path, f"{api_served.url}/api", credentials)
    for name, value in stored.items():
        State(cfg).credentials.set(name, value)
    gw = Gateway(cfg)
    await gw.start()
    try:
        yield gw, api, rotate
    finally:
        await gw.stop()
        for runner in reversed(runners):
            await runner.cleanup()


async def test_rotation_in_the_vault_fails_no_request(
    stack: tuple[Gateway, OrdersApi, Any],
) -> None:
    gw, api, rotate = stack
    token = gw.issuer.mint(TaskIdentity("prod", "etl_daily", "pull", "r1", 1), "orders-api", 300)[0]
    url = f"http://127.0.0.1:{gw.http_port}/orders-api/orders"
    statuses: list[int] = []
    stop = asyncio.Event()

    async def client() -> None:
        async with aiohttp.ClientSession() as http:
            while not stop.is_set():
                async with http.get(url, headers={"Authorization": f"Bearer {token}"}) as r:
                    await r.read()
                    statuses.append(r.status)
                await asyncio.sleep(0.02)

    running = asyncio.ensure_future(client())
    try:
        await asyncio.sleep(1.0)
        rotated_at = time.monotonic()
        await rotate("key-two")  # the API does not know it yet
        await asyncio.sleep(TTL + PICKUP_SLACK)
        # The API catches up, then drops the old key (not in one step: a request refused
        # with the new key just before would be retried with the old one just after).
        api.accepted = {"key-one", "key-two"}
        await asyncio.sleep(0.5)
        api.accepted = {"key-two"}
        await asyncio.sleep(OVERLAP - TTL + 0.5)
    finally:
        stop.set()
        await running
    assert statuses and set(statuses) == {200}, sorted(set(statuses))
    first_new = min(t for t, key, _ in api.seen if key == "key-two")
    assert first_new - rotated_at <= TTL + PICKUP_SLACK
    old_after = [t for t, key, status in api.seen if key == "key-one" and t > first_new]
    assert old_after, "the previous key was not offered during the overlap"
    assert all(status == 200 for t, key, status in api.seen if key == "key-one")
    assert api.seen[-1][1:] == ("key-two", 200)

    # Past the overlap the previous key is no longer offered: rotate again while the API
    # keeps the old key; once the overlap is over, the API's refusal reaches the client.
    async with aiohttp.ClientSession() as http:

        async def get() -> int:
            async with http.get(url, headers={"Authorization": f"Bearer {token}"}) as r:
                await r.read()
                return r.status

        await rotate("key-three")
        deadline = time.monotonic() + TTL + PICKUP_SLACK
        while api.seen[-1][1] != "key-two" or api.seen[-2][1] != "key-three":
            assert time.monotonic() < deadline, "key-three not picked up within the ttl"
            assert await get() == 200  # key-three refused, key-two retried inside the overlap
            await asyncio.sleep(0.1)
        await asyncio.sleep(OVERLAP + 0.5)
        assert await get() == 401
        assert api.seen[-1][1:] == ("key-three", 401)
    gw.audit.flush(5.0)
    records = gw.audit.search(resource="orders-api", event="allowed", limit=100_000)
    assert len(records) >= len(statuses) + 2
    assert not any("key-" in str(r) for r in records)  # no value in the trail
