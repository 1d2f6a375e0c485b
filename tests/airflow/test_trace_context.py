"""The task's trace context the secrets backend sends with a token request: the current
OpenTelemetry span, else the task instance's carrier, else ``TRACEPARENT``, else a fresh
trace id per task try; and the client sends it as the ``traceparent`` header."""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import SimpleNamespace

import pytest
from opentelemetry import trace
from opentelemetry.trace import NonRecordingSpan, SpanContext, TraceFlags

from lockgate.airflow import trace_context
from lockgate.airflow._client import TokenServiceClient
from lockgate.airflow.trace_context import task_traceparent

COORDS: dict[str, str | int] = {"dag_id": "d", "task_id": "t", "run_id": "r", "try_number": 1,
                                "map_index": -1}  # fmt: skip
CARRIER_TP = "00-11111111111111111111111111111111-2222222222222222-01"
ENV_TP = "00-33333333333333333333333333333333-4444444444444444-00"


@pytest.fixture(autouse=True)
def no_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("TRACEPARENT", raising=False)
    monkeypatch.setattr(trace_context, "_fresh", {})


def test_the_current_span_of_the_task_process_wins(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TRACEPARENT", ENV_TP)
    ctx = SpanContext(0xABC, 0xDEF, is_remote=False, trace_flags=TraceFlags(1))
    with trace.use_span(NonRecordingSpan(ctx)):
        assert task_traceparent(COORDS) == f"00-{0xABC:032x}-{0xDEF:016x}-01"


def test_then_the_task_instances_carrier(monkeypatch: pytest.MonkeyPatch) -> None:
    import airflow.sdk

    monkeypatch.setenv("TRACEPARENT", ENV_TP)
    ti = SimpleNamespace(dag_id="d", task_id="t", run_id="r",
                         context_carrier={"traceparent": CARRIER_TP})  # fmt: skip
    monkeypatch.setattr(airflow.sdk, "get_current_context", lambda: {"ti": ti})
    assert task_traceparent(COORDS) == CARRIER_TP
    # Another try's request (a trigger asking for a deferred try) does not take it.
    assert task_traceparent({**COORDS, "run_id": "other"}) == ENV_TP


def test_then_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TRACEPARENT", ENV_TP)
    assert task_traceparent(COORDS) == ENV_TP
    monkeypatch.setenv("TRACEPARENT", "00-not-a-trace")
    assert task_traceparent(COORDS) != "00-not-a-trace"


def test_else_a_fresh_one_per_task_try(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level("INFO", logger="lockgate.airflow")
    first = task_traceparent(COORDS)
    assert trace_context.valid(first) and first.endswith("-00")
    assert task_traceparent(COORDS) == first  # the try's later requests: the same trace
    assert task_traceparent({**COORDS, "try_number": 2}) != first
    assert first[3:35] in caplog.text  # written to the task log, where an operator looks


def test_the_client_sends_it_as_the_traceparent_header() -> None:
    seen: list[str | None] = []

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            self.rfile.read(int(self.headers["Content-Length"]))
            seen.append(self.headers.get("traceparent"))
            body = json.dumps({"access_token": "t", "expires_in": 60, "jti": "j"}).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        client = TokenServiceClient(f"http://127.0.0.1:{server.server_address[1]}", "prod",
                                    client_secret="s")  # fmt: skip
        minted = client.mint(conn_id="c", coords=COORDS, requested_ttl=None,
                             traceparent=CARRIER_TP)  # fmt: skip
        client.mint(conn_id="c", coords=COORDS, requested_ttl=None)
    finally:
        server.shutdown()
    assert seen == [CARRIER_TP, None]
    assert minted.traceparent == CARRIER_TP
