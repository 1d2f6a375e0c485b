"""The PostgreSQL engine's sessions end to end: statements judged, upstream restarts, live
catalog changes, limits and clean endings, with psycopg against a real server."""

from __future__ import annotations

import asyncio
import gc
import resource
import struct
from collections.abc import AsyncIterator
from pathlib import Path

import psycopg
import pytest

from lockgate.gateway.postgres import codec
from tests.pgserver import PgServer
from tests.pgserver.fixtures import PgServerFactory

from .stack import RESOURCE, Conn, PgStack, pg_stack
from .test_startup import RawClient


@pytest.fixture
async def stack(tmp_path: Path, pg_server: PgServer) -> AsyncIterator[PgStack]:
    async with pg_stack(tmp_path, pg_server) as s:
        yield s


async def _connect(stack: PgStack, dag: str = "etl") -> Conn:
    return await stack.connect(dag)


async def _upstream_sessions(stack: PgStack) -> int:
    sql = (
        "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database()"
        " AND backend_type = 'client backend' AND pid <> pg_backend_pid()"
    )
    return int(stack.upstream_psql(sql).strip() or 0)


async def _until(predicate: object, timeout: float = 5.0) -> None:
    for _ in range(int(timeout / 0.05)):
        if await predicate():  # type: ignore[operator]
            return
        await asyncio.sleep(0.05)
    raise AssertionError("condition not reached in time")


async def test_a_granted_statement_runs_and_a_denied_one_is_refused_and_the_session_goes_on(
    stack: PgStack,
) -> None:
    conn = await _connect(stack)
    try:
        cur = await conn.execute("SELECT item FROM sales.orders WHERE id = 1")
        assert await cur.fetchall() == [("apple",)]
        with pytest.raises(psycopg.errors.InsufficientPrivilege) as err:
            await conn.execute("SELECT * FROM other.secret")
        assert "other.secret" in str(err.value)
        cur = await conn.execute("SELECT count(*) FROM sales.orders")  # still usable
        assert await cur.fetchall() == [(2,)]
    finally:
        await conn.close()
    denied = [r for r in stack.audit("denied") if r.object == "other.secret"]
    assert denied and denied[-1].principal == "airflow:prod/etl/load"
    assert "other.secret" not in " ".join(stack.executed())  # the server never saw it


async def test_closing_the_client_ends_the_upstream_session(stack: PgStack) -> None:
    conn = await _connect(stack)
    await conn.execute("SELECT 1")
    assert await _upstream_sessions(stack) == 1
    await conn.close()

    async def gone() -> bool:
        return await _upstream_sessions(stack) == 0

    await _until(gone)
    assert stack.engine().connections == 0


async def test_a_client_that_vanishes_mid_query_frees_its_upstream(stack: PgStack) -> None:
    client = await RawClient.open(stack)
    await client.login(stack.token("ops"))
    client.writer.write(codec.query("SELECT pg_sleep(0.5)"))
    await client.writer.drain()
    client.writer.transport.abort()  # no Terminate

    async def gone() -> bool:
        return stack.engine().connections == 0 and len(stack.engine().ctx.cancels) == 0

    await _until(gone)


@pytest.mark.slow
async def test_an_upstream_restart_mid_query_is_a_clean_error_and_the_next_login_works(
    tmp_path: Path, pg_server_factory: PgServerFactory
) -> None:
    server = pg_server_factory()
    async with pg_stack(tmp_path, server) as stack:
        conn = await _connect(stack, "ops")
        try:
            query = asyncio.create_task(conn.execute("SELECT pg_sleep(30)"))
            await asyncio.sleep(0.5)
            await asyncio.to_thread(server.restart)
            with pytest.raises(psycopg.OperationalError) as err:
                await asyncio.wait_for(query, 20)
            assert any(code in str(err.value) for code in ("terminating", "connection lost"))
            assert conn.closed or conn.broken
        finally:
            await conn.close()
        again = await _connect(stack)
        try:
            cur = await again.execute("SELECT count(*) FROM sales.orders")
            assert await cur.fetchall() == [(2,)]
        finally:
            await again.close()
        errors = [r for r in stack.audit("upstream_error") if r.detail.get("statement")]
        assert errors and "pg_sleep" in errors[-1].detail["statement"]


