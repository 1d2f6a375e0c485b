"""A revocation ends the open PostgreSQL sessions of the revoked token within a second, idle
ones included, whoever revoked it (here: another State over the same data_dir, the way
``lockgate token revoke`` does); sessions of other tokens stay open. psycopg and a real
server behind the gateway."""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import jwt
import psycopg
import pytest

from lockgate.gateway.postgres import codec, upstream
from lockgate.state import State
from tests.pgserver import PgServer

from .stack import RESOURCE, Conn, PgStack, pg_stack
from .test_startup import RawClient

#: The bound the gateway promises (the revocation tick is 0.2 s).
WITHIN = 1.0


@pytest.fixture
async def stack(tmp_path: Path, pg_server: PgServer) -> AsyncIterator[PgStack]:
    async with pg_stack(tmp_path, pg_server) as s:
        yield s


@pytest.fixture
def cli_state(stack: PgStack) -> State:
    """A second handle on the gateway's state, as the CLI opens it."""
    return State(stack.gw.config)


def _jti(token: str) -> str:
    return str(jwt.decode(token, options={"verify_signature": False})["jti"])


async def _readable(conn: Conn, timeout: float) -> float:
    """Seconds until the idle connection's socket has something to read (the FATAL)."""
    loop = asyncio.get_running_loop()
    fd = conn.pgconn.socket
    ready: asyncio.Future[None] = loop.create_future()

    def seen() -> None:
        if not ready.done():
            ready.set_result(None)

    loop.add_reader(fd, seen)
    t0 = time.monotonic()
    try:
        await asyncio.wait_for(ready, timeout)
    finally:
        loop.remove_reader(fd)
    return time.monotonic() - t0


async def _upstream_sessions(stack: PgStack) -> int:
    sql = (
        "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database()"
        " AND backend_type = 'client backend' AND pid <> pg_backend_pid()"
    )
    return int(stack.upstream_psql(sql).strip() or 0)


async def test_an_idle_psycopg_session_of_a_revoked_token_ends_within_a_second(
    stack: PgStack, cli_state: State
) -> None:
    token, other_token = stack.token("etl"), stack.token("etl")
    conn = await psycopg.AsyncConnection.connect(stack.dsn(token), autocommit=True)
    other = await psycopg.AsyncConnection.connect(stack.dsn(other_token), autocommit=True)
    try:
        await conn.execute("SELECT 1")
        await other.execute("SELECT 1")
        assert await _upstream_sessions(stack) == 2
        t0 = time.monotonic()
        cli_state.revocations.revoke_jti(_jti(token), time.time() + 900, "test")
        waited = await _readable(conn, 5.0)
        took = time.monotonic() - t0
        assert took < WITHIN, f"session ended {took:.3f}s after the revocation"
        assert waited <= took
        with pytest.raises(psycopg.OperationalError, match="revoked"):
            await conn.execute("SELECT 1")
        # The other token's session goes on; the revoked token cannot log in again.
        cur = await other.execute("SELECT count(*) FROM sales.orders")
        assert await cur.fetchall() == [(2,)]
        with pytest.raises(psycopg.OperationalError, match="revoked"):
            await psycopg.AsyncConnection.connect(stack.dsn(token), autocommit=True)
    finally:
        await conn.close()
        await other.close()
        cli_state.close()
    for _ in range(100):  # the ended session's upstream connection is gone too
        if await _upstream_sessions(stack) == 1:
            break
        await asyncio.sleep(0.05)
    assert await _upstream_sessions(stack) == 1
    ended = [r for r in stack.audit("session_ended") if r.reason == "token_revoked"]
    assert len(ended) == 1
    assert ended[0].principal == "airflow:prod/etl/load"
    assert ended[0].resource == RESOURCE
    assert ended[0].action == "connect"


