"""Attempts to keep a quota's slots taken through the PostgreSQL engine: a session whose
token is revoked mid-session, and one whose client vanishes mid-statement, give back every
slot (the gate's own count is the oracle)."""

from __future__ import annotations

import asyncio
import socket
import struct
from collections.abc import AsyncIterator
from pathlib import Path

import psycopg
import pytest

from tests.gateway.quota_fakes import FakeGate, eventually
from tests.pgserver import PgServer

from .stack import RESOURCE, PgStack, pg_stack


@pytest.fixture
async def stack(tmp_path: Path, pg_server: PgServer) -> AsyncIterator[PgStack]:
    async with pg_stack(tmp_path, pg_server) as s:
        yield s


async def test_a_session_ended_by_revocation_gives_its_slots_back(stack: PgStack) -> None:
    gate = FakeGate()
    stack.engine().ctx.quotas = gate
    token = stack.token("etl")
    conn = await psycopg.AsyncConnection.connect(stack.dsn(token), autocommit=True)
    try:
        await conn.execute("SELECT count(*) FROM sales.orders")
        assert gate.held >= 1  # the session's slot
        claims = stack.gw.verifier.verify(token, RESOURCE)
        stack.gw.state.revocations.revoke_jti(claims.jti, claims.exp, reason="task ended")
        with pytest.raises(psycopg.Error):
            await conn.execute("SELECT item FROM sales.orders")
    finally:
        await conn.close()
    await eventually(lambda: gate.held == 0)


async def test_a_client_gone_mid_statement_gives_its_slots_back(stack: PgStack) -> None:
    gate = FakeGate()
    stack.engine().ctx.quotas = gate
    conn = await stack.connect("etl")
    try:
        sock = socket.socket(fileno=conn.fileno())
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        running = asyncio.ensure_future(conn.execute("SELECT pg_sleep(1) FROM sales.orders"))
        await asyncio.sleep(0.2)
        assert gate.held == 2  # the session and the statement in flight
        sock.close()  # a reset while the statement runs upstream
        with pytest.raises(psycopg.Error):
            await running
    finally:
        await conn.close()
    await eventually(lambda: gate.held == 0)
