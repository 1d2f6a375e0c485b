"""The upstream pool and connection against a scripted local server: reuse, the idle cap,
stale connections, close, and head timeouts kept as deadlines on one timer."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable

import pytest

from lockgate.errors import UpstreamUnavailable
from lockgate.gateway.http import framing
from lockgate.gateway.http.deadlines import Deadlines
from lockgate.gateway.http.upstream import UpstreamConnection, UpstreamPool, UpstreamTarget

OK = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nhi"
REQUEST = b"GET / HTTP/1.1\r\nHost: u\r\n\r\n"


class Server:
    """Answers each request head with ``answer`` (None: never answers)."""

    def __init__(self) -> None:
        self.answer: bytes | None = OK
        self.writers: list[asyncio.StreamWriter] = []
        self.port = 0

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.writers.append(writer)
        try:
            while True:
                await reader.readuntil(b"\r\n\r\n")
                if self.answer is not None:
                    writer.write(self.answer)
        except (asyncio.IncompleteReadError, ConnectionError):
            writer.close()


@pytest.fixture
async def server() -> AsyncIterator[Server]:
    srv = Server()
    listener = await asyncio.start_server(srv.handle, "127.0.0.1", 0)
    srv.port = listener.sockets[0].getsockname()[1]
    yield srv
    for writer in srv.writers:
        writer.close()
    listener.close()


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def pool_for(server: Server, **kw: float | int | Callable[[], float]) -> UpstreamPool:
    target = UpstreamTarget("http", "127.0.0.1", server.port, "", b"u", None)
    return UpstreamPool(target, **kw)  # type: ignore[arg-type]


class Sink:
    def __init__(self) -> None:
        self.data = bytearray()

    def write(self, data: bytes) -> None:
        self.data += data

    def write_first(self, head: bytes, pieces: list[bytes]) -> None:
        self.data += head + b"".join(pieces)


async def exchange(conn: UpstreamConnection, timeout: float = 5.0) -> tuple[framing.Head, bytes]:
    head_fut = conn.begin(head_only=False, timeout=timeout)
    conn.write(REQUEST)
    head = await head_fut
    sink = Sink()
    conn.attach(sink, b"")
    await conn.done
    return head, bytes(sink.data)


async def test_a_released_connection_is_reused(server: Server) -> None:
    pool = pool_for(server)
    first = await pool.acquire(5.0)
    assert not first.reused and await exchange(first) == (first.head, b"hi")
    pool.release(first)
    second = await pool.acquire(5.0)
    assert second is first and second.reused and pool.connects == 1
    head, body = await exchange(second)
    assert head.status == 200 and body == b"hi"
    pool.close()


async def test_the_idle_cap_closes_connections_beyond_it(server: Server) -> None:
    pool = pool_for(server, max_idle=1)
    a, b = await pool.acquire(5.0), await pool.acquire(5.0)
    await exchange(a)
    await exchange(b)
    pool.release(a)
    pool.release(b)
    assert not a.closed and b.closed and pool.connects == 2
    assert pool.take_idle() is a and pool.take_idle() is None
    pool.close()


async def test_an_expired_idle_connection_is_closed_not_reused(server: Server) -> None:
    clock = Clock()
    pool = pool_for(server, idle_expiry=30.0, clock=clock)
    conn = await pool.acquire(5.0)
    await exchange(conn)
    pool.release(conn)
    clock.now += 31
    assert pool.take_idle() is None and conn.closed
    fresh = await pool.acquire(5.0)
    assert fresh is not conn and pool.connects == 2
    pool.close()


async def idle_in_pool(server: Server) -> tuple[UpstreamPool, UpstreamConnection]:
    """A pool holding one idle connection that has served a request."""
    pool = pool_for(server)
    conn = await pool.acquire(5.0)
    await exchange(conn)
    pool.release(conn)
    return pool, conn


async def until_closed(conn: UpstreamConnection) -> None:
    for _ in range(100):
        if conn.closed:
            return
        await asyncio.sleep(0.01)


async def test_a_connection_the_upstream_closed_is_skipped(server: Server) -> None:
    pool, conn = await idle_in_pool(server)
    server.writers[0].close()
    await until_closed(conn)
    assert conn.closed and pool.take_idle() is None
    pool.close()


async def test_unexpected_bytes_on_an_idle_connection_close_it(server: Server) -> None:
    pool, conn = await idle_in_pool(server)
    server.writers[0].write(b"HTTP/1.1 200 OK\r\n")
    await until_closed(conn)
    assert conn.closed and not conn.reusable and pool.take_idle() is None


async def test_a_response_that_ends_the_connection_is_not_pooled(server: Server) -> None:
    server.answer = b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 2\r\n\r\nhi"
    pool = pool_for(server)
    conn = await pool.acquire(5.0)
    await exchange(conn)
    assert not conn.reusable
    pool.release(conn)
    assert conn.closed and pool.take_idle() is None


async def test_close_closes_the_idle_connections(server: Server) -> None:
    pool = pool_for(server)
    conns = [await pool.acquire(5.0) for _ in range(3)]
    for conn in conns:
        await exchange(conn)
        pool.release(conn)
    pool.close()
    assert all(conn.closed for conn in conns) and pool.take_idle() is None


class Recorder:
    def __init__(self) -> None:
        self.events: list[object] = []
        self.finished = asyncio.get_running_loop().create_future()

    def on_head(self, head: framing.Head) -> None:
        self.events.append(head.status)

    def on_done(self) -> None:
        self.events.append("done")
        self.finished.set_result(None)

    def on_error(self, exc: Exception) -> None:
        self.events.append(type(exc))
        self.finished.set_result(None)


async def test_listening_for_a_response_and_its_head_timeout(server: Server) -> None:
    pool = pool_for(server)
    conn = await pool.acquire(5.0)
    ok = Recorder()
    conn.begin_listening(ok, head_only=False, timeout=5.0)
    conn.attach(Sink(), b"")
    conn.write(REQUEST)
    await asyncio.wait_for(ok.finished, 5)
    assert ok.events == [200, "done"]
    pool.release(conn)
    server.answer = None
    conn = await pool.acquire(5.0)
    slow = Recorder()
    conn.begin_listening(slow, head_only=False, timeout=0.05)
    conn.write(REQUEST)
    await asyncio.wait_for(slow.finished, 5)
    assert slow.events == [TimeoutError] and conn.closed


async def test_the_future_path_head_timeout(server: Server) -> None:
    server.answer = None
    pool = pool_for(server)
    conn = await pool.acquire(5.0)
    head_fut = conn.begin(head_only=False, timeout=float("inf"))
    conn.write(REQUEST)
    conn.arm_head_timeout(0.05)
    with pytest.raises(TimeoutError):
        await asyncio.wait_for(head_fut, 5)
    with pytest.raises(UpstreamUnavailable):
        await conn.done


async def test_a_head_that_arrives_disarms_its_deadline(server: Server) -> None:
    pool = pool_for(server)
    conn = await pool.acquire(5.0)
    await exchange(conn, timeout=0.05)
    pool.release(conn)
    await asyncio.sleep(0.15)
    assert conn.reusable and not conn.closed  # no late timeout aborted it
    assert pool.take_idle() is conn


class Waiter:
    def __init__(self, log: list[str], name: str) -> None:
        self.log, self.name = log, name

    def expired(self) -> None:
        self.log.append(self.name)


async def test_deadlines_share_one_timer_and_fire_in_time() -> None:
    deadlines = Deadlines(asyncio.get_running_loop())
    log: list[str] = []
    late, early, gone = Waiter(log, "late"), Waiter(log, "early"), Waiter(log, "gone")
    deadlines.arm(late, 0.08)
    deadlines.arm(gone, 0.01)
    deadlines.arm(early, 0.03)  # later than the armed timer: no new timer
    deadlines.disarm(gone)
    await asyncio.sleep(0.05)
    assert log == ["early"] and deadlines.armed(late) and not deadlines.armed(early)
    await asyncio.sleep(0.06)
    assert log == ["early", "late"]
    deadlines.arm(early, 0.01)
    deadlines.close()
    await asyncio.sleep(0.03)
    assert log == ["early", "late"]
