"""``HttpEngine``: the ``kind: http`` engine's door: listeners, resources and pools.

Wiring only; the pipeline is :mod:`proxy`, the wire handling :mod:`server` (client side) and
:mod:`upstream` (pool). It implements :class:`lockgate.gateway.engine.Engine`:
:meth:`HttpEngine.listen` opens the ``http`` listener, one listener per resource with its
own ``listen``, and the forward proxy (``listeners.forward_proxy``) when configured.

``update_resources`` swaps the catalog atomically: requests in flight finish on the old
state, new ones see the new one, and pools of unchanged resources are kept so warm
connections survive a reload. A removed resource answers 404 to new requests; the forward
proxy's intercepted hosts follow the catalog. Listeners are not reopened: a resource whose
``listen`` is new or changed is served on its own port after a restart (it is served on
the ``http`` listener at once).

A resource with ``listen`` is also served at the root of its own port
(:meth:`HttpEngine.start_mounted`): clients such as the Databricks hook build
``https://host:port/api/...`` and cannot add a ``/<resource>`` prefix. The token's audience
must still be that resource. ``profile`` resources get their profile object here (kept
across reloads while the resource is unchanged).
"""

from __future__ import annotations

import asyncio
import ssl as ssl_module
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any, ClassVar

from lockgate.config import HttpResource, ListenerConfig
from lockgate.gateway.engine import Collaborators, ResourceConfig
from lockgate.gateway.http.forward_proxy import ForwardProxy
from lockgate.gateway.http.profiles import make_profile
from lockgate.gateway.http.proxy import Proxy
from lockgate.gateway.http.resources import ResourceState
from lockgate.gateway.http.server import ClientConnection
from lockgate.gateway.http.upstream import UpstreamPool
from lockgate.gateway.listeners import (
    DEFAULT_HANDSHAKE_TIMEOUT,
    DEFAULT_MAX_CONNECTIONS,
    ConnectionGuard,
    Ticket,
    http_refusal,
    limits,
    server_ssl_context,
)

if TYPE_CHECKING:
    from lockgate.config import Listeners


