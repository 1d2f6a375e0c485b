"""HTTP/1.1 message codecs, sans-I/O: bytes in, events out (after h11).

One parser per direction of a connection, each a small state machine over the strict rules
of :mod:`.framing`; no sockets, no clocks, no tasks, so both are unit-tested and fuzzed alone:

* :class:`RequestParser` reads what a client sends the gateway, one request at a time;
* :class:`ResponseParser` reads what an upstream answers, one response per request sent.

``feed(data)`` returns the events those bytes complete, in stream order:

* a :class:`~.framing.Head`: frozen and shared, the same head bytes give the same object;
* body pieces as plain ``bytes`` (the decoded body: chunk framing removed);
* :data:`END` (end of message) once the body is complete;
* a :class:`~.framing.FramingError` as the last event when the stream is refused: the
  parser is then in ``ERROR`` and ignores further bytes (the connection answers and closes).

Events before a refusal are real (a head followed by a bad chunk delivers the head, then the
error), so the verdict on a byte stream does not depend on how it was split into reads.
After :data:`END` the parser holds whatever bytes follow (a pipelined next request, or bytes
an upstream should not have sent) until the connection starts the next cycle, so pipelining
can neither reorder nor smuggle.
"""

from __future__ import annotations

from typing import Final

from lockgate.gateway.http.framing import (
    BodyReader,
    ChunkedReader,
    FramingError,
    Head,
    LengthReader,
    UntilCloseReader,
    bad,
    check_partial,
    parse_request_head_cached,
    parse_response_head_cached,
)

__all__ = [
    "BODY",
    "DONE",
    "END",
    "ERROR",
    "HEAD",
    "IDLE",
    "EndOfMessage",
    "Event",
    "FramingError",
    "Head",
    "RequestParser",
    "ResponseParser",
]

#: Parser states. IDLE: nothing expected (a response parser between requests); HEAD: reading
#: a head; BODY: reading its body; DONE: the message ended, later bytes are held; ERROR:
#: refused, nothing more is read.
IDLE: Final = 0
HEAD: Final = 1
BODY: Final = 2
DONE: Final = 3
ERROR: Final = 4


class EndOfMessage:
    """The message's body is complete. One shared instance, :data:`END`."""

    __slots__ = ()

    def __repr__(self) -> str:
        return "END"


END: Final = EndOfMessage()

#: What ``feed`` returns a list of. Body pieces are plain ``bytes`` (no wrapper object per
#: piece: a download is one event per socket read).
Event = Head | bytes | EndOfMessage | FramingError

_UNTIL_CLOSE: Final = UntilCloseReader()  # stateless: one serves every connection
_NO_BODY: Final = 0


class _Body:
    """Body reading shared by both parsers: one length and one chunked reader per parser,
    reset for each message rather than allocated."""

    __slots__ = ("_buf", "_chunked", "_length", "_reader", "state")

    def __init__(self) -> None:
        self.state: int = IDLE
        self._buf = b""
        self._length = LengthReader(0)
        self._chunked: ChunkedReader | None = None
        self._reader: BodyReader = self._length

    def _reader_for(self, head: Head) -> BodyReader:
        if head.chunked:
            chunked = self._chunked
            if chunked is None:
                chunked = self._chunked = ChunkedReader()
                return chunked
            return chunked.reset()
        return self._length.reset(head.content_length or _NO_BODY)

    def _read_body(self, data: bytes, events: list[Event]) -> None:
        """Feed ``data`` to the body reader; END, then hold what follows the message."""
        try:
            pieces, rest = self._reader.read(data)
        except FramingError as exc:
            self.state = ERROR
            self._buf = b""  # a body refusal has no head to show
            events.append(exc)
            return
        if pieces:
            events.extend(pieces)
        if rest is not None:
            self.state = DONE
            self._buf = rest
            events.append(END)

    @property
    def buffered(self) -> bytes:
        """Bytes held and not yet parsed: an unfinished (or refused) head, or what followed
        the message after :data:`END`."""
        return self._buf


