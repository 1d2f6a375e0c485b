"""Attacks on the one HTTP exchange: replays, the credential retry, injected headers, an
upstream that answers with ambiguous framing or not at all, connections left behind, the
admitted record's durability (``durability: fsync``), back-pressure, a live catalog change,
TRACE, and the gateway's own header names in a client's spelling.

The upstream of tests/gateway/http/conftest.py is the oracle for what reached it; a scripted
raw upstream (below) answers what aiohttp would never send."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator
from typing import Any, cast

import pytest

from lockgate.config import HttpResource as Resource
from lockgate.errors import AuditUnavailable
from lockgate.gateway.http import framing
from lockgate.gateway.http.resources import ResourceState

from . import test_upstream_pool
from .conftest import SECRETS, TOKEN, raw_request, resource
from .test_upstream_pool import Server, exchange, pool_for

server = test_upstream_pool.server  # the scripted upstream of the pool tests
AUTH = b"Authorization: Bearer " + TOKEN.encode() + b"\r\n"
AUTH_V1 = f"Bearer {SECRETS[0]}"  # the previous version of the upstream credential


def outcomes(gw: Any) -> list[Any]:
    return [r for r in gw.audit.records if r.event in ("allowed", "upstream_error")]


def admitted(gw: Any) -> list[Any]:
    return list(gw.audit.ahead)


# -- retries never replay what may have run ---------------------------------------------------
async def test_a_post_answered_503_is_relayed_not_replayed(
    make_gateway: Any, upstream: Any
) -> None:
    gw = await make_gateway()
    out = await raw_request(
        gw.port,
        b"POST /orders/flaky-post HTTP/1.1\r\nHost: g\r\n" + AUTH
        + b"Content-Length: 2\r\nConnection: close\r\n\r\nhi",
    )  # fmt: skip
    assert out.startswith(b"HTTP/1.1 503"), out[:80]
    assert upstream.hits["/flaky-post"] == 1


async def test_a_streamed_body_is_not_replayed_after_a_401(
    make_gateway: Any, upstream: Any
) -> None:
    """The current credential is refused, the previous one would do: a body that already
    streamed upstream cannot be sent again, so the 401 is relayed."""
    gw = await make_gateway()
    upstream.accepted = {SECRETS[0]}
    reader, writer = await asyncio.open_connection("127.0.0.1", gw.port)
    writer.write(
        b"PUT /orders/upload HTTP/1.1\r\nHost: g\r\n" + AUTH
        + b"Transfer-Encoding: chunked\r\nConnection: close\r\n\r\n5\r\nhello\r\n"
    )  # fmt: skip
    await writer.drain()
    await asyncio.sleep(0.2)  # the head went upstream with the first piece of the body
    writer.write(b"0\r\n\r\n")
    await writer.drain()
    async with asyncio.timeout(5):
        answer = await reader.read()
    writer.close()
    assert answer.startswith(b"HTTP/1.1 401"), answer[:80]
    assert upstream.received.count("/upload") == 1


async def test_the_401_retry_carries_the_previous_credential(
    make_gateway: Any, upstream: Any
) -> None:
    gw = await make_gateway()
    upstream.accepted = {SECRETS[0]}
    out = await raw_request(
        gw.port,
        b"POST /orders/rotated HTTP/1.1\r\nHost: g\r\n" + AUTH
        + b"Content-Length: 2\r\nConnection: close\r\n\r\nhi",
    )  # fmt: skip
    assert out.startswith(b"HTTP/1.1 200"), out[:80]
    assert upstream.received.count("/rotated") == 2
    assert upstream.seen[-1]["headers"]["Authorization"] == AUTH_V1
    assert [o.detail.get("retries") for o in outcomes(gw)] == [1]
    assert len(admitted(gw)) == 1


# -- headers a client could inject ------------------------------------------------------------
@pytest.mark.parametrize(
    "line",
    [
        b"X-HTTP-Method-Override: DELETE",
        b"X_HTTP_Method_Override: DELETE",
        b"X-Original-URL: /admin",
        b"X-Rewrite-URL: /admin",
        b"Forwarded: for=10.0.0.1;host=internal",
        b"X-Forwarded-For: 10.0.0.1",
        b"X_Forwarded_For: 10.0.0.1",
        b"X-Real-IP: 10.0.0.1",
        b"Proxy-Authorization: Basic eDp5",
        b"X-Lockgate-Identity: forged",
    ],
)
async def test_an_injected_header_never_reaches_the_upstream(
    make_gateway: Any, upstream: Any, line: bytes
) -> None:
    gw = await make_gateway()
    out = await raw_request(
        gw.port,
        b"GET /orders/x HTTP/1.1\r\nHost: g\r\n" + AUTH + line + b"\r\nConnection: close\r\n\r\n",
    )
    assert out.startswith(b"HTTP/1.1 200"), out[:80]
    name, _, value = line.partition(b": ")
    got = upstream.seen[-1]["headers"]
    sent = [v for k, v in got.items() if k.lower().replace("_", "-") == name.decode().lower()
            .replace("_", "-")]  # fmt: skip
    assert value.decode() not in sent
    assert got["Authorization"] == f"Bearer {SECRETS[-1]}"  # one credential: the gateway's


async def test_a_header_named_hop_by_hop_cannot_unset_the_gateways_own(
    make_gateway: Any, upstream: Any
) -> None:
    """``Connection: Authorization, Host`` names the gateway's own headers: they still go."""
    gw = await make_gateway()
    out = await raw_request(
        gw.port,
        b"GET /orders/x HTTP/1.1\r\nHost: g\r\n" + AUTH
        + b"Connection: close, Authorization, Host, X-Forwarded-For\r\n\r\n",
    )  # fmt: skip
    assert out.startswith(b"HTTP/1.1 200"), out[:80]
    got = upstream.seen[-1]["headers"]
    assert got["Authorization"] == f"Bearer {SECRETS[-1]}"
    assert got["X-Forwarded-For"] == "127.0.0.1"


