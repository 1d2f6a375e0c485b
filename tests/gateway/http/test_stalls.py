"""Stalled clients cost their own connection only: a trickled head, a body that stops
arriving and a response nobody reads are each closed within the idle timeout."""

from __future__ import annotations

import asyncio
import socket
import time

from .conftest import TOKEN, raw_request

AUTH = b"Authorization: Bearer " + TOKEN.encode() + b"\r\n"
IDLE = 0.3


async def _read_until_closed(reader: asyncio.StreamReader, timeout: float) -> tuple[bytes, bool]:
    """What the gateway sent, and whether it closed the connection within ``timeout``."""
    chunks: list[bytes] = []
    try:
        async with asyncio.timeout(timeout):
            while got := await reader.read(65536):
                chunks.append(got)
    except TimeoutError:
        return b"".join(chunks), False
    except ConnectionError:
        pass
    return b"".join(chunks), True


async def test_a_body_that_stops_arriving_is_408_and_closed(make_gateway, upstream) -> None:
    gw = await make_gateway(idle_timeout=IDLE)
    out = await raw_request(
        gw.port,
        b"PUT /orders/x HTTP/1.1\r\nHost: g\r\n"
        + AUTH
        + b"Content-Length: 1000\r\n\r\n"
        + b"a" * 10,
        timeout=4.0,
    )
    assert b"<timeout>" not in out
    assert out.startswith(b"HTTP/1.1 408 ") or out == b""  # 408 unless answering had begun
    await asyncio.sleep(0.2)
    assert upstream.seen == []  # the partial body was never served as a whole request


async def test_a_head_trickled_byte_by_byte_is_408_within_the_idle_timeout(make_gateway) -> None:
    gw = await make_gateway(idle_timeout=IDLE)
    reader, writer = await asyncio.open_connection("127.0.0.1", gw.port)
    head = b"GET /orders/x HTTP/1.1\r\nHost: g\r\n" + b"X-Pad: " + b"p" * 4000
    t0 = time.monotonic()
    answer = asyncio.create_task(_read_until_closed(reader, 4.0))
    for byte in head:  # a byte every 20 ms: never idle, never complete
        if answer.done():
            break
        writer.write(bytes([byte]))
        await asyncio.sleep(0.02)
    out, closed = await answer
    writer.close()
    assert closed and time.monotonic() - t0 < 4.0
    assert out.startswith(b"HTTP/1.1 408 ")
    assert [(r.status, r.reason) for r in gw.audit.records] == [(408, "request_timeout")]


async def test_a_client_that_reads_no_response_is_closed(make_gateway, upstream) -> None:
    gw = await make_gateway(idle_timeout=IDLE)
    size = 256 * 1024 * 1024
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.setblocking(False)
    await asyncio.get_running_loop().sock_connect(sock, ("127.0.0.1", gw.port))
    reader, writer = await asyncio.open_connection(sock=sock)
    writer.write(
        f"GET /orders/download?size={size} HTTP/1.1\r\nHost: g\r\n".encode() + AUTH + b"\r\n"
    )
    await writer.drain()
    await asyncio.sleep(IDLE * 3 + 1.5)  # read nothing: the gateway's buffers fill, then stall
    out, closed = await _read_until_closed(reader, 10.0)
    writer.close()
    assert closed and len(out) < size  # cut off, not served to the end
    assert not gw.engine._connections
