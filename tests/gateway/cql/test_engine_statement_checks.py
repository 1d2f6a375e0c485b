"""Per-statement checks of a live CQL connection: the token (revocation, expiry) is verified
for every statement, and password literals never reach an audit record or a log line."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import cast

import jwt
import pytest
from cassandra import Unauthorized

from lockgate.gateway.cql import codec
from lockgate.gateway.cql.engine import CqlEngine

from .engine_stack import Stack, connect, stack_fixture
from .test_pipelining import etl_raw

PASSWORD = "hunter2-not-for-the-audit"


@pytest.fixture
async def stack(tmp_path: Path) -> AsyncIterator[Stack]:
    async for s in stack_fixture(tmp_path):
        yield s


def jti_of(token: str) -> str:
    return str(jwt.decode(token, options={"verify_signature": False})["jti"])


async def test_statement_after_revocation_is_refused_at_once(stack: Stack) -> None:
    token = stack.token("etl")
    session = await asyncio.to_thread(connect, stack.port, token, "ks")
    try:
        await asyncio.to_thread(session.execute, "SELECT * FROM orders")
        stack.gw.state.revocations.revoke_jti(jti_of(token), time.time() + 900, "test")
        seen = len(stack.fake.statements)
        t0 = time.monotonic()
        with pytest.raises(Unauthorized, match=r"no longer valid \(revoked\)"):
            await asyncio.to_thread(session.execute, "SELECT * FROM orders")
        assert time.monotonic() - t0 < 1.0  # refused at once, not at the next periodic check
    finally:
        await asyncio.to_thread(session.cluster.shutdown)
    assert [t for _, t in stack.fake.statements[seen:] if "orders" in t] == []
    failed = [r for r in stack.audit("auth_failed") if r.reason == "revoked"]
    assert failed and failed[0].decision == "deny" and failed[0].jti == jti_of(token)


async def test_expired_token_is_refused_on_the_next_statement(stack: Stack) -> None:
    raw = await etl_raw(stack)  # a token valid for 900 s
    try:
        raw.send(codec.Query(stream=3, query="SELECT * FROM orders"))
        assert isinstance(await raw.recv(), codec.Rows)
        verifier = cast(CqlEngine, stack.gw.engines["cql"]).ctx.verifier
        verifier._clock = lambda: time.time() + 3600  # an hour later
        raw.send(codec.Query(stream=4, query="SELECT * FROM orders"))
        answer = await raw.recv()
    finally:
        raw.close()
    assert isinstance(answer, codec.Error) and answer.code == codec.ERR_UNAUTHORIZED
    assert "(expired)" in answer.message


# -- password literals ---------------------------------------------------------------------------
ROLE_STATEMENTS = [
    f"CREATE ROLE reporter WITH PASSWORD = '{PASSWORD}' AND LOGIN = true",
    f"ALTER ROLE reporter WITH PASSWORD = '{PASSWORD}'",
]
# Cassandra's USER forms (no '='); the test node does not run them, so they are only denied.
USER_STATEMENTS = [
    f"CREATE USER auditor WITH PASSWORD '{PASSWORD}' NOSUPERUSER",
    f"ALTER USER auditor WITH PASSWORD '{PASSWORD}'",
]


def assert_no_password(stack: Stack, caplog: pytest.LogCaptureFixture) -> None:
    rows = stack.audit()
    assert rows
    assert all(PASSWORD not in str(r.to_dict()) for r in rows)
    assert all(PASSWORD not in m for m in caplog.messages)
    assert all(PASSWORD not in str(getattr(r, "fields", "")) for r in caplog.records)


async def test_password_literals_never_reach_the_audit_when_allowed(
    stack: Stack, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    session = await asyncio.to_thread(connect, stack.port, stack.token("ops"))
    try:
        for text in ROLE_STATEMENTS:
            await asyncio.to_thread(session.execute, text)
    finally:
        await asyncio.to_thread(session.cluster.shutdown)
    assert sum(PASSWORD in t for _, t in stack.fake.statements) == len(ROLE_STATEMENTS)
    allowed = [r for r in stack.audit("allowed") if r.action == "admin"]
    assert len(allowed) == len(ROLE_STATEMENTS)
    assert all(r.detail.get("statement") for r in allowed)  # something is kept, not the secret
    assert_no_password(stack, caplog)


async def test_password_literals_never_reach_the_audit_when_denied_or_revoked(
    stack: Stack, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    token = stack.token("etl")
    session = await asyncio.to_thread(connect, stack.port, token, "ks")
    try:
        for text in ROLE_STATEMENTS + USER_STATEMENTS:
            with pytest.raises(Unauthorized, match="Lockgate denied admin"):
                await asyncio.to_thread(session.execute, text)
        stack.gw.state.revocations.revoke_jti(jti_of(token), time.time() + 900, "test")
        with pytest.raises(Unauthorized, match="revoked"):
            await asyncio.to_thread(session.execute, ROLE_STATEMENTS[0])
    finally:
        await asyncio.to_thread(session.cluster.shutdown)
    assert not any(PASSWORD in t for _, t in stack.fake.statements)
    assert len(stack.audit("denied")) == len(ROLE_STATEMENTS + USER_STATEMENTS)
    assert any(r.reason == "revoked" for r in stack.audit("auth_failed"))
    assert_no_password(stack, caplog)
