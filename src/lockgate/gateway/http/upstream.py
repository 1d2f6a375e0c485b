"""Upstream side: a keep-alive connection pool per resource and the connection protocol.

A :class:`UpstreamConnection` carries one request at a time. The response head is handed to
the waiting request as a future; body bytes are pushed straight from ``data_received`` to a
sink (the client connection) without a task hop, so a large download costs one callback per
socket read. Back-pressure both ways is by transport pause/resume: the client side pauses
this transport's reading when its own write buffer is full, and this side calls
``on_pause``/``on_resume`` when its write buffer is full so the client side stops reading.

Responses are framed strictly (see :mod:`framing`); a connection is returned to the pool only
when its response ended cleanly on a length or chunk boundary with no stray bytes and neither
side asked to close. 1xx interim answers are dropped; HEAD/204/304 answers have no body.
"""

from __future__ import annotations

import asyncio
import ssl as ssl_module
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol
from urllib.parse import urlsplit

from lockgate.errors import RemoteProtocolError, UpstreamUnavailable
from lockgate.gateway.http import framing

MAX_RESPONSE_HEAD = 64 * 1024
PENDING_HIGH = 256 * 1024
WRITE_HIGH = 256 * 1024

_IDLE, _HEAD, _BODY, _DONE, _CLOSED = range(5)


class BodySink(Protocol):
    def write(self, data: bytes) -> None: ...

    def write_first(self, head: bytes, pieces: list[bytes]) -> None:
        """Write the response head and the body pieces already received, in one write."""
        ...


@dataclass(frozen=True, slots=True)
class UpstreamTarget:
    scheme: str
    host: str
    port: int
    base_path: str  # "" or "/prefix" without trailing slash
    host_header: bytes
    ssl: ssl_module.SSLContext | None

    @classmethod
    def from_resource(cls, resource: Any) -> UpstreamTarget:
        u = urlsplit(resource.upstream)
        if u.scheme not in ("http", "https") or not u.hostname:
            raise ValueError(f"resource {resource.name}: bad upstream URL")
        https = u.scheme == "https"
        port = u.port or (443 if https else 80)
        default = port == (443 if https else 80)
        host = u.hostname
        shown = f"[{host}]" if ":" in host else host
        ctx = None
        if https:
            ca = str(resource.ca_file) if resource.ca_file else None
            ctx = ssl_module.create_default_context(cafile=ca)
            if not resource.verify_tls:
                ctx.check_hostname = False
                ctx.verify_mode = ssl_module.CERT_NONE
        header = (shown if default else f"{shown}:{port}").encode("idna")
        return cls(u.scheme, host, port, u.path.rstrip("/"), header, ctx)


class Listener(Protocol):
    """Callback-driven alternative to the head/done futures (the proxy's fast path).

    Called from ``data_received`` (or the timeout timer) on the loop, never re-entered:
    ``on_head`` once the head and whatever body came with it are read (the body waits in
    the pending buffer until a sink is attached), ``on_done`` when the response ended
    cleanly after ``on_head``, ``on_error`` for a failure (``TimeoutError`` or
    ``UpstreamUnavailable``) at any point. A listener may hand the connection over to the
    future-based path with :meth:`UpstreamConnection.detach` from ``on_head``.
    """

    def on_head(self, head: framing.Head) -> None: ...

    def on_done(self) -> None: ...

    def on_error(self, exc: Exception) -> None: ...


