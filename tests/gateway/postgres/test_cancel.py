"""CancelRequest through the gateway: its own keys, mapped to the server's, exact secret only.

Ported from PgBouncer's test/test_cancel.py: a cancel stops the query of the session whose
key it carries and nothing else, even when a hundred arrive at once; plus a hundred sessions
in flight where every other one is cancelled. A guessed secret does nothing and is audited.

psycopg's ``cancel_safe`` (libpq 17+, TLS like the connection) is the client here; libpq's
legacy ``PQcancel`` holds the GIL while it waits, which would stall the gateway running in
this very process, so the plain-TCP cancel is sent by a raw client with the key it was
given at login.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import psycopg
import pytest

from lockgate.gateway.postgres import codec
from tests.pgserver import PgServer

from .stack import Conn, PgStack, pg_stack
from .test_startup import RawClient


@pytest.fixture
async def stack(tmp_path: Path, pg_server: PgServer) -> AsyncIterator[PgStack]:
    async with pg_stack(tmp_path, pg_server) as s:
        yield s


async def _connect(stack: PgStack) -> Conn:
    return await stack.connect("ops")  # may run pg_sleep


async def _sleep(conn: Conn, seconds: float) -> None:
    await conn.execute(f"SELECT pg_sleep({seconds})")


async def _running(stack: PgStack, count: int) -> None:
    """Until ``count`` pg_sleep queries run on the server for the stack's database."""
    sql = (
        "SELECT count(*) FROM pg_stat_activity WHERE state = 'active'"
        " AND datname = current_database() AND query LIKE 'SELECT pg_sleep%'"
    )
    for _ in range(200):
        if int(stack.upstream_psql(sql).strip() or 0) >= count:
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"fewer than {count} queries running")


async def _cancel(conn: Conn) -> None:
    await conn.cancel_safe(timeout=10)  # libpq 17+: SSLRequest, then CancelRequest over TLS


async def test_a_cancel_stops_its_own_query(stack: PgStack) -> None:
    conn = await _connect(stack)
    try:
        query = asyncio.create_task(_sleep(conn, 10))
        await _running(stack, 1)
        await _cancel(conn)
        with pytest.raises(psycopg.errors.QueryCanceled, match="due to user request"):
            await query
        assert (await (await conn.execute("SELECT 1")).fetchall()) == [(1,)]  # still usable
    finally:
        await conn.close()
    cancels = [r for r in stack.audit("allowed") if r.action == "cancel"]
    assert cancels and cancels[-1].principal == "airflow:prod/ops/load"


async def test_a_plain_tcp_cancel_with_the_key_from_login_works(stack: PgStack) -> None:
    client = await RawClient.open(stack)
    try:
        greeting = await client.login(stack.token("ops"))
        (key,) = [m for m in greeting if m.type == codec.BACKEND_KEY_DATA]
        pid, secret = codec.decode_backend_key_data(key.body)
        client.writer.write(codec.query("SELECT pg_sleep(10)"))
        await _running(stack, 1)
        reader, writer = await asyncio.open_connection("127.0.0.1", stack.port)
        writer.write(codec.cancel_request(pid, secret))
        assert await asyncio.wait_for(reader.read(100), 5) == b""  # closed once delivered
        writer.close()
        error = codec.decode_error_fields((await client.until(codec.ERROR_RESPONSE))[-1].body)
        assert error["C"] == "57014"
    finally:
        client.close()


async def test_a_wrong_secret_does_nothing(stack: PgStack) -> None:
    conn = await _connect(stack)
    try:
        pid = conn.info.backend_pid  # the gateway's key
        query = asyncio.create_task(_sleep(conn, 1))
        await _running(stack, 1)
        for secret in (b"\0\0\0\0", b"\xff\xff\xff\xff"):
            reader, writer = await asyncio.open_connection("127.0.0.1", stack.port)
            writer.write(codec.cancel_request(pid, secret))
            assert await asyncio.wait_for(reader.read(100), 5) == b""  # closed, no answer
            writer.close()
        await query  # ran to its end
    finally:
        await conn.close()
    refused = [r for r in stack.audit("denied") if r.action == "cancel"]
    assert len(refused) == 2 and {r.reason for r in refused} == {"unknown_key"}


async def test_many_concurrent_cancels_reach_only_their_session(stack: PgStack) -> None:
    """PgBouncer's test_cancel_race: 100 cancels of one session at once; the other
    session's query runs to its end."""
    conn1, conn2 = await _connect(stack), await _connect(stack)
    try:
        q1 = asyncio.create_task(_sleep(conn1, 10))
        q2 = asyncio.create_task(_sleep(conn2, 2))
        await _running(stack, 2)
        await asyncio.gather(*(_cancel(conn1) for _ in range(100)))
        with pytest.raises(psycopg.errors.QueryCanceled, match="due to user request"):
            await q1
        await q2
    finally:
        await conn1.close()
        await conn2.close()


@pytest.mark.slow
async def test_a_hundred_sessions_in_flight_each_cancel_hits_only_its_own(
    stack: PgStack,
) -> None:
    conns = await asyncio.gather(*(_connect(stack) for _ in range(100)))
    try:
        queries = [asyncio.create_task(_sleep(c, 10 if i % 2 == 0 else 3))
                   for i, c in enumerate(conns)]  # fmt: skip
        await _running(stack, 100)
        await asyncio.gather(*(_cancel(c) for c in conns[::2]))
        results = await asyncio.gather(*queries, return_exceptions=True)
        for i, result in enumerate(results):
            if i % 2 == 0:
                assert isinstance(result, psycopg.errors.QueryCanceled), (i, result)
            else:
                assert result is None, (i, result)  # never cancelled by another's key
    finally:
        await asyncio.gather(*(c.close() for c in conns))
    for _ in range(100):  # keys go with their sessions
        if len(stack.engine().ctx.cancels) == 0:
            break
        await asyncio.sleep(0.05)
    assert len(stack.engine().ctx.cancels) == 0
