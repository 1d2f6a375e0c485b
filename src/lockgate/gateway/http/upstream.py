"""Upstream side: a keep-alive connection pool per resource and the connection protocol.

A :class:`UpstreamConnection` carries one request at a time: it feeds what the upstream
sends to a :class:`~.codec.ResponseParser` and acts on its events. The response head is
handed to the waiting request as a future or to a listener's callback; body bytes are
pushed straight from ``data_received`` to a sink (the client connection) without a task hop,
so a large download costs one callback per socket read. Back-pressure both ways is by
transport pause/resume: the client side pauses this transport's reading when its own write
buffer is full, and this side calls ``on_pause``/``on_resume`` when its write buffer is full
so the client side stops reading.

Responses are framed strictly (see :mod:`.framing`); a connection is returned to the pool
only when its response ended cleanly on a length or chunk boundary with no stray bytes and
neither side asked to close. 1xx interim answers are dropped; HEAD/204/304 answers have no
body. Head timeouts are deadlines in one :class:`~.deadlines.Deadlines` per pool.
"""

from __future__ import annotations

import asyncio
import ssl as ssl_module
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol, cast
from urllib.parse import urlsplit

from lockgate.errors import UpstreamUnavailable
from lockgate.gateway.http import codec, framing
from lockgate.gateway.http.codec import BODY, DONE, END, HEAD
from lockgate.gateway.http.deadlines import Deadlines
from lockgate.gateway.http.framing import FramingError, Head