async def test_a_second_authorization_header_is_refused(make_gateway: Any, upstream: Any) -> None:
    """Which copy an upstream reads is not the gateway's to guess: never forwarded."""
    gw = await make_gateway()
    out = await raw_request(
        gw.port,
        b"GET /orders/x HTTP/1.1\r\nHost: g\r\n" + AUTH
        + b"Authorization: Bearer " + SECRETS[-1].encode() + b"\r\nConnection: close\r\n\r\n",
    )  # fmt: skip
    assert out.startswith(b"HTTP/1.1 401"), out[:80]
    assert upstream.received == []
    assert [r.event for r in gw.audit.records] == ["auth_failed"]


# -- an upstream answering with ambiguous framing ---------------------------------------------
class RawUpstream:
    """Reads one request head, answers ``answer`` verbatim."""

    def __init__(self, answer: bytes) -> None:
        self.answer = answer
        self.port = 0
        self.requests = 0

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                await reader.readuntil(b"\r\n\r\n")
                self.requests += 1
                writer.write(self.answer)
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()


@pytest.fixture
async def raw_upstream() -> AsyncIterator[RawUpstream]:
    srv = RawUpstream(b"")
    listener = await asyncio.start_server(srv.handle, "127.0.0.1", 0)
    srv.port = listener.sockets[0].getsockname()[1]
    yield srv
    listener.close()


SMUGGLED = b"HTTP/1.1 200 OK\r\nContent-Length: 7\r\n\r\nsmuggle"
ANSWERS = {
    "cl_and_te": b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n"
    b"0\r\n\r\n" + SMUGGLED,
    "duplicate_cl": b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Length: 40\r\n\r\nhi"
    + SMUGGLED,
    "obs_fold": b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nX-A: 1\r\n Content-Length: 40\r\n\r\nhi",
    "bare_lf": b"HTTP/1.1 200 OK\nContent-Length: 2\n\nhi",
    "te_not_chunked": b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\n\r\nhi",
    "switching_protocols": b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: x\r\n\r\n" + SMUGGLED,
}


