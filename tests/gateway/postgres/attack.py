"""What the attack tests (``test_attack_*.py``) share: a psycopg session for a DAG through
the test stack, and a statement's rows or None when the gateway refused it."""

from __future__ import annotations

import psycopg

from .stack import PgStack

Conn = psycopg.AsyncConnection[tuple[object, ...]]

#: The row of other.secret no DAG of the stack's policy may read.
SECRET_VALUE = "the-upstream-only-secret"


async def connect(stack: PgStack, dag: str = "etl") -> Conn:
    """An autocommit session through the gateway with a fresh token for ``dag``."""
    return await psycopg.AsyncConnection.connect(stack.dsn(stack.token(dag)), autocommit=True)


async def rows_or_refused(conn: Conn, sql: str) -> list[tuple[object, ...]] | None:
    """The rows of ``sql``, or None when the gateway refused it (42501)."""
    try:
        cur = await conn.execute(sql)
    except psycopg.errors.InsufficientPrivilege:
        return None
    return await cur.fetchall()


def executed(stack: PgStack, since: int) -> list[str]:
    """Statements the server ran for the gateway's login since log position ``since``."""
    return [s.text for s in stack.server.statements(since) if s.user == stack.login]