MAX_RESPONSE_HEAD = 64 * 1024
PENDING_HIGH = 256 * 1024
WRITE_HIGH = 256 * 1024


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
    """One upstream connection: drives a :class:`~.codec.ResponseParser` and does the I/O.

    Its head timeout is a deadline in a shared :class:`~.deadlines.Deadlines` (one loop timer
    for all connections of a pool), not a timer per request.
    """

    __slots__ = (
        "_deadlines", "_delivered", "_done", "_head_fut", "_listener", "_loop", "_lost",
        "_parser", "_pending", "_pending_size", "_sink", "got_bytes", "last_used",
        "on_pause", "on_resume", "reusable", "reused", "transport", "write_paused",
    )  # fmt: skip

    def __init__(self, loop: asyncio.AbstractEventLoop, deadlines: Deadlines | None = None) -> None:
        self._loop = loop
        self._deadlines = deadlines if deadlines is not None else Deadlines(loop)
        self.transport: asyncio.Transport | None = None
        self._parser = codec.ResponseParser(MAX_RESPONSE_HEAD)
        self._lost = False
        self._head_fut: asyncio.Future[framing.Head] | None = None
        self._done: asyncio.Future[None] | None = None
        self._sink: BodySink | None = None
        self._listener: Listener | None = None
        self._delivered = False  # on_head was called: on_done/on_error go to the listener
        self._pending: list[bytes] = []
        self._pending_size = 0
        self.reusable = True
        self.reused = False
        self.got_bytes = False
        self.last_used = 0.0
        self.write_paused = False
        self.on_pause: Callable[[], None] | None = None
        self.on_resume: Callable[[], None] | None = None

    @property
    def head(self) -> framing.Head | None:
        """The current response's head, once read."""
        return self._parser.head

    # -- asyncio callbacks ---------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # a stream transport: the loop gives a Transport to a Protocol's connection_made
        transport = self.transport = cast(asyncio.Transport, transport)
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
        state = self._parser.state
        if state == BODY:
            self._events(self._parser.feed(data))
        elif state == HEAD:
            self.got_bytes = True
            self._events(self._parser.feed(data))
        elif data and not self._lost:  # bytes nobody asked for: this connection is out of sync
            self._fail(UpstreamUnavailable("unexpected bytes from upstream"))

    def eof_received(self) -> bool | None:
        if self._parser.state == BODY:
            self._events(self._parser.feed_eof())
        return None

    def connection_lost(self, exc: Exception | None) -> None:
        self.reusable = False
        if self._parser.state == BODY:
            self._events(self._parser.feed_eof())
        self._fail(UpstreamUnavailable("upstream connection closed"))
        self._lost = True

    # -- request lifecycle ---------------------------------------------------------------
    def _start(self, head_only: bool) -> None:
        self._parser.start(head_only=head_only)
        self._sink = None
        if self._pending:
            self._pending = []
        self._pending_size = 0
        self.got_bytes = False
        self._delivered = False

    def begin(self, *, head_only: bool, timeout: float) -> asyncio.Future[framing.Head]:
        """Arm for one response; the returned future gets its head (or an error)."""
        self._start(head_only)
        self._listener = None
        fut: asyncio.Future[framing.Head] = self._loop.create_future()
        self._head_fut = fut
        self._done = self._loop.create_future()
        self._deadlines.disarm(self)
        if timeout != float("inf"):
            self.arm_head_timeout(timeout)
        return fut

    def begin_listening(self, listener: Listener, *, head_only: bool, timeout: float) -> None:
        """Arm for one response reported by callbacks (no futures, no task hop)."""
        self._start(head_only)
        self._listener = listener
        self._head_fut = self._done = None
        self._deadlines.arm(self, timeout)

    def detach(self) -> None:
        """Leave callback mode after ``on_head``: from now on ``done`` reports the end."""
        self._listener = None
        self._delivered = False
        done = self._done = self._loop.create_future()
        if self._lost:
            done.set_exception(UpstreamUnavailable("upstream connection closed"))
            done.exception()
        elif self._parser.state == DONE:
            done.set_result(None)

    def arm_head_timeout(self, timeout: float) -> None:
        """Fail the head future if no response head arrives within ``timeout`` seconds."""
        if self._parser.state == HEAD:
            self._deadlines.arm(self, timeout)
        else:
            self._deadlines.disarm(self)

    @property
    def done(self) -> asyncio.Future[None]:
        assert self._done is not None
        return self._done

    @property
    def closed(self) -> bool:
        return self._lost or self.transport is None or self.transport.is_closing()

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
        if pending and not self.closed and self._parser.state == BODY:
            assert self.transport is not None
            self.transport.resume_reading()

    def pause_reading(self) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.pause_reading()

    def resume_reading(self) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.resume_reading()

    def close(self) -> None:
        self.reusable = False
        self._deadlines.disarm(self)
        if self.transport is not None:
            self.transport.close()

    def cancel(self) -> None:
        """Nobody wants the answer any more (the client left): drop the listener and abort."""
        self._listener = None
        self.abort()

    def abort(self) -> None:
        self.reusable = False
        self._deadlines.disarm(self)
        if self.transport is not None:
            self.transport.abort()

    def idle(self) -> None:
        """Back in the pool: any byte before the next request is unexpected."""
        self._parser.idle()

    # -- acting on the codec's events ----------------------------------------------------
    def _events(self, events: list[codec.Event]) -> None:
        if not events:
            return
        parser = self._parser
        first = events[0]
        head: Head | None = None
        start = 0
        if type(first) is Head:
            head = first
            start = 1
            self._deadlines.disarm(self)
            if self._listener is None:
                fut = self._head_fut
                if fut is not None and not fut.done():
                    fut.set_result(head)
        last = events[-1]
        stop = len(events) if type(last) is bytes else len(events) - 1
        if stop > start:
            self._pieces(cast("list[bytes]", events[start:stop]))
        if not parser.keep_alive:
            self.reusable = False
        if isinstance(last, FramingError):
            where = "response from upstream" if parser.head is None else "response body"
            self._fail(UpstreamUnavailable(f"invalid {where}: {last}"))
            return
        listener = self._listener
        if head is not None and listener is not None:
            # The body that came with the head is pending, so that the head and a small body
            # leave for the client in one write when on_head attaches the sink.
            self._delivered = True
            listener.on_head(head)
        if last is END:
            self._finish()

    def _pieces(self, pieces: list[bytes]) -> None:
        sink = self._sink
        if sink is None:
            self._pending.extend(pieces)
            self._pending_size += sum(map(len, pieces))
            if self._pending_size > PENDING_HIGH and self.transport is not None:
                self.transport.pause_reading()
        else:
            for piece in pieces:
                sink.write(piece)

    def _finish(self) -> None:
        listener = self._listener
        if listener is not None:
            if self._delivered:
                self._listener = None
                listener.on_done()
            return
        done = self._done
        if done is not None and not done.done():
            done.set_result(None)

    def expired(self) -> None:
        """The response head did not arrive in time (called by the deadlines)."""
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
        self._deadlines.disarm(self)
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
        self._deadlines: Deadlines | None = None  # head timeouts of all its connections
        self._closed = False  # the resource changed or went: nothing is parked any more
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
        """A warm idle connection, else a new one (within ``timeout`` and the connect
        timeout)."""
        conn = self.take_idle()
        if conn is not None:
            return conn
        return await self._connect(min(timeout, self._connect_timeout))

    async def _connect(self, timeout: float) -> UpstreamConnection:
        loop = asyncio.get_running_loop()
        deadlines = self._deadlines
        if deadlines is None:
            deadlines = self._deadlines = Deadlines(loop)
        t = self.target
        self.connects += 1
        async with asyncio.timeout(max(timeout, 0.001)):
            _, proto = await loop.create_connection(
                lambda: UpstreamConnection(loop, deadlines),
                t.host,
                t.port,
                ssl=t.ssl,
                server_hostname=t.host if t.ssl else None,
            )
        return proto

    def release(self, conn: UpstreamConnection) -> None:
        conn.on_pause = conn.on_resume = None
        # An exchange admitted before a catalog reload ends after its pool was closed:
        # nobody would ever take or close a connection parked there.
        if (
            not self._closed
            and conn.reusable
            and not conn.closed
            and len(self._idle) < self._max_idle
        ):
            conn.last_used = self._clock()
            conn.idle()
            self._idle.append(conn)
        else:
            conn.close()

    def close(self) -> None:
        self._closed = True
        idle, self._idle = self._idle, []
        for conn in idle:
            conn.close()