@pytest.mark.parametrize("name", sorted(ANSWERS))
async def test_an_ambiguous_upstream_answer_is_never_relayed(
    make_gateway: Any, raw_upstream: RawUpstream, name: str
) -> None:
    raw_upstream.answer = ANSWERS[name]
    res = [resource("orders", f"http://127.0.0.1:{raw_upstream.port}",
                    retry={"max_attempts": 1, "deadline": 2.0})]  # fmt: skip
    gw = await make_gateway(resources=res)
    out = await raw_request(
        gw.port,
        b"GET /orders/x HTTP/1.1\r\nHost: g\r\n" + AUTH
        + b"\r\nGET /orders/y HTTP/1.1\r\nHost: g\r\n" + AUTH + b"Connection: close\r\n\r\n",
    )  # fmt: skip
    assert out.startswith(b"HTTP/1.1 502"), out[:120]
    assert b"smuggle" not in out
    assert outcomes(gw)[0].event == "upstream_error"


# -- connections left behind ------------------------------------------------------------------
async def test_a_connection_released_into_a_closed_pool_is_closed(server: Server) -> None:
    pool = pool_for(server)
    conn = await pool.acquire(5.0)
    await exchange(conn)
    pool.close()  # the resource changed under an exchange in flight
    pool.release(conn)  # ... which then ends
    assert conn.closed
    assert pool.take_idle() is None


# -- a credential value that would inject header lines ------------------------------------------
async def test_a_credential_with_crlf_is_a_recorded_failure_on_every_path(
    make_gateway: Any, upstream: Any, caplog: pytest.LogCaptureFixture
) -> None:
    """A token endpoint (or an operator) hands the gateway a value with CR LF: it is never
    sent as header lines, and each request gets 503 with an outcome naming its record,
    whether a warm pooled connection was waiting (fast path) or not (task path)."""
    gw = await make_gateway()
    get = b"GET /orders/x HTTP/1.1\r\nHost: g\r\n" + AUTH + b"Connection: close\r\n\r\n"
    assert (await raw_request(gw.port, get)).startswith(b"HTTP/1.1 200")  # a warm connection
    gw.broker.versions["orders-key"].append("v3\r\nX-Injected: 1")
    gw.engine.proxy.forwarder._secrets.invalidate("orders-key")
    for _ in range(2):  # the first fetches (and caches) the value, the second may go fast
        out = await raw_request(gw.port, get)
        assert out.startswith(b"HTTP/1.1 503"), out[:80]
    assert all("X-Injected" not in seen["headers"] for seen in upstream.seen)
    assert len(gw.audit.ahead) == 3
    errors = [r for r in outcomes(gw) if r.event == "upstream_error"]
    assert [r.reason for r in errors] == ["credential_unavailable"] * 2
    assert "X-Injected" not in caplog.text


# -- a client that leaves --------------------------------------------------------------------
async def _leave_mid_download(port: int) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(b"GET /orders/download?size=67108864 HTTP/1.1\r\nHost: g\r\n" + AUTH + b"\r\n")
    await writer.drain()
    await reader.readuntil(b"\r\n\r\n")  # the head is relayed: the body is on its way
    await reader.read(65536)
    writer.transport.abort()


@pytest.mark.parametrize("warm", [False, True], ids=["task-path", "fast-path"])
async def test_a_client_leaving_mid_download_frees_its_upstream_and_is_recorded_once(
    make_gateway: Any, upstream: Any, warm: bool
) -> None:
    gw = await make_gateway()
    get = b"GET /orders/x HTTP/1.1\r\nHost: g\r\n" + AUTH + b"Connection: close\r\n\r\n"
    if warm:
        assert (await raw_request(gw.port, get)).startswith(b"HTTP/1.1 200")
    before = len(outcomes(gw))
    await _leave_mid_download(gw.port)
    pool = gw.engine.proxy.resources["orders"].pool
    for _ in range(100):
        if len(outcomes(gw)) > before and not gw.engine._connections:
            break
        await asyncio.sleep(0.05)
    await asyncio.sleep(0.2)  # nothing more may be recorded for it
    left = outcomes(gw)[before:]
    assert len(left) == 1 and left[0].status == 499, [(r.event, r.status) for r in left]
    assert not gw.engine._connections  # the client connection is gone
    idle = pool.take_idle()
    assert idle is None or idle.reusable  # never a connection mid-body back in the pool