async def test_removing_the_resource_ends_its_sessions_and_refuses_new_logins(
    stack: PgStack,
) -> None:
    conn = await _connect(stack)
    await conn.execute("SELECT 1")
    others = [r for r in stack.gw.config.resources if r.name != RESOURCE]
    stack.gw.update_resources(others)
    with pytest.raises(psycopg.OperationalError):
        await conn.execute("SELECT 1")
    await conn.close()
    removed = [r for r in stack.audit("denied") if r.reason == "resource_removed"]
    assert removed and removed[-1].principal == "airflow:prod/etl/load"
    with pytest.raises(psycopg.OperationalError, match='database "pg" does not exist'):
        await _connect(stack)


async def test_an_unchanged_resource_keeps_its_sessions_across_a_reload(stack: PgStack) -> None:
    conn = await _connect(stack)
    try:
        stack.gw.update_resources(list(stack.gw.config.resources))
        cur = await conn.execute("SELECT count(*) FROM sales.orders")
        assert await cur.fetchall() == [(2,)]
    finally:
        await conn.close()


async def test_a_message_over_the_cap_is_refused_from_its_header(stack: PgStack) -> None:
    client = await RawClient.open(stack)
    try:
        await client.login(stack.token())
        cap = stack.engine().ctx.resources[RESOURCE].max_message_bytes
        client.writer.write(b"Q" + struct.pack("!i", cap + 100))  # no body follows
        fields = await client.error()
        assert fields["V"] == "FATAL"
        assert await client.recv() is None  # closed
    finally:
        client.close()
    assert stack.audit("denied")[-1].reason == "message_too_large"


async def test_an_idle_session_is_closed(tmp_path: Path, pg_server: PgServer) -> None:
    async with pg_stack(tmp_path, pg_server, idle_timeout=0.5) as stack:
        client = await RawClient.open(stack)
        try:
            await client.login(stack.token())
            fields = await client.error()
            assert fields["C"] == "57P05"
            assert await client.recv() is None
        finally:
            client.close()


async def test_listener_cap_closes_connections_past_it(tmp_path: Path, pg_server: PgServer) -> None:
    async with pg_stack(tmp_path, pg_server) as stack:
        guard = stack.engine().guard
        assert guard is not None
        guard.max_connections = 1
        first = await RawClient.open(stack)
        try:
            reader, writer = await asyncio.open_connection("127.0.0.1", stack.port)
            assert await asyncio.wait_for(reader.read(10), 5) == b""  # closed at once
            writer.close()
        finally:
            first.close()


async def test_abandoned_tls_logins_leave_nothing_behind(stack: PgStack) -> None:
    for _ in range(20):
        client = await RawClient.open(stack)  # TLS up, then gone before StartupMessage
        client.writer.transport.abort()

    async def gone() -> bool:
        gc.collect()
        guard = stack.engine().guard
        return guard is not None and guard.count() == 0 and stack.engine().connections == 0

    await _until(gone)


async def test_a_table_created_through_the_gateway_is_seen_by_the_next_login_at_once(
    stack: PgStack,
) -> None:
    first = await _connect(stack, "ops")
    try:
        await first.execute("SELECT 1")  # the shared relation catalog is now fresh
        await first.execute("CREATE TABLE sales.fresh (id int)")
    finally:
        await first.close()
    second = await _connect(stack)  # within the catalog's freshness window
    try:
        cur = await second.execute("SET search_path = sales")
        cur = await second.execute("SELECT count(*) FROM fresh")
        assert await cur.fetchall() == [(0,)]
    finally:
        await second.close()