async def test_the_end_is_a_fatal_57p01_naming_the_revocation(
    stack: PgStack, cli_state: State
) -> None:
    client = await RawClient.open(stack)
    try:
        await client.login(stack.token("etl"))
        t0 = time.monotonic()
        cli_state.revocations.revoke_dag("prod", "etl", None, "test")
        fields = await client.error()
        took = time.monotonic() - t0
        assert took < WITHIN, f"FATAL {took:.3f}s after the revocation"
        assert (fields["V"], fields["C"]) == ("FATAL", "57P01")
        assert "revoked" in fields["M"]
        assert await client.recv() is None  # and the connection closes
    finally:
        client.close()
        cli_state.close()


async def test_a_dag_block_ends_that_dags_sessions_and_no_other(
    stack: PgStack, cli_state: State
) -> None:
    blocked = await stack.connect("etl")
    kept = await stack.connect("ops")
    try:
        t0 = time.monotonic()
        cli_state.revocations.block("prod", "etl", by="test", reason="kill switch")
        await _readable(blocked, 5.0)
        assert time.monotonic() - t0 < WITHIN
        with pytest.raises(psycopg.OperationalError, match="revoked"):
            await blocked.execute("SELECT 1")
        cur = await kept.execute("SELECT 1")
        assert await cur.fetchall() == [(1,)]
    finally:
        await blocked.close()
        await kept.close()
        cli_state.close()
    ended = [r for r in stack.audit("session_ended") if r.reason == "token_revoked"]
    assert [r.principal for r in ended] == ["airflow:prod/etl/load"]


async def test_many_idle_sessions_end_together(stack: PgStack, cli_state: State) -> None:
    conns = [await stack.connect("etl") for _ in range(10)]
    try:
        t0 = time.monotonic()
        cli_state.revocations.revoke_dag("prod", "etl", None, "test")
        waits = await asyncio.gather(*(_readable(c, 5.0) for c in conns))
        assert time.monotonic() - t0 < WITHIN, waits
    finally:
        for conn in conns:
            await conn.close()
        cli_state.close()
    assert len([r for r in stack.audit("session_ended") if r.reason == "token_revoked"]) == 10


@pytest.mark.slow
async def test_session_end_latency_over_a_hundred_revocations(
    stack: PgStack, cli_state: State
) -> None:
    """p50/p99 of revocation -> FATAL 57P01 seen, one idle session per revocation."""
    took = []
    try:
        for _ in range(100):
            token = stack.token("etl")
            client = await RawClient.open(stack)
            try:
                await client.login(token)
                await asyncio.sleep(random.uniform(0, 0.2))  # not in step with the tick
                t0 = time.monotonic()
                cli_state.revocations.revoke_jti(_jti(token), time.time() + 900, "test")
                assert (await client.error())["C"] == "57P01"
                took.append(time.monotonic() - t0)
            finally:
                client.close()
    finally:
        cli_state.close()
    took.sort()
    p50, p99 = took[49], took[98]
    print(
        f"postgres session end after revocation: p50 {p50 * 1000:.0f} ms, p99 {p99 * 1000:.0f} ms"
    )
    assert p99 < WITHIN


async def test_a_login_the_revocation_lands_during_is_refused(
    stack: PgStack, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The token verified, then the revocation reloads while the login awaits its upstream
    connection: the engine ends only sessions logged in, so the login checks again."""
    token = stack.token("etl")
    connect_upstream = upstream.connect

    async def revoked_meanwhile(*args: Any, **kwargs: Any) -> upstream.UpstreamLink:
        link = await connect_upstream(*args, **kwargs)
        stack.gw.state.revocations.revoke_jti(_jti(token), time.time() + 900, "test")
        return link

    monkeypatch.setattr(upstream, "connect", revoked_meanwhile)
    client = await RawClient.open(stack)
    try:
        client.writer.write(codec.startup_message({"user": "lockgate", "database": RESOURCE}))
        await client.until(codec.AUTHENTICATION)
        client.writer.write(codec.password_message(token))
        fields = await client.error()
        assert (fields["V"], fields["C"]) == ("FATAL", "28000")
        assert "revoked" in fields["M"]
    finally:
        client.close()
    refused = [r for r in stack.audit("auth_failed") if r.reason == "revoked"]
    assert refused and refused[-1].principal == "airflow:prod/etl/load"