class UpstreamConnection(asyncio.Protocol):
    __slots__ = (
        "_buf", "_delivered", "_done", "_head_fut", "_head_only", "_listener", "_loop",
        "_pending", "_pending_size", "_reader", "_sink", "_state", "_timer", "got_bytes",
        "head", "last_used", "on_pause", "on_resume", "reusable", "reused", "transport",
        "write_paused",
    )  # fmt: skip

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self.transport: asyncio.Transport | None = None
        self._state = _IDLE
        self._buf = b""
        self._reader: framing.BodyReader | None = None
        self._head_fut: asyncio.Future[framing.Head] | None = None
        self._done: asyncio.Future[None] | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._sink: BodySink | None = None
        self._listener: Listener | None = None
        self._delivered = False  # on_head was called: on_done/on_error go to the listener
        self._pending: list[bytes] = []
        self._pending_size = 0
        self._head_only = False
        self.head: framing.Head | None = None
        self.reusable = True
        self.reused = False
        self.got_bytes = False
        self.last_used = 0.0
        self.write_paused = False
        self.on_pause: Callable[[], None] | None = None
        self.on_resume: Callable[[], None] | None = None

    # -- asyncio callbacks ---------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        transport.set_write_buffer_limits(high=WRITE_HIGH)

    def pause_writing(self) -> None:
        self.write_paused = True
        if self.on_pause is not None:
            self.on_pause()

    def resume_writing(self) -> None:
        self.write_paused = False
        if self.on_resume is not None:
            self.on_resume()

    def data_received(self, data: bytes) -> None:
        state = self._state
        if state == _BODY:
            self._body(data)
        elif state == _HEAD:
            self.got_bytes = True
            self._head(data)
        elif data:  # bytes nobody asked for: this connection is out of sync
            self._fail(UpstreamUnavailable("unexpected bytes from upstream"))

    def eof_received(self) -> bool | None:
        if self._state == _BODY and self._reader is not None and self._reader.eof():
            self._finish(b"")
        return None

    def connection_lost(self, exc: Exception | None) -> None:
        self.reusable = False
        if self._state == _BODY and self._reader is not None and self._reader.eof():
            self._finish(b"")
        self._fail(UpstreamUnavailable("upstream connection closed"))
        self._state = _CLOSED

    # -- request lifecycle ---------------------------------------------------------------
    def begin(self, *, head_only: bool, timeout: float) -> asyncio.Future[framing.Head]:
        """Arm for one response; the returned future gets its head (or an error)."""
        self._state = _HEAD
        self._head_only = head_only
        self._buf = b""
        self.head = None
        self._reader = None
        self._sink = None
        self._pending = []
        self._pending_size = 0
        self.got_bytes = False
        self._listener = None
        self._delivered = False
        fut: asyncio.Future[framing.Head] = self._loop.create_future()
        self._head_fut = fut
        self._done = self._loop.create_future()
        self._timer = None
        if timeout != float("inf"):
            self.arm_head_timeout(timeout)
        return fut

    def begin_listening(self, listener: Listener, *, head_only: bool, timeout: float) -> None:
        """Arm for one response reported by callbacks (no futures, no task hop)."""
        self._state = _HEAD
        self._head_only = head_only
        self._buf = b""
        self.head = None
        self._reader = None
        self._sink = None
        if self._pending:
            self._pending = []
        self._pending_size = 0
        self.got_bytes = False
        self._listener = listener
        self._delivered = False
        self._head_fut = self._done = None
        self._timer = self._loop.call_later(max(timeout, 0.0), self._head_timeout)

    def detach(self) -> None:
        """Leave callback mode after ``on_head``: from now on ``done`` reports the end."""
        self._listener = None
        self._delivered = False
        done = self._done = self._loop.create_future()
        if self._state == _DONE:
            done.set_result(None)
        elif self._state == _CLOSED:
            done.set_exception(UpstreamUnavailable("upstream connection closed"))
            done.exception()

    def arm_head_timeout(self, timeout: float) -> None:
        """Fail the head future if no response head arrives within ``timeout`` seconds."""
        if self._timer is not None:
            self._timer.cancel()
        if self._state == _HEAD:
            self._timer = self._loop.call_later(max(timeout, 0.0), self._head_timeout)

    @property
    def done(self) -> asyncio.Future[None]:
        assert self._done is not None
        return self._done

    @property
    def closed(self) -> bool:
        return self._state == _CLOSED or self.transport is None or self.transport.is_closing()

    def write(self, data: bytes) -> None:
        assert self.transport is not None
        self.transport.write(data)

    def attach(self, sink: BodySink, head: bytes) -> None:
        """Send ``head``, then the response body, to ``sink`` (buffered pieces first)."""
        pending = self._pending
        self._pending = []
        self._pending_size = 0
        sink.write_first(head, pending)  # one syscall for a small response
        self._sink = sink
        if pending and self.transport is not None and self._state == _BODY:
            self.transport.resume_reading()

    def pause_reading(self) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.pause_reading()

    def resume_reading(self) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.resume_reading()

    def close(self) -> None:
        self.reusable = False
        if self.transport is not None:
            self.transport.close()

    def cancel(self) -> None:
        """Nobody wants the answer any more (the client left): drop the listener and abort."""
        self._listener = None
        self.abort()

    def abort(self) -> None:
        self.reusable = False
        if self.transport is not None:
            self.transport.abort()

    # -- parsing -------------------------------------------------------------------------
    def _head(self, data: bytes) -> None:
        buf = self._buf + data if self._buf else data
        try:
            while True:
                end = framing.find_head_end(buf)
                if end < 0:
                    framing.check_partial(buf, MAX_RESPONSE_HEAD)
                    self._buf = buf
                    return
                head = framing.parse_response_head_cached(buf[:end])
                buf = buf[end:]
                if head.status == 101:
                    raise RemoteProtocolError("unexpected protocol switch")
                if head.status >= 200:
                    break  # 1xx interim answers are dropped
        except RemoteProtocolError as exc:
            self._fail(UpstreamUnavailable(f"invalid response from upstream: {exc}"))
            return
        self._buf = b""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        status = head.status
        if self._head_only or status in (204, 304):
            self._reader = framing.LengthReader(0)
        elif head.chunked:
            self._reader = framing.ChunkedReader()
        elif head.content_length is not None:
            self._reader = framing.LengthReader(head.content_length)
        else:
            self._reader = framing.UntilCloseReader()
            self.reusable = False
        if not head.keep_alive:
            self.reusable = False
        self.head = head
        self._state = _BODY
        listener = self._listener
        if listener is not None:
            # Read the body that came with the head first, so that the head and a small
            # body leave for the client in one write when on_head attaches the sink.
            self._body(buf)
            if self._listener is not listener:  # failed while reading
                return
            self._delivered = True
            listener.on_head(head)
            if self._state == _DONE and self._listener is listener:
                self._listener = None
                listener.on_done()
            return
        fut = self._head_fut
        if fut is not None and not fut.done():
            fut.set_result(head)
        self._body(buf)

    def _body(self, data: bytes) -> None:
        assert self._reader is not None
        try:
            pieces, rest = self._reader.read(data)
        except RemoteProtocolError as exc:
            self._fail(UpstreamUnavailable(f"invalid response body: {exc}"))
            return
        if pieces:
            sink = self._sink
            if sink is None:
                self._pending.extend(pieces)
                self._pending_size += sum(map(len, pieces))
                if self._pending_size > PENDING_HIGH and self.transport is not None:
                    self.transport.pause_reading()
            else:
                for piece in pieces:
                    sink.write(piece)
        if rest is not None:
            self._finish(rest)

    def _finish(self, rest: bytes) -> None:
        if rest:
            self.reusable = False
        self._state = _DONE
        listener = self._listener
        if listener is not None:
            if self._delivered:  # else _head reports the end right after on_head
                self._listener = None
                listener.on_done()
            return
        done = self._done
        if done is not None and not done.done():
            done.set_result(None)

    def _head_timeout(self) -> None:
        self._timer = None
        listener = self._listener
        if listener is not None:
            self._listener = None
            self.abort()
            listener.on_error(TimeoutError())
            return
        fut = self._head_fut
        if fut is not None and not fut.done():
            fut.set_exception(TimeoutError())
        self.abort()

    def _fail(self, exc: Exception) -> None:
        self.reusable = False
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        listener = self._listener
        if listener is not None:
            self._listener = None
            if self.transport is not None and not self.transport.is_closing():
                self.transport.abort()
            listener.on_error(exc)
            return
        for fut in (self._head_fut, self._done):
            if fut is not None and not fut.done():
                fut.set_exception(exc)
                fut.exception()  # mark retrieved: the waiter may be gone already
        if self.transport is not None and not self.transport.is_closing():
            self.transport.abort()


