"""Client side: one ``asyncio.Protocol`` per client connection.

The connection parses strictly (see :mod:`framing`), then runs one request at a time through
the proxy pipeline as a task; bytes of a pipelined next request wait in a buffer (reading is
paused when it grows) until the current response is complete, so pipelining cannot reorder
or smuggle. Any framing refusal answers 400 with ``Connection: close`` and closes.

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
from typing import Any, Protocol

from lockgate import _log
from lockgate.errors import RemoteProtocolError
from lockgate.gateway.http import framing, responses
from lockgate.gateway.listeners import Ticket

log = _log.get("gateway.http")

BODY_HIGH = 256 * 1024
WRITE_HIGH = 256 * 1024
_PAUSE_BODY, _PAUSE_UPSTREAM, _PAUSE_PIPELINE = 1, 2, 4
_HEAD, _BODY, _WAIT, _CLOSED = range(4)

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
    ) -> None:
        self._handler = handler
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
        self._state = _HEAD
        self._buf = b""
        self._reader: framing.BodyReader | None = None
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
        self.transport = transport  # type: ignore[assignment]
        self.peer = transport.get_extra_info("peername")
        transport.set_write_buffer_limits(high=WRITE_HIGH)
        self._last = self._head_started = self._clock()
        self._timer = self._loop.call_later(self._idle_timeout, self._idle_check)
        if self._ticket is not None:
            self._ticket.opened()
        if self._on_open is not None:
            self._on_open(self)

    def connection_lost(self, exc: Exception | None) -> None:
        self._state = _CLOSED
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
        state = self._state
        if state == _BODY:
            self._feed_body(data)
        elif state == _HEAD:
            if not self._buf:
                self._head_started = self._last
            self._buf = self._buf + data if self._buf else data
            self._parse()
        elif state == _WAIT:
            self._buf += data
            if len(self._buf) > self._max_head:
                self.pause(_PAUSE_PIPELINE)

    def eof_received(self) -> bool | None:
        # Half-close: finish the request in flight, then close (return True keeps us open).
        return self.inflight is not None or (self._task is not None and not self._task.done())

    # -- parsing -------------------------------------------------------------------------
    def _parse(self) -> None:
        # A loop, not recursion: requests answered synchronously may be pipelined deeply.
        while True:
            buf = self._buf
            while buf[:2] == b"\r\n":  # RFC 9112 §2.2: ignore empty lines before a request
                buf = buf[2:]
            end = framing.find_head_end(buf)
            try:
                if end < 0:
                    framing.check_partial(buf, self._max_head)
                    self._buf = buf
                    return
                if end > self._max_head:  # the verdict a slow sender of these bytes gets
                    framing.check_partial(buf[:end], self._max_head)
                head = framing.parse_request_head_cached(buf[:end])
            except RemoteProtocolError as exc:
                self._refused(400, exc, buf)
                self.refuse(responses.bad_request(str(exc)))
                return
            if head.chunked:
                self._reader = framing.ChunkedReader()
            else:
                self._reader = framing.LengthReader(head.content_length or 0)
            body = self._body = RequestBody(self)
            self._buf = b""
            self._state = _BODY
            self._feed_body(buf[end:])
            state = self._state
            if state == _CLOSED:
                return
            if state == _WAIT and self._fast is not None:
                # Complete request: serve it from this callback, no task unless needed.
                try:
                    keep = self._fast(self, head, body)
                except Exception:
                    log.exception("request failed")
                    self._failed(head.method + b" " + head.target)
                    keep = False
                if keep is None:
                    return
                if not self._request_done(keep, reparse=False):
                    return
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
        self._request_done(keep and body is not None and body.complete)

    def _feed_body(self, data: bytes) -> None:
        assert self._reader is not None and self._body is not None
        try:
            pieces, rest = self._reader.read(data)
        except RemoteProtocolError as exc:
            if self._task is not None and not self._task.done():
                self._task.cancel()
            self._refused(400, exc, None)
            self.refuse(responses.bad_request(str(exc)))
            return
        if pieces:
            self._body.feed(pieces)
        if rest is not None:
            self._state = _WAIT
            self._buf = rest
            self._body.finish()
            if len(rest) > self._max_head:
                self.pause(_PAUSE_PIPELINE)

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
        self._request_done(keep and body.complete)

    def _request_done(self, keep: bool, reparse: bool = True) -> bool:
        """Ready for the next request; True when there may be one in the buffer."""
        transport = self.transport
        if transport is None or self._state == _CLOSED:
            return False
        if not keep or transport.is_closing():
            self._state = _CLOSED
            transport.close()
            return False
        self._state = _HEAD
        self._head_started = self._clock()
        self._body = None
        self._reader = None
        self.bytes_out = 0
        if self._paused:
            self.resume(_PAUSE_PIPELINE | _PAUSE_BODY | _PAUSE_UPSTREAM)
        if not self._buf:
            return False
        if reparse:
            self._parse()
        return True

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
        self._state = _CLOSED
        if self.transport is not None and not self.transport.is_closing():
            self.transport.write(data)
            self.transport.close()

    def abort(self) -> None:
        self._state = _CLOSED
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
        return self._state == _CLOSED

    def _idle_check(self) -> None:
        """Close a connection that holds the gateway without moving within the idle timeout.

        Each stall costs its connection only: a head must be complete within the timeout
        of its first byte (one byte a minute would hold a head forever otherwise), a body
        must keep arriving while the gateway is reading it, and a response must keep being
        read (a client that reads nothing holds a paused upstream connection).
        """
        self._timer = None
        if self._state == _CLOSED or self.transport is None:
            return
        limit, now, state = self._idle_timeout, self._clock(), self._state
        if self._write_stalled is not None:
            left = self._write_stalled + limit - now
            if left <= 0:
                log.info("client reads no response within %.1f s: closed", limit)
                self.abort()
                return
        elif state == _HEAD and self._task is None and self.inflight is None:
            left = (self._head_started if self._buf else self._last) + limit - now
            if left <= 0:
                self._state = _CLOSED
                if self._buf:  # a head that never finished
                    timeout = framing.bad("request head not complete in time", "request_timeout")
                    self._refused(408, timeout, self._buf)
                    self.refuse(responses.error(408, "request_timeout", close=True))
                else:
                    self.transport.close()
                return
        elif state == _BODY and not self._paused:
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
