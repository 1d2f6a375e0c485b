"""A task's own trace context, forged where the task process reads it (``TRACEPARENT``,
the task instance's carrier, the current span): only a well-formed one is sent, so nothing
a task sets can add a header to the token request or a line to the task log."""

from __future__ import annotations

import logging
from types import SimpleNamespace

import pytest
from opentelemetry import trace
from opentelemetry.trace import NonRecordingSpan, SpanContext, TraceFlags

from lockgate.airflow import trace_context
from lockgate.airflow.trace_context import task_traceparent
from lockgate.tracing import valid_traceparent

COORDS: dict[str, str | int] = {"dag_id": "d", "task_id": "t", "run_id": "r", "try_number": 1,
                                "map_index": -1}  # fmt: skip
VALID = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
FORGED = [
    VALID + "\r\nX-Injected: 1",
    VALID + "\n",
    "X-Injected: 1\r\n" + VALID,
    VALID.upper(),
    "ff" + VALID[2:],
    "00-" + "0" * 32 + VALID[35:],
    VALID + "-" + "a" * 10_000,
    "\u0661" * 55,
]


@pytest.fixture(autouse=True)
def no_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("TRACEPARENT", raising=False)
    monkeypatch.setattr(trace_context, "_fresh", {})


@pytest.mark.parametrize("forged", FORGED)
def test_a_forged_environment_or_carrier_is_replaced_not_sent(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture, forged: str
) -> None:
    import airflow.sdk

    caplog.set_level(logging.DEBUG, logger="lockgate.airflow")
    monkeypatch.setenv("TRACEPARENT", forged.replace("\x00", ""))
    ti = SimpleNamespace(dag_id="d", task_id="t", run_id="r",
                         context_carrier={"traceparent": forged})  # fmt: skip
    monkeypatch.setattr(airflow.sdk, "get_current_context", lambda: {"ti": ti})
    sent = task_traceparent(COORDS)
    assert valid_traceparent(sent) == sent and sent != forged
    assert "Injected" not in caplog.text and "\r" not in caplog.text


def test_a_carrier_of_the_wrong_shape_is_ignored(monkeypatch: pytest.MonkeyPatch) -> None:
    import airflow.sdk

    for carrier in ({"traceparent": [VALID]}, {"traceparent": VALID.encode()}, [VALID], VALID):
        ti = SimpleNamespace(dag_id="d", task_id="t", run_id="r", context_carrier=carrier)
        monkeypatch.setattr(airflow.sdk, "get_current_context", lambda ti=ti: {"ti": ti})
        sent = task_traceparent(COORDS)
        assert valid_traceparent(sent) == sent and sent != VALID


def test_an_invalid_current_span_falls_through() -> None:
    # A span whose context is invalid (all-zero ids) is no parent: the next source is used.
    with trace.use_span(NonRecordingSpan(SpanContext(0, 0, False, TraceFlags(1)))):
        sent = task_traceparent(COORDS)
    assert valid_traceparent(sent) == sent and sent.endswith("-00")  # a fresh one
