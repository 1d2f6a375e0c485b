"""Statement spans of the PostgreSQL engine carry no literal, no password and no token,
whatever the statement's shape: plain, ``E''`` and ``U&''`` strings, dollar quotes, comments,
bound parameters, role passwords, a statement policy denies, one the server refuses.
Through the real path (``pg_stack`` in front of ``pg_server``, psycopg), exported over
OTLP/HTTP and decoded with opentelemetry-proto."""
# ruff: noqa: S608  (the statements are built around the bait literal on purpose)

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator
from pathlib import Path

import psycopg
import pytest

from lockgate import tracing
from lockgate.config.tracing import TracingSettings
from lockgate.identity import TaskIdentity, TokenIssuer
from tests.pgserver import PgServer

from ...fakes.otlp_sink import OtlpSink, attributes, otlp_sink
from .stack import RESOURCE, PgStack, pg_stack

TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
SAMPLED = f"00-{TRACE}-00f067aa0ba902b7-01"
MARK = "Zq7S3cr3t"  # every literal below carries it; no span may
STATEMENTS = [
    f"SELECT * FROM sales.orders WHERE item = '{MARK}-plain'",
    f"SELECT * FROM sales.orders WHERE item = E'{MARK}\\'-escaped'",
    f"SELECT * FROM sales.orders WHERE item = $tag${MARK}-dollar$tag$",
    f"SELECT * FROM sales.orders WHERE item = $${MARK}-bare$$",
    f"SELECT * FROM sales.orders WHERE item = U&'{MARK}-\\0075nicode'",
    f"SELECT /* {MARK}-comment */ id FROM sales.orders",
    f"SELECT id FROM sales.orders -- {MARK}-line\n",
    f"SELECT * FROM sales.orders WHERE item = 'x' OR item = '{MARK}-second'",
    f"SELECT id FROM sales.orders WHERE item = '{MARK}-a'; SELECT '{MARK}-b'",
    f"SELECT * FROM other.secret WHERE value = '{MARK}-denied'",
    f"SELEC '{MARK}-syntax'",
    f"SELECT * FROM sales.nosuch WHERE item = '{MARK}-server-error'",
    f"INSERT INTO sales.orders VALUES (9, '{MARK}-insert', 1)",
    f"SET application_name = '{MARK}-app'",
    f"ALTER ROLE lockgate_nobody PASSWORD '{MARK}-password'",
    f"DO $$BEGIN PERFORM '{MARK}-do'; END$$",
    f"SELECT * FROM dblink('host=x password={MARK}-dblink', 'select 1') AS t(a int)",
    f"COPY sales.orders FROM PROGRAM 'echo {MARK}-program'",
    f"CREATE SERVER lg_attack FOREIGN DATA WRAPPER x OPTIONS (host '{MARK}-server')",
    f"CREATE USER MAPPING FOR PUBLIC SERVER lg_attack OPTIONS (password '{MARK}-mapping')",
    f"PREPARE lg_p AS SELECT id FROM sales.orders WHERE item = '{MARK}-prepare'",
    f"SELECT set_config('lg.x', '{MARK}-set-config', false)",
    f"NOTIFY lg_channel, '{MARK}-notify'",
    f"COMMENT ON TABLE sales.orders IS '{MARK}-comment-on'",
    f"SELECT * FROM sales.orders WHERE item = B'1010' OR item = X'{MARK[:2]}ff' OR "
    f"item = '{MARK}-after-bits'",
    f"CREATE FUNCTION lg_f() RETURNS text LANGUAGE sql AS $body${MARK}-function$body$",
]


@pytest.fixture
async def stack(tmp_path: Path, pg_server: PgServer) -> AsyncIterator[PgStack]:
    async with pg_stack(tmp_path, pg_server) as s:
        yield s


def token(stack: PgStack, dag: str) -> str:
    issuer = TokenIssuer(stack.gw.state.keys, stack.gw.config.issuer_url, clock=time.time)
    identity = TaskIdentity("prod", dag, "load", "run-1", 1)
    return issuer.mint(identity, RESOURCE, 900, traceparent=SAMPLED)[0]


async def run_all(stack: PgStack, password: str) -> None:
    conn = await psycopg.AsyncConnection.connect(stack.dsn(password), autocommit=True)
    try:
        for sql in STATEMENTS:
            # denied, refused by the server: its span is what is looked at
            with contextlib.suppress(psycopg.Error):
                await conn.execute(sql)  # type: ignore[arg-type]
        # A bound parameter (extended protocol) and a prepared statement.
        await conn.execute("SELECT id FROM sales.orders WHERE item = %s", (f"{MARK}-param",))
        await conn.execute(
            "SELECT id FROM sales.orders WHERE item = %s", (f"{MARK}-prepared",), prepare=True
        )
    finally:
        await conn.close()


async def test_no_literal_password_or_token_reaches_a_statement_span(stack: PgStack) -> None:
    sink: OtlpSink
    async with otlp_sink() as sink:
        tracing.configure(TracingSettings(enabled=True, otlp_endpoint=sink.url))
        try:
            etl, ops = token(stack, "etl"), token(stack, "ops")
            await run_all(stack, etl)
            await run_all(stack, ops)
            # The exporter posts from its own thread to a receiver on this loop.
            assert await asyncio.to_thread(tracing.flush)
        finally:
            await asyncio.to_thread(tracing.shutdown)
    spans = list(sink.spans())
    names = {s.name for s in spans}
    # not vacuous: the statements after the refused ones were recorded too
    assert {"SELECT sales.orders", "INSERT sales.orders", "DO database", "ALTER ROLE"} <= names
    assert any(attributes(s).get("lockgate.decision") == "deny" for s in spans)
    assert all(s.trace_id.hex() == TRACE for s in spans)
    text = sink.text()
    leaked = [
        secret
        for secret in (MARK, etl, ops, *etl.split("."), *ops.split("."), stack.login_password)
        if secret in text
    ]
    assert leaked == []
