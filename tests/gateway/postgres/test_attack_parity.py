"""Attacks on parity: the gateway must lex a text as the server will.

The classifier reads a text as UTF-8 with ``standard_conforming_strings = on``. The client
cannot change either through the gateway (startup parameters and SET are checked), and the
server's own defaults (``ALTER DATABASE ... SET`` / ``ALTER ROLE ... SET``: a legacy
database, a DBA, an admin DAG) must not either: were they to apply to the gateway's upstream
login, a text the gateway reads as one harmless statement would be two for the server. The
oracle is the server's answer: the second statement's rows must never come back.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import psycopg
import pytest

from lockgate.gateway.postgres import codec
from tests.pgserver import PgServer

from .stack import PgStack, pg_stack
from .test_startup import RawClient

SECRET = b"the-upstream-only-secret"


@pytest.fixture
async def stack(tmp_path: Path, pg_server: PgServer) -> AsyncIterator[PgStack]:
    async with pg_stack(tmp_path, pg_server) as s:
        yield s


async def _simple_query(client: RawClient, text: bytes) -> list[codec.Message]:
    """Send ``text`` as one Query; every message up to ReadyForQuery (or the close)."""
    client.writer.write(codec.encode(codec.QUERY, text + b"\x00"))
    seen: list[codec.Message] = []
    while (msg := await client.recv()) is not None:
        seen.append(msg)
        if msg.type == codec.READY_FOR_QUERY:
            break
    return seen


def _served(messages: list[codec.Message]) -> bytes:
    return b"".join(m.body for m in messages if m.type == codec.DATA_ROW)


async def test_a_server_default_of_standard_conforming_strings_off_is_not_a_bypass(
    stack: PgStack,
) -> None:
    stack.server.psql(f'ALTER DATABASE "{stack.database}" SET standard_conforming_strings = off;')
    client = await RawClient.open(stack)
    try:
        await client.login(stack.token("etl"))
        # Gateway (on): 'a\' then a dollar-quoted string. Server (off): 'a'', $$' then
        # SELECT value FROM other.secret, then a comment.
        answer = await _simple_query(
            client, b"SELECT 'a\\', $$' ; SELECT value FROM other.secret; -- $$"
        )
    finally:
        client.close()
    assert SECRET not in _served(answer)


async def test_a_server_default_client_encoding_of_sjis_is_not_a_bypass(stack: PgStack) -> None:
    stack.server.psql(f"ALTER DATABASE \"{stack.database}\" SET client_encoding = 'SJIS';")
    client = await RawClient.open(stack)
    try:
        await client.login(stack.token("etl"))  # no client_encoding: the server's default
        # UTF-8 "Õ" is C3 95; in SJIS C3 is one character and 95 5C another.
        text = "SELECT E'\u00d5\\' ; SELECT value FROM other.secret; --'".encode()
        answer = await _simple_query(client, text)
    finally:
        client.close()
    assert SECRET not in _served(answer)


async def test_a_client_that_asks_for_utf8_is_safe_whatever_the_server_default(
    stack: PgStack,
) -> None:
    stack.server.psql(f"ALTER DATABASE \"{stack.database}\" SET client_encoding = 'SJIS';")
    client = await RawClient.open(stack)
    try:
        await client.login(stack.token("etl"), {"client_encoding": "UTF8"})
        text = "SELECT E'\u00d5\\' ; SELECT value FROM other.secret; --'".encode()
        answer = await _simple_query(client, text)
    finally:
        client.close()
    assert SECRET not in _served(answer)


async def test_psycopg_with_defaults_reads_nothing_forbidden_through_escapes(
    stack: PgStack,
) -> None:
    conn = await psycopg.AsyncConnection.connect(stack.dsn(stack.token("etl")), autocommit=True)
    try:
        for text in (
            "SELECT 'a\\', $$' ; SELECT value FROM other.secret; -- $$",
            "SELECT E'\u00d5\\' ; SELECT value FROM other.secret; --'",
        ):
            try:
                cur = await conn.execute(text)
            except psycopg.errors.InsufficientPrivilege:
                continue
            rows = [await cur.fetchall()]
            while cur.nextset():
                rows.append(await cur.fetchall())
            assert SECRET.decode() not in repr(rows)
    finally:
        await conn.close()


SETTINGS_ADMIN_POLICY = """\
rules:
  - id: etl-sales
    effect: allow
    principals: ["airflow:prod/etl/*"]
    actions: [read, write]
    resources: [pg]
    objects: ["sales.*"]
  - id: etl-tunes-settings
    effect: allow
    principals: ["airflow:prod/etl/*"]
    actions: [admin]
    resources: [pg]
    objects: ["setting:*"]
"""


@pytest.mark.parametrize(
    ("setting", "text"),
    [
        (
            "SET standard_conforming_strings = off",
            b"SELECT 'a\\', $$' ; SELECT value FROM other.secret; -- $$",
        ),
        (
            "SET client_encoding = 'SJIS'",
            "SELECT E'\u00d5\\' ; SELECT value FROM other.secret; --'".encode(),
        ),
    ],
    ids=["standard_conforming_strings", "client_encoding"],
)
async def test_a_grant_on_settings_does_not_open_tables_through_lexing(
    stack: PgStack, setting: str, text: bytes
) -> None:
    """A principal may be allowed to tune settings (admin on setting:*) and read only sales:
    changing how the server lexes must not let it read other.secret."""
    stack.write_policy(SETTINGS_ADMIN_POLICY)
    client = await RawClient.open(stack)
    try:
        await client.login(stack.token("etl"))
        await _simple_query(client, setting.encode())
        answer = await _simple_query(client, text)
    finally:
        client.close()
    assert SECRET not in _served(answer)