class HttpEngine:
    """Serves every ``kind: http`` resource; see the module docstring.

    ``HttpEngine(resources, shared)`` with the process's :class:`Collaborators` (tests and
    benchmarks build one from fakes).
    """

    kind: ClassVar[str] = "http"
    every_worker: ClassVar[bool] = True  # workers share the port (SO_REUSEPORT)

    def __init__(
        self,
        resources: Iterable[ResourceConfig],
        shared: Collaborators,
        *,
        max_header_bytes: int = 64 * 1024,
        idle_timeout: float = 60.0,
        connect_timeout: float = 10.0,
        max_idle_per_resource: int = 64,
    ) -> None:
        self.shared = shared
        self._clock = shared.clock
        self._data_dir = shared.data_dir  # profile state (e.g. the Databricks run registry)
        self._mounted: list[asyncio.Server] = []
        self._closing: set[asyncio.Task[None]] = set()
        self._max_header_bytes = max_header_bytes
        self._idle_timeout = idle_timeout
        self._connect_timeout = connect_timeout
        self._max_idle = max_idle_per_resource
        self.secrets = shared.secrets
        self.proxy = Proxy(
            verifier=shared.verifier,
            policy=shared.policy,
            secrets=shared.secrets,
            assertions=shared.assertions,
            audit=shared.audit,
            records=shared.records,
            make_request=shared.make_request,
            clock=shared.clock,
            quotas=shared.quotas,
        )
        self._server: asyncio.Server | None = None
        self._connections: set[ClientConnection] = set()  # made and not yet lost
        self.guards: dict[str, ConnectionGuard] = {}  # listener name -> its connection count
        self.forward_proxy: ForwardProxy | None = None
        self._ports: dict[str, int] = {}
        self._intercepts: dict[str, str] = {}  # "host:port" -> resource (forward proxy)
        self.update_resources(resources)

    @staticmethod
    def _own(resources: Iterable[ResourceConfig]) -> list[HttpResource]:
        return [r for r in resources if isinstance(r, HttpResource)]

    def update_resources(self, resources: Iterable[ResourceConfig]) -> None:
        own = self._own(resources)
        old = self.proxy.resources
        new: dict[str, ResourceState] = {}
        for r in own:
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
                state.profile = make_profile(
                    r,
                    state.target,
                    self._data_dir,
                    self.shared.database_for,
                    self.shared.master_key,
                )
            new[r.name] = state
        self.proxy.resources = new
        self._intercepts = {host: r.name for r in own for host in r.intercept}
        if self.forward_proxy is not None:
            self.forward_proxy.update_routes(self._intercepts)
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

    def _protocol(
        self,
        mount: str | None = None,
        ticket: Ticket | None = None,
        own_listen: ListenerConfig | None = None,
    ) -> ClientConnection:
        return ClientConnection(
            self.proxy.handle,
            max_header_bytes=self._max_header_bytes,
            idle_timeout=self._idle_timeout,
            clock=self._clock,
            on_close=self._connections.discard,
            fast=self.proxy.serve,
            on_refused=self.proxy.connection_refused,
            on_open=self._connections.add,  # once made: see :mod:`lockgate.gateway.listeners`
            ticket=ticket,
            mount=mount,
            own_listen=own_listen,
        )

    def client_protocol(self, resource: str) -> ClientConnection:
        """A client connection serving ``resource`` at the root; the forward proxy hands it
        the decrypted stream of a CONNECT tunnel (:mod:`.forward_proxy`)."""
        return self._protocol(resource)

    async def listen(self, listeners: Listeners, *, reuse_port: bool = False) -> None:
        """Open the ``http`` listener, each resource's own ``listen`` and, when configured,
        the forward proxy. ``reuse_port``: several worker processes share these ports."""
        h = listeners.http
        await self.start(
            h.host, h.port, ssl=server_ssl_context(h), reuse_port=reuse_port, **limits(h)
        )
        for state in self.proxy.resources.values():
            own = state.resource.listen
            if own is not None:
                await self.start_mounted(
                    state.name, own.host, own.port, ssl=server_ssl_context(own),
                    reuse_port=reuse_port, **limits(own),
                )  # fmt: skip
        fp = listeners.forward_proxy
        if fp is not None:  # CONNECT for clients with a fixed upstream URL (ARM)
            self.forward_proxy = ForwardProxy.from_listener(self, fp, self._intercepts)
            await self.forward_proxy.start(
                fp.host, fp.port, ssl=server_ssl_context(fp), reuse_port=reuse_port
            )
            self._ports["forward_proxy"] = self.forward_proxy.port

    @property
    def ports(self) -> dict[str, int]:
        """Bound ports: ``http``, ``forward_proxy``, ``resource:<name>`` for each resource
        served on its own port."""
        return dict(self._ports)

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
        state = self.proxy.resources.get(resource)
        opened_with = state.resource.listen if state is not None else None
        server = await self._listen(
            resource, resource, host, port, ssl, reuse_port, own_listen=opened_with, **limits
        )
        self._mounted.append(server)
        self._ports[f"resource:{resource}"] = _bound_port(server)
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
        self._ports["http"] = _bound_port(self._server)
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
        own_listen: ListenerConfig | None = None,
    ) -> asyncio.Server:
        guard = self.guards[listener] = ConnectionGuard(
            listener,
            max_connections=max_connections,
            tls=ssl is not None,
            refusal=http_refusal(listener, max_connections),
        )
        return await asyncio.get_running_loop().create_server(
            guard.factory(lambda ticket: self._protocol(mount, ticket, own_listen)),
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
        """The ``http`` listener's port."""
        return self._ports["http"]

    async def close(self) -> None:
        if self.forward_proxy is not None:
            await self.forward_proxy.close()
            self.forward_proxy = None
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


def _bound_port(server: asyncio.Server) -> int:
    return int(server.sockets[0].getsockname()[1])
