"""Hostile or broken clients on raw sockets lose only their own connection."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from cassandra.cluster import Session

from lockgate.gateway.cql import codec

from .engine_stack import RawClient, Stack, connect, header, stack_fixture


@pytest.fixture
async def stack(tmp_path: Path) -> AsyncIterator[Stack]:
    async for s in stack_fixture(tmp_path):
        yield s


@pytest.fixture
async def etl(stack: Stack) -> AsyncIterator[Session]:
    session = await asyncio.to_thread(connect, stack.port, stack.token("etl"), "ks")
    yield session
    await asyncio.to_thread(session.cluster.shutdown)


async def still_works(session: Session) -> None:
    rows = await asyncio.to_thread(lambda: list(session.execute("SELECT * FROM ks.orders")))
    assert rows == []


async def test_options_answers_supported_with_compression_key(stack: Stack) -> None:
    raw = await RawClient.open(stack.port)
    try:
        raw.send(codec.Options(stream=1))
        answer = await raw.recv()
        assert isinstance(answer, codec.Supported)
        assert answer.options["PROTOCOL_VERSIONS"] == ["4/v4"]
        assert answer.options["COMPRESSION"] == []
    finally:
        raw.close()


async def test_compression_requested_gets_a_clear_error(stack: Stack) -> None:
    raw = await RawClient.open(stack.port)
    try:
        raw.send(codec.Startup(stream=1, options={"CQL_VERSION": "3.0.0", "COMPRESSION": "lz4"}))
        answer = await raw.recv()
        assert isinstance(answer, codec.Error) and answer.code == codec.ERR_PROTOCOL
        assert "compression is not supported by Lockgate" in answer.message
        assert await raw.closed()
    finally:
        raw.close()


async def test_v5_is_refused_so_drivers_downgrade(stack: Stack) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", stack.port)
    try:
        writer.write(b"\x05\x00\x00\x01\x05\x00\x00\x00\x00")  # v5 OPTIONS
        data = await asyncio.wait_for(reader.read(4096), 3)
        assert b"unsupported protocol version" in data.lower()
        assert await asyncio.wait_for(reader.read(4096), 3) == b""
    finally:
        writer.close()
    assert stack.audit() == []  # negotiation, not an attack


async def test_malformed_frame_closes_only_that_connection(stack: Stack, etl: Session) -> None:
    raw = await RawClient.open(stack.port)
    try:
        raw.writer.write(header(codec.STARTUP, 3) + b"\xff\xff\xff")  # string map of -1 entries
        answer = await raw.recv()
        assert isinstance(answer, codec.Error) and answer.code == codec.ERR_PROTOCOL
        assert await raw.closed()
    finally:
        raw.close()
    await still_works(etl)
    failed = stack.audit("auth_failed")
    assert [r.reason for r in failed] == ["protocol_error"]


async def test_oversized_frame_after_login_closes_only_that_connection(
    stack: Stack, etl: Session
) -> None:
    raw = await RawClient.open(stack.port)
    try:
        assert isinstance(await raw.login(stack.token("etl")), codec.AuthSuccess)
        raw.writer.write(header(codec.QUERY, 10 * 1024 * 1024))  # over max_frame_bytes (64 KiB)
        answer = await raw.recv()
        assert isinstance(answer, codec.Error) and "exceeds the limit" in answer.message
        assert await raw.closed()
    finally:
        raw.close()
    await still_works(etl)
    denied = stack.audit("denied")
    assert [(r.reason, r.principal) for r in denied] == [
        ("frame_too_large", "airflow:prod/etl/load")
    ]


async def test_slow_loris_before_login_is_cut_by_handshake_timeout(
    stack: Stack, etl: Session
) -> None:
    raw = await RawClient.open(stack.port)
    try:
        raw.send(codec.Options(stream=1))
        assert isinstance(await raw.recv(), codec.Supported)
        raw.writer.write(header(codec.STARTUP, 40)[:6])  # half a header, then nothing
        assert await raw.closed(timeout=3.0)  # handshake_timeout is 1 s
    finally:
        raw.close()
    await still_works(etl)
    assert [r.reason for r in stack.audit("auth_failed")] == ["handshake_timeout"]


async def test_slow_loris_frame_after_login_is_cut(stack: Stack, etl: Session) -> None:
    raw = await RawClient.open(stack.port)
    try:
        assert isinstance(await raw.login(stack.token("etl")), codec.AuthSuccess)
        raw.writer.write(header(codec.QUERY, 100) + b"\x00\x00")  # a frame that never ends
        for _ in range(3):  # dribbling bytes does not extend the frame deadline
            await asyncio.sleep(0.3)
            raw.writer.write(b"\x00")
        assert await raw.closed(timeout=3.0)
    finally:
        raw.close()
    await still_works(etl)
    assert [r.reason for r in stack.audit("denied")] == ["frame_timeout"]


async def test_statement_before_login_is_refused(stack: Stack) -> None:
    raw = await RawClient.open(stack.port)
    try:
        raw.send(codec.Query(stream=1, query="SELECT * FROM ks.orders"))
        answer = await raw.recv()
        assert isinstance(answer, codec.Error) and "before authentication" in answer.message
        assert await raw.closed()
    finally:
        raw.close()
    assert stack.fake.user_statements() == []
    assert [r.reason for r in stack.audit("auth_failed")] == ["unauthenticated_request"]


async def test_upstream_down_is_a_clear_login_error(stack: Stack) -> None:
    await stack.fake.close()
    raw = await RawClient.open(stack.port)
    try:
        answer = await raw.login(stack.token("etl"))
        assert isinstance(answer, codec.Error) and answer.code == codec.ERR_SERVER
        assert "could not open a connection to the cluster" in answer.message
        assert "127.0.0.1" not in answer.message  # internal addresses stay in the audit/log
    finally:
        raw.close()
    errors = stack.audit("upstream_error")
    assert errors and "timed out" not in errors[0].reason
    assert "Connection" in errors[0].detail["error"] or "refused" in errors[0].detail["error"]
