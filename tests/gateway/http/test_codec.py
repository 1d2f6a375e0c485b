"""The HTTP/1.1 codecs alone: bytes in, events out, no sockets.

The same stream must give the same events however it is split into reads (every split
point, byte by byte); pipelined requests wait until the next cycle; every refusal is the
last event, with its reason slug; heads are frozen and shared by identical bytes.
"""

from __future__ import annotations

import dataclasses

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from lockgate.gateway.http import codec, framing
from lockgate.gateway.http.codec import END, RequestParser, ResponseParser
from lockgate.gateway.http.framing import FramingError, Head

GET = b"GET /orders/a HTTP/1.1\r\nHost: g\r\n\r\n"
POST = b"POST /orders/b HTTP/1.1\r\nHost: g\r\nContent-Length: 5\r\n\r\nhello"
CHUNKED = (
    b"POST /orders/c HTTP/1.1\r\nHost: g\r\nTransfer-Encoding: chunked\r\n\r\n"
    b"5;name=value;x\r\nhello\r\n6 ; ext\r\n world\r\n0\r\nX-Trailer: t\r\nX-Two: 2\r\n\r\n"
)
CLOSE = b"GET /orders/d HTTP/1.1\r\nHost: g\r\nConnection: close\r\n\r\n"
PIPELINE = GET + POST + CHUNKED + CLOSE
EXPECTED = [
    (b"GET", b"/orders/a", b""),
    (b"POST", b"/orders/b", b"hello"),
    (b"POST", b"/orders/c", b"hello world"),
    (b"GET", b"/orders/d", b""),
]

Message = tuple[bytes, bytes, bytes]


def requests(reads: list[bytes]) -> tuple[list[Message], FramingError | None]:
    """Drive a RequestParser like the listener does: feed each read, and start the next
    cycle as soon as a request ends (its answer is immediate here)."""
    parser = RequestParser(max_head=4096)
    out: list[Message] = []
    head: Head | None = None
    body: list[bytes] = []

    def take(events: list[codec.Event]) -> FramingError | None:
        nonlocal head
        while events:
            nxt: list[codec.Event] = []
            for event in events:
                if isinstance(event, Head):
                    head, body[:] = event, []
                elif isinstance(event, bytes):
                    body.append(event)
                elif event is END:
                    assert head is not None
                    out.append((head.method, head.target, b"".join(body)))
                    nxt = parser.next_cycle()
                else:
                    assert isinstance(event, FramingError)
                    assert parser.state == codec.ERROR
                    return event
            events = nxt
        return None

    for data in reads:
        error = take(parser.feed(data))
        if error is not None:
            return out, error
    return out, None


def test_a_pipeline_in_one_read() -> None:
    assert requests([PIPELINE]) == (EXPECTED, None)


@pytest.mark.parametrize("cut", range(1, len(PIPELINE)))
def test_a_pipeline_split_at_every_offset(cut: int) -> None:
    assert requests([PIPELINE[:cut], PIPELINE[cut:]]) == (EXPECTED, None)


def test_a_pipeline_byte_by_byte() -> None:
    assert requests([PIPELINE[i : i + 1] for i in range(len(PIPELINE))]) == (EXPECTED, None)


def test_pipelined_bytes_wait_for_the_next_cycle() -> None:
    parser = RequestParser()
    events = parser.feed(POST + GET)
    assert [type(e) for e in events] == [Head, bytes, codec.EndOfMessage]
    assert parser.state == codec.DONE and parser.buffered == GET
    assert parser.feed(b"more") == [] and parser.buffered == GET + b"more"
    parser = RequestParser()
    parser.feed(POST + GET)
    (head, end) = parser.next_cycle()
    assert isinstance(head, Head) and head.target == b"/orders/a" and end is END
    assert parser.next_cycle() == [] and parser.state == codec.HEAD


def test_next_cycle_only_after_the_end_of_a_request() -> None:
    parser = RequestParser()
    parser.feed(POST[:-2])
    with pytest.raises(RuntimeError):
        parser.next_cycle()


def test_empty_lines_before_a_request_are_ignored() -> None:
    assert requests([b"\r\n\r\n" + GET]) == (EXPECTED[:1], None)


def test_a_chunked_body_arrives_as_its_pieces_without_framing() -> None:
    parser = RequestParser()
    events = parser.feed(CHUNKED)
    assert events[1:] == [b"hello", b" world", END]


def test_heads_are_frozen_and_shared_by_identical_bytes() -> None:
    first = RequestParser().feed(GET)[0]
    second = RequestParser().feed(GET)[0]
    assert isinstance(first, Head) and first is second
    assert isinstance(first.headers, tuple)
    with pytest.raises(dataclasses.FrozenInstanceError):
        first.target = b"/admin"  # type: ignore[misc]
    assert (first.method, first.version, first.host, first.keep_alive) == (b"GET", 1, b"g", True)


