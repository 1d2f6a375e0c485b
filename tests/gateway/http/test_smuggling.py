"""Ambiguous framing is refused with 400 + close, and the gateway keeps serving."""

from __future__ import annotations

import contextlib

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from lockgate.errors import RemoteProtocolError
from lockgate.gateway.http import codec, framing

from .conftest import TOKEN, raw_request

AUTH = b"Authorization: Bearer " + TOKEN.encode() + b"\r\n"

SMUGGLING = {
    "cl_and_te": b"POST /orders/x HTTP/1.1\r\nHost: g\r\n" + AUTH
    + b"Content-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
    "te_and_cl": b"POST /orders/x HTTP/1.1\r\nHost: g\r\n" + AUTH
    + b"Transfer-Encoding: chunked\r\nContent-Length: 4\r\n\r\n0\r\n\r\n",
    "duplicate_cl": b"POST /orders/x HTTP/1.1\r\nHost: g\r\n" + AUTH
    + b"Content-Length: 4\r\nContent-Length: 5\r\n\r\nabcde",
    "cl_list": b"POST /orders/x HTTP/1.1\r\nHost: g\r\n" + AUTH
    + b"Content-Length: 4, 5\r\n\r\nabcde",
    "cl_sign": b"POST /orders/x HTTP/1.1\r\nHost: g\r\n" + AUTH + b"Content-Length: +4\r\n\r\nabcd",
    "bad_chunk_size": b"POST /orders/x HTTP/1.1\r\nHost: g\r\n" + AUTH
    + b"Transfer-Encoding: chunked\r\n\r\nzz\r\nabc\r\n0\r\n\r\n",
    "chunk_size_overflow": b"POST /orders/x HTTP/1.1\r\nHost: g\r\n" + AUTH
    + b"Transfer-Encoding: chunked\r\n\r\n10000000000000001\r\na\r\n0\r\n\r\n",
    "chunk_missing_crlf": b"POST /orders/x HTTP/1.1\r\nHost: g\r\n" + AUTH
    + b"Transfer-Encoding: chunked\r\n\r\n3\r\nabcX\r\n0\r\n\r\n",
    "xchunked": b"POST /orders/x HTTP/1.1\r\nHost: g\r\n" + AUTH
    + b"Transfer-Encoding: xchunked\r\n\r\n0\r\n\r\n",
    "chunked_gzip": b"POST /orders/x HTTP/1.1\r\nHost: g\r\n" + AUTH
    + b"Transfer-Encoding: gzip, chunked\r\n\r\n0\r\n\r\n",
    "te_twice": b"POST /orders/x HTTP/1.1\r\nHost: g\r\n" + AUTH
    + b"Transfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
    "obs_fold": b"GET /orders/x HTTP/1.1\r\nHost: g\r\n" + AUTH + b"X-A: 1\r\n  folded\r\n\r\n",
    "bare_lf": b"GET /orders/x HTTP/1.1\nHost: g\n" + AUTH.replace(b"\r\n", b"\n") + b"\n",
    "bare_lf_in_header": b"GET /orders/x HTTP/1.1\r\nHost: g\nX: y\r\n" + AUTH + b"\r\n",
    "bare_cr": b"GET /orders/x HTTP/1.1\r\nHost: g\rX: y\r\n" + AUTH + b"\r\n",
    "space_before_colon": b"GET /orders/x HTTP/1.1\r\nHost: g\r\n" + AUTH
    + b"Transfer-Encoding : chunked\r\n\r\n",
    "bad_header_name": b"GET /orders/x HTTP/1.1\r\nHost: g\r\n" + AUTH + b"X(a): 1\r\n\r\n",
    "nul_in_value": b"GET /orders/x HTTP/1.1\r\nHost: g\r\n" + AUTH + b"X-A: a\x00b\r\n\r\n",
    "double_space_request_line": b"GET  /orders/x HTTP/1.1\r\nHost: g\r\n" + AUTH + b"\r\n",
    "tab_request_line": b"GET\t/orders/x HTTP/1.1\r\nHost: g\r\n" + AUTH + b"\r\n",
    "trailing_space_request_line": b"GET /orders/x HTTP/1.1 \r\nHost: g\r\n" + AUTH + b"\r\n",
    "http2_version": b"GET /orders/x HTTP/2.0\r\nHost: g\r\n" + AUTH + b"\r\n",
    "missing_host": b"GET /orders/x HTTP/1.1\r\n" + AUTH + b"\r\n",
    "duplicate_host": b"GET /orders/x HTTP/1.1\r\nHost: a\r\nHost: b\r\n" + AUTH + b"\r\n",
    "te_in_http10": b"POST /orders/x HTTP/1.0\r\n" + AUTH
    + b"Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
    "oversized_head": b"GET /orders/x HTTP/1.1\r\nHost: g\r\n" + AUTH
    + b"X-Big: " + b"a" * 70000 + b"\r\n\r\n",
}  # fmt: skip


