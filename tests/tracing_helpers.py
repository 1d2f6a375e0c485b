"""Real tracing recorded in memory for a test: the ``spans`` fixture (registered for every test
package in tests/conftest.py), the context manager behind it, and the task's trace a test
token carries (W3C trace context: trace id, parent span id, ``traceparent`` headers)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import pytest
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from lockgate import tracing
from lockgate.config.tracing import TracingSettings

#: The task's trace and the span the gateway's spans are children of.
TRACE_ID = "0af7651916cd43dd8448eb211c80319c"
PARENT_SPAN = "b7ad6b7169203331"
SAMPLED = f"00-{TRACE_ID}-{PARENT_SPAN}-01"
UNSAMPLED = f"00-{TRACE_ID}-{PARENT_SPAN}-00"


@contextmanager
def recording_spans(
    settings: TracingSettings | None = None, *, service_instance: str = ""
) -> Iterator[InMemorySpanExporter]:
    """Tracing on in this process (``settings``, enabled by default), its spans kept in memory;
    off again on the way out."""
    exporter = InMemorySpanExporter()
    tracing.configure(
        settings or TracingSettings(enabled=True),
        service_instance=service_instance,
        exporter=exporter,
    )
    try:
        yield exporter
    finally:
        tracing.shutdown()


@pytest.fixture
def spans() -> Iterator[InMemorySpanExporter]:
    """Tracing on (service instance ``t``) for the test, its spans kept in memory."""
    with recording_spans(service_instance="t") as exporter:
        yield exporter


def finished(exporter: InMemorySpanExporter) -> list[ReadableSpan]:
    """The spans ended so far (the batch processor flushed first)."""
    assert tracing.flush()
    return list(exporter.get_finished_spans())