class UpstreamPool:
    """Idle keep-alive connections to one upstream, newest first."""

    def __init__(
        self,
        target: UpstreamTarget,
        *,
        connect_timeout: float = 10.0,
        max_idle: int = 64,
        idle_expiry: float = 30.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.target = target
        self._connect_timeout = connect_timeout
        self._max_idle = max_idle
        self._idle_expiry = idle_expiry
        self._clock = clock
        self._idle: list[UpstreamConnection] = []
        self.connects = 0  # opened so far; tests and metrics read it

    def take_idle(self) -> UpstreamConnection | None:
        """A warm idle connection, or None (then ``acquire`` would have to connect)."""
        idle = self._idle
        if not idle:
            return None
        now = self._clock()
        while idle:
            conn = idle.pop()
            if not conn.closed and now - conn.last_used < self._idle_expiry:
                conn.reused = True
                return conn
            conn.close()
        return None

    async def acquire(self, timeout: float) -> UpstreamConnection:
        now = self._clock()
        idle = self._idle
        while idle:
            conn = idle.pop()
            if not conn.closed and now - conn.last_used < self._idle_expiry:
                conn.reused = True
                return conn
            conn.close()
        return await self._connect(min(timeout, self._connect_timeout))

    async def _connect(self, timeout: float) -> UpstreamConnection:
        loop = asyncio.get_running_loop()
        t = self.target
        self.connects += 1
        async with asyncio.timeout(max(timeout, 0.001)):
            _, proto = await loop.create_connection(
                lambda: UpstreamConnection(loop),
                t.host,
                t.port,
                ssl=t.ssl,
                server_hostname=t.host if t.ssl else None,
            )
        return proto

    def release(self, conn: UpstreamConnection) -> None:
        conn.on_pause = conn.on_resume = None
        if conn.reusable and not conn.closed and len(self._idle) < self._max_idle:
            conn.last_used = self._clock()
            conn._state = _IDLE
            self._idle.append(conn)
        else:
            conn.close()

    def close(self) -> None:
        idle, self._idle = self._idle, []
        for conn in idle:
            conn.close()
