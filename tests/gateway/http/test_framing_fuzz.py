"""Property-based fuzzing of the HTTP request framing: random, generated and mutated streams.

The stream goes through the real client connection (:class:`ClientConnection`, the state
machine the engine runs, with a recording transport), once whole and once byte by byte.
Invariants, after h11's fuzz target and the smuggling literature:

* nothing escapes but :class:`FramingError` from the parser functions; the connection
  answers every refusal itself with a known reason slug and closes;
* whole and byte-by-byte feeding deliver the same requests and the same refusals;
* an accepted request never has an ambiguous length (Content-Length and Transfer-Encoding,
  differing lengths, a coding other than exactly ``chunked``) and its body is exactly as
  long as it says;
* an accepted request, re-serialised, parses to the very same request;
* an independent parser (h11) accepts what Lockgate accepts, with the same method, target
  and body: the upstream and the gateway agree on where each message ends.
"""

from __future__ import annotations

import asyncio
import contextlib
from dataclasses import dataclass, field
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from lockgate.gateway.http import framing
from lockgate.gateway.http.framing import FramingError
from lockgate.gateway.http.server import ClientConnection

h11 = pytest.importorskip("h11")

#: Every reason slug a framing refusal may carry.
SLUGS = {
    "malformed_head", "malformed_request_line", "ambiguous_length", "head_too_large",
    "bad_host", "bad_chunk", "unsupported_expect",
}  # fmt: skip
MAX_HEAD = 2048


class Transport(asyncio.Transport):
    """Records what the connection writes and whether it closed."""

    def __init__(self) -> None:
        super().__init__()
        self.out = bytearray()
        self.closed = False

    def write(self, data: bytes | bytearray | memoryview) -> None:
        self.out += data

    def close(self) -> None:
        self.closed = True

    def abort(self) -> None:
        self.closed = True

    def is_closing(self) -> bool:
        return self.closed

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass

    def set_write_buffer_limits(self, high: int | None = None, low: int | None = None) -> None:
        pass

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return ("127.0.0.1", 40000) if name == "peername" else default


@dataclass
class Outcome:
    requests: list[tuple[bytes, bytes, int, list[tuple[bytes, bytes]], bytes]] = field(
        default_factory=list
    )
    refusals: list[tuple[int, str]] = field(default_factory=list)
    heads: list[framing.Head] = field(default_factory=list)
    out: bytes = b""
    closed: bool = False


async def _drive(data: bytes, chunk: int) -> Outcome:
    res = Outcome()
    loop = asyncio.get_running_loop()

    def served(head: framing.Head, body: bytes) -> bool:
        res.heads.append(head)
        res.requests.append((head.method, head.target, head.version, list(head.headers), body))
        return head.keep_alive

    def fast(conn: ClientConnection, head: framing.Head, body: Any) -> bool:
        return served(head, body.data() if body.total else b"")

    async def handler(conn: ClientConnection, head: framing.Head, body: Any) -> bool:
        parts: list[bytes] = []
        done: asyncio.Future[None] = loop.create_future()
        body.attach(parts.append, lambda: done.done() or done.set_result(None))
        await done
        return served(head, b"".join(parts))

    def refused(conn: Any, status: int, slug: str, description: str, line: Any) -> None:
        res.refusals.append((status, slug))

    conn = ClientConnection(
        handler, max_header_bytes=MAX_HEAD, fast=fast, on_refused=refused, idle_timeout=3600
    )
    transport = Transport()
    conn.connection_made(transport)
    for i in range(0, len(data), chunk):
        if transport.closed:
            break
        conn.data_received(data[i : i + chunk])
        for _ in range(3):  # let a streaming request's task finish
            await asyncio.sleep(0)
    for _ in range(5):
        await asyncio.sleep(0)
    conn.connection_lost(None)
    res.out, res.closed = bytes(transport.out), transport.closed
    return res


def drive(data: bytes, chunk: int) -> Outcome:
    return asyncio.run(_drive(data, chunk))


def serialise(method: bytes, target: bytes, version: int, headers: Any, body: bytes) -> bytes:
    """A request as a plain client would write it, from the parsed fields."""
    lines = [b"%s %s HTTP/1.%d\r\n" % (method, target, version)]
    chunked = any(n.lower() == b"transfer-encoding" for n, _ in headers)
    lines += [b"%s: %s\r\n" % (n, v) for n, v in headers]
    lines.append(b"\r\n")
    if chunked:
        lines.append(framing.chunk(body) if body else b"")
        lines.append(framing.LAST_CHUNK)
    else:
        lines.append(body)
    return b"".join(lines)