# -- durability: fsync ----------------------------------------------------------------------
class Gate:
    """``durable()`` of an audit with ``durability: fsync`` whose device is slow: every
    record written ahead waits for :meth:`open` (or fails with :meth:`fail`)."""

    def __init__(self) -> None:
        self.futures: list[asyncio.Future[None]] = []

    def __call__(self) -> asyncio.Future[None]:
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.futures.append(fut)
        return fut

    def open(self) -> None:
        for fut in self.futures:
            if not fut.done():
                fut.set_result(None)

    def fail(self) -> None:
        for fut in self.futures:
            if not fut.done():
                fut.set_exception(AuditUnavailable("device refused the sync"))


REQUESTS = {
    "complete": b"POST /orders/durable HTTP/1.1\r\nHost: g\r\n" + AUTH
    + b"Content-Length: 2\r\nConnection: close\r\n\r\nhi",
    "streamed": b"POST /orders/durable HTTP/1.1\r\nHost: g\r\n" + AUTH
    + b"Transfer-Encoding: chunked\r\nConnection: close\r\n\r\n2\r\nhi\r\n",
}  # fmt: skip


@pytest.mark.parametrize("body", sorted(REQUESTS))
async def test_with_fsync_nothing_goes_upstream_before_the_admitted_record_is_durable(
    make_gateway: Any, upstream: Any, body: str
) -> None:
    gw = await make_gateway()
    warm = b"GET /orders/warm HTTP/1.1\r\nHost: g\r\n" + AUTH + b"\r\n"
    assert (
        await raw_request(
            gw.port,
            warm
            + b"GET /orders/warm HTTP/1.1\r\nHost: g\r\n"
            + AUTH
            + b"Connection: close\r\n\r\n",
        )
    ).count(b" 200 ") == 2
    gate = Gate()
    gw.audit.durable = gate  # a warm pooled connection waits: the fast path must not take it
    reader, writer = await asyncio.open_connection("127.0.0.1", gw.port)
    writer.write(REQUESTS[body])
    await writer.drain()
    for _ in range(20):
        await asyncio.sleep(0.02)
    assert gate.futures, "the exchange did not ask whether the record is durable"
    assert "/durable" not in upstream.received  # nothing forwarded while not durable
    gate.open()
    if body == "streamed":
        writer.write(b"0\r\n\r\n")
    async with asyncio.timeout(5):
        answer = await reader.read()
    writer.close()
    assert answer.startswith(b"HTTP/1.1 200"), answer[:80]
    assert upstream.received.count("/durable") == 1


@pytest.mark.parametrize("body", sorted(REQUESTS))
async def test_with_fsync_a_record_that_cannot_be_made_durable_forwards_nothing(
    make_gateway: Any, upstream: Any, body: str
) -> None:
    gw = await make_gateway()
    gate = Gate()
    gw.audit.durable = gate
    reader, writer = await asyncio.open_connection("127.0.0.1", gw.port)
    writer.write(REQUESTS[body])
    await writer.drain()
    for _ in range(50):
        if gate.futures:
            break
        await asyncio.sleep(0.02)
    gate.fail()
    async with asyncio.timeout(5):
        answer = await reader.read()
    writer.close()
    assert answer.startswith(b"HTTP/1.1 503"), answer[:80]
    assert b"audit_unavailable" in answer
    assert "/durable" not in upstream.received
    failed = [r for r in outcomes(gw) if r.reason == "audit_unavailable"]
    assert len(failed) == 1 and failed[0].decision == "error"


