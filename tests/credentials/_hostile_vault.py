"""A scriptable hostile vault (any answer to any request, what it was sent recorded) and
brokers reading a Key Vault- or Vault-held credential from it: the parts the vault attack
tests share."""

from __future__ import annotations

import contextlib
import json
import os
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

from lockgate.config import LockgateConfig
from lockgate.credentials import CredentialBroker, CredentialStore
from lockgate.demo.standins.entra import FakeEntra

APP_SECRET = "gw-app-secret-value"
ROLE_ID = "5f1c2a0e-7d3b-4c1e-9a8f-2b6d4e0c1a93"
SECRET_ID = "c0ffee00-1234-4bcd-8ef0-a1b2c3d4e5f6"
VAULT_TOKEN = "s.Qx7Yb2Zk9Wm4Np1Rt6Vc3Hd8"  # an old-style Vault token: short, dotted
VALUE = "the-upstream-secret-value"

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@dataclass
class Hostile:
    """One HTTP server answering whatever the test scripts, recording what it was sent."""

    url: str = ""
    routes: dict[str, Handler] = field(default_factory=dict)
    seen: list[tuple[str, dict[str, str]]] = field(default_factory=list)

    async def dispatch(self, request: web.Request) -> web.StreamResponse:
        self.seen.append((request.path, dict(request.headers)))
        for prefix, handler in self.routes.items():
            if request.path.startswith(prefix):
                return await handler(request)
        return web.json_response({"errors": ["no handler"]}, status=404)


async def serve_hostile(hostile: Hostile) -> web.AppRunner:
    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", hostile.dispatch)
    runner = web.AppRunner(app, access_log=None, handler_cancellation=True)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    hostile.url = f"http://127.0.0.1:{runner.addresses[0][1]}"
    return runner


def key_vault_broker(
    tmp_path: Path, entra: FakeEntra, vault_url: str, clock: Callable[[], float] = time.time,
    **kv: Any,
) -> CredentialBroker:  # fmt: skip
    config = LockgateConfig.model_validate({
        "data_dir": str(tmp_path),
        "resources": [{"name": "orders-api", "kind": "http", "upstream": "http://127.0.0.1:1",
                       "credential": "orders-key"}],
        "credentials": [
            {"name": "kv-reader", "type": "oauth2_client_credentials",
             "token_url": entra.token_url, "client_id": "gw-app",
             "scope": "https://vault.azure.net/.default"},
            {"name": "orders-key", "type": "azure_key_vault", "vault_url": vault_url,
             "secret": "orders-api-key", "identity": "kv-reader", "timeout": 2.0, **kv},
        ],
    })  # fmt: skip
    store = CredentialStore(tmp_path / "c.db", b"k" * 32)
    store.set("kv-reader", APP_SECRET)
    return CredentialBroker(config, store, clock=clock)


def vault_broker(
    tmp_path: Path, address: str, clock: Callable[[], float] = time.time, **kv: Any
) -> CredentialBroker:
    secret_id_file = tmp_path / "secret-id"
    secret_id_file.write_text(SECRET_ID)
    config = LockgateConfig.model_validate({
        "data_dir": str(tmp_path),
        "resources": [{"name": "orders-api", "kind": "http", "upstream": "http://127.0.0.1:1",
                       "credential": "orders-key"}],
        "credentials": [{"name": "orders-key", "type": "vault_kv", "address": address,
                         "path": "orders/api", "timeout": 2.0,
                         "auth": {"method": "approle", "role_id": ROLE_ID,
                                  "secret_id_file": str(secret_id_file)}, **kv}],
    })  # fmt: skip
    return CredentialBroker(config, CredentialStore(tmp_path / "c.db", b"k" * 32), clock=clock)


def bearer_of(request: web.Request) -> str:
    return request.headers.get("Authorization", "").removeprefix("Bearer ")


def kv_answer(data: object, version: object = 1) -> dict[str, Any]:
    return {"data": {"data": data, "metadata": {"version": version}}}


async def vault_login(request: web.Request) -> web.Response:
    return web.json_response(
        {"auth": {"client_token": VAULT_TOKEN, "lease_duration": 3600, "renewable": True}}
    )


def everything_said(broker: CredentialBroker, caplog: pytest.LogCaptureFixture) -> str:
    """Errors, logs and what `creds list` / readiness show of the credential."""
    status = broker.vault_status()["orders-key"]
    stored = broker._store.fetches().get("orders-key", ("", "", 0.0))
    return "\n".join(
        [caplog.text, str(status.error), str(status.vault_version), stored[1]]
        + [json.dumps(getattr(r, "fields", {})) for r in caplog.records]
    )


class Clock:
    def __init__(self) -> None:
        self.offset = 0.0

    def __call__(self) -> float:
        return time.time() + self.offset


def unblock(fifo: Path, data: bytes = b"") -> None:
    """Open ``fifo`` for writing a little later: a reader the code under test should never
    have started is let go (the test fails instead of hanging)."""
    time.sleep(1.5)
    with contextlib.suppress(OSError):
        fd = os.open(fifo, os.O_WRONLY | os.O_NONBLOCK)
        os.write(fd, data)
        os.close(fd)
