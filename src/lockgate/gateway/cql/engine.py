"""The CQL engine: one listener that serves every ``kind: cql`` resource.

Clients (the stock cassandra-driver, Airflow's ``CassandraHook``) connect to the ``cql``
listener as to a single Cassandra node, log in with the resource name as username and their
Lockgate token as password, and then speak native protocol v4. Each connection gets its own
upstream connection opened as the gateway's own user, so stream ids pass through unchanged
(:mod:`.session`; requests are judged in :mod:`.judge`, answers relayed in :mod:`.answers`).
Per statement the engine classifies, asks policy, forwards or refuses, and audits.

Usage (it implements :class:`lockgate.gateway.engine.Engine`)::

    engine = CqlEngine(resources, shared)       # shared: the process's Collaborators
    await engine.listen(config.listeners)       # the ``cql`` listener
    engine.update_resources(new_resources)      # live, no restart
    await engine.close()

Live catalog (:meth:`CqlEngine.update_resources`): a new connection logs in against the new
catalog (a removed resource refuses the login like an unknown one). An open session whose
resource is unchanged keeps going. A session whose resource was removed or changed (its
upstream, credential or limits) is closed: it talks to the old upstream as the old
credential, which the change may be meant to stop; the driver reconnects and logs in
against the new catalog. A session closed for a removed resource is audited (``denied``,
``resource_removed``); one closed for a change is logged.

Revocation (:meth:`CqlEngine.end_revoked`, called by the server after the revocations
reloaded with a change): each statement re-checks the session's token anyway, but an idle
session sends none, so the sessions of a revoked token (or a blocked DAG) are closed at once
and audited (``session_ended``, ``token_revoked``); the driver's reconnect is refused at login.

Defaults worth knowing: reads of driver metadata tables (``system.local``, ``system.peers``,
``system.peers_v2``, ``system_schema.*``, ``system_virtual_schema.*``) and ``USE`` are allowed
for every authenticated principal (they touch no user data) and audited like every statement,
under the rules ``builtin:driver-metadata`` and ``builtin:use`` (an explicit deny rule still
refuses a metadata read); everything else needs a policy allow on ``keyspace.table``.
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
    limits,
    server_ssl_context,
)

from .context import EngineContext
from .handshake import Authenticated
from .session import ClientSession
from .statements import PreparedStatements

if TYPE_CHECKING:
    from lockgate.config import Listeners

log = _log.get("gateway.cql")


class CqlEngine:
    """Serves the CQL listener; see the module docstring."""

    kind: ClassVar[str] = "cql"
    #: One process serves it: prepared statements and dynamic roles live in this process.
    every_worker: ClassVar[bool] = False

    def __init__(
        self,
        resources: Iterable[ResourceConfig],
        shared: Collaborators,
        *,
        prepared: PreparedStatements | None = None,
    ) -> None:
        self.ctx = EngineContext(shared, prepared=prepared or PreparedStatements())
        self.ctx.update_resources(resources)
        self._server: asyncio.Server | None = None
        self._sessions: dict[asyncio.Task[None], ClientSession] = {}
        self.guard: ConnectionGuard | None = None
        self.port = 0

    @property
    def connections(self) -> int:
        """Client connections currently open."""
        return len(self._sessions)

    @property
    def ports(self) -> dict[str, int]:
        return {"cql": self.port} if self._server is not None else {}

    def update_resources(self, resources: Iterable[ResourceConfig]) -> None:
        """Serve this catalog from now on; see the module docstring for open sessions."""
        ctx = self.ctx
        previous = ctx.resources
        ctx.update_resources(resources)
        for name, was in previous.items():
            if ctx.resources.get(name) != was:  # e.g. moved to another cluster: its views
                ctx.views.invalidate(name)  # are read again at the next login
        for task, auth in self._logged_in():
            if ctx.resources.get(auth.resource.name) == auth.resource:
                continue  # unchanged (a session still logging in checks its catalog itself)
            name = auth.resource.name
            if name in ctx.resources:
                log.info("cql session closed: its resource changed", extra={"fields": {
                    "resource": name}})  # fmt: skip
                task.cancel()
            else:
                self._end(task, auth, "resource_removed")

    def end_revoked(self, is_revoked: RevocationCheck) -> int:
        """End the sessions whose token is now revoked (or whose DAG is blocked). CQL has no
        frame a server may send unasked to end a session (an ERROR answers a request), so
        the connection is closed, and its upstream connection with it; a driver that
        reconnects with the same token is refused at login. Audited (``denied``,
        ``token_revoked``)."""
        ended = 0
        for task, auth in self._logged_in():
            if is_revoked(auth.claims):
                self._end(task, auth, SESSION_REVOKED)
                ended += 1
        return ended

    def _logged_in(self) -> list[tuple[asyncio.Task[None], Authenticated]]:
        """Sessions past their login and not already being ended."""
        return [
            (task, session.auth)
            for task, session in list(self._sessions.items())
            if session.auth is not None and not task.cancelling()
        ]

    def _end(self, task: asyncio.Task[None], auth: Authenticated, reason: str) -> None:
        """Close a session from outside, audited as a refusal of its connection."""
        ctx = self.ctx
        event = "session_ended" if reason == SESSION_REVOKED else "denied"
        ctx.record(
            event, auth.claims, auth.resource.name, ctx.clock(), action="connect",
            decision="deny", reason=reason,
        )  # fmt: skip
        log.info("cql session closed", extra={"fields": {
            "resource": auth.resource.name, "reason": reason}})  # fmt: skip
        task.cancel()

    async def listen(self, listeners: Listeners, *, reuse_port: bool = False) -> None:
        """Open the ``cql`` listener (``reuse_port`` is ignored: one process serves it)."""
        cfg = listeners.cql
        if cfg is None:
            raise ValueError("the cql engine needs a listeners.cql section")
        await self.start(cfg.host, cfg.port, ssl=server_ssl_context(cfg), **limits(cfg))

    async def start(
        self,
        host: str,
        port: int,
        *,
        ssl: ssl_mod.SSLContext | None = None,
        handshake_timeout: float = DEFAULT_HANDSHAKE_TIMEOUT,
        max_connections: int = DEFAULT_MAX_CONNECTIONS,
    ) -> asyncio.Server:
        """Listen; ``handshake_timeout`` bounds the TLS handshake, ``max_connections`` the
        connections open at once (past it a new one is closed, see :mod:`..listeners`)."""
        self.guard = ConnectionGuard("cql", max_connections=max_connections, tls=ssl is not None)
        self._server = await asyncio.get_running_loop().create_server(
            self.guard.factory(self._protocol),
            host,
            port,
            ssl=ssl,
            ssl_handshake_timeout=handshake_timeout if ssl is not None else None,
        )
        self.port = int(self._server.sockets[0].getsockname()[1])
        log.info(
            "cql engine listening",
            extra={
                "fields": {"host": host, "port": self.port, "resources": sorted(self.ctx.resources)}
            },
        )
        return self._server

    def _protocol(self, ticket: Ticket) -> asyncio.StreamReaderProtocol:
        """What ``asyncio.start_server`` builds per connection, plus the ticket, which the
        session opens when it starts (after the TLS handshake) and closes when it ends."""
        return asyncio.StreamReaderProtocol(
            asyncio.StreamReader(), lambda reader, writer: self._accept(reader, writer, ticket)
        )

    async def _accept(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, ticket: Ticket
    ) -> None:
        ticket.opened()
        task = asyncio.current_task()
        session = ClientSession(self.ctx, reader, writer)
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
        for task in list(self._sessions):
            task.cancel()
        await asyncio.gather(*self._sessions, return_exceptions=True)
        if self._server is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._server.wait_closed(), 2.0)
            self._server = None