def test_head_fields() -> None:
    raw = (
        b"PUT /x HTTP/1.1\r\nHost: h\r\nExpect: 100-continue\r\nContent-Length: 2\r\n"
        b"Connection: close, X-Hop\r\n\r\nab"
    )
    head, body, end = RequestParser().feed(raw)
    assert isinstance(head, Head) and (body, end) == (b"ab", END)
    assert head.expect_continue and head.content_length == 2 and not head.chunked
    assert head.connection == frozenset({b"close", b"x-hop"}) and not head.keep_alive
    http10 = RequestParser().feed(b"GET / HTTP/1.0\r\n\r\n")[0]
    assert isinstance(http10, Head) and http10.version == 0 and not http10.keep_alive


REFUSED = {
    "bare LF": (b"GET / HTTP/1.1\nHost: g\n\n", "malformed_head"),
    "obs-fold": (b"GET / HTTP/1.1\r\nHost: g\r\nX: a\r\n b\r\n\r\n", "malformed_head"),
    "space before colon": (b"GET / HTTP/1.1\r\nHost : g\r\n\r\n", "malformed_head"),
    "request line": (b"GET  / HTTP/1.1\r\nHost: g\r\n\r\n", "malformed_request_line"),
    "CL and TE": (
        b"POST / HTTP/1.1\r\nHost: g\r\nContent-Length: 3\r\n"
        b"Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
        "ambiguous_length",
    ),
    "differing CL": (
        b"POST / HTTP/1.1\r\nHost: g\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\n",
        "ambiguous_length",
    ),
    "TE not chunked": (
        b"POST / HTTP/1.1\r\nHost: g\r\nTransfer-Encoding: gzip, chunked\r\n\r\n",
        "ambiguous_length",
    ),
    "duplicate Host": (b"GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n", "bad_host"),
    "missing Host": (b"GET / HTTP/1.1\r\n\r\n", "bad_host"),
    "Expect": (b"GET / HTTP/1.1\r\nHost: g\r\nExpect: x\r\n\r\n", "unsupported_expect"),
    "chunk size": (
        b"POST / HTTP/1.1\r\nHost: g\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
        "bad_chunk",
    ),
    "chunk terminator": (
        b"POST / HTTP/1.1\r\nHost: g\r\nTransfer-Encoding: chunked\r\n\r\n1\r\nab\r\n",
        "bad_chunk",
    ),
    "trailer": (
        b"POST / HTTP/1.1\r\nHost: g\r\nTransfer-Encoding: chunked\r\n\r\n0\r\nbad trailer\r\n\r\n",
        "bad_chunk",
    ),
    "head too large": (b"GET /" + b"a" * 5000 + b" HTTP/1.1\r\nHost: g\r\n\r\n", "head_too_large"),
    "partial head too large": (b"GET /" + b"a" * 5000, "head_too_large"),
    "partial bare LF": (b"GET / HTTP/1.1\nHost", "malformed_head"),
}


@pytest.mark.parametrize("name", sorted(REFUSED))
def test_refusals_are_the_last_event_with_their_reason(name: str) -> None:
    data, slug = REFUSED[name]
    out, error = requests([data])
    assert out == [] and error is not None and error.slug == slug
    split, split_error = requests([data[i : i + 1] for i in range(len(data))])
    assert split == [] and split_error is not None and split_error.slug == slug


def test_a_refused_head_is_kept_for_its_request_line_a_refused_body_is_not() -> None:
    parser = RequestParser()
    (error,) = parser.feed(b"\r\nGET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n")
    assert isinstance(error, FramingError) and parser.buffered.startswith(b"GET / HTTP/1.1\r\n")
    assert parser.feed(GET) == [] and parser.state == codec.ERROR
    parser = RequestParser()
    head, error = parser.feed(REFUSED["chunk size"][0])
    assert isinstance(head, Head) and isinstance(error, FramingError)
    assert parser.buffered == b""


def test_a_smuggled_request_in_a_body_is_only_body() -> None:
    inner = b"GET /orders/admin HTTP/1.1\r\nHost: g\r\n\r\n"
    outer = b"POST /orders/x HTTP/1.1\r\nHost: g\r\nContent-Length: %d\r\n\r\n" % len(inner)
    assert requests([outer + inner]) == ([(b"POST", b"/orders/x", inner)], None)


# -- responses --------------------------------------------------------------------------------
OK = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nhi"
CHUNKED_OK = (
    b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2;x=1\r\nhi\r\n0\r\nT: 1\r\n\r\n"
)


def response(reads: list[bytes], *, head_only: bool = False) -> tuple[ResponseParser, list]:
    parser = ResponseParser()
    parser.start(head_only=head_only)
    events: list[codec.Event] = []
    for data in reads:
        events += parser.feed(data)
    return parser, events