def with_h11(data: bytes) -> tuple[list[tuple[bytes, bytes, bytes]], bool]:
    """The requests h11 reads from ``data`` (method, target, body); True if it stopped on
    a connection that must close (h11 closes HTTP/1.0 even with keep-alive).

    One h11 connection per request, so empty lines before a request line can be skipped
    as RFC 9112 section 2.2 says a server should (and Lockgate does; h11 does not).
    """
    got: list[tuple[bytes, bytes, bytes]] = []
    rest = data
    while True:
        while rest[:2] == b"\r\n":
            rest = rest[2:]
        conn = h11.Connection(h11.SERVER, max_incomplete_event_size=MAX_HEAD)
        conn.receive_data(rest)
        conn.receive_data(b"")
        request: Any = None
        body = b""
        while True:
            try:
                event = conn.next_event()
            except h11.RemoteProtocolError:
                return got, False
            if isinstance(event, h11.Request):
                request = event
            elif isinstance(event, h11.Data):
                body += event.data
            elif isinstance(event, h11.EndOfMessage):
                break
            else:  # NEED_DATA or ConnectionClosed: no complete request
                return got, False
        got.append((request.method, request.target, body))
        conn.send(h11.Response(status_code=200, headers=[("Content-Length", "0")]))
        conn.send(h11.EndOfMessage())
        if conn.our_state is h11.MUST_CLOSE:
            return got, True
        rest = conn.trailing_data[0]


def check(data: bytes) -> Outcome:
    whole = drive(data, max(len(data), 1))
    bytewise = drive(data, 1)
    assert whole.requests == bytewise.requests
    assert whole.refusals == bytewise.refusals
    assert whole.out == bytewise.out
    for status, slug in whole.refusals:
        assert status == 400 and slug in SLUGS
        assert whole.closed and whole.out.endswith(b"}") and b"HTTP/1.1 400 " in whole.out
    for head, (_, _, _, headers, body) in zip(whole.heads, whole.requests, strict=True):
        names = [n.lower() for n, _ in headers]
        te = [v for n, v in headers if n.lower() == b"transfer-encoding"]
        cls = {
            x.strip(b" \t") for n, v in headers if n.lower() == b"content-length"
            for x in v.split(b",")
        }  # fmt: skip
        assert not (te and cls), "Content-Length with Transfer-Encoding accepted"
        assert len(cls) <= 1 and all(x.isdigit() for x in cls)
        if te:
            assert te == [b"chunked"] or [t.lower() for t in te] == [b"chunked"]
            assert head.chunked and head.version == 1
        else:
            assert not head.chunked
            assert len(body) == (head.content_length or 0)
        assert names.count(b"host") <= 1
    # Re-serialised, every accepted request parses to the very same request.
    if whole.requests:
        again = drive(b"".join(serialise(*r) for r in whole.requests), 4096)
        n = len(again.requests)
        assert again.requests == whole.requests[:n] and not again.refusals
        assert n == len(whole.requests) or not whole.heads[n - 1].keep_alive
    # The independent parser finds the same messages where Lockgate found them.
    theirs, closed = with_h11(data)
    ours = [(m, t, b) for m, t, _, _, b in whole.requests]
    # (h11 is more lenient, HTTP/0.1 say, so it may read more; it must not read less, except
    # that it closes HTTP/1.0 connections that Lockgate keeps alive.)
    if closed and len(theirs) < len(ours):
        assert theirs == ours[: len(theirs)], (theirs, ours)
    else:
        assert theirs[: len(ours)] == ours, (theirs, ours)
    return whole


FUZZ = settings(
    max_examples=300,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)

# -- generated requests -------------------------------------------------------------------------
_METHODS = st.sampled_from([b"GET", b"POST", b"PUT", b"HEAD", b"DELETE", b"PATCH", b"G-T", b"get"])
_TARGETS = st.sampled_from([b"/orders/x", b"/", b"/a?b=c", b"*", b"http://h/x", b"/%2e%2e/"])
_TE = st.sampled_from(
    [b"chunked", b"Chunked", b"chunked, gzip", b"gzip, chunked", b" chunked", b"xchunked",
     b"chunked;q=1", b"identity", b""]
)  # fmt: skip
_CL = st.one_of(
    st.sampled_from([b"0", b"4", b"04", b"+4", b"-1", b"4, 4", b"4,5", b"", b"1e3", b"0x4"]),
    st.integers(0, 40).map(lambda n: str(n).encode()),
)
_NAME = st.sampled_from(
    [b"Host", b"Content-Length", b"Transfer-Encoding", b"Connection", b"Expect", b"X-A",
     b"content-length", b"Transfer-encoding", b"Host ", b"X(a)", b""]
)  # fmt: skip
_SEP = st.sampled_from([b": ", b":", b":\t", b" : ", b":  "])
_EOL = st.sampled_from([b"\r\n"] * 8 + [b"\n", b"\r", b"\r\r\n"])


@st.composite
def header(draw: st.DrawFn) -> bytes:
    name = draw(_NAME)
    low = name.lower()
    if low == b"transfer-encoding":
        value = draw(_TE)
    elif low == b"content-length":
        value = draw(_CL)
    elif low == b"connection":
        value = draw(st.sampled_from([b"close", b"keep-alive", b"Keep-Alive, x", b"upgrade"]))
    elif low == b"expect":
        value = draw(st.sampled_from([b"100-continue", b"100-Continue", b"200-ok"]))
    else:
        value = draw(st.binary(max_size=12).filter(lambda v: b"\r" not in v and b"\n" not in v))
    return name + draw(_SEP) + value + draw(_EOL)


