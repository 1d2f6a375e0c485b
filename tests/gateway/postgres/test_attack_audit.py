"""Attacks on the PostgreSQL engine's audit promises, through the real stack.

* Nothing served unaudited: while the admitted record is not durable the statement does not
  reach the server; when the audit cannot take it the statement is refused (53000), not run.
* Every refusal is recorded with principal, action, object and reason.
* Password literals never reach a record or a log line, allowed or refused.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from pathlib import Path

import psycopg
import pytest

from lockgate.errors import AuditUnavailable
from lockgate.gateway.postgres.redact import MASK
from tests.pgserver import PgServer

from .attack import connect, executed
from .stack import PgStack, pg_stack


@pytest.fixture
async def stack(tmp_path: Path, pg_server: PgServer) -> AsyncIterator[PgStack]:
    async with pg_stack(tmp_path, pg_server) as s:
        yield s


async def test_a_statement_waits_for_its_record_to_be_durable(
    stack: PgStack, monkeypatch: pytest.MonkeyPatch
) -> None:
    conn = await connect(stack)
    gate: asyncio.Future[None] = asyncio.get_running_loop().create_future()
    monkeypatch.setattr(stack.gw.audit, "durable", lambda: gate)
    position = stack.server.log_position()
    try:
        running = asyncio.create_task(conn.execute("SELECT 41 + 1 FROM sales.orders LIMIT 1"))
        await asyncio.sleep(0.5)
        assert not running.done()
        assert "SELECT 41 + 1 FROM sales.orders LIMIT 1" not in executed(stack, position)
        gate.set_result(None)
        cur = await asyncio.wait_for(running, 5)
        assert await cur.fetchall() == [(42,)]
    finally:
        await conn.close()
    assert "SELECT 41 + 1 FROM sales.orders LIMIT 1" in executed(stack, position)


async def test_a_statement_the_audit_cannot_take_is_refused_and_not_run(
    stack: PgStack, monkeypatch: pytest.MonkeyPatch
) -> None:
    conn = await connect(stack)

    def unavailable(*_args: object) -> str:
        raise AuditUnavailable("journal cannot be written")

    monkeypatch.setattr(stack.gw.audit, "write_ahead", unavailable)
    position = stack.server.log_position()
    try:
        with pytest.raises(psycopg.Error) as err:
            await conn.execute("DELETE FROM sales.orders WHERE id = 1")
        assert err.value.sqlstate == "53000"
    finally:
        await conn.close()
    assert executed(stack, position) == []
    assert stack.upstream_psql("SELECT count(*) FROM sales.orders").strip() == "2"


@pytest.mark.parametrize(
    ("sql", "action", "obj"),
    [
        ("SELECT * FROM other.secret", "read", "other.secret"),
        ("DROP TABLE sales.orders", "admin", "sales.orders"),
        ("SELECT pg_read_file('/etc/passwd')", "admin", "function:pg_catalog.pg_read_file"),
        ("UPDATE other.secret SET value = 'x'", "write", "other.secret"),
    ],
)
async def test_every_refusal_is_recorded_with_principal_action_object_and_reason(
    stack: PgStack, sql: str, action: str, obj: str
) -> None:
    conn = await connect(stack)
    try:
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            await conn.execute(sql)
    finally:
        await conn.close()
    denied = [r for r in stack.audit("denied") if r.object == obj]
    assert denied, [r.to_dict() for r in stack.audit("denied")]
    record = denied[-1]
    assert record.principal == "airflow:prod/etl/load"
    assert record.action == action and record.decision == "deny" and record.reason


async def test_an_unplaceable_statement_is_recorded_as_refused(stack: PgStack) -> None:
    conn = await connect(stack)
    try:
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            await conn.execute("SELECT * FROM no_such_relation")
    finally:
        await conn.close()
    refused = [r for r in stack.audit() if r.decision == "deny" and "no_such_relation" in str(r)]
    assert refused and refused[-1].reason


PASSWORD = "Hunter2-never-in-a-record"
ROLE_STATEMENTS = [
    f"ALTER ROLE CURRENT_USER PASSWORD '{PASSWORD}'",
    f"CREATE USER lg_attack_user WITH ENCRYPTED PASSWORD E'{PASSWORD}'",
    f"CREATE ROLE lg_attack_role LOGIN PASSWORD $x${PASSWORD}$x$",
    f"ALTER USER CURRENT_USER WITH PASSWORD /* ' */ '{PASSWORD}'",
    f"SELECT 1; ALTER ROLE CURRENT_USER PASSWORD '{PASSWORD}'",
]


@pytest.mark.parametrize("sql", ROLE_STATEMENTS)
async def test_password_literals_are_in_no_record_nor_log_line_when_refused(
    stack: PgStack, sql: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="lockgate")
    conn = await connect(stack, "etl")
    try:
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            await conn.execute(sql)
    finally:
        await conn.close()
    rows = stack.audit()
    assert any(r.decision == "deny" for r in rows)
    assert not [r.event for r in rows if PASSWORD in str(r.to_dict())]
    assert PASSWORD not in caplog.text


async def test_password_literals_are_in_no_record_when_allowed(
    stack: PgStack, caplog: pytest.LogCaptureFixture
) -> None:
    """The ops DAG may administer; its password change is recorded with the literal masked.
    (The server itself logs the statement as written with log_statement=all: that is the
    server's own log, outside the gateway.)"""
    caplog.set_level(logging.DEBUG, logger="lockgate")
    conn = await connect(stack, "ops")
    try:
        await conn.execute(f"ALTER ROLE CURRENT_USER PASSWORD '{PASSWORD}'")
        # put the gateway's own password back for the stack's later logins
        await conn.execute(f"ALTER ROLE CURRENT_USER PASSWORD '{stack.login_password}'")
    finally:
        await conn.close()
    allowed = [r for r in stack.audit() if "ALTER ROLE" in str(r.detail)]
    assert allowed and any(MASK in str(r.detail) for r in allowed)
    assert not [r.event for r in stack.audit() if PASSWORD in str(r.to_dict())]
    assert not [r.event for r in stack.audit() if stack.login_password in str(r.to_dict())]
    assert PASSWORD not in caplog.text
