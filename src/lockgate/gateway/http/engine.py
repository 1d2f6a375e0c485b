"""``HttpEngine``: the ``kind: http`` engine's door: listener, resources and pools.

Wiring only; the pipeline is :mod:`proxy`, the wire handling :mod:`server` (client side) and
:mod:`upstream` (pool). ``update_resources`` swaps the catalog atomically: requests in flight
finish on the old state, new ones see the new one, and pools of unchanged resources are kept
so warm connections survive a reload.
"""

from __future__ import annotations

import asyncio
import ssl as ssl_module
import time
from collections.abc import Iterable
from typing import Any

from lockgate.gateway.engine import (
    AssertionCache,
    AssertionSigner,
    AuditSink,
    Clock,
    CredentialBroker,
    PolicySource,
    RecordFactory,
    RequestFactory,
    SecretCache,
    TokenVerifier,
    default_record_factory,
    default_request_factory,
)
from lockgate.gateway.http.proxy import Proxy, ResourceState
from lockgate.gateway.http.server import ClientConnection
from lockgate.gateway.http.upstream import UpstreamPool


class HttpEngine:
    kind = "http"

    def __init__(
        self,
        resources: Iterable[Any],
        verifier: TokenVerifier,
        policy: PolicySource,
        broker: CredentialBroker,
        audit: AuditSink,
        sign_assertion: AssertionSigner,
        *,
        clock: Clock = time.monotonic,
        max_header_bytes: int = 64 * 1024,
        idle_timeout: float = 60.0,
        secret_ttl: float = 1.0,
        assertion_ttl: float = 30.0,
        connect_timeout: float = 10.0,
        max_idle_per_resource: int = 64,
        make_request: RequestFactory | None = None,
        make_record: RecordFactory | None = None,
    ) -> None:
        self._clock = clock
        self._max_header_bytes = max_header_bytes
        self._idle_timeout = idle_timeout
        self._connect_timeout = connect_timeout
        self._max_idle = max_idle_per_resource
        self.secrets = SecretCache(broker, ttl=secret_ttl, clock=clock)
        self.proxy = Proxy(
            verifier=verifier,
            policy=policy,
            secrets=self.secrets,
            assertions=AssertionCache(sign_assertion, ttl=assertion_ttl, clock=clock),
            audit=audit,
            make_request=make_request or default_request_factory(),
            make_record=make_record or default_record_factory(),
            clock=clock,
        )
        self._server: asyncio.Server | None = None
        self._connections: set[ClientConnection] = set()
        self.update_resources(resources)

    def update_resources(self, resources: Iterable[Any]) -> None:
        old = self.proxy.resources
        new: dict[str, ResourceState] = {}
        for r in resources:
            if getattr(r, "kind", "http") != "http":
                continue
            prev = old.get(r.name)
            pool = prev.pool if prev is not None and prev.resource == r else None
            if pool is None:
                state = ResourceState(r)
                state.pool = UpstreamPool(
                    state.target,
                    connect_timeout=self._connect_timeout,
                    max_idle=self._max_idle,
                    clock=self._clock,
                )
            else:
                state = ResourceState(r, pool)
            new[r.name] = state
        self.proxy.resources = new
        for name, state in old.items():
            if name not in new or new[name].pool is not state.pool:
                state.pool.close()

    def pool(self, name: str) -> UpstreamPool:
        return self.proxy.resources[name].pool

    def _protocol(self) -> ClientConnection:
        conn = ClientConnection(
            self.proxy.handle,
            max_header_bytes=self._max_header_bytes,
            idle_timeout=self._idle_timeout,
            clock=self._clock,
            on_close=self._connections.discard,
            fast=self.proxy.serve,
        )
        self._connections.add(conn)
        return conn

    async def start(
        self,
        host: str,
        port: int,
        ssl: ssl_module.SSLContext | None = None,
        *,
        reuse_port: bool = False,
    ) -> asyncio.Server:
        """Listen on ``host:port``. ``reuse_port`` lets several worker processes share the
        port (SO_REUSEPORT): one engine is one event loop, i.e. at most one core."""
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(
            self._protocol,
            host,
            port,
            ssl=ssl,
            backlog=1024,
            reuse_address=True,
            reuse_port=reuse_port or None,
        )
        return self._server

    @property
    def port(self) -> int:
        assert self._server is not None and self._server.sockets
        return int(self._server.sockets[0].getsockname()[1])

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
        for conn in list(self._connections):
            if conn.transport is not None:
                conn.transport.close()
        for state in self.proxy.resources.values():
            state.pool.close()
        if self._server is not None:
            await self._server.wait_closed()
            self._server = None