@st.composite
def body(draw: st.DrawFn) -> bytes:
    if draw(st.booleans()):  # chunked-looking bodies, valid or not
        parts = []
        for piece in draw(st.lists(st.binary(min_size=1, max_size=8), max_size=3)):
            size = draw(st.sampled_from([b"%x" % len(piece), b"%X" % len(piece), b"%x;e=1" %
                                         len(piece), b"0%x" % len(piece), b"zz", b" %x" %
                                         len(piece)]))  # fmt: skip
            parts.append(size + draw(_EOL) + piece + draw(_EOL))
        parts.append(b"0" + draw(_EOL))
        if draw(st.booleans()):
            parts.append(b"X-Trailer: t" + draw(_EOL))
        parts.append(draw(_EOL))
        return b"".join(parts)
    return draw(st.binary(max_size=24))


@st.composite
def request(draw: st.DrawFn) -> bytes:
    line = (
        draw(_METHODS)
        + b" "
        + draw(_TARGETS)
        + draw(
            st.sampled_from([b" HTTP/1.1", b" HTTP/1.0", b" HTTP/1.1 ", b" HTTP/2.0", b" http/1.1"])
        )
    )
    host = draw(st.sampled_from([[b"Host: g\r\n"], [], [b"Host: a\r\n", b"Host: b\r\n"]]))
    headers = host + draw(st.lists(header(), max_size=5))
    headers = draw(st.permutations(headers))
    return line + draw(_EOL) + b"".join(headers) + draw(_EOL) + draw(body())


@st.composite
def stream(draw: st.DrawFn) -> bytes:
    return b"".join(draw(st.lists(request(), min_size=1, max_size=3)))


@st.composite
def mutated(draw: st.DrawFn) -> bytes:
    """A valid pipelined pair with a few byte-level mutations."""
    length = draw(st.integers(0, 9))
    first = b"POST /orders/a HTTP/1.1\r\nHost: g\r\nContent-Length: %d\r\n\r\n" % length
    first += b"x" * length
    second = b"POST /orders/b HTTP/1.1\r\nHost: g\r\nTransfer-Encoding: chunked\r\n\r\n"
    second += b"3\r\nabc\r\n0\r\n\r\n"
    data = bytearray(first + second)
    for _ in range(draw(st.integers(1, 4))):
        pos = draw(st.integers(0, len(data) - 1))
        op = draw(st.sampled_from(["flip", "insert", "delete", "dup"]))
        if op == "flip":
            data[pos] ^= 1 << draw(st.integers(0, 7))
        elif op == "insert":
            data[pos:pos] = draw(st.sampled_from([b"\r", b"\n", b" ", b"\t", b"\x00", b",", b"0"]))
        elif op == "delete":
            del data[pos : pos + draw(st.integers(1, 3))]
        else:
            end = data.find(b"\r\n", pos)
            if end > 0:
                start = data.rfind(b"\n", 0, pos) + 1
                data[start:start] = data[start : end + 2]
    return bytes(data)


@FUZZ
@given(st.binary(max_size=300))
def test_random_bytes(data: bytes) -> None:
    check(data)


@FUZZ
@given(stream())
def test_generated_requests(data: bytes) -> None:
    check(data)


@FUZZ
@given(mutated())
def test_mutated_requests(data: bytes) -> None:
    check(data)


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=400))
def test_parser_functions_raise_only_their_own_error(data: bytes) -> None:
    for parse in (framing.parse_request_head, framing.parse_response_head):
        with contextlib.suppress(FramingError):
            parse(data + b"\r\n\r\n")
    for reader in (framing.ChunkedReader(), framing.LengthReader(len(data) // 2)):
        try:
            for i in range(0, len(data), 7):
                reader.read(data[i : i + 7])
        except FramingError:
            pass


def test_the_oracles_see_a_plain_pipeline() -> None:
    data = (
        b"POST /orders/a HTTP/1.1\r\nHost: g\r\nContent-Length: 3\r\n\r\nabc"
        b"POST /orders/b HTTP/1.1\r\nHost: g\r\nTransfer-Encoding: chunked\r\n\r\n"
        b"2\r\nde\r\n0\r\n\r\nGET /orders/c HTTP/1.1\r\nHost: g\r\nConnection: close\r\n\r\n"
    )
    out = check(data)
    assert [(m, t, b) for m, t, _, _, b in out.requests] == [
        (b"POST", b"/orders/a", b"abc"),
        (b"POST", b"/orders/b", b"de"),
        (b"GET", b"/orders/c", b""),
    ]
    smuggle = b"POST /x HTTP/1.1\r\nHost: g\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n"
    refused = check(smuggle + b"\r\n0\r\n\r\n")
    assert refused.requests == [] and refused.refusals == [(400, "ambiguous_length")]
