"""The control listener: its aiohttp application (token service, catalog, poll token,
database role, Cosmos DB task key, managed-identity endpoint, health, readiness, metrics)
and the server that accepts its connections.
"""

from __future__ import annotations

import asyncio
import ssl
from typing import TYPE_CHECKING

from aiohttp import web

from lockgate import metrics
from lockgate.config import ListenerConfig
from lockgate.control.catalog import catalog_handler
from lockgate.control.cosmos_key import task_key_handler
from lockgate.control.poll_token import poll_token_handler
from lockgate.gateway.listeners import ConnectionGuard, TrackedProtocol
from lockgate.identity import managed_identity as msi

if TYPE_CHECKING:
    from lockgate.server import Gateway

BODY_LIMIT = 64 * 1024  # every control request is a small form or JSON document


def control_app(gateway: Gateway) -> web.Application:
    """Every route of the control listener, bound to ``gateway`` (its token service must
    exist: :meth:`lockgate.server.Gateway.control_app` makes it first)."""
    app = web.Application(client_max_size=BODY_LIMIT)
    gateway.token_service.routes(app)

    async def db_role(request: web.Request) -> web.Response:
        if gateway.db_roles is None:
            raise web.HTTPNotFound()
        handler = gateway.db_roles.handler(gateway.token_service, gateway.on_token_event)
        return await handler(request)

    async def healthz(request: web.Request) -> web.Response:
        return web.json_response({"status": "ok"})

    async def readyz(request: web.Request) -> web.Response:
        report = gateway.readiness.report(gateway.serving)  # each check: lockgate.readiness
        return web.json_response(report.body(), status=200 if report.ready else 503)

    async def metrics_page(request: web.Request) -> web.Response:
        return web.Response(body=metrics.render(), content_type="text/plain", charset="utf-8")

    app.router.add_post("/v1/catalog", catalog_handler(gateway))
    app.router.add_post("/v1/db-role", db_role)
    app.router.add_post("/v1/poll-token", poll_token_handler(gateway))
    app.router.add_post("/v1/cosmos-key", task_key_handler(gateway))
    app.router.add_get(msi.PATH, msi.msi_handler(gateway))
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    app.router.add_get("/metrics", metrics_page)
    return app


async def serve_control(
    runner: web.AppRunner, listener: ListenerConfig, tls: ssl.SSLContext | None
) -> asyncio.Server:
    """aiohttp's protocol behind a :class:`ConnectionGuard` (instead of ``web.TCPSite``,
    which sets neither a TLS handshake timeout nor a cap)."""
    app_server = runner.server
    assert app_server is not None
    guard = ConnectionGuard(
        "control", max_connections=listener.max_connections, tls=tls is not None
    )
    return await asyncio.get_running_loop().create_server(
        guard.factory(lambda ticket: TrackedProtocol(app_server(), ticket)),
        listener.host,
        listener.port,
        ssl=tls,
        ssl_handshake_timeout=listener.handshake_timeout if tls is not None else None,
        backlog=128,
        reuse_address=True,
    )
