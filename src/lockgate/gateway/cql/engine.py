"""The CQL engine: one listener that serves every ``kind: cql`` resource.

Clients (the stock cassandra-driver, Airflow's ``CassandraHook``) connect to the ``cql``
listener as to a single Cassandra node, log in with the resource name as username and their
Lockgate token as password, and then speak native protocol v4. Each connection gets its own
upstream connection opened as the gateway's own user, so stream ids pass through unchanged
(:mod:`.session`; requests are judged in :mod:`.judge`, answers relayed in :mod:`.answers`).
Per statement the engine classifies, asks policy, forwards or refuses, and audits.

Usage::

    engine = CqlEngine(resources, verifier, policy, broker, audit)
    server = await engine.start("127.0.0.1", 9042, ssl=ssl_context)
    ...
    await engine.close()

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
from collections.abc import Sequence
from typing import Any

from lockgate import _log
from lockgate.config import CqlResource
from lockgate.gateway.engine import AuditSink, CredentialBroker, PolicySource, TokenVerifier
from lockgate.gateway.listeners import (
    DEFAULT_HANDSHAKE_TIMEOUT,
    DEFAULT_MAX_CONNECTIONS,
    ConnectionGuard,
    Ticket,
)

from .context import EngineContext
from .session import ClientSession
from .statements import PreparedStatements

log = _log.get("gateway.cql")


class CqlEngine:
    """Serves the CQL listener; see the module docstring."""

    def __init__(
        self,
        resources: Sequence[CqlResource],
        verifier: TokenVerifier,
        policy: PolicySource,
        broker: CredentialBroker,
        audit: AuditSink,
        *,
        make_request: Any = None,
        make_record: Any = None,
        prepared: PreparedStatements | None = None,
    ) -> None:
        self.ctx = EngineContext.build(
            resources,
            verifier,
            policy,
            broker,
            audit,
            make_request=make_request,
            make_record=make_record,
            prepared=prepared,
        )
        self._server: asyncio.Server | None = None
        self._sessions: set[asyncio.Task[Any]] = set()
        self.guard: ConnectionGuard | None = None
        self.port = 0

    @property
    def connections(self) -> int:
        """Client connections currently open."""
        return len(self._sessions)

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
        if task is not None:
            self._sessions.add(task)
        try:
            with contextlib.suppress(asyncio.CancelledError):
                await ClientSession(self.ctx, reader, writer).run()
        finally:
            ticket.closed()
            if task is not None:
                self._sessions.discard(task)

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
