"""The PostgreSQL engine: one listener that serves every ``kind: postgres`` resource.

Clients (libpq and psycopg, asyncpg, node-postgres, Airflow's ``PostgresHook``) connect to
the ``postgres`` listener as to one PostgreSQL server: TLS after an SSLRequest, the resource
name as the database name, any user name, the Lockgate token as password
(:mod:`.startup`). Each connection gets its own upstream connection opened as the gateway's
own login (:mod:`.session`); every statement goes through the session's flow (judged,
written ahead, relayed, audited). CancelRequests carry the gateway's own keys
(:mod:`.cancel`).

Usage (it implements :class:`lockgate.gateway.engine.Engine`)::

    engine = PostgresEngine(resources, shared)   # shared: the process's Collaborators
    await engine.listen(config.listeners)        # the ``postgres`` listener
    engine.update_resources(new_resources)       # live, no restart
    await engine.close()

The listener is plain TCP: TLS starts inside the protocol, after the client's SSLRequest,
with the listener's certificate (ALPN ``postgresql``). ``max_connections`` caps connections
open at once (past it a new one is closed at once), ``handshake_timeout`` bounds each login.

Live catalog (:meth:`PostgresEngine.update_resources`): a new connection logs in against
the new catalog (a removed resource is an unknown database). An open session whose
resource is unchanged keeps going. A session whose resource was removed or changed (its
upstream, credential, limits) is ended with ``FATAL 57P01``: it talks to the old upstream
as the old login, which the change may be meant to stop; the client reconnects against the
new catalog. An end for a removed resource is audited (``denied``, ``resource_removed``);
one for a change is logged.

Revocation (:meth:`PostgresEngine.end_revoked`, called by the server after the revocations
reloaded with a change): each statement re-checks the session's token anyway, but an idle
session sends none, so the sessions of a revoked token (or a blocked DAG) are ended at once
with ``FATAL 57P01`` naming the revocation and audited (``session_ended``, ``token_revoked``).
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl as ssl_mod
from collections.abc import Iterable
from typing import TYPE_CHECKING, ClassVar

from lockgate import _log
from lockgate.gateway.engine import (
    SESSION_REVOKED,
    Collaborators,
    ResourceConfig,
    RevocationCheck,
)
from lockgate.gateway.listeners import (
    DEFAULT_HANDSHAKE_TIMEOUT,
    DEFAULT_MAX_CONNECTIONS,
    ConnectionGuard,
    Ticket,
    server_ssl_context,
)

from .context import EngineContext
from .session import ClientSession, ListenerSettings
from .startup import Login

if TYPE_CHECKING:
    from lockgate.config import Listeners

log = _log.get("gateway.postgres")

#: ALPN protocol name of PostgreSQL over TLS (PostgreSQL 17 clients offer it).
ALPN = "postgresql"


class PostgresEngine:
    """Serves the postgres listener; see the module docstring."""

    kind: ClassVar[str] = "postgres"
    #: One process serves it: cancel keys map to sessions of this process.
    every_worker: ClassVar[bool] = False

    def __init__(self, resources: Iterable[ResourceConfig], shared: Collaborators) -> None:
        self.ctx = EngineContext(shared)
        self.ctx.update_resources(resources)
        self._server: asyncio.Server | None = None
        self._sessions: dict[asyncio.Task[None], ClientSession] = {}
        self.guard: ConnectionGuard | None = None
        self._settings = ListenerSettings(None, False, DEFAULT_HANDSHAKE_TIMEOUT)
        self.port = 0

    @property
    def connections(self) -> int:
        """Client connections currently open."""
        return len(self._sessions)

    @property
    def ports(self) -> dict[str, int]:
        return {"postgres": self.port} if self._server is not None else {}

    def update_resources(self, resources: Iterable[ResourceConfig]) -> None:
        """Serve this catalog from now on; see the module docstring for open sessions."""
        ctx = self.ctx
        ctx.update_resources(resources)
        for task, session, login in self._logged_in():
            if ctx.resources.get(login.resource.name) == login.resource:
                continue
            name = login.resource.name
            message = f"terminating connection: Lockgate resource {name!r} was reconfigured"
            if name in ctx.resources:
                log.info("postgres session closed: its resource changed", extra={"fields": {
                    "resource": name}})  # fmt: skip
                session.terminate("57P01", message)
                task.cancel()
            else:
                self._end(task, session, login, "resource_removed", message)

    def end_revoked(self, is_revoked: RevocationCheck) -> int:
        """End the sessions whose token is now revoked (or whose DAG is blocked) with
        ``FATAL 57P01`` naming the revocation (what ``pg_terminate_backend`` sends: drivers
        and pools take it for a dropped connection), upstream connection closed; audited
        (``session_ended``, ``token_revoked``). A reconnect with the same token is refused."""
        ended = 0
        for task, session, login in self._logged_in():
            if is_revoked(login.claims):
                message = (
                    "terminating connection: the Lockgate token of this session was revoked; "
                    "reconnect with a fresh token"
                )
                self._end(task, session, login, SESSION_REVOKED, message)
                ended += 1
        return ended

    def _logged_in(self) -> list[tuple[asyncio.Task[None], ClientSession, Login]]:
        """Sessions past their login and not already being ended (a session still logging
        in checks the catalog and its token again before it greets the client)."""
        return [
            (task, session, session.login)
            for task, session in list(self._sessions.items())
            if session.login is not None and session.flow is not None and not session.terminated
        ]

    def _end(
        self, task: asyncio.Task[None], session: ClientSession, login: Login, reason: str,
        message: str,
    ) -> None:  # fmt: skip
        """Terminate a session from outside, audited as a refusal of its connection."""
        ctx = self.ctx
        event = "session_ended" if reason == SESSION_REVOKED else "denied"
        ctx.record(
            event, login.claims, login.resource.name, ctx.clock(), action="connect",
            decision="deny", reason=reason,
        )  # fmt: skip
        log.info("postgres session closed", extra={"fields": {
            "resource": login.resource.name, "reason": reason}})  # fmt: skip
        session.terminate("57P01", message)
        task.cancel()

    async def listen(self, listeners: Listeners, *, reuse_port: bool = False) -> None:
        """Open the ``postgres`` listener (``reuse_port`` is ignored: one process serves it)."""
        cfg = listeners.postgres
        if cfg is None:
            raise ValueError("the postgres engine needs a listeners.postgres section")
        await self.start(
            cfg.host,
            cfg.port,
            tls=server_ssl_context(cfg),
            allow_plaintext=cfg.allow_plaintext,
            handshake_timeout=cfg.handshake_timeout,
            max_connections=cfg.max_connections,
        )

    async def start(
        self,
        host: str,
        port: int,
        *,
        tls: ssl_mod.SSLContext | None,
        allow_plaintext: bool = False,
        handshake_timeout: float = DEFAULT_HANDSHAKE_TIMEOUT,
        max_connections: int = DEFAULT_MAX_CONNECTIONS,
    ) -> asyncio.Server:
        """Listen; ``tls`` is the context an SSLRequest upgrades to (None: answer ``N``)."""
        if tls is not None:
            tls.set_alpn_protocols([ALPN])
        elif not allow_plaintext:
            log.warning(
                "postgres listener has no tls and allow_plaintext is false: every login will "
                "be refused; give it a certificate (listeners.postgres.tls)"
            )
        self._settings = ListenerSettings(tls, allow_plaintext, handshake_timeout)
        self.guard = ConnectionGuard(
            "postgres", max_connections=max_connections, tls_inside=tls is not None
        )
        self._server = await asyncio.get_running_loop().create_server(
            self.guard.factory(self._protocol), host, port
        )
        self.port = int(self._server.sockets[0].getsockname()[1])
        log.info(
            "postgres engine listening",
            extra={
                "fields": {"host": host, "port": self.port, "resources": sorted(self.ctx.resources)}
            },
        )
        return self._server

    def _protocol(self, ticket: Ticket) -> asyncio.StreamReaderProtocol:
        """A stream protocol per connection, plus the ticket, opened when the session
        starts and closed when it ends."""
        return asyncio.StreamReaderProtocol(
            asyncio.StreamReader(), lambda reader, writer: self._accept(reader, writer, ticket)
        )

    async def _accept(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, ticket: Ticket
    ) -> None:
        ticket.opened()
        task = asyncio.current_task()
        session = ClientSession(self.ctx, reader, writer, self._settings)
        if task is not None:
            self._sessions[task] = session
        try:
            with contextlib.suppress(asyncio.CancelledError):
                await session.run()
        finally:
            ticket.closed()
            if task is not None:
                self._sessions.pop(task, None)

    async def close(self) -> None:
        """Stop listening and end every client connection (and its upstream connection)."""
        if self._server is not None:
            self._server.close()
        for task, session in list(self._sessions.items()):
            session.terminate("57P01", "terminating connection due to administrator command")
            task.cancel()
        await asyncio.gather(*self._sessions, return_exceptions=True)
        self.ctx.refusals.close()  # pending summaries of suppressed refusals
        self.ctx.relations.close()
        if self._server is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._server.wait_closed(), 2.0)
            self._server = None


__all__ = ["ALPN", "PostgresEngine"]
