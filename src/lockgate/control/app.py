"""The control listener: its aiohttp application and the server that accepts its connections.

:class:`ControlPlane` is built once per primary worker from typed collaborators
(:meth:`ControlPlane.build`): it makes the token service (with the dynamic roles as its
revocation hook), binds every route to one :class:`~lockgate.control.context.ControlContext`
and serves them on the control listener with the same handshake timeout and cap as every
other listener. It owns the dynamic roles' lifecycle (start, and drop every live role on
close). The token service it makes carries the rate limits
(:mod:`lockgate.identity.rate_limit`); each door passes the request's address.
"""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any, Protocol

from aiohttp import web

from lockgate import metrics
from lockgate.config import AnyResource, ListenerConfig, LockgateConfig
from lockgate.control.catalog import catalog_handler
from lockgate.control.context import ControlContext, EventSink, ListenerPorts, MintDecider
from lockgate.control.cosmos_key import task_key_handler
from lockgate.control.db_role import db_role_handler
from lockgate.control.managed_identity import PATH as MSI_PATH
from lockgate.control.managed_identity import msi_handler
from lockgate.control.openapi import PATH as OPENAPI_PATH
from lockgate.control.openapi import document as openapi_document
from lockgate.control.poll_token import poll_token_handler
from lockgate.control.token import add_token_routes
from lockgate.gateway.dynamic_roles import DbRoles
from lockgate.gateway.listeners import ConnectionGuard, TrackedProtocol
from lockgate.identity import KeyStore, RevocationStore, TokenIssuer, TokenService, TokenVerifier
from lockgate.identity.once import OnceLedger
from lockgate.identity.rate_limit import RateLimits

if TYPE_CHECKING:
    from lockgate.console.web import ConsoleContext

BODY_LIMIT = 64 * 1024  # every control request is a small form or JSON document


class ReadinessReport(Protocol):
    """What ``/readyz`` serves (see :mod:`lockgate.readiness`)."""

    @property
    def ready(self) -> bool: ...

    def body(self) -> dict[str, Any]: ...


def control_app(
    ctx: ControlContext,
    readiness: Callable[[], ReadinessReport],
    console: ConsoleContext | None = None,
) -> web.Application:
    """Every route of the control listener, over ``ctx``; the web console at ``/console``
    too when ``console`` is given and ``console.enabled``."""
    app = web.Application(client_max_size=BODY_LIMIT)
    add_token_routes(app, ctx.tokens)

    async def healthz(request: web.Request) -> web.Response:
        return web.json_response({"status": "ok"})

    async def readyz(request: web.Request) -> web.Response:
        report = readiness()
        return web.json_response(report.body(), status=200 if report.ready else 503)

    async def metrics_page(request: web.Request) -> web.Response:
        return web.Response(body=metrics.render(), content_type="text/plain", charset="utf-8")

    app.router.add_post("/v1/catalog", catalog_handler(ctx))
    app.router.add_post("/v1/db-role", db_role_handler(ctx))
    app.router.add_post("/v1/poll-token", poll_token_handler(ctx))
    app.router.add_post("/v1/cosmos-key", task_key_handler(ctx))
    app.router.add_get(MSI_PATH, msi_handler(ctx))
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    app.router.add_get("/metrics", metrics_page)
    app.router.add_get(OPENAPI_PATH, openapi_page)
    if console is not None and ctx.config.console.enabled:
        from lockgate.console.app import mount  # the console's templates load only if served

        mount(app, console)
    return app


async def openapi_page(request: web.Request) -> web.Response:
    """The control API's reference (unauthenticated, like JWKS: it holds no secret)."""
    return web.json_response(_REFERENCE, headers={"Cache-Control": "public, max-age=300"})


_REFERENCE = openapi_document()  # built once: it depends on no config


class ControlPlane:
    """The control listener of one gateway process."""

    def __init__(
        self,
        ctx: ControlContext,
        readiness: Callable[[], ReadinessReport],
        console: ConsoleContext | None = None,
    ) -> None:
        self.ctx = ctx
        self._readiness = readiness
        self.console = console
        self._runner: web.AppRunner | None = None
        self._server: asyncio.Server | None = None
        self.port = 0

    @classmethod
    def build(
        cls,
        config: LockgateConfig,
        *,
        keys: KeyStore,
        revocations: RevocationStore,
        issuer: TokenIssuer,
        verifier: TokenVerifier,
        mint_policy: MintDecider,
        audit: EventSink,
        master_key: bytes,
        ports: ListenerPorts,
        readiness: Callable[[], ReadinessReport],
        db_roles: DbRoles | None = None,
        assertion_ledger: OnceLedger | None = None,
        rate_limits: RateLimits | None = None,
        console: ConsoleContext | None = None,
    ) -> ControlPlane:
        """``rate_limits``: the token service's buckets (default: in the revocations'
        database when shared, else ``data_dir/rate_limits.db``); ``console``: serve the web
        console at ``/console`` (when ``console.enabled``)."""
        if rate_limits is None:
            shared = revocations.shared
            where = revocations.database if shared else config.data_dir / "rate_limits.db"
            rate_limits = RateLimits.for_config(config, where)
        tokens = TokenService(
            config,
            keys,
            revocations,
            issuer,
            mint_policy,
            on_event=audit,
            # per-token state elsewhere ends with the tokens: dynamic roles are dropped
            on_revoke=db_roles.on_revoke if db_roles is not None else None,
            assertion_ledger=assertion_ledger,
            rate_limits=rate_limits,
        )
        ctx = ControlContext(
            config, tokens, verifier, issuer, mint_policy, audit, master_key, ports, db_roles
        )
        return cls(ctx, readiness, console)

    def update_resources(self, resources: Iterable[AnyResource]) -> None:
        """Take a new catalog without a restart: from the next request on, tokens are minted
        for, and the catalog lists, exactly these resources (a token already minted for a
        removed one is refused by the engine that served it), and dynamic database roles
        follow it (:meth:`DbRoles.update_resources`)."""
        config = self.ctx.config.model_copy(update={"resources": list(resources)})
        self.ctx.config = config
        self.ctx.tokens.config = config
        if self.ctx.db_roles is not None:
            self.ctx.db_roles.update_resources(config.resources)

    async def start(self, listener: ListenerConfig, tls: ssl.SSLContext | None) -> int:
        """Start the dynamic roles' sweeper and serve the routes; the port bound."""
        if self.ctx.db_roles is not None:
            self.ctx.db_roles.start()
        self._runner = web.AppRunner(
            control_app(self.ctx, self._readiness, self.console), access_log=None
        )
        await self._runner.setup()
        self._server = await serve_control(self._runner, listener, tls)
        self.port = int(self._server.sockets[0].getsockname()[1])
        return self.port

    async def close(self) -> None:
        """Stop serving, then drop every live dynamic role (before the credentials close:
        dropping a role needs the gateway's own upstream login)."""
        if self._server is not None:
            self._server.close()
        if self._runner is not None:
            await self._runner.cleanup()
        if self._server is not None:
            await self._server.wait_closed()
        if self.ctx.db_roles is not None:
            await self.ctx.db_roles.close()
        if self.ctx.tokens.rate_limits is not None:
            self.ctx.tokens.rate_limits.close()


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
