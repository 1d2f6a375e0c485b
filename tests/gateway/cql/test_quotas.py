"""Quotas in the CQL engine: Overloaded answers, pacing in order, slots always given back."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from lockgate import metrics, tracing
from lockgate.gateway.cql import codec
from lockgate.identity import TaskIdentity, TokenIssuer
from tests.gateway.quota_fakes import FakeGate, RecordingSpan, eventually
from tests.tracing_helpers import PARENT_SPAN, SAMPLED, TRACE_ID

from .engine_stack import RawClient, Stack, connect, cql_context, stack_fixture

INSERT = "INSERT INTO ks.orders (id, item) VALUES ({id}, 'pen')"


@pytest.fixture
async def stack(tmp_path: Path) -> AsyncIterator[Stack]:
    async for s in stack_fixture(tmp_path):
        yield s


def use_gate(stack: Stack, gate: FakeGate) -> FakeGate:
    cql_context(stack).quotas = gate
    return gate


async def etl_raw(stack: Stack) -> RawClient:
    raw = await RawClient.open(stack.port)
    assert isinstance(await raw.login(stack.token("etl")), codec.AuthSuccess)
    return raw


def send_together(raw: RawClient, *events: codec.Event) -> None:
    raw.writer.write(b"".join(raw.conn.send(e) for e in events))


async def test_throttled_statement_is_overloaded_audited_and_counted(stack: Stack) -> None:
    gate = use_gate(stack, FakeGate(statements="throttle", actions=("write",)))
    counter = metrics.QUOTA_THROTTLED.labels("cass", "etl-writes", "rate")
    before = counter._value.get()
    raw = await etl_raw(stack)
    raw.send(codec.Query(stream=3, query=INSERT.format(id=1)))
    answer = await raw.recv()
    assert isinstance(answer, codec.Error) and answer.code == codec.ERR_OVERLOADED
    assert answer.stream == 3
    assert "etl-writes" in answer.message and "retry after 1.250 s" in answer.message
    # the session goes on: a read no quota limits is served
    raw.send(codec.Query(stream=4, query="SELECT * FROM ks.orders"))
    assert isinstance(await raw.recv(), codec.Rows)
    raw.close()
    (rec,) = stack.audit("throttled")
    assert (rec.decision, rec.reason, rec.rule) == ("deny", "throttled", "etl-read-write")
    assert (rec.action, rec.object, rec.status) == ("write", "ks.orders", codec.ERR_OVERLOADED)
    assert rec.detail["limit"] == "etl-writes" and rec.detail["kind"] == "rate"
    assert rec.detail["retry_after"] == 1.25
    assert rec.dag_id == "etl"
    assert not [r for r in stack.audit("admitted") if r.action == "write"]  # nothing ran
    assert counter._value.get() == before + 1
    assert ("write", "ks.orders") in gate.asked


async def test_denied_statement_never_asks_the_quota(stack: Stack) -> None:
    gate = use_gate(stack, FakeGate())
    raw = await etl_raw(stack)
    raw.send(codec.Query(stream=3, query="INSERT INTO ks.secrets (id, v) VALUES (1, 'x')"))
    answer = await raw.recv()
    assert isinstance(answer, codec.Error) and answer.code == codec.ERR_UNAUTHORIZED
    raw.close()
    assert gate.asked == []


async def test_batch_asks_once_per_object(stack: Stack) -> None:
    gate = use_gate(stack, FakeGate())
    raw = await etl_raw(stack)
    batch = "BEGIN BATCH " + " ".join(INSERT.format(id=i) + ";" for i in range(5)) + " APPLY BATCH"
    raw.send(codec.Query(stream=3, query=batch))
    assert isinstance(await raw.recv(), codec.Result)
    assert gate.asked == [("write", "ks.orders")]
    assert gate.costs == [5]  # every statement of the batch counts against a rate
    await eventually(lambda: gate.held == 1)  # the session's slot only
    raw.close()
    await eventually(lambda: gate.held == 0)


async def test_throttled_session_is_refused_at_login(stack: Stack) -> None:
    gate = use_gate(stack, FakeGate(sessions="throttle", limit="etl-sessions"))
    raw = await RawClient.open(stack.port)
    answer = await raw.login(stack.token("etl"))
    assert isinstance(answer, codec.Error) and answer.code == codec.ERR_OVERLOADED
    assert "etl-sessions" in answer.message
    assert await raw.closed()
    (rec,) = stack.audit("throttled")
    assert (rec.action, rec.decision, rec.reason) == ("connect", "deny", "throttled")
    assert rec.detail["kind"] == "sessions" and rec.detail["limit"] == "etl-sessions"
    assert gate.held == 0


async def test_slots_are_given_back_when_answered_and_at_session_end(stack: Stack) -> None:
    gate = use_gate(stack, FakeGate())
    raw = await etl_raw(stack)
    assert gate.held == 1  # the session
    send_together(raw, *(codec.Query(stream=10 + i, query=INSERT.format(id=i)) for i in range(8)))
    for _ in range(8):
        assert isinstance(await raw.recv(), codec.Result)
    await eventually(lambda: gate.held == 1)
    raw.close()
    await eventually(lambda: gate.held == 0)


async def test_a_paced_statement_holds_later_frames_in_order(stack: Stack) -> None:
    gate = use_gate(stack, FakeGate(statements="pace", actions=("write",), delay=0.3))
    raw = await etl_raw(stack)
    t0 = time.monotonic()
    send_together(
        raw,
        codec.Query(stream=3, query=INSERT.format(id=42)),
        codec.Query(stream=4, query="SELECT item FROM ks.orders WHERE id = 42"),
    )
    first, second = await raw.recv(), await raw.recv()
    assert time.monotonic() - t0 >= 0.3
    assert isinstance(first, codec.Result) and first.stream == 3
    # the read waited for the paced write: it sees its row
    assert isinstance(second, codec.Rows) and second.stream == 4 and len(second.rows) == 1
    await eventually(lambda: gate.held == 1)
    raw.close()
    await eventually(lambda: gate.held == 0)


async def test_a_paced_statement_is_dropped_when_the_client_leaves(stack: Stack) -> None:
    gate = use_gate(stack, FakeGate(statements="pace", actions=("write",), delay=5.0))
    raw = await etl_raw(stack)
    raw.send(codec.Query(stream=3, query=INSERT.format(id=7)))
    await asyncio.sleep(0.2)
    raw.close()
    await eventually(lambda: gate.cancelled == 1 and gate.held == 0)
    assert not [r for r in stack.audit("admitted") if r.action == "write"]


async def test_one_span_per_statement_without_its_text(
    stack: Stack, monkeypatch: pytest.MonkeyPatch
) -> None:
    spans: list[RecordingSpan] = []

    def start_request(protocol: str, resource: str, name: str, **kw: Any) -> RecordingSpan:
        assert protocol == "cql" and resource == "cass"
        spans.append(RecordingSpan(name, dict(kw["attributes"]), kw["traceparent"]))
        return spans[-1]

    monkeypatch.setattr(tracing, "enabled", lambda: True)
    monkeypatch.setattr(tracing, "start_request", start_request)
    use_gate(stack, FakeGate(statements="throttle", actions=("admin",)))
    raw = await etl_raw(stack)
    raw.send(codec.Query(stream=3, query=INSERT.format(id=5)))
    assert isinstance(await raw.recv(), codec.Result)
    raw.close()
    (span,) = spans
    assert span.name == "INSERT ks.orders"
    attrs = span.attributes
    assert attrs["db.system.name"] == "cassandra" and attrs["db.operation.name"] == "INSERT"
    assert (attrs["db.namespace"], attrs["db.collection.name"]) == ("ks", "orders")
    assert attrs["server.port"] == stack.fake.port and attrs["lockgate.dag_id"] == "etl"
    assert not any("pen" in str(v) for v in attrs.values())  # no literal, no text
    assert [c[0] for c in span.calls] == ["decided", "attempt", "attempt_done", "end"]
    assert span.calls[-1] == ("end", codec.RESULT_VOID)


# -- the real gate: quotas of a policy file, as the server builds them -------------------------
def add_quotas(stack: Stack, text: str) -> None:
    policies = Path(str(stack.gw.config.data_dir)).parent / "policies"
    (policies / "quotas.yaml").write_text(text)
    assert stack.gw.policy.reload_if_changed(), stack.gw.policy.last_error


async def test_policy_quotas_rate_and_sessions(stack: Stack) -> None:
    add_quotas(
        stack,
        "quotas:\n"
        "  - {id: etl-writes, principals: ['airflow:prod/etl/*'], resources: [cass],"
        " actions: [write], rate: 1/m, burst: 2}\n"
        "  - {id: etl-sessions, principals: ['airflow:prod/etl/*'], resources: [cass],"
        " sessions: 1}\n",
    )
    raw = await etl_raw(stack)
    send_together(raw, *(codec.Query(stream=3 + i, query=INSERT.format(id=i)) for i in range(3)))
    answers = [await raw.recv() for _ in range(3)]
    assert [type(a).__name__ for a in answers].count("Error") == 1
    (refused,) = [a for a in answers if isinstance(a, codec.Error)]
    assert refused.code == codec.ERR_OVERLOADED and "etl-writes" in refused.message
    second = await RawClient.open(stack.port)
    answer = await second.login(stack.token("etl"))
    assert isinstance(answer, codec.Error) and "etl-sessions" in answer.message
    raw.close()
    # the first session's slot comes back when it ends: a new login gets in
    for _ in range(50):
        third = await RawClient.open(stack.port)
        if isinstance(await third.login(stack.token("etl")), codec.AuthSuccess):
            break
        await asyncio.sleep(0.05)
    else:
        raise AssertionError("the session slot was not given back")
    third.close()
    kinds = sorted(r.detail["kind"] for r in stack.audit("throttled"))
    assert kinds[0] == "rate" and set(kinds[1:]) == {"sessions"}


async def test_policy_quota_with_max_delay_paces_the_stock_driver(stack: Stack) -> None:
    add_quotas(
        stack,
        "quotas:\n"
        "  - {id: etl-paced, principals: ['airflow:prod/etl/*'], resources: [cass],"
        " actions: [write], rate: 20/s, burst: 1, max_delay: 2s}\n",
    )
    session = await asyncio.to_thread(connect, stack.port, stack.token("etl"))
    try:
        prepared = await asyncio.to_thread(
            session.prepare, "INSERT INTO ks.orders (id, item) VALUES (?, 'pen')"
        )
        t0 = time.monotonic()
        for i in range(11):  # none fails: each waits for its token
            await asyncio.to_thread(session.execute, prepared, (100 + i,))
        elapsed = time.monotonic() - t0
    finally:
        await asyncio.to_thread(session.cluster.shutdown)
    assert elapsed >= 0.45  # 10 tokens after the burst at 20/s
    assert not stack.audit("throttled")


async def test_a_prepare_asks_no_quota_its_executes_do(stack: Stack) -> None:
    gate = use_gate(stack, FakeGate(statements="throttle", actions=("write",)))
    raw = await etl_raw(stack)
    raw.send(codec.Prepare(stream=3, query="INSERT INTO ks.orders (id, item) VALUES (?, ?)"))
    assert isinstance(await raw.recv(), codec.Prepared)
    assert gate.asked == []
    raw.close()


# -- the real tracing: spans of a statement, children of the token's traceparent -------------
def traced_token(stack: Stack) -> str:
    issuer = TokenIssuer(stack.gw.state.keys, stack.gw.config.issuer_url)
    identity = TaskIdentity("prod", "etl", "load", "run-1", 1)
    return issuer.mint(identity, "cass", 900, traceparent=SAMPLED)[0]


async def test_statement_spans_join_the_tasks_trace(
    stack: Stack, spans: InMemorySpanExporter
) -> None:
    use_gate(stack, FakeGate(statements="throttle", actions=("admin",)))
    raw = await RawClient.open(stack.port)
    assert isinstance(await raw.login(traced_token(stack)), codec.AuthSuccess)
    raw.send(codec.Query(stream=3, query="INSERT INTO ks.orders (id, item) VALUES (9, 'hunter2')"))
    assert isinstance(await raw.recv(), codec.Result)
    raw.send(codec.Query(stream=4, query="TRUNCATE ks.orders"))  # admin: denied by policy
    assert isinstance(await raw.recv(), codec.Error)
    raw.close()
    assert tracing.flush()
    finished = {s.name: s for s in spans.get_finished_spans()}
    server, upstream = finished["INSERT ks.orders"], finished["INSERT ks.orders upstream"]
    assert server.context is not None and upstream.parent is not None
    assert f"{server.context.trace_id:032x}" == TRACE_ID
    assert server.parent is not None and f"{server.parent.span_id:016x}" == PARENT_SPAN
    assert upstream.parent.span_id == server.context.span_id
    attrs = dict(server.attributes or {})
    assert attrs["db.system.name"] == "cassandra" and attrs["db.collection.name"] == "orders"
    assert attrs["lockgate.decision"] == "allow" and attrs["lockgate.rule"] == "etl-read-write"
    assert "hunter2" not in repr(attrs)
    denied = dict(finished["TRUNCATE ks.orders"].attributes or {})
    assert denied["lockgate.decision"] == "deny"
