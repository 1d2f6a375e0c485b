"""Client side: one ``asyncio.Protocol`` per client connection.

The connection feeds bytes to a :class:`~.codec.RequestParser` and acts on its events: a
head starts a request (served from the callback when its body is complete, else as a task),
body pieces go to its :class:`RequestBody`, a refusal answers 400 with ``Connection: close``
and closes. Bytes of a pipelined next request wait in the parser (reading is paused when
they grow) until the current response is complete, so pipelining cannot reorder or smuggle.

Flow control, so a large body streams in bounded memory:

* request body: buffered up to ``BODY_HIGH`` bytes until the upstream connection is ready,
  then written straight to the upstream transport; client reading pauses while the upstream
  write buffer is full (``UpstreamConnection.on_pause``) or the buffer is full;
* response body: written straight to this transport; while its write buffer is full
  (``pause_writing``) the upstream transport stops reading.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Any, Protocol, cast

from lockgate import _log
from lockgate.gateway.http import codec, framing, responses
from lockgate.gateway.http.codec import BODY, DONE, END, HEAD
from lockgate.gateway.http.framing import FramingError, Head
from lockgate.gateway.listeners import Ticket

log = _log.get("gateway.http")

BODY_HIGH = 256 * 1024
WRITE_HIGH = 256 * 1024
_PAUSE_BODY, _PAUSE_UPSTREAM, _PAUSE_PIPELINE = 1, 2, 4

Handler = Callable[["ClientConnection", framing.Head, "RequestBody"], Awaitable[bool]]
#: Synchronous entry for a request whose body is complete: returns ``keep`` (True/False)
#: when it answered at once, or None when the answer is under way; then whoever serves it
#: calls :meth:`ClientConnection.finish` (or :meth:`ClientConnection.run` a coroutine).
FastHandler = Callable[["ClientConnection", framing.Head, "RequestBody"], bool | None]
#: Told about every refusal the connection answers itself (framing 400, 408, 500):
#: (connection, status, reason slug, description, offending request line or None).
RefusalHook = Callable[["ClientConnection", int, str, str, "bytes | None"], None]


class InFlight(Protocol):
    def on_client_lost(self) -> None: ...


class RequestBody:
    """The request body as it arrives: buffered until a sink is attached, then streamed."""

    __slots__ = ("_conn", "_end", "_sink", "chunks", "complete", "size", "total")

    def __init__(self, conn: ClientConnection) -> None:
        self._conn = conn
        self.chunks: list[bytes] = []
        self.size = 0  # bytes currently buffered
        self.total = 0  # bytes received in all
        self.complete = False
        self._sink: Callable[[bytes], None] | None = None
        self._end: Callable[[], None] | None = None

    def feed(self, pieces: list[bytes]) -> None:
        sink = self._sink
        for piece in pieces:
            self.total += len(piece)
            if sink is not None:
                sink(piece)
            else:
                self.chunks.append(piece)
                self.size += len(piece)
        if sink is None and self.size > BODY_HIGH:
            self._conn.pause(_PAUSE_BODY)

    def finish(self) -> None:
        self.complete = True
        if self._end is not None:
            self._end()

    def data(self) -> bytes:
        """The whole buffered body (only meaningful when ``complete``); kept for replays."""
        chunks = self.chunks
        return chunks[0] if len(chunks) == 1 else b"".join(chunks)

    def attach(self, write: Callable[[bytes], None], end: Callable[[], None]) -> None:
        """Stream from now on: flush what is buffered, then forward each piece as it comes."""
        chunks, self.chunks, self.size = self.chunks, [], 0
        for piece in chunks:
            write(piece)
        self._sink = write
        self._end = end
        self._conn.resume(_PAUSE_BODY)
        if self.complete:
            end()

    def discard(self) -> None:
        """Drop whatever else arrives (the request was answered without its body)."""
        self.chunks, self.size = [], 0
        self._sink = _drop
        self._end = None
        self._conn.resume(_PAUSE_BODY)


def _drop(_: bytes) -> None:
    return None


class ChunkedWriter:
    """Response sink re-encoding body pieces as chunks for the client."""

    __slots__ = ("_conn",)

    def __init__(self, conn: ClientConnection) -> None:
        self._conn = conn

    def write(self, data: bytes) -> None:
        self._conn.write(framing.chunk(data))

    def write_first(self, head: bytes, pieces: list[bytes]) -> None:
        self._conn.write(b"".join([head, *map(framing.chunk, pieces)]))


class ClientConnection(asyncio.Protocol):
    def __init__(
        self,
        handler: Handler,
        *,
        max_header_bytes: int = 64 * 1024,
        idle_timeout: float = 60.0,
        clock: Callable[[], float] = time.monotonic,
        on_close: Callable[[ClientConnection], None] | None = None,
        fast: FastHandler | None = None,
        on_refused: RefusalHook | None = None,
        on_open: Callable[[ClientConnection], None] | None = None,
        ticket: Ticket | None = None,
        mount: str | None = None,
        own_listen: object | None = None,
    ) -> None:
        self._handler = handler
        # A resource's own listener serves that resource at the root: paths carry no
        # ``/<resource>`` prefix (see :func:`.normalize.split_mounted`).
        self.mount = mount
        # On a resource's own port: the ``listen`` it was opened with. A reload that takes it
        # away or moves it ends that resource there (the http listener still serves it).
        self.own_listen = own_listen
        self._fast = fast
        self._on_refused = on_refused
        self.forwarded: tuple[bytes | None, bytes] | None = None  # see :mod:`forwarded`
        self.inflight: InFlight | None = None  # a request served by callbacks, not a task
        self._max_head = max_header_bytes
        self._idle_timeout = idle_timeout
        self._clock = clock
        self._on_close = on_close
        # Registered only once made: a TLS handshake that never completes gets neither
        # connection_made nor connection_lost (its ticket covers that stage).
        self._on_open = on_open
        self._ticket = ticket
        self._loop = asyncio.get_running_loop()
        self.transport: asyncio.Transport | None = None
        self._parser = codec.RequestParser(max_header_bytes)
        self._closed = False
        self._body: RequestBody | None = None
        self._task: asyncio.Task[None] | None = None
        self._paused = 0
        self._last = 0.0  # when the client last sent a byte
        self._head_started = 0.0  # when the first byte of the current head arrived
        self._write_stalled: float | None = None  # since when the client reads nothing
        self._timer: asyncio.TimerHandle | None = None
        self.upstream: Any = None  # the UpstreamConnection relaying to us, for back-pressure
        self.bytes_out = 0
        self.peer: Any = None

    # -- asyncio callbacks ---------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # a stream transport: the loop gives a Transport to a Protocol's connection_made
        transport = self.transport = cast(asyncio.Transport, transport)
        self.peer = transport.get_extra_info("peername")
        transport.set_write_buffer_limits(high=WRITE_HIGH)
        self._last = self._head_started = self._clock()
        self._timer = self._loop.call_later(self._idle_timeout, self._idle_check)
        if self._ticket is not None:
            self._ticket.opened()
        if self._on_open is not None:
            self._on_open(self)

    def connection_lost(self, exc: Exception | None) -> None:
        self._closed = True
        if self._ticket is not None:
            self._ticket.closed()
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self._task is not None and not self._task.done():
            self._task.cancel()
        inflight = self.inflight
        if inflight is not None:
            self.inflight = None
            inflight.on_client_lost()
        if self._on_close is not None:
            self._on_close(self)

    def pause_writing(self) -> None:
        self._write_stalled = self._clock()
        if self.upstream is not None:
            self.upstream.pause_reading()

    def resume_writing(self) -> None:
        self._write_stalled = None
        if self.upstream is not None:
            self.upstream.resume_reading()

    def data_received(self, data: bytes) -> None:
        self._last = self._clock()
        if self._closed:
            return
        parser = self._parser
        state = parser.state
        if state == DONE:  # a pipelined request: held until this one is answered
            parser.feed(data)
            if len(parser.buffered) > self._max_head:
                self.pause(_PAUSE_PIPELINE)
            return
        if state == HEAD and not parser.buffered:
            self._head_started = self._last
        self._handle(parser.feed(data))

    def eof_received(self) -> bool | None:
        # Half-close: finish the request in flight, then close (return True keeps us open).
        return self.inflight is not None or (self._task is not None and not self._task.done())

    # -- driving the codec ---------------------------------------------------------------
    def _handle(self, events: list[codec.Event]) -> None:
        """Act on the parser's events; a loop, not recursion, because requests answered
        synchronously may be pipelined deeply."""
        while events:
            first = events[0]
            head: Head | None = None
            body = self._body
            start = 0
            if type(first) is Head:
                head = first
                body = self._body = RequestBody(self)
                start = 1
            last = events[-1]
            if last is END:
                stop = len(events) - 1
            elif type(last) is bytes or last is head:  # the body continues
                stop = len(events)
            else:  # a refusal
                if self._task is not None and not self._task.done():
                    self._task.cancel()
                # the refused head, if it is one: _refused keeps only its request line
                assert isinstance(last, FramingError)
                self._refused(400, last, self._parser.buffered or None)
                self.refuse(responses.bad_request(str(last)))
                return
            assert body is not None
            if stop > start:
                body.feed(cast("list[bytes]", events[start:stop]))
            if last is END:
                body.finish()
                if len(self._parser.buffered) > self._max_head:
                    self.pause(_PAUSE_PIPELINE)
            if head is None or self._closed:
                return
            if body.complete and self._fast is not None:
                # Complete request: serve it from this callback, no task unless needed.
                try:
                    keep = self._fast(self, head, body)
                except Exception:
                    log.exception("request failed")
                    self._failed(head.method + b" " + head.target)
                    keep = False
                if keep is None:
                    return
                events = self._request_done(keep)
                continue
            self.run(self._handler(self, head, body))
            return

    def run(self, handler: Awaitable[bool]) -> None:
        """Serve the current request with a task (bodies that stream, retries, connects)."""
        assert self._body is not None
        self.inflight = None
        self._task = self._loop.create_task(self._run(handler, self._body))

    def finish(self, keep: bool) -> None:
        """The request served by callbacks is complete (its response is written)."""
        self.inflight = None
        self.upstream = None
        body = self._body
        self._handle(self._request_done(keep and body is not None and body.complete))

    async def _run(self, handler: Awaitable[bool], body: RequestBody) -> None:
        keep = False
        try:
            keep = await handler
        except asyncio.CancelledError:
            keep = False
        except Exception:
            log.exception("request failed")
            self._failed(None)
        finally:
            self.upstream = None
            self._task = None
        self._handle(self._request_done(keep and body.complete))

    def _request_done(self, keep: bool) -> list[codec.Event]:
        """The response is complete: close, or start the next request and return the events
        of the bytes the client already sent for it."""
        transport = self.transport
        if transport is None or self._closed:
            return []
        # only at a message boundary (the parser holds the next request's bytes, if any)
        if not keep or transport.is_closing() or self._parser.state != DONE:
            self._closed = True
            transport.close()
            return []
        self._head_started = self._clock()
        self._body = None
        self.bytes_out = 0
        if self._paused:
            self.resume(_PAUSE_PIPELINE | _PAUSE_BODY | _PAUSE_UPSTREAM)
        return self._parser.next_cycle()

    # -- helpers used by the proxy -------------------------------------------------------
    def write(self, data: bytes) -> None:
        self.bytes_out += len(data)
        if self.transport is not None:
            self.transport.write(data)

    def write_first(self, head: bytes, pieces: list[bytes]) -> None:
        self.write(b"".join([head, *pieces]) if pieces else head)

    def _refused(self, status: int, exc: Exception, raw: bytes | None) -> None:
        """Report a refusal to the hook (audit, log, metric); ``raw``: the buffered head."""
        if self._on_refused is not None:
            # the request line only (up to any CR or LF): headers may carry credentials
            line = raw.split(b"\n", 1)[0].split(b"\r", 1)[0] if raw else None
            self._on_refused(
                self, status, getattr(exc, "slug", "bad_request"), str(exc), line or None
            )

    def _failed(self, line: bytes | None) -> None:
        """A request failed inside the gateway: 500 (when nothing was sent yet), reported."""
        if self.bytes_out == 0:
            self.write(responses.error(500, "internal_error", close=True))
        if self._on_refused is not None:
            self._on_refused(self, 500, "internal_error", "the gateway failed the request", line)

    def refuse(self, data: bytes) -> None:
        """Answer and close: the byte stream can no longer be trusted."""
        self._closed = True
        if self.transport is not None and not self.transport.is_closing():
            self.transport.write(data)
            self.transport.close()

    def abort(self) -> None:
        self._closed = True
        if self.transport is not None:
            self.transport.abort()

    def pause(self, reason: int) -> None:
        if not self._paused and self.transport is not None and not self.transport.is_closing():
            self.transport.pause_reading()
        self._paused |= reason

    def resume(self, reason: int) -> None:
        if not self._paused:
            return
        self._paused &= ~reason
        if not self._paused and self.transport is not None and not self.transport.is_closing():
            self._last = self._clock()  # the client was not idle while we held its bytes
            self.transport.resume_reading()

    def pause_for_upstream(self) -> None:
        self.pause(_PAUSE_UPSTREAM)

    def resume_for_upstream(self) -> None:
        self.resume(_PAUSE_UPSTREAM)

    @property
    def closed(self) -> bool:
        return self._closed

    def _idle_check(self) -> None:
        """Close a connection that holds the gateway without moving within the idle timeout.

        Each stall costs its connection only: a head must be complete within the timeout
        of its first byte (one byte a minute would hold a head forever otherwise), a body
        must keep arriving while the gateway is reading it, and a response must keep being
        read (a client that reads nothing holds a paused upstream connection).
        """
        self._timer = None
        if self._closed or self.transport is None:
            return
        limit, now, state = self._idle_timeout, self._clock(), self._parser.state
        held = self._parser.buffered
        if self._write_stalled is not None:
            left = self._write_stalled + limit - now
            if left <= 0:
                log.info("client reads no response within %.1f s: closed", limit)
                self.abort()
                return
        elif state == HEAD and self._task is None and self.inflight is None:
            left = (self._head_started if held else self._last) + limit - now
            if left <= 0:
                self._closed = True
                if held:  # a head that never finished
                    timeout = framing.bad("request head not complete in time", "request_timeout")
                    self._refused(408, timeout, held)
                    self.refuse(responses.error(408, "request_timeout", close=True))
                else:
                    self.transport.close()
                return
        elif state == BODY and not self._paused:
            left = self._last + limit - now
            if left <= 0:
                self._body_timeout()
                return
        else:
            left = limit
        self._timer = self._loop.call_later(max(left, min(1.0, limit)), self._idle_check)

    def _body_timeout(self) -> None:
        """A request body stopped arriving: 408 when nothing was answered yet, then close
        (closing cancels the request in flight, which records its own outcome)."""
        timeout = framing.bad("request body not complete in time", "request_timeout")
        self._refused(408, timeout, None)
        if self.bytes_out == 0:
            self.refuse(responses.error(408, "request_timeout", close=True))
        else:
            self.abort()
