"""A real Airflow 3 DAG through the secrets backend with tracing on: the gateway's mint and
request spans belong to the trace the task's backend sent (read from the task's log)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind

from lockgate import tracing
from lockgate.demo.run import run_dags
from lockgate.demo.stack import LocalStack

pytestmark = [pytest.mark.airflow, pytest.mark.slow]

# The backend's log line of each minted token names the trace it sent.
MINTED = re.compile(r"Lockgate token minted for conn_id (\S+) as (\S+) .*?trace ([0-9a-f]{32})\)")


def test_the_gateways_spans_join_the_tasks_trace(
    stack: LocalStack, airflow_home: Path, spans: InMemorySpanExporter
) -> None:
    results, output = run_dags(stack, airflow_home, ["finance_daily"])
    assert results[0]["state"].split(".")[-1].lower() == "success", output[-3000:]
    minted = MINTED.findall(output)
    assert minted, output[-3000:]
    task_traces = {trace for _conn, _principal, trace in minted}
    assert len(task_traces) == 1, minted  # one task try, one trace
    (task_trace,) = task_traces

    assert tracing.flush()
    recorded = spans.get_finished_spans()
    in_trace = [s for s in recorded if format(s.context.trace_id, "032x") == task_trace]
    mints = [s for s in in_trace if s.name == "lockgate.mint"]
    requests = [
        s
        for s in in_trace
        if s.kind is SpanKind.SERVER and dict(s.attributes or {}).get("lockgate.protocol") == "http"
    ]
    assert mints, [(s.name, format(s.context.trace_id, "032x")) for s in recorded]
    assert requests, [(s.name, dict(s.attributes or {})) for s in recorded]
    # The request spans are children of the task's span, as the token's claim names it.
    assert {s.parent.span_id for s in requests if s.parent} == {
        s.parent.span_id for s in mints if s.parent
    }
    for s in requests:
        attrs = dict(s.attributes or {})
        assert attrs["lockgate.decision"] == "allow"
        assert attrs["lockgate.resource"] == "orders-api"
    # Every upstream attempt is in the same trace, under its request.
    request_ids = {s.context.span_id for s in requests}
    attempts = [s for s in in_trace if s.kind is SpanKind.CLIENT]
    assert attempts and all(s.parent and s.parent.span_id in request_ids for s in attempts)