@pytest.mark.parametrize("data", [OK, CHUNKED_OK])
def test_a_response_split_at_every_offset(data: bytes) -> None:
    for cut in range(len(data) + 1):
        parser, events = response([data[:cut], data[cut:]])
        head = events[0]
        assert isinstance(head, Head) and head.status == 200
        assert b"".join(e for e in events if isinstance(e, bytes)) == b"hi"
        assert events[-1] is END and parser.state == codec.DONE and parser.keep_alive


def test_interim_answers_are_dropped_and_101_is_refused() -> None:
    parser, events = response([b"HTTP/1.1 100 Continue\r\n\r\n", OK])
    assert isinstance(events[0], Head) and events[0].status == 200 and events[-1] is END
    parser, events = response([b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: x\r\n\r\n"])
    (error,) = events
    assert isinstance(error, FramingError) and error.slug == "protocol_switch"
    assert parser.head is None and not parser.keep_alive


def test_bodiless_answers() -> None:
    _, events = response([OK[: OK.index(b"hi")]], head_only=True)
    assert [type(e) for e in events] == [Head, codec.EndOfMessage]
    _, events = response([b"HTTP/1.1 204 No Content\r\nContent-Length: 9\r\n\r\n"])
    assert events[1:] == [END]


def test_a_body_framed_by_close_ends_at_eof_and_the_connection_is_not_reused() -> None:
    parser, events = response([b"HTTP/1.1 200 OK\r\n\r\nsome", b" bytes"])
    assert events[1:] == [b"some", b" bytes"] and parser.state == codec.BODY
    assert parser.feed_eof() == [END] and not parser.keep_alive
    unfinished, _ = response([OK[:-1]])
    assert unfinished.feed_eof() == []  # a truncated length-framed body never ends


def test_reuse_verdicts() -> None:
    closing, _ = response([b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 0\r\n\r\n"])
    assert not closing.keep_alive
    http10, _ = response([b"HTTP/1.0 200 OK\r\nContent-Length: 0\r\n\r\n"])
    assert not http10.keep_alive
    stray, events = response([OK + b"HTTP/1.1 200 OK\r\n"])
    assert events[-1] is END and not stray.keep_alive
    clean, _ = response([OK])
    clean.idle()
    assert clean.state == codec.IDLE
    clean.start(head_only=False)
    assert clean.keep_alive and clean.head is None


def test_a_bad_response_body_after_its_head() -> None:
    parser, events = response([b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nxx\r\n"])
    head, error = events
    assert isinstance(head, Head) and isinstance(error, FramingError) and error.slug == "bad_chunk"
    assert parser.head is head and parser.state == codec.ERROR


def test_a_partial_response_head_is_checked_as_it_arrives() -> None:
    _, events = response([b"HTTP/1.1 200 OK\r\nX: " + b"a" * (70 * 1024)])
    (error,) = events
    assert isinstance(error, FramingError) and error.slug == "head_too_large"


def test_the_chunk_helpers_round_trip() -> None:
    parser = RequestParser()
    data = b"POST / HTTP/1.1\r\nHost: g\r\nTransfer-Encoding: chunked\r\n\r\n"
    data += framing.chunk(b"abc") + framing.chunk(b"de") + framing.LAST_CHUNK
    assert parser.feed(data)[1:] == [b"abc", b"de", END]


# -- fuzz: the verdict does not depend on how the bytes were split ------------------------------
RESPONSE_STARTS = [
    b"",
    b"HTTP/1.1 200 OK\r\n",
    b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n",
    b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\n",
    b"HTTP/1.1 100 Continue\r\n\r\n",
]


def verdict(events: list[codec.Event]) -> tuple[list[int], bytes, str]:
    statuses = [e.status for e in events if isinstance(e, Head)]
    body = b"".join(e for e in events if isinstance(e, bytes))
    last = events[-1] if events else None
    end = "end" if last is END else last.slug if isinstance(last, FramingError) else "more"
    return statuses, body, end


@settings(max_examples=300, deadline=None)
@given(st.sampled_from(RESPONSE_STARTS), st.binary(max_size=200))
def test_a_response_stream_has_one_verdict_however_it_is_split(start: bytes, tail: bytes) -> None:
    data = start + tail
    _, whole = response([data])
    _, split = response([data[i : i + 1] for i in range(len(data))])
    assert verdict(whole) == verdict(split)


REQUEST_STARTS = [b"", b"POST /x HTTP/1.1\r\nHost: g\r\nTransfer-Encoding: chunked\r\n\r\n", GET]


@settings(max_examples=300, deadline=None)
@given(st.sampled_from(REQUEST_STARTS), st.binary(max_size=200))
def test_a_request_stream_has_one_verdict_however_it_is_split(start: bytes, tail: bytes) -> None:
    data = start + tail
    whole, whole_error = requests([data])
    split, split_error = requests([data[i : i + 1] for i in range(len(data))])
    assert whole == split
    assert (whole_error and whole_error.slug) == (split_error and split_error.slug)
