"""The HTTPS forward proxy: HTTP ``CONNECT`` for clients whose upstream URL is fixed.

Some stock clients cannot be pointed at the gateway (the Azure Data Factory hook always
talks to ``https://management.azure.com``), but they honour the standard proxy variables
(``HTTPS_PROXY``, ``NO_PROXY``). This listener is that proxy, and it is *not* an open one:

1. read one ``CONNECT host:port HTTP/1.1`` head (bounded, strict, nothing after it);
2. ``host:port`` must be listed in some resource's ``intercept`` — anything else is answered
   ``403`` and closed (no tunnelling to the internet, no plain ``GET http://...``);
3. answer ``200``, then terminate TLS on the same socket with a leaf certificate for that
   host signed by the Lockgate interception CA (:class:`lockgate.tlsgen.LeafIssuer`);
4. hand the decrypted HTTP/1.1 stream to the HTTP engine as a connection mounted at the
   root of that resource: the same parser, authentication (the token's audience must be
   the resource), classification, policy, upstream credential swap and audit as any
   request on the ``http`` listener.

Clients trust the interception CA (``REQUESTS_CA_BUNDLE``); nothing else in their TLS
stack changes. The Lockgate token travels inside the tunnel as the client's bearer token.
"""

from __future__ import annotations

import asyncio
import json
import re
import ssl as ssl_module
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from lockgate import _log, metrics
from lockgate.gateway.listeners import (
    DEFAULT_MAX_CONNECTIONS,
    ConnectionGuard,
    Ticket,
    http_refusal,
)
from lockgate.gateway.refusals import describe, request_line
from lockgate.tlsgen import LeafIssuer

if TYPE_CHECKING:
    from lockgate.config import ForwardProxyConfig

log = _log.get("gateway.http.forward_proxy")

MAX_HEAD = 8 * 1024
_CONNECT = re.compile(rb"^CONNECT ([A-Za-z0-9.-]{1,253}):(\d{1,5}) HTTP/1\.[01]$")
_ESTABLISHED = b"HTTP/1.1 200 Connection Established\r\n\r\n"


def _answer(status: int, phrase: str, reason: str) -> bytes:
    body = json.dumps({"error": reason}).encode()
    head = (
        f"HTTP/1.1 {status} {phrase}\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n"
    )
    return head.encode("ascii") + body


