"""Statement spans of the CQL engine carry no literal, no password and no token, whatever
the statement's shape: string and dollar-quoted literals, blobs (``0x...``), non-ASCII text,
comments of the three kinds, batches, bound values, role passwords, a statement policy
denies and one the node cannot parse. Through the real driver and the real gateway in front
of the test node, exported over OTLP/HTTP and decoded with opentelemetry-proto."""
# ruff: noqa: S608  (the statements are built around the bait literal on purpose)

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from cassandra.query import BatchStatement

from lockgate import tracing
from lockgate.config.tracing import TracingSettings
from lockgate.identity import TaskIdentity, TokenIssuer

from ...fakes.otlp_sink import attributes, otlp_sink
from .engine_stack import RESOURCE, UPSTREAM_PASSWORD, Stack, connect, stack_fixture

TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
SAMPLED = f"00-{TRACE}-00f067aa0ba902b7-01"
MARK = "Zq7S3cr3t"  # every text literal below carries it; no span may
BLOB = "5ec7e75ec7e7"  # and the blobs this
STATEMENTS = [
    f"SELECT * FROM ks.orders WHERE id = 1 AND item = '{MARK}-plain' ALLOW FILTERING",
    f"INSERT INTO ks.orders (id, item) VALUES (2, '{MARK}-it''s')",
    f"INSERT INTO ks.orders (id, item) VALUES (3, $${MARK}-dollar$$)",
    f"INSERT INTO ks.orders (id, item) VALUES (4, '{MARK}-ünïcødé')",
    f"INSERT INTO ks.secrets (id, v) VALUES (5, 0x{BLOB})",
    f"SELECT id FROM ks.orders /* {MARK}-block */ WHERE id = 1",
    f"SELECT id FROM ks.orders WHERE id = 1 -- {MARK}-dash",
    f"SELECT id FROM ks.orders WHERE id = 1 // {MARK}-slash",
    f"BEGIN BATCH INSERT INTO ks.orders (id, item) VALUES (6, '{MARK}-batch'); APPLY BATCH",
    f"INSERT INTO ks.secrets (id, v) VALUES (7, '{MARK}-denied')",
    f"SELEC '{MARK}-syntax'",
    f"CREATE ROLE lg_attack WITH PASSWORD = '{MARK}-password' AND LOGIN = true",
    f"UPDATE ks.orders SET item = '{MARK}-update' WHERE id = 2",
    f"UPDATE ks.orders SET item = 'x' WHERE id = 2 IF item = '{MARK}-lwt'",
    f'INSERT INTO ks.orders JSON \'{{"id": 12, "item": "{MARK}-json"}}\'',
    f"CREATE USER lg_attack_user WITH PASSWORD '{MARK}-user-password'",
    f"ALTER ROLE lg_attack WITH PASSWORD = '{MARK}-alter-password'",
    f"SELECT * FROM ks.orders WHERE item = textAsBlob('{MARK}-fn') ALLOW FILTERING",
    f"INSERT INTO ks.orders (id, item) VALUES (13, '{MARK}-ttl') USING TTL 60",
]


@pytest.fixture
async def stack(tmp_path: Path) -> AsyncIterator[Stack]:
    async for s in stack_fixture(tmp_path):
        yield s


def token(stack: Stack, dag: str) -> str:
    issuer = TokenIssuer(stack.gw.state.keys, stack.gw.config.issuer_url, clock=time.time)
    identity = TaskIdentity("prod", dag, "load", "run-1", 1)
    return issuer.mint(identity, RESOURCE, 900, traceparent=SAMPLED)[0]


def run_all(port: int, password: str) -> None:
    session = connect(port, password)
    try:
        for cql in STATEMENTS:
            # denied, refused by the node: its span is what is looked at
            with contextlib.suppress(Exception):
                session.execute(cql)
        prepared = session.prepare("INSERT INTO ks.orders (id, item) VALUES (?, ?)")
        session.execute(prepared, (8, f"{MARK}-bound"))
        session.execute("INSERT INTO ks.orders (id, item) VALUES (%s, %s)", (9, f"{MARK}-param"))
        batch = BatchStatement()  # a BATCH frame: bound values and a literal
        batch.add(prepared, (10, f"{MARK}-batch-bound"))
        batch.add(f"INSERT INTO ks.orders (id, item) VALUES (11, '{MARK}-batch-text')")
        session.execute(batch)
    finally:
        session.cluster.shutdown()


async def test_no_literal_password_or_token_reaches_a_statement_span(stack: Stack) -> None:
    async with otlp_sink() as sink:
        tracing.configure(TracingSettings(enabled=True, otlp_endpoint=sink.url))
        try:
            etl, ops = token(stack, "etl"), token(stack, "ops")
            await asyncio.to_thread(run_all, stack.port, etl)
            await asyncio.to_thread(run_all, stack.port, ops)
            # The exporter posts from its own thread to a receiver on this loop.
            assert await asyncio.to_thread(tracing.flush)
        finally:
            await asyncio.to_thread(tracing.shutdown)
    spans = list(sink.spans())
    names = {s.name for s in spans}
    # not vacuous: the statements after the refused ones were recorded too
    assert {"SELECT ks.orders", "INSERT ks.orders", "BATCH ks.orders"} <= names, names
    assert any(attributes(s).get("lockgate.decision") == "deny" for s in spans)
    assert all(s.trace_id.hex() == TRACE for s in spans)
    text = sink.text()
    leaked = [
        secret
        for secret in (MARK, BLOB, etl, ops, *etl.split("."), *ops.split("."), UPSTREAM_PASSWORD)
        if secret in text
    ]
    assert leaked == []