# -- back-pressure -------------------------------------------------------------------------
@pytest.mark.parametrize("warm", [False, True], ids=["task-path", "fast-path"])
async def test_a_client_that_reads_slowly_holds_no_more_than_a_window_in_the_gateway(
    make_gateway: Any, upstream: Any, warm: bool
) -> None:
    """A 256 MiB download to a client that stops reading: the gateway pauses the upstream
    instead of buffering the response for it."""
    gw = await make_gateway()
    if warm:
        get = b"GET /orders/x HTTP/1.1\r\nHost: g\r\n" + AUTH + b"Connection: close\r\n\r\n"
        assert (await raw_request(gw.port, get)).startswith(b"HTTP/1.1 200")
    reader, writer = await asyncio.open_connection("127.0.0.1", gw.port, limit=2**16)
    writer.transport.set_write_buffer_limits(high=0)
    sock = writer.get_extra_info("socket")
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 * 1024)
    writer.write(b"GET /orders/download?size=268435456 HTTP/1.1\r\nHost: g\r\n" + AUTH + b"\r\n")
    await writer.drain()
    await reader.readuntil(b"\r\n\r\n")
    cast(asyncio.Transport, writer.transport).pause_reading()
    await asyncio.sleep(1.0)  # the client reads nothing
    held = sum(
        c.transport.get_write_buffer_size()
        for c in gw.engine._connections
        if c.transport is not None
    )
    assert held <= 4 * 1024 * 1024, f"{held} bytes held for a client that reads nothing"
    writer.transport.abort()


# -- a catalog reload ----------------------------------------------------------------------
async def read_response(reader: asyncio.StreamReader) -> bytes:
    """One response framed by Content-Length (what the gateway relays from the upstream)."""
    head = await reader.readuntil(b"\r\n\r\n")
    for line in head.split(b"\r\n"):
        if line.lower().startswith(b"content-length:"):
            await reader.readexactly(int(line.split(b":", 1)[1]))
    return head


async def test_after_a_credential_change_no_request_goes_out_with_the_old_one(
    make_gateway: Any, upstream: Any
) -> None:
    """The resource's credential is replaced live: pooled connections and cached secrets
    of the old resource state are not used again, on a new or on a kept-alive connection."""
    gw = await make_gateway()
    gw.broker.versions["orders-key-2"] = ["up-secret-new"]
    upstream.accepted = {SECRETS[-1], "up-secret-new"}
    reader, writer = await asyncio.open_connection("127.0.0.1", gw.port)
    get = b"GET /orders/x HTTP/1.1\r\nHost: g\r\n" + AUTH + b"\r\n"
    for _ in range(2):  # a warm pool, a cached secret, a kept-alive client connection
        writer.write(get)
        assert (await read_response(reader)).startswith(b"HTTP/1.1 200")
    changed = Resource(name="orders", kind="http", upstream=upstream.url, credential="orders-key-2")
    gw.engine.update_resources([changed])
    before = len(upstream.seen)
    writer.write(get)
    head = await read_response(reader)
    assert head.startswith(b"HTTP/1.1 200"), head[:80]
    writer.close()
    assert (await raw_request(gw.port, get[:-2] + b"Connection: close\r\n\r\n")).startswith(
        b"HTTP/1.1 200"
    )
    used = [seen["headers"]["Authorization"] for seen in upstream.seen[before:]]
    assert used == ["Bearer up-secret-new"] * 2


async def test_a_removed_resource_is_refused_and_recorded_on_a_kept_alive_connection(
    make_gateway: Any, upstream: Any
) -> None:
    gw = await make_gateway()
    reader, writer = await asyncio.open_connection("127.0.0.1", gw.port)
    get = b"GET /orders/x HTTP/1.1\r\nHost: g\r\n" + AUTH + b"\r\n"
    writer.write(get)
    assert (await read_response(reader)).startswith(b"HTTP/1.1 200")
    gw.engine.update_resources([resource("billing", upstream.url)])
    writer.write(get)
    head = await read_response(reader)
    writer.close()
    assert head.startswith(b"HTTP/1.1 404"), head[:80]
    assert upstream.received == ["/x"]
    refused = [r for r in gw.audit.records if r.reason == "unknown_resource"]
    assert len(refused) == 1 and refused[0].status == 404