class ForwardProxy:
    """CONNECT listener that serves intercepted hosts through an :class:`HttpEngine`."""

    def __init__(
        self,
        engine: Any,
        routes: Mapping[str, str],
        issuer: LeafIssuer,
        *,
        handshake_timeout: float = 10.0,
        head_timeout: float = 10.0,
        max_connections: int = DEFAULT_MAX_CONNECTIONS,
    ) -> None:
        self.engine = engine
        self.routes: dict[str, str] = {}  # "host:port" -> resource
        self.update_routes(routes)
        self.issuer = issuer
        self.handshake_timeout = handshake_timeout
        self.head_timeout = head_timeout
        self.max_connections = max_connections
        self.guard: ConnectionGuard | None = None
        self._server: asyncio.Server | None = None
        self._tunnels: set[asyncio.Task[None]] = set()

    @classmethod
    def from_listener(
        cls, engine: Any, listener: ForwardProxyConfig, routes: Mapping[str, str]
    ) -> ForwardProxy:
        """The proxy of ``listeners.forward_proxy``; ``routes``: intercepted host -> resource."""
        issuer = LeafIssuer.from_files(listener.ca.cert, listener.ca.key, days=listener.leaf_days)
        return cls(
            engine,
            routes,
            issuer,
            handshake_timeout=listener.handshake_timeout,
            max_connections=listener.max_connections,
        )

    def update_routes(self, routes: Mapping[str, str]) -> None:
        """Intercept these hosts from now on (the catalog changed); tunnels open stay."""
        self.routes = {k.lower(): v for k, v in routes.items()}

    async def start(
        self,
        host: str,
        port: int,
        ssl: ssl_module.SSLContext | None = None,
        *,
        reuse_port: bool = False,
    ) -> asyncio.Server:
        loop = asyncio.get_running_loop()
        # One count from accept to the tunnel's end: the ticket travels with the socket.
        name, cap = "forward_proxy", self.max_connections
        self.guard = ConnectionGuard(
            name,
            max_connections=cap,
            tls=ssl is not None,
            refusal=http_refusal(name, cap),
            tls_inside=True,
        )
        self._server = await loop.create_server(
            self.guard.factory(lambda ticket: _ConnectProtocol(self, ticket)),
            host,
            port,
            ssl=ssl,
            ssl_handshake_timeout=self.handshake_timeout if ssl is not None else None,
            backlog=256,
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
        for task in list(self._tunnels):
            task.cancel()
        if self._tunnels:
            await asyncio.gather(*self._tunnels, return_exceptions=True)
        if self._server is not None:
            await self._server.wait_closed()
            self._server = None

    # -- one tunnel ----------------------------------------------------------------------
    def route(self, head: bytes) -> tuple[str, str] | tuple[None, str]:
        """(resource, host) for an acceptable CONNECT head, else (None, refusal slug)."""
        line, _, rest = head.partition(b"\r\n")
        m = _CONNECT.match(line)
        if m is None:
            return None, "only_connect" if not line.startswith(b"CONNECT ") else "bad_target"
        for header in rest.split(b"\r\n"):
            if header and (b":" not in header or header[:1] in b" \t"):
                return None, "bad_header"
        host = m.group(1).decode("ascii").lower().rstrip(".")
        resource = self.routes.get(f"{host}:{int(m.group(2))}")
        if resource is None:
            return None, "not_intercepted"
        return resource, host

    def tunnel(
        self, transport: asyncio.Transport, resource: str, host: str, ticket: Ticket
    ) -> None:
        upgrade = self._upgrade(transport, resource, host, ticket)
        task = asyncio.get_running_loop().create_task(upgrade)
        self._tunnels.add(task)
        task.add_done_callback(self._tunnels.discard)

    async def _upgrade(
        self, transport: asyncio.Transport, resource: str, host: str, ticket: Ticket
    ) -> None:
        loop = asyncio.get_running_loop()
        conn = self.engine.client_protocol(resource)
        handoff = _Handoff(conn, ticket)
        try:
            ctx = await loop.run_in_executor(None, self.issuer.context, host)  # may sign a leaf
            if transport.is_closing():
                raise ConnectionResetError
            transport.write(_ESTABLISHED)
            tls = await loop.start_tls(
                transport,
                handoff,
                ctx,
                server_side=True,
                ssl_handshake_timeout=self.handshake_timeout,
            )
        except (OSError, ssl_module.SSLError, TimeoutError, ConnectionError) as exc:
            metrics.FORWARD_PROXY_TUNNELS.labels(resource, "tls_failed").inc()
            log.info(
                "forward proxy: TLS handshake failed",
                extra={"fields": {"host": host, "error": type(exc).__name__}},
            )
            transport.abort()
            conn.connection_lost(None)
            ticket.closed()
            # The traceback holds this frame and, through it, the failed TLS protocol with
            # its buffers in a reference cycle: drop it so they go now, not at the next
            # full collection (1,000 plaintext tunnels otherwise held ~30 MiB).
            exc.__traceback__ = None
            return
        if tls is None:  # the client went away during the handshake
            conn.connection_lost(None)
            ticket.closed()
            return
        metrics.FORWARD_PROXY_TUNNELS.labels(resource, "open").inc()
        handoff.start(tls)


class _Handoff(asyncio.Protocol):
    """The TLS transport's protocol: forwards to the engine's connection once it is made.

    ``start_tls`` does not call ``connection_made`` on the protocol it wraps, and decrypted
    bytes may arrive before the awaiting task resumes; they wait here until then.
    """

    __slots__ = ("_conn", "_lost", "_pending", "_ready", "_ticket")

    def __init__(self, conn: Any, ticket: Ticket) -> None:
        self._conn = conn
        self._ticket = ticket
        self._pending: list[bytes] = []
        self._ready = False
        self._lost: list[Exception | None] = []

    def start(self, transport: asyncio.BaseTransport) -> None:
        self._ready = True
        conn = self._conn
        conn.connection_made(transport)
        pending, self._pending = self._pending, []
        for data in pending:
            conn.data_received(data)
        if self._lost:
            conn.connection_lost(self._lost[0])

    def data_received(self, data: bytes) -> None:
        if self._ready:
            self._conn.data_received(data)
        else:
            self._pending.append(data)

    def eof_received(self) -> bool | None:
        return self._conn.eof_received() if self._ready else None

    def connection_lost(self, exc: Exception | None) -> None:
        self._ticket.closed()
        if self._ready:
            self._conn.connection_lost(exc)
        else:
            self._lost.append(exc)

    def pause_writing(self) -> None:
        if self._ready:
            self._conn.pause_writing()

    def resume_writing(self) -> None:
        if self._ready:
            self._conn.resume_writing()


class _ConnectProtocol(asyncio.Protocol):
    """Reads the CONNECT head, then either refuses or hands the socket to TLS."""

    def __init__(self, proxy: ForwardProxy, ticket: Ticket) -> None:
        self._proxy = proxy
        self._ticket = ticket  # closed here, or by the tunnel once TLS owns the socket
        self._buf = b""
        self._transport: asyncio.Transport | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._done = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = transport  # type: ignore[assignment]
        self._ticket.opened()
        self._timer = asyncio.get_running_loop().call_later(self._proxy.head_timeout, self._timeout)

    def connection_lost(self, exc: Exception | None) -> None:
        self._ticket.closed()
        self._cancel_timer()

    def _cancel_timer(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _timeout(self) -> None:
        self._timer = None
        if not self._done:
            self._refuse(408, "Request Timeout", "head_timeout")

    def data_received(self, data: bytes) -> None:
        if self._done:  # bytes after the head, before the 200: not a well-behaved client
            self._refuse(400, "Bad Request", "early_data")
            return
        self._buf += data
        end = self._buf.find(b"\r\n\r\n")
        if end < 0:
            if len(self._buf) > MAX_HEAD:
                self._refuse(431, "Request Header Fields Too Large", "head_too_large")
            return
        if end > MAX_HEAD or len(self._buf) != end + 4:
            self._refuse(400, "Bad Request", "head_too_large" if end > MAX_HEAD else "early_data")
            return
        resource, host = self._proxy.route(self._buf[:end])
        if resource is None:
            metrics.FORWARD_PROXY_TUNNELS.labels("", host).inc()
            log.warning(
                "forward proxy: CONNECT refused",
                extra={"fields": {"reason": host, "target": _target(self._buf[:end])}},
            )
            self._refuse(403, "Forbidden", host)
            return
        self._done = True
        self._cancel_timer()
        assert self._transport is not None
        # The client's ClientHello follows our 200 at once: stop reading until TLS owns the
        # socket, so those bytes wait in the kernel instead of reaching this protocol.
        self._transport.pause_reading()
        self._proxy.tunnel(self._transport, resource, host, self._ticket)

    def _refuse(self, status: int, phrase: str, reason: str) -> None:
        self._done = True
        self._cancel_timer()
        t = self._transport
        if t is not None and not t.is_closing():
            # Audited like every HTTP refusal (budgeted per peer: nothing names a principal);
            # the request line only, up to any CR or LF, without what may hold a secret.
            line = request_line(self._buf.split(b"\n", 1)[0].split(b"\r", 1)[0])
            self._proxy.engine.proxy.refusals.refuse(
                peer=t.get_extra_info("peername"), status=status, reason=reason,
                description="forward proxy: CONNECT refused", request=line,
            )  # fmt: skip
            t.write(_answer(status, phrase, reason))
            t.close()


def _target(head: bytes) -> str:
    """The request target, for the log line (bounded, printable, no query or userinfo)."""
    parts = head.split(b"\r\n", 1)[0].split(b" ")
    raw = request_line(parts[1]) if len(parts) > 1 else b""
    return describe(raw, 128)


__all__ = ["ForwardProxy"]
