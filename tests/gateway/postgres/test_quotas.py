"""Quotas in the PostgreSQL engine: 53300 answers, pacing in order, slots always given back,
with psycopg against a real server."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from lockgate import metrics, tracing
from lockgate.identity import TaskIdentity, TokenIssuer
from tests.gateway.quota_fakes import FakeGate, RecordingSpan, eventually
from tests.pgserver import PgServer
from tests.tracing_helpers import PARENT_SPAN, SAMPLED, TRACE_ID

from .stack import POLICY, RESOURCE, PgStack, pg_stack

INSERT = "INSERT INTO sales.orders VALUES (%s, 'fig', 1)"


@pytest.fixture
async def stack(tmp_path: Path, pg_server: PgServer) -> AsyncIterator[PgStack]:
    async with pg_stack(tmp_path, pg_server) as s:
        yield s


def use_gate(stack: PgStack, gate: FakeGate) -> FakeGate:
    stack.engine().ctx.quotas = gate
    return gate


async def test_a_throttled_statement_is_53300_audited_and_the_session_goes_on(
    stack: PgStack,
) -> None:
    gate = use_gate(stack, FakeGate(statements="throttle", actions=("write",)))
    counter = metrics.QUOTA_THROTTLED.labels(RESOURCE, "etl-writes", "rate")
    before = counter._value.get()
    conn = await stack.connect("etl")
    try:
        since = stack.server.log_position()
        with pytest.raises(psycopg.errors.TooManyConnections) as err:
            await conn.execute("INSERT INTO sales.orders VALUES (10, 'fig', 1)")
        assert "etl-writes" in str(err.value) and "retry after 1.250 s" in str(err.value)
        # extended protocol (parameters): refused the same way, the batch up to its Sync
        with pytest.raises(psycopg.errors.TooManyConnections):
            await conn.execute(INSERT, (11,))
        cur = await conn.execute("SELECT count(*) FROM sales.orders")  # still usable
        assert await cur.fetchall() == [(2,)]
        assert "fig" not in " ".join(stack.executed(since))  # the server never saw them
    finally:
        await conn.close()
    records = stack.audit("throttled")
    assert len(records) == 2
    rec = records[0]
    assert (rec.decision, rec.reason, rec.rule) == ("deny", "throttled", "etl-sales")
    assert (rec.action, rec.object, rec.dag_id) == ("write", "sales.orders", "etl")
    assert rec.detail["limit"] == "etl-writes" and rec.detail["kind"] == "rate"
    assert rec.detail["retry_after"] == 1.25
    assert counter._value.get() == before + 2
    await eventually(lambda: gate.held == 0)


async def test_a_denied_statement_never_asks_the_quota(stack: PgStack) -> None:
    gate = use_gate(stack, FakeGate())
    conn = await stack.connect("etl")
    try:
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            await conn.execute("SELECT * FROM other.secret")
        await conn.execute("SET application_name = 'x'")  # names no object: asks nothing
    finally:
        await conn.close()
    assert gate.asked == []


async def test_a_throttled_session_is_fatal_53300_before_authentication(stack: PgStack) -> None:
    gate = use_gate(stack, FakeGate(sessions="throttle", limit="etl-sessions"))
    with pytest.raises(psycopg.OperationalError) as err:
        await stack.connect("etl")
    assert "etl-sessions" in str(err.value)
    (rec,) = stack.audit("throttled")
    assert (rec.action, rec.decision, rec.reason) == ("connect", "deny", "throttled")
    assert rec.detail["kind"] == "sessions"
    assert not [r for r in stack.audit("allowed") if r.action == "connect"]
    assert gate.held == 0


async def test_slots_are_given_back_with_each_outcome_and_at_session_end(stack: PgStack) -> None:
    gate = use_gate(stack, FakeGate())
    conn = await stack.connect("etl")
    try:
        assert gate.held == 1  # the session
        for i in range(5):
            await conn.execute(INSERT, (20 + i,))
        with pytest.raises(psycopg.errors.UniqueViolation):  # a failed statement too
            await conn.execute(INSERT, (20,))
        await eventually(lambda: gate.held == 1)
        assert gate.asked.count(("write", "sales.orders")) == 6
    finally:
        await conn.close()
    await eventually(lambda: gate.held == 0)


async def test_a_paced_statement_keeps_the_session_in_order(stack: PgStack) -> None:
    gate = use_gate(stack, FakeGate(statements="pace", actions=("write",), delay=0.3))
    conn = await stack.connect("etl")
    try:
        t0 = time.monotonic()
        async with conn.pipeline():
            await conn.execute(INSERT, (30,))
            cur = await conn.execute("SELECT item FROM sales.orders WHERE id = 30")
        assert time.monotonic() - t0 >= 0.3
        assert await cur.fetchall() == [("fig",)]
    finally:
        await conn.close()
    await eventually(lambda: gate.held == 0)


async def test_a_paced_statement_is_dropped_when_the_client_leaves(stack: PgStack) -> None:
    gate = use_gate(stack, FakeGate(statements="pace", actions=("write",), delay=5.0))
    conn = await stack.connect("etl")
    since = stack.server.log_position()
    running = asyncio.create_task(conn.execute(INSERT, (40,)))
    await asyncio.sleep(0.3)
    conn.pgconn.finish()  # the client vanishes while its statement waits for its quota
    with pytest.raises(psycopg.Error):
        await running
    await eventually(lambda: gate.cancelled == 1 and gate.held == 0)
    assert not [r for r in stack.audit("admitted") if r.action == "write"]
    assert "fig" not in " ".join(stack.executed(since))  # it never reached the server


async def test_what_the_client_sends_while_paced_is_judged_next_in_order(
    stack: PgStack,
) -> None:
    gate = use_gate(stack, FakeGate(statements="pace", actions=("write",), delay=0.3))
    conn = await stack.connect("etl")
    try:
        async with conn.pipeline():  # sent while the first INSERT waits: read ahead, kept
            for i in range(5):
                await conn.execute(INSERT, (70 + i,))
            cur = await conn.execute("SELECT count(*) FROM sales.orders WHERE id >= 70")
        assert await cur.fetchall() == [(5,)]
    finally:
        await conn.close()
    await eventually(lambda: gate.held == 0)


async def test_one_span_per_statement_without_its_text(
    stack: PgStack, monkeypatch: pytest.MonkeyPatch
) -> None:
    spans: list[RecordingSpan] = []

    def start_request(protocol: str, resource: str, name: str, **kw: Any) -> RecordingSpan:
        assert protocol == "postgres" and resource == RESOURCE
        spans.append(RecordingSpan(name, dict(kw["attributes"]), kw["traceparent"]))
        return spans[-1]

    monkeypatch.setattr(tracing, "enabled", lambda: True)
    monkeypatch.setattr(tracing, "start_request", start_request)
    use_gate(stack, FakeGate())
    conn = await stack.connect("etl")
    try:
        await conn.execute("INSERT INTO sales.orders VALUES (50, 'secret-fig', 1)")
    finally:
        await conn.close()
    (span,) = [s for s in spans if s.name.startswith("INSERT")]
    assert span.name == "INSERT sales.orders"
    attrs = span.attributes
    assert attrs["db.system.name"] == "postgresql" and attrs["db.operation.name"] == "INSERT"
    assert attrs["db.collection.name"] == "sales.orders" and attrs["db.namespace"] == stack.database
    assert attrs["server.port"] == stack.server.port and attrs["lockgate.dag_id"] == "etl"
    assert not any("secret-fig" in str(v) for v in attrs.values())
    assert [c[0] for c in span.calls] == ["decided", "attempt", "attempt_done", "end"]
    assert span.calls[-1] == ("end", "ok")


async def test_policy_quotas_sessions_cap_and_paced_writes(stack: PgStack) -> None:
    stack.write_policy(
        POLICY + "quotas:\n"
        "  - {id: etl-sessions, principals: ['airflow:prod/etl/*'], resources: [pg],"
        " sessions: 1}\n"
        "  - {id: etl-paced, principals: ['airflow:prod/etl/*'], resources: [pg],"
        " actions: [write], rate: 20/s, burst: 1, max_delay: 2s}\n"
    )
    conn = await stack.connect("etl")
    try:
        with pytest.raises(psycopg.OperationalError) as err:
            await stack.connect("etl")
        assert "etl-sessions" in str(err.value)
        t0 = time.monotonic()
        for i in range(11):  # none fails: each waits for its token
            await conn.execute(INSERT, (60 + i,))
        assert time.monotonic() - t0 >= 0.45
    finally:
        await conn.close()
    for _ in range(50):  # the slot comes back with the session's end
        try:
            await (await stack.connect("etl")).close()
            break
        except psycopg.OperationalError:
            await asyncio.sleep(0.05)
    else:
        raise AssertionError("the session slot was not given back")
    assert [r.detail["kind"] for r in stack.audit("throttled")] == ["sessions"]


async def test_statement_spans_join_the_tasks_trace(
    stack: PgStack, spans: InMemorySpanExporter
) -> None:
    issuer = TokenIssuer(stack.gw.state.keys, stack.gw.config.issuer_url)
    identity = TaskIdentity("prod", "etl", "load", "run-1", 1)
    token = issuer.mint(identity, RESOURCE, 900, traceparent=SAMPLED)[0]
    conn = await psycopg.AsyncConnection.connect(stack.dsn(token), autocommit=True)
    try:
        await conn.execute("INSERT INTO sales.orders VALUES (80, 'hunter2', 1)")
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            await conn.execute("SELECT value FROM other.secret WHERE value = 'hunter2'")
    finally:
        await conn.close()
    assert tracing.flush()
    finished = {s.name: s for s in spans.get_finished_spans()}
    server, upstream = finished["INSERT sales.orders"], finished["INSERT sales.orders upstream"]
    assert server.context is not None and server.parent is not None
    assert f"{server.context.trace_id:032x}" == TRACE_ID
    assert f"{server.parent.span_id:016x}" == PARENT_SPAN
    assert upstream.parent is not None and upstream.parent.span_id == server.context.span_id
    attrs = dict(server.attributes or {})
    assert attrs["db.system.name"] == "postgresql" and attrs["lockgate.rule"] == "etl-sales"
    denied = dict(finished["SELECT other.secret"].attributes or {})
    assert denied["lockgate.decision"] == "deny"
    every = " ".join(f"{s.name} {dict(s.attributes or {})}" for s in finished.values())
    assert "hunter2" not in every
