"""``HttpEngine``: the ``kind: http`` engine's door: listener, resources and pools.

Wiring only; the pipeline is :mod:`proxy`, the wire handling :mod:`server` (client side) and
:mod:`upstream` (pool). ``update_resources`` swaps the catalog atomically: requests in flight
finish on the old state, new ones see the new one, and pools of unchanged resources are kept
so warm connections survive a reload.

A resource with ``listen`` is also served at the root of its own port
(:meth:`HttpEngine.start_mounted`): clients such as the Databricks hook build
``https://host:port/api/...`` and cannot add a ``/<resource>`` prefix. The token's audience
must still be that resource. ``profile`` resources get their profile object here (kept
across reloads while the resource is unchanged).
"""

from __future__ import annotations

import asyncio
import ssl as ssl_module
import time
from collections.abc import Iterable
from pathlib import Path
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
from lockgate.gateway.http.profiles import make_profile
from lockgate.gateway.http.proxy import Proxy, ResourceState
from lockgate.gateway.http.server import ClientConnection
from lockgate.gateway.http.upstream import UpstreamPool
from lockgate.gateway.listeners import (
    DEFAULT_HANDSHAKE_TIMEOUT,
    DEFAULT_MAX_CONNECTIONS,
    ConnectionGuard,
    Ticket,
    http_refusal,
)


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
        data_dir: Path | None = None,
    ) -> None:
        self._clock = clock
        self._data_dir = data_dir  # profile state (e.g. the Databricks run registry)
        self._mounted: list[asyncio.Server] = []
        self._closing: set[asyncio.Task[None]] = set()
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
        self._connections: set[ClientConnection] = set()  # made and not yet lost
        self.guards: dict[str, ConnectionGuard] = {}  # listener name -> its connection count
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
            if pool is not None and prev is not None:
                state.profile = prev.profile
            else:
                state.profile = make_profile(r, state.target, self._data_dir)
            new[r.name] = state
        self.proxy.resources = new
        for name, state in old.items():
            if name not in new or new[name].pool is not state.pool:
                state.pool.close()
                self._close_profile(state)

    def _close_profile(self, state: ResourceState) -> None:
        if state.profile is None:
            return
        profile, state.profile = state.profile, None
        try:
            task = asyncio.get_running_loop().create_task(profile.close())
        except RuntimeError:  # no loop (built outside one): nothing async was opened yet
            return
        self._closing.add(task)
        task.add_done_callback(self._closing.discard)

    def pool(self, name: str) -> UpstreamPool:
        return self.proxy.resources[name].pool

    def _protocol(self, mount: str | None = None, ticket: Ticket | None = None) -> ClientConnection:
        conn = (MountedConnection if mount is not None else ClientConnection)(
            self.proxy.handle,
            max_header_bytes=self._max_header_bytes,
            idle_timeout=self._idle_timeout,
            clock=self._clock,
            on_close=self._connections.discard,
            fast=self.proxy.serve,
            on_refused=self.proxy.connection_refused,
            on_open=self._connections.add,  # once made: see :mod:`lockgate.gateway.listeners`
            ticket=ticket,
        )
        if mount is not None:
            conn.mount = mount  # type: ignore[attr-defined]
        return conn

    def client_protocol(self, resource: str) -> ClientConnection:
        """A client connection serving ``resource`` at the root; the forward proxy hands it
        the decrypted stream of a CONNECT tunnel (:mod:`.forward_proxy`)."""
        return self._protocol(resource)

    async def start_mounted(
        self,
        resource: str,
        host: str,
        port: int,
        ssl: ssl_module.SSLContext | None = None,
        *,
        reuse_port: bool = False,
        **limits: Any,
    ) -> asyncio.Server:
        """Serve ``resource`` alone at the root of ``host:port`` (``/api/...``, no prefix)."""
        server = await self._listen(resource, resource, host, port, ssl, reuse_port, **limits)
        self._mounted.append(server)
        return server

    async def start(
        self,
        host: str,
        port: int,
        ssl: ssl_module.SSLContext | None = None,
        *,
        reuse_port: bool = False,
        **limits: Any,
    ) -> asyncio.Server:
        """Listen on ``host:port``. ``reuse_port`` lets several worker processes share the
        port (SO_REUSEPORT): one engine is one event loop, i.e. at most one core.
        ``limits``: ``handshake_timeout`` (TLS, seconds) and ``max_connections``, as the
        listener's config; see :mod:`lockgate.gateway.listeners`."""
        self._server = await self._listen("http", None, host, port, ssl, reuse_port, **limits)
        return self._server

    async def _listen(
        self,
        listener: str,
        mount: str | None,
        host: str,
        port: int,
        ssl: ssl_module.SSLContext | None,
        reuse_port: bool,
        *,
        handshake_timeout: float = DEFAULT_HANDSHAKE_TIMEOUT,
        max_connections: int = DEFAULT_MAX_CONNECTIONS,
    ) -> asyncio.Server:
        guard = self.guards[listener] = ConnectionGuard(
            listener,
            max_connections=max_connections,
            tls=ssl is not None,
            refusal=http_refusal(listener, max_connections),
        )
        return await asyncio.get_running_loop().create_server(
            guard.factory(lambda ticket: self._protocol(mount, ticket)),
            host,
            port,
            ssl=ssl,
            ssl_handshake_timeout=handshake_timeout if ssl is not None else None,
            backlog=1024,
            reuse_address=True,
            reuse_port=reuse_port or None,
        )

    @property
    def port(self) -> int:
        assert self._server is not None and self._server.sockets
        return int(self._server.sockets[0].getsockname()[1])

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
        for server in self._mounted:
            server.close()
        for conn in list(self._connections):
            if conn.transport is not None:
                conn.transport.close()
        self.proxy.refusals.close()  # pending refusal summaries go to the audit trail
        for state in self.proxy.resources.values():
            state.pool.close()
            if state.profile is not None:
                await state.profile.close()
                state.profile = None
        if self._closing:
            await asyncio.gather(*self._closing, return_exceptions=True)
        for server in self._mounted:
            await server.wait_closed()
        self._mounted = []
        if self._server is not None:
            await self._server.wait_closed()
            self._server = None


class MountedConnection(ClientConnection):
    """A client connection on a resource's own listener: paths carry no resource prefix."""

    mount: str
