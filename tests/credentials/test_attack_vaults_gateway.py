"""A running gateway whose upstream key lives in Vault, and a vault-held value that is not
fit to go out (CR/LF to inject a header, a NUL, a trailing newline): the request is refused
with a credential error and audited, nothing reaches the upstream, and neither the answer,
the log nor the trail carries the value."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web

from lockgate.audit import AuditReader
from lockgate.demo.standins._serving import serve
from lockgate.demo.standins.vault import FakeVault
from lockgate.demo.standins.vault import start as start_vault
from lockgate.identity import TaskIdentity
from lockgate.server import Gateway

from ._upstream_gateway import ORDERS_READ, gateway_config, vault_approle_credential


@dataclass
class Api:
    seen: list[dict[str, str]] = field(default_factory=list)

    async def handle(self, request: web.Request) -> web.Response:
        self.seen.append(dict(request.headers))
        return web.json_response({"ok": True})


@dataclass
class Stack:
    gw: Gateway
    api: Api
    vault: FakeVault
    url: str
    token: str


@pytest.fixture
async def stack(tmp_path: Path) -> AsyncIterator[Stack]:
    api = Api()
    app = web.Application()
    app.router.add_get("/api/{tail:.*}", api.handle)
    api_served = await serve(app)
    vault = FakeVault(policies=ORDERS_READ)
    vault_runner = await start_vault(vault)
    cfg = gateway_config(
        tmp_path, f"{api_served.url}/api", [vault_approle_credential(vault, tmp_path, ttl=1)]
    )
    gw = Gateway(cfg)
    await gw.start()
    identity = TaskIdentity("prod", "etl_daily", "pull", "hostile-value", 1)
    token = gw.issuer.mint(identity, "orders-api", 300)[0]
    try:
        yield Stack(gw, api, vault, f"http://127.0.0.1:{gw.http_port}/orders-api/o", token)
    finally:
        await gw.stop()
        await vault_runner.cleanup()
        await api_served.runner.cleanup()


@pytest.mark.parametrize(
    "value",
    [
        "key-one\r\nX-Injected: yes",
        "key-one\nX-Injected: yes",
        "key\x00one",
        "key\ud800one",
    ],
    ids=["crlf", "lf", "nul", "lone-surrogate"],
)
async def test_a_vault_value_unfit_for_a_header_is_refused_and_audited(
    stack: Stack, value: str, caplog: pytest.LogCaptureFixture
) -> None:
    stack.vault.put("orders/api", {"value": value})
    caplog.set_level(logging.DEBUG)
    async with (
        aiohttp.ClientSession() as http,
        http.get(stack.url, headers={"Authorization": f"Bearer {stack.token}"}) as r,
    ):
        body = await r.text()
    assert r.status == 503 and "credential_unavailable" in body
    assert stack.api.seen == []  # nothing went upstream, let alone an injected header
    stack.gw.audit.flush(5.0)
    rows = AuditReader(stack.gw.config.data_dir / "audit.db").search(run="hostile-value", limit=100)
    assert any(r.reason == "credential_unavailable" for r in rows)
    said = body + caplog.text + "".join(str(r) for r in rows)
    assert value not in said and "X-Injected" not in said


async def test_a_value_written_from_a_file_goes_out_without_its_last_newline(
    stack: Stack,
) -> None:
    stack.vault.put("orders/api", {"value": "  key-one\r\n"})  # vault kv put value=@file
    async with (
        aiohttp.ClientSession() as http,
        http.get(stack.url, headers={"Authorization": f"Bearer {stack.token}"}) as r,
    ):
        await r.read()
    assert r.status == 200
    assert [seen["Authorization"] for seen in stack.api.seen] == ["Bearer key-one"]
