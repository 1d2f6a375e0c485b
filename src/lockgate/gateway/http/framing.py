"""Strict HTTP/1.1 framing, sans-I/O: message heads and body readers for both directions.

Strategy: refuse anything whose framing two parsers could read differently, instead of
"repairing" it, because the upstream must see exactly the message policy judged. The whole
head is validated by one anchored regex (C speed) before any field is used, so these never
get through: bare LF or bare CR, obs-fold (continuation lines), whitespace before the colon,
invalid header-name bytes, control bytes in values, extra spaces in the request line,
Content-Length together with Transfer-Encoding, differing or malformed Content-Length,
any Transfer-Encoding other than exactly ``chunked``, duplicate Host, bad chunk sizes or
chunk terminators. Violations raise :class:`FramingError` (a :class:`RemoteProtocolError`
with a reason ``slug`` for the audit trail); the caller answers 400, audits and closes. The
verdict on a byte stream does not depend on how it was split into reads. Lockgate parses
HTTP itself (rather than through httptools) because it needs the raw head for these checks
anyway, controls pipelining precisely, and knows HEAD responses.

Body readers share one interface: ``read(data) -> (pieces, rest)`` where ``pieces`` are body
bytes and ``rest`` is None while the body continues, else the bytes after the message.
The connection-level state machines that drive these rules live in :mod:`.codec`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from lockgate.errors import RemoteProtocolError

_TOKEN = rb"[!#$%&'*+\-.^_`|~0-9A-Za-z]+"
_VALUE = rb"[\t\x20-\x7e\x80-\xff]*"
REQUEST_LINE = re.compile(rb"(" + _TOKEN + rb") ([\x21-\x7e]+) HTTP/1\.([01])")
STATUS_LINE = re.compile(rb"HTTP/1\.([01]) ([1-9][0-9][0-9])(?: " + _VALUE + rb")?")
_LINE = rb"(" + _TOKEN + rb"):(" + _VALUE + rb")\r\n"
HEADER_LINE = re.compile(_LINE)
HEADER_BLOCK = re.compile(rb"(?:" + _TOKEN + rb":" + _VALUE + rb"\r\n)*")
CHUNK_SIZE = re.compile(rb"([0-9A-Fa-f]{1,15})(?:[ \t]*;[\t\x20-\x7e\x80-\xff]*)?")
_CL = re.compile(rb"[0-9]{1,18}")

MAX_HEADERS = 128
MAX_CHUNK_LINE = 4096
MAX_TRAILER_BYTES = 16 * 1024

Headers = tuple[tuple[bytes, bytes], ...]


class FramingError(RemoteProtocolError):
    """A message the framing rules refuse. ``slug`` is the reason recorded in the audit
    trail and metrics (a few fixed words); the message says which rule, never echoes bytes."""

    def __init__(self, reason: str, slug: str) -> None:
        self.slug = slug
        super().__init__(reason)


def bad(reason: str, slug: str) -> FramingError:
    return FramingError(reason, slug)


@dataclass(frozen=True, slots=True)
class Head:
    """A parsed request or response head; ``headers`` keep their original names.

    Frozen: parsed heads are cached by their raw bytes and shared by every request that
    repeats them, so nobody may change one in place.
    """

    method: bytes  # b"" for responses
    target: bytes  # b"" for responses
    status: int  # 0 for requests
    version: int  # minor version: 0 or 1
    headers: Headers
    content_length: int | None
    chunked: bool
    keep_alive: bool
    connection: frozenset[bytes]  # lowercased tokens of Connection
    expect_continue: bool = False
    host: bytes | None = None


def check_partial(buf: bytes | bytearray, limit: int) -> None:
    """Refuse an incomplete head early: using bare LF (it would never end), or too big.

    Only the first ``limit + 1`` bytes are looked at, and bare LF before size, so the verdict
    is the same however the bytes were split into reads (one read or one byte at a time).
    """
    seen = buf if len(buf) <= limit else buf[: limit + 1]
    if seen.count(b"\n") != seen.count(b"\r\n"):
        raise bad("bare LF in head", "malformed_head")
    if len(buf) > limit:
        raise bad("header block too large", "head_too_large")


def find_head_end(buf: bytes | bytearray, start: int = 0) -> int:
    """Index just past the blank line ending the head, or -1."""
    i = buf.find(b"\r\n\r\n", start)
    return -1 if i < 0 else i + 4


def _parse_fields(block: bytes) -> tuple[Headers, dict[bytes, list[bytes]]]:
    if HEADER_BLOCK.fullmatch(block) is None:
        raise bad("malformed header line", "malformed_head")
    headers = tuple([(n, v.strip(b" \t")) for n, v in HEADER_LINE.findall(block)])
    if len(headers) > MAX_HEADERS:
        raise bad("too many headers", "head_too_large")
    special: dict[bytes, list[bytes]] = {}
    for name, value in headers:
        low = name.lower()
        if low in _FRAMING:
            special.setdefault(low, []).append(value)
    return headers, special


_FRAMING = frozenset(
    {b"content-length", b"transfer-encoding", b"connection", b"host", b"expect", b"upgrade"}
)


def _framing(special: dict[bytes, list[bytes]], version: int) -> tuple[int | None, bool]:
    te = special.get(b"transfer-encoding")
    cls = special.get(b"content-length")
    length: int | None = None
    if cls is not None:
        values = {v.strip(b" \t") for item in cls for v in item.split(b",")}
        if len(values) != 1:
            raise bad("differing Content-Length values", "ambiguous_length")
        (value,) = values
        if _CL.fullmatch(value) is None:
            raise bad("malformed Content-Length", "ambiguous_length")
        length = int(value)
    if te is None:
        return length, False
    if cls is not None:
        raise bad("Content-Length with Transfer-Encoding", "ambiguous_length")
    if version == 0:
        raise bad("Transfer-Encoding in HTTP/1.0", "ambiguous_length")
    if len(te) != 1 or te[0].lower() != b"chunked":
        raise bad("unsupported Transfer-Encoding", "ambiguous_length")
    return None, True


def _connection(special: dict[bytes, list[bytes]], version: int) -> tuple[frozenset[bytes], bool]:
    raw = special.get(b"connection")
    tokens = (
        frozenset(t.strip(b" \t").lower() for v in raw for t in v.split(b",") if t.strip())
        if raw
        else frozenset()
    )
    keep = (b"keep-alive" in tokens) if version == 0 else (b"close" not in tokens)
    return tokens, keep


def parse_request_head(head: bytes) -> Head:
    """Parse a complete request head (ending with CRLF CRLF)."""
    if head.count(b"\n") != head.count(b"\r\n"):  # first, as :func:`check_partial` does
        raise bad("bare LF in head", "malformed_head")
    eol = head.find(b"\r\n")
    m = REQUEST_LINE.fullmatch(head, 0, eol)
    if m is None:
        raise bad("malformed request line", "malformed_request_line")
    method, target, minor = m.group(1), m.group(2), m.group(3)
    version = 1 if minor == b"1" else 0
    headers, special = _parse_fields(head[eol + 2 : -2])
    length, chunked = _framing(special, version)
    tokens, keep = _connection(special, version)
    hosts = special.get(b"host")
    if hosts is not None and len(hosts) > 1:
        raise bad("duplicate Host", "bad_host")
    if hosts is None and version == 1:
        raise bad("missing Host", "bad_host")
    expect = special.get(b"expect")
    cont = False
    if expect is not None:
        if len(expect) != 1 or expect[0].lower() != b"100-continue":
            raise bad("unsupported Expect", "unsupported_expect")
        cont = version == 1
    return Head(
        method, target, 0, version, headers, length, chunked, keep, tokens, cont,
        hosts[0] if hosts else None,
    )  # fmt: skip


def parse_response_head(head: bytes) -> Head:
    eol = head.find(b"\r\n")
    m = STATUS_LINE.fullmatch(head, 0, eol)
    if m is None:
        raise bad("malformed status line", "malformed_head")
    version = 1 if m.group(1) == b"1" else 0
    headers, special = _parse_fields(head[eol + 2 : -2])
    length, chunked = _framing(special, 1)
    tokens, keep = _connection(special, version)
    return Head(b"", b"", int(m.group(2)), version, headers, length, chunked, keep, tokens)


# -- memoised parsing -------------------------------------------------------------------------
# Parsing is a pure function of the head bytes, and a pipeline repeats the same heads (same
# path, same token; an upstream repeats its answer head until its Date header ticks), so
# parsed heads are memoised by their exact bytes. A hit is exactly what parsing would return
# (the very same frozen Head); refusals are never cached (they raise). Bounded: cleared when
# full, so churn costs speed only.
CACHE_ENTRIES = 512
CACHE_MAX_HEAD = 8 * 1024
_requests: dict[bytes, Head] = {}
_responses: dict[bytes, Head] = {}


def parse_request_head_cached(raw: bytes) -> Head:
    head = _requests.get(raw)
    if head is None:
        head = parse_request_head(raw)
        if len(raw) <= CACHE_MAX_HEAD:
            if len(_requests) >= CACHE_ENTRIES:
                _requests.clear()
            _requests[raw] = head
    return head


def parse_response_head_cached(raw: bytes) -> Head:
    head = _responses.get(raw)
    if head is None:
        head = parse_response_head(raw)
        if len(raw) <= CACHE_MAX_HEAD:
            if len(_responses) >= CACHE_ENTRIES:
                _responses.clear()
            _responses[raw] = head
    return head


# -- body readers -----------------------------------------------------------------------------
class LengthReader:
    __slots__ = ("remaining",)

    def __init__(self, length: int) -> None:
        self.remaining = length

    def reset(self, length: int) -> LengthReader:
        """Ready for the next message (a connection reuses its reader)."""
        self.remaining = length
        return self

    def read(self, data: bytes) -> tuple[list[bytes], bytes | None]:
        r = self.remaining
        n = len(data)
        if n < r:
            self.remaining = r - n
            return ([data] if n else []), None
        self.remaining = 0
        if n == r:
            return ([data] if n else []), b""
        return ([data[:r]] if r else []), data[r:]

    def eof(self) -> bool:
        return self.remaining == 0


class UntilCloseReader:
    """Response bodies framed by connection close."""

    __slots__ = ()

    def read(self, data: bytes) -> tuple[list[bytes], bytes | None]:
        return ([data] if data else []), None

    def eof(self) -> bool:
        return True


_SIZE, _DATA, _DATA_END, _TRAILER = range(4)


class ChunkedReader:
    """Decodes ``Transfer-Encoding: chunked``; extensions and trailers are dropped."""

    __slots__ = ("_buf", "_remaining", "_state", "_trailer_bytes")

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> ChunkedReader:
        """Ready for the next message (a connection reuses its reader)."""
        self._state = _SIZE
        self._buf = b""
        self._remaining = 0
        self._trailer_bytes = 0
        return self

    def eof(self) -> bool:
        return False

    def read(self, data: bytes) -> tuple[list[bytes], bytes | None]:
        buf = self._buf + data if self._buf else data
        pos = 0
        n = len(buf)
        out: list[bytes] = []
        state = self._state
        while pos < n:
            if state == _DATA:
                take = min(self._remaining, n - pos)
                out.append(buf if take == n else buf[pos : pos + take])
                pos += take
                self._remaining -= take
                if self._remaining == 0:
                    state = _DATA_END
            elif state == _DATA_END:
                if n - pos < 2:
                    if buf[pos : pos + 1] != b"\r":
                        raise bad("bad chunk terminator", "bad_chunk")
                    break
                if buf[pos : pos + 2] != b"\r\n":
                    raise bad("bad chunk terminator", "bad_chunk")
                pos += 2
                state = _SIZE
            else:
                i = buf.find(b"\r\n", pos)
                line_end = n if i < 0 else i
                if b"\n" in buf[pos:line_end] or b"\r" in buf[pos : line_end - 1 if i < 0 else i]:
                    raise bad("bare CR or LF in chunk framing", "bad_chunk")
                if i < 0:
                    if n - pos > MAX_CHUNK_LINE:
                        raise bad("chunk line too long", "bad_chunk")
                    break
                line = buf[pos:i]
                pos = i + 2
                if state == _SIZE:
                    m = CHUNK_SIZE.fullmatch(line)
                    if m is None:
                        raise bad("bad chunk size", "bad_chunk")
                    size = int(m.group(1), 16)
                    if size:
                        self._remaining = size
                        state = _DATA
                    else:
                        state = _TRAILER
                elif line:  # a trailer field: validated, then dropped
                    self._trailer_bytes += len(line) + 2
                    if self._trailer_bytes > MAX_TRAILER_BYTES:
                        raise bad("trailers too large", "bad_chunk")
                    if HEADER_BLOCK.fullmatch(line + b"\r\n") is None:
                        raise bad("malformed trailer", "bad_chunk")
                else:
                    self._state = _SIZE
                    self._buf = b""
                    return out, buf[pos:]
        self._state = state
        self._buf = buf[pos:] if pos < n else b""
        return out, None


BodyReader = LengthReader | ChunkedReader | UntilCloseReader


def chunk(data: bytes) -> bytes:
    return b"%x\r\n%b\r\n" % (len(data), data)


LAST_CHUNK = b"0\r\n\r\n"