class RequestParser(_Body):
    """What a client sends: head, body, END; then held bytes wait for :meth:`next_cycle`."""

    __slots__ = ("max_head",)

    def __init__(self, max_head: int = 64 * 1024) -> None:
        super().__init__()
        self.state = HEAD
        self.max_head = max_head

    def feed(self, data: bytes) -> list[Event]:
        state = self.state
        if state == BODY:
            events: list[Event] = []
            self._read_body(data, events)
            return events
        if state == HEAD:
            return self._head(self._buf + data if self._buf else data)
        if state == DONE:  # the next request waits until this one is answered
            self._buf += data
        return []

    def next_cycle(self) -> list[Event]:
        """The current request is answered: read the next one from the held bytes."""
        if self.state != DONE:
            raise RuntimeError(f"next_cycle in state {self.state}")
        self.state = HEAD
        buf, self._buf = self._buf, b""
        return self._head(buf) if buf else []

    def _head(self, buf: bytes) -> list[Event]:
        while buf[:2] == b"\r\n":  # RFC 9112 §2.2: ignore empty lines before a request
            buf = buf[2:]
        end = buf.find(b"\r\n\r\n") + 4  # past the blank line; 3 when absent
        try:
            if end == 3:
                check_partial(buf, self.max_head)
                self._buf = buf
                return []
            if end > self.max_head:  # the verdict a slow sender of these bytes gets
                check_partial(buf[:end], self.max_head)
            head = parse_request_head_cached(buf[:end])
        except FramingError as exc:
            self.state = ERROR
            self._buf = buf  # the refused head: its request line names the refusal
            return [exc]
        events: list[Event] = [head]
        if not head.chunked and not head.content_length:
            self.state = DONE
            self._buf = buf[end:]
            events.append(END)
            return events
        self._reader = self._reader_for(head)
        self.state = BODY
        self._buf = b""
        self._read_body(buf[end:], events)
        return events


class ResponseParser(_Body):
    """What an upstream answers one request: 1xx interim heads dropped, then the final head,
    body and END. A HEAD request's answer and 204/304 have no body; a response framed by
    neither length nor chunks ends only at :meth:`feed_eof`.

    ``keep_alive`` says whether the connection may carry another request after this
    response: not when the response ends at close, asks to close, or is followed by bytes.
    """

    __slots__ = ("head", "head_only", "keep_alive", "max_head")

    def __init__(self, max_head: int = 64 * 1024) -> None:
        super().__init__()
        self.max_head = max_head
        self.head: Head | None = None
        self.head_only = False
        self.keep_alive = True

    def start(self, *, head_only: bool) -> None:
        """A request was sent: expect its response (no body when ``head_only``)."""
        self.state = HEAD
        self.head_only = head_only
        self.head = None
        self._buf = b""
        self.keep_alive = True

    def idle(self) -> None:
        """Between requests: any byte is unexpected."""
        self.state = IDLE
        self._buf = b""

    def feed(self, data: bytes) -> list[Event]:
        state = self.state
        if state == BODY:
            events: list[Event] = []
            self._read_body(data, events)
            if self.state == DONE and self._buf:
                self.keep_alive = False  # stray bytes after the response
            return events
        if state == HEAD:
            return self._head(self._buf + data if self._buf else data)
        if state in (DONE, IDLE):
            self._buf += data
        return []

    def feed_eof(self) -> list[Event]:
        """The upstream closed: END when the body was framed by the close (or complete)."""
        if self.state == BODY and self._reader.eof():
            self.state = DONE
            return [END]
        return []

    def _head(self, buf: bytes) -> list[Event]:
        try:
            while True:
                end = buf.find(b"\r\n\r\n") + 4
                if end == 3:
                    check_partial(buf, self.max_head)
                    self._buf = buf
                    return []
                head = parse_response_head_cached(buf[:end])
                buf = buf[end:]
                if head.status == 101:
                    raise bad("unexpected protocol switch", "protocol_switch")
                if head.status >= 200:
                    break  # 1xx interim answers are dropped
        except FramingError as exc:
            self.state = ERROR
            self._buf = b""
            self.keep_alive = False
            return [exc]
        self.head = head
        self._buf = b""
        status = head.status
        if self.head_only or status == 204 or status == 304:
            self._reader = self._length.reset(0)
        elif head.chunked or head.content_length is not None:
            self._reader = self._reader_for(head)
        else:
            self._reader = _UNTIL_CLOSE
            self.keep_alive = False
        if not head.keep_alive:
            self.keep_alive = False
        self.state = BODY
        events: list[Event] = [head]
        self._read_body(buf, events)
        if self.state == DONE and self._buf:
            self.keep_alive = False
        return events
