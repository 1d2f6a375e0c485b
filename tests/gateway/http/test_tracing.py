"""The HTTP engine's request spans: one per request, with the decision, each upstream
attempt, retries and the final status; no query string or token in any attribute; the
token's ``traceparent`` as parent. Spans are recorded by a stand-in for
:func:`lockgate.tracing.start_request` (what the engine calls)."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import pytest

from lockgate import tracing
from tests.gateway.quota_fakes import FakeGate

from .conftest import bearer

PARENT = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"


@dataclass
class Span:
    protocol: str
    resource: str
    name: str
    traceparent: str | None
    attributes: dict[str, Any]
    events: list[tuple[Any, ...]] = field(default_factory=list)
    ended: list[tuple[Any, Any]] = field(default_factory=list)

    def decided(self, action: str, obj: str, decision: str, rule: Any, reason: Any) -> None:
        self.events.append(("decided", action, obj, decision, rule))

    def throttled(self, limit: str, retry_after: float) -> None:
        self.events.append(("throttled", limit, retry_after))

    @contextmanager
    def upstream_attempt(self, attempt: int) -> Iterator[None]:
        self.events.append(("attempt", attempt))
        yield
        self.events.append(("attempt_end", attempt))

    def retried(self, reason: str, delay: float) -> None:
        self.events.append(("retried", reason))

    def end(self, *, status: int | str | None = None, error: str | None = None) -> None:
        self.ended.append((status, error))


@pytest.fixture
def spans(monkeypatch: pytest.MonkeyPatch) -> list[Span]:
    made: list[Span] = []

    def start_request(
        protocol: str,
        resource: str,
        name: str,
        *,
        traceparent: str | None = None,
        attributes: Mapping[str, Any] | None = None,
    ) -> Span:
        span = Span(protocol, resource, name, traceparent, dict(attributes or {}))
        made.append(span)
        return span

    monkeypatch.setattr(tracing, "enabled", lambda: True)
    monkeypatch.setattr(tracing, "start_request", start_request)
    return made


async def test_a_request_span_carries_the_decision_attempts_and_status(
    make_gateway, upstream, spans
):
    gw = await make_gateway()
    claims = gw.verifier.tokens["tok-orders"]
    claims.traceparent = PARENT
    async with aiohttp.ClientSession() as s:
        for path in ("items/1?secret=x", "flaky-1"):
            async with s.get(f"{gw.url}/orders/{path}", headers=bearer()) as r:
                assert r.status == 200
    first, flaky = spans
    assert first.protocol == "http" and first.resource == "orders" and first.name == "GET"
    assert first.traceparent == PARENT
    assert first.attributes["url.path"] == "/items/1"  # never the query
    assert first.attributes["http.request.method"] == "GET"
    assert first.attributes["server.address"] == "127.0.0.1"
    assert first.attributes["lockgate.dag_id"] == "finance_daily"
    assert first.attributes["lockgate.principal"] == "airflow:prod/finance_daily/load_orders"
    assert "secret" not in str(first.attributes) and "tok-orders" not in str(first.attributes)
    assert first.events[0][:4] == ("decided", "read", "/items/1", "allow")
    assert [e[0] for e in first.events[1:]] == ["attempt", "attempt_end"]
    assert first.ended == [(200, None)]
    kinds = [e[0] for e in flaky.events]
    assert kinds == ["decided", "attempt", "attempt_end", "retried", "attempt", "attempt_end",
                     "retried", "attempt", "attempt_end"]  # fmt: skip
    assert [e[1] for e in flaky.events if e[0] == "retried"] == ["503", "503"]
    assert flaky.ended == [(200, None)]


async def test_denied_and_throttled_requests_end_their_span(make_gateway, upstream, spans):
    gw = await make_gateway(
        allow=[("read", "/public/*")],
        quotas=FakeGate(statements="throttle", limit="orders-writes", retry_after=1.2),
    )
    async with aiohttp.ClientSession() as s:
        async with s.delete(f"{gw.url}/orders/public/1", headers=bearer()) as r:
            assert r.status == 403
        async with s.get(f"{gw.url}/orders/public/1", headers=bearer()) as r:
            assert r.status == 429
    denied, throttled = spans
    assert denied.events[0][3] == "deny" and denied.ended == [(403, None)]
    assert throttled.events[0][3] == "allow"
    assert throttled.events[1] == ("throttled", "orders-writes", 1.2)
    assert throttled.ended == [(429, None)]


async def test_with_tracing_off_no_span_is_started(make_gateway, upstream, monkeypatch):
    started: list[str] = []
    monkeypatch.setattr(tracing, "enabled", lambda: False)
    monkeypatch.setattr(tracing, "start_request", lambda *a, **k: started.append("x"))
    gw = await make_gateway()
    async with (
        aiohttp.ClientSession() as s,
        s.get(f"{gw.url}/orders/items/1", headers=bearer()) as r,
    ):
        assert r.status == 200
    assert started == []


async def test_with_the_real_tracer_attempts_are_client_children_of_the_request(
    make_gateway, upstream
):
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
    from opentelemetry.trace import SpanKind

    from lockgate.config.tracing import TracingSettings

    exporter = InMemorySpanExporter()
    tracing.configure(TracingSettings(enabled=True), service_instance="t", exporter=exporter)
    try:
        gw = await make_gateway()
        gw.verifier.tokens["tok-orders"].traceparent = PARENT
        async with (
            aiohttp.ClientSession() as s,
            s.get(f"{gw.url}/orders/flaky-2?sig=abc", headers=bearer()) as r,
        ):
            assert r.status == 200
        assert tracing.flush()
        recorded = exporter.get_finished_spans()
    finally:
        tracing.shutdown()
    (request,) = [s for s in recorded if s.kind is SpanKind.SERVER]
    attempts = [s for s in recorded if s.kind is SpanKind.CLIENT]
    assert format(request.context.trace_id, "032x") == PARENT[3:35]
    attrs = dict(request.attributes or {})
    assert attrs["url.path"] == "/flaky-2" and attrs["http.response.status_code"] == 200
    assert attrs["lockgate.decision"] == "allow" and attrs["lockgate.dag_id"] == "finance_daily"
    assert "sig" not in str(attrs) and "tok-orders" not in str(attrs)
    assert len(attempts) == 3  # two 503s retried, then 200
    assert all(a.parent and a.parent.span_id == request.context.span_id for a in attempts)
    assert [e.name for e in request.events].count("lockgate.retry") == 2