@pytest.mark.parametrize("name", sorted(SMUGGLING))
async def test_ambiguous_framing_is_refused(make_gateway, upstream, name: str) -> None:
    gw = await make_gateway()
    out = await raw_request(gw.port, SMUGGLING[name])
    assert out.startswith(b"HTTP/1.1 400 "), out[:200]
    assert b"Connection: close" in out
    assert b"<timeout>" not in out  # the gateway closed the connection
    assert upstream.seen == []
    # ... and still serves the next connection.
    ok = await raw_request(
        gw.port, b"GET /orders/ok HTTP/1.1\r\nHost: g\r\n" + AUTH + b"Connection: close\r\n\r\n"
    )
    assert ok.startswith(b"HTTP/1.1 200 ")


async def test_valid_chunked_upload_is_reencoded(make_gateway, upstream) -> None:
    gw = await make_gateway()
    req = (
        b"POST /orders/x HTTP/1.1\r\nHost: g\r\n" + AUTH + b"Transfer-Encoding: chunked\r\n\r\n"
        b"5;ext=1\r\nhello\r\n6\r\n world\r\n0\r\nX-Trailer: t\r\n\r\n"
        b"GET /orders/y HTTP/1.1\r\nHost: g\r\n" + AUTH + b"Connection: close\r\n\r\n"
    )
    out = await raw_request(gw.port, req)
    assert out.count(b"HTTP/1.1 200 OK") == 2
    assert upstream.seen[0]["size"] == 11
    assert upstream.seen[1]["path"] == "/y"


async def test_smuggled_request_in_body_is_only_body(make_gateway, upstream) -> None:
    gw = await make_gateway(deny=[("*", "/admin*")])
    inner = b"GET /orders/admin HTTP/1.1\r\nHost: g\r\n" + AUTH + b"\r\n"
    req = (
        b"POST /orders/x HTTP/1.1\r\nHost: g\r\n" + AUTH
        + b"Content-Length: %d\r\nConnection: close\r\n\r\n" % len(inner) + inner
    )  # fmt: skip
    out = await raw_request(gw.port, req)
    assert out.count(b"HTTP/1.1 200") == 1
    assert [s["path"] for s in upstream.seen] == ["/x"]
    assert upstream.seen[0]["size"] == len(inner)


def test_head_parser_accepts_the_plain_case() -> None:
    head = framing.parse_request_head(
        b"GET /a HTTP/1.1\r\nHost: h\r\nContent-Length: 3\r\nContent-Length: 3\r\n\r\n"
    )
    assert head.content_length == 3 and head.keep_alive and not head.chunked


def _feed_connection(data: bytes) -> None:
    """What the client connection does with bytes: the request codec, in small reads (like
    a slow socket), the next request read as soon as one ends; a refusal is raised."""
    parser = codec.RequestParser(65536)
    for i in range(0, len(data), 7):
        events = parser.feed(data[i : i + 7])
        while events:
            last = events[-1]
            if isinstance(last, framing.FramingError):
                raise last
            events = parser.next_cycle() if last is codec.END else []


PREFIX = b"POST /orders/x HTTP/1.1\r\nHost: g\r\nTransfer-Encoding: chunked\r\n\r\n"


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(max_size=300), st.booleans())
def test_framing_fuzz_only_raises_protocol_errors(data: bytes, chunked: bool) -> None:
    with contextlib.suppress(RemoteProtocolError):
        _feed_connection(PREFIX + data if chunked else data)


@settings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(junk=st.binary(min_size=1, max_size=200))
async def test_client_protocol_fuzz_answers_cleanly(make_gateway, upstream, junk: bytes) -> None:
    assume(junk.strip(b"\r\n"))  # bare empty lines are legitimately ignored
    gw = await make_gateway()
    # Terminated so that the gateway must decide; a complete valid request is vanishingly rare.
    out = await raw_request(gw.port, junk + b"\r\n\r\n", timeout=0.5)
    assert out.startswith(b"HTTP/1.1 4"), out[:100]
    assert b"<timeout>" not in out
    await gw.engine.close()
