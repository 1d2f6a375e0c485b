"""Real CQL and PostgreSQL sessions through a running gateway show up in the registry of
sessions open now once logged in, and leave it however they end: the client closes, or the
token is revoked and the engine ends the session. A login refused is never listed."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from pathlib import Path

import jwt
import pytest

from lockgate.gateway.cql import codec
from lockgate.gateway.live_sessions import LiveSession, SessionRegistry
from tests.gateway.cql.engine_stack import RawClient, Stack, cql_context, stack_fixture
from tests.gateway.postgres.stack import PgStack, pg_stack
from tests.pgserver import PgServer


def _jti(token: str) -> str:
    return str(jwt.decode(token, options={"verify_signature": False})["jti"])


async def _listed(reg: SessionRegistry, want: int, timeout: float = 3.0) -> list[LiveSession]:
    """The sessions listed once there are ``want`` of them (flushing as the gateway would)."""
    deadline = time.monotonic() + timeout
    while True:
        reg.flush()
        sessions = reg.open_sessions()
        if len(sessions) == want or time.monotonic() > deadline:
            return sessions
        await asyncio.sleep(0.02)


@pytest.fixture
async def cql(tmp_path: Path) -> AsyncIterator[tuple[Stack, SessionRegistry]]:
    async for stack in stack_fixture(tmp_path):
        reg = SessionRegistry(tmp_path / "live.db", "r1", 0)
        reg.start()
        cql_context(stack).shared.live = reg
        yield stack, reg
        reg.close()


async def test_cql_sessions_are_listed_while_open(
    cql: tuple[Stack, SessionRegistry],
) -> None:
    stack, reg = cql
    token, other = stack.token(), stack.token("ops")
    first = await RawClient.open(stack.port)
    second = await RawClient.open(stack.port)
    refused = await RawClient.open(stack.port)
    try:
        assert isinstance(await first.login(token), codec.AuthSuccess)
        assert isinstance(await second.login(other), codec.AuthSuccess)
        assert isinstance(await refused.login("not-a-token"), codec.Error)
        listed = await _listed(reg, 2)
        assert {(s.kind, s.resource, s.dag_id, s.jti) for s in listed} == {
            ("cql", "cass", "etl", _jti(token)),
            ("cql", "cass", "ops", _jti(other)),
        }
        assert all(s.peer.startswith("127.0.0.1:") and s.where == "r1/0" for s in listed)
        with reg.db.read() as cur:  # the jti names the token; the token is never stored
            stored = repr(cur.execute("SELECT * FROM live_sessions").fetchall())
        assert token not in stored and token.split(".")[2] not in stored
        first.close()  # the client goes
        [left] = await _listed(reg, 1)
        assert left.jti == _jti(other)
        # Revoked: the engine ends the session, and it leaves the list.
        stack.gw.state.revocations.revoke_jti(_jti(other), time.time() + 900, "test")
        assert await second.closed(timeout=5.0)
        assert await _listed(reg, 0) == []
    finally:
        for client in (first, second, refused):
            client.close()


@pytest.fixture
async def pg(tmp_path: Path, pg_server: PgServer) -> AsyncIterator[tuple[PgStack, SessionRegistry]]:
    async with pg_stack(tmp_path, pg_server) as stack:
        reg = SessionRegistry(tmp_path / "live.db", "r1", 0)
        reg.start()
        stack.engine().ctx.shared.live = reg
        yield stack, reg
        reg.close()


@pytest.mark.slow
async def test_postgres_sessions_are_listed_while_open(
    pg: tuple[PgStack, SessionRegistry],
) -> None:
    import psycopg

    stack, reg = pg
    token = stack.token("etl")
    conn = await psycopg.AsyncConnection.connect(stack.dsn(token), autocommit=True)
    other = await stack.connect("ops")
    try:
        with pytest.raises(psycopg.OperationalError):
            await psycopg.AsyncConnection.connect(stack.dsn("not-a-token"))
        listed = await _listed(reg, 2)
        assert {(s.kind, s.resource, s.dag_id, s.task_id, s.try_number) for s in listed} == {
            ("postgres", "pg", "etl", "load", 1),
            ("postgres", "pg", "ops", "load", 1),
        }
        await other.close()
        [left] = await _listed(reg, 1)
        assert left.jti == _jti(token)
        stack.gw.state.revocations.revoke_jti(_jti(token), time.time() + 900, "test")
        assert await _listed(reg, 0) == []
    finally:
        await conn.close()
        await other.close()