async def test_an_open_session_adopts_the_catalog_a_later_login_read(stack: PgStack) -> None:
    reader = await _connect(stack)  # logged in before the table exists
    try:
        writer = await _connect(stack, "ops")
        await writer.execute("CREATE TABLE sales.later (id int)")
        await writer.close()
        await (await _connect(stack)).close()  # a login reads the catalog anew
        cur = await reader.execute("SELECT count(*) FROM sales.later")
        assert await cur.fetchall() == [(0,)]
        await reader.execute("SET search_path = sales")
        cur = await reader.execute("SELECT count(*) FROM later")  # placed by the new catalog
        assert await cur.fetchall() == [(0,)]
    finally:
        await reader.close()


async def test_changing_the_resource_ends_its_sessions_and_the_next_login_uses_the_new_one(
    stack: PgStack,
) -> None:
    conn = await _connect(stack)
    await conn.execute("SELECT 1")
    changed = [
        r.model_copy(update={"idle_timeout": 123.0}) if r.name == RESOURCE else r
        for r in stack.gw.config.resources
    ]
    stack.gw.update_resources(changed)
    with pytest.raises(psycopg.OperationalError, match="reconfigured"):
        await conn.execute("SELECT 1")
    await conn.close()
    again = await _connect(stack)
    try:
        assert await (await again.execute("SELECT 1")).fetchall() == [(1,)]
    finally:
        await again.close()
    assert stack.engine().ctx.resources[RESOURCE].idle_timeout == 123.0


@pytest.mark.slow
async def test_copy_streams_both_ways_in_bounded_memory(stack: PgStack) -> None:
    """80 MB in and out through one session; the process grows by a fraction of it (the
    client pump reads the next chunk only once the upstream took the last)."""
    conn = await _connect(stack, "ops")
    try:
        await conn.execute("CREATE TABLE sales.big (id int, pad text)")
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        pad = "x" * 200
        async with conn.cursor() as cur, cur.copy("COPY sales.big FROM STDIN") as copy:
            for i in range(400_000):
                await copy.write(f"{i}\t{pad}\n")
        received = 0
        async with conn.cursor() as cur, cur.copy("COPY sales.big TO STDOUT") as copy:
            async for data in copy:
                received += len(data)
        assert received > 80_000_000
        grown_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - peak
        assert grown_kib < 30 * 1024
    finally:
        await conn.close()


async def test_closing_the_engine_tells_open_sessions_why(stack: PgStack) -> None:
    conn = await _connect(stack)
    await conn.execute("SELECT 1")
    await stack.engine().close()
    with pytest.raises(psycopg.OperationalError, match="administrator command"):
        await conn.execute("SELECT 1")
    await conn.close()

    async def gone() -> bool:
        return await _upstream_sessions(stack) == 0

    await _until(gone)


async def test_server_code_that_changes_how_the_server_lexes_ends_the_session(
    stack: PgStack,
) -> None:
    """A function the policy lets run may call set_config: once the server reports a lexing
    setting the gateway does not parse under, the session ends (FATAL 08006, audited) and
    the change never reaches the client."""
    stack.upstream_psql(
        "CREATE FUNCTION sales.lexing_off() RETURNS text LANGUAGE sql AS "
        "$$ SELECT set_config('standard_conforming_strings', 'off', false) $$"
    )
    conn = await _connect(stack, dag="ops")
    with pytest.raises(psycopg.OperationalError, match="standard_conforming_strings"):
        await conn.execute("SELECT sales.lexing_off()")
    assert conn.closed or conn.broken
    await conn.close()
    (record,) = [r for r in stack.audit("upstream_error") if r.reason == "upstream_session_unsafe"]
    assert record.detail == {"setting": "standard_conforming_strings=off"}

    async def gone() -> bool:
        return await _upstream_sessions(stack) == 0

    await _until(gone)