async def test_a_pooled_connection_never_serves_another_resource(
    make_gateway: Any, upstream: Any
) -> None:
    """Two resources on the same upstream, each with its own credential: a connection kept
    warm by one is never handed to the other (an upstream may bind state to a connection)."""
    gw = await make_gateway()
    gw.broker.versions["billing-key"] = ["billing-secret"]
    upstream.accepted = {SECRETS[-1], "billing-secret"}
    gw.engine.update_resources([
        resource("orders", upstream.url),
        Resource(name="billing", kind="http", upstream=upstream.url, credential="billing-key"),
    ])  # fmt: skip
    orders = gw.engine.proxy.resources["orders"].pool
    billing = gw.engine.proxy.resources["billing"].pool
    assert orders is not billing
    get = b"GET /orders/x HTTP/1.1\r\nHost: g\r\n" + AUTH + b"Connection: close\r\n\r\n"
    assert (await raw_request(gw.port, get)).startswith(b"HTTP/1.1 200")
    other = (
        b"GET /billing/y HTTP/1.1\r\nHost: g\r\nAuthorization: Bearer tok-billing\r\n"
        b"Connection: close\r\n\r\n"
    )
    assert (await raw_request(gw.port, other)).startswith(b"HTTP/1.1 200")
    assert billing.connects == 1 and orders.connects == 1
    assert upstream.seen[-1]["headers"]["Authorization"] == "Bearer billing-secret"


# -- an upstream that never answers ----------------------------------------------------------
@pytest.mark.parametrize("warm", [False, True], ids=["task-path", "fast-path"])
async def test_an_upstream_that_never_answers_is_a_recorded_504_within_the_deadline(
    make_gateway: Any, raw_upstream: RawUpstream, warm: bool
) -> None:
    """The head deadline (one timer per pool, no timer per request) still fires for every
    request: the client is answered and its outcome recorded, nothing hangs."""
    raw_upstream.answer = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nhi"
    res = [resource("orders", f"http://127.0.0.1:{raw_upstream.port}",
                    retry={"max_attempts": 1, "deadline": 0.5})]  # fmt: skip
    gw = await make_gateway(resources=res)
    get = b"GET /orders/x HTTP/1.1\r\nHost: g\r\n" + AUTH + b"Connection: close\r\n\r\n"
    if warm:
        assert (await raw_request(gw.port, get)).startswith(b"HTTP/1.1 200")
    raw_upstream.answer = b""  # from now on: silence
    before = len(outcomes(gw))
    started = asyncio.get_running_loop().time()
    out = await raw_request(gw.port, get, timeout=5.0)
    took = asyncio.get_running_loop().time() - started
    assert out.startswith(b"HTTP/1.1 504"), out[:80]
    assert took < 3.0
    late = outcomes(gw)[before:]
    assert [(r.status, r.reason) for r in late] == [(504, "upstream_timeout")]


# -- a method whose answer is the request itself ------------------------------------------------
@pytest.mark.parametrize("method", [b"TRACE", b"TRACK"])
async def test_a_trace_never_carries_the_upstream_credential(
    make_gateway: Any, upstream: Any, method: bytes
) -> None:
    """TRACE exists to send the request back as the server received it: with the gateway's
    upstream credential in it. The task may hold any grant, it must never see that value."""
    gw = await make_gateway()
    out = await raw_request(
        gw.port,
        method + b" /orders/x HTTP/1.1\r\nHost: g\r\n" + AUTH + b"Connection: close\r\n\r\n",
    )
    assert SECRETS[-1].encode() not in out
    assert "/x" not in upstream.received
    assert out.startswith(b"HTTP/1.1 405"), out[:80]
    refused = [r for r in gw.audit.records if r.decision == "deny"]
    assert refused and refused[-1].status == 405


# -- the gateway's own header names, however a server spells them -------------------------------
@pytest.mark.parametrize("sent", [b"X-Api-Key", b"x_api_key", b"X-Caller", b"x_caller"])
def test_a_client_cannot_send_the_gateways_own_headers_in_another_spelling(sent: bytes) -> None:
    """CGI/WSGI servers read ``X-Api-Key`` and ``X_Api_Key`` as one header: whichever way
    the resource names its credential or identity header, the client's copy never goes."""
    res = Resource(
        name="orders", kind="http", upstream="http://127.0.0.1:9", credential="k",
        auth={"header": "X_Api_Key", "scheme": None}, identity_header="X_Caller",
    )  # fmt: skip
    rs = ResourceState(res)
    head = framing.parse_request_head(
        b"GET /orders/x HTTP/1.1\r\nHost: g\r\n" + sent + b": forged\r\n\r\n"
    )
    assert b"forged" not in rs.forwarded_headers(head)
