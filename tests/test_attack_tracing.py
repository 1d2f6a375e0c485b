"""Attacks on the tracing room itself: what the OTLP exporter does with a collector that
trickles, answers without end, redirects or never answers; a string protobuf cannot carry;
and what tracing costs a request when it records nothing. Exports are decoded with
opentelemetry-proto (the reference decoder), never with the gateway's own view."""

from __future__ import annotations

import logging
import socket
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import pytest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.sdk.trace.export import SpanExportResult
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from lockgate import tracing
from lockgate.config.tracing import TracingSettings
from lockgate.tracing.otlp import OtlpHttpExporter

SAMPLED = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
UNSAMPLED = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00"
API_KEY = "otlp-K3y-n3ver-l0gged"


def recorded(*values: str) -> list[Any]:
    """Spans with each of ``values`` as an object, recorded in memory."""
    exporter = InMemorySpanExporter()
    tracing.configure(TracingSettings(enabled=True), exporter=exporter)
    try:
        for value in values:
            span = tracing.start_request("http", "api", "GET", traceparent=SAMPLED)
            span.decided("read", value, "allow", "r", None)
            span.end(status=200)
        assert tracing.flush()
        return list(exporter.get_finished_spans())
    finally:
        tracing.shutdown()


@contextmanager
def collector(answer: Callable[[socket.socket], None]) -> Iterator[tuple[int, list[bytes]]]:
    """A raw TCP collector on 127.0.0.1 that reads one request head and then runs
    ``answer`` on the connection (in its own thread); yields (port, request heads)."""
    server = socket.create_server(("127.0.0.1", 0))
    server.settimeout(0.2)
    port = server.getsockname()[1]
    heads: list[bytes] = []
    done = threading.Event()

    def serve() -> None:
        while not done.is_set():
            try:
                conn, _ = server.accept()
            except TimeoutError:
                continue
            with conn:
                conn.settimeout(5)
                data = b""
                try:
                    while b"\r\n\r\n" not in data:
                        chunk = conn.recv(65536)
                        if not chunk:
                            break
                        data += chunk
                    heads.append(data.split(b"\r\n\r\n")[0])
                    answer(conn)
                except OSError:
                    pass

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield port, heads
    finally:
        done.set()
        thread.join(5)
        server.close()


def export_one(exporter: OtlpHttpExporter) -> SpanExportResult:
    (span,) = recorded("orders")
    return exporter.export([span])


# -- what protobuf can carry --------------------------------------------------------------------
def test_a_lone_surrogate_never_costs_the_batch_it_rides_in() -> None:
    # JSON's "\ud800" decodes to a lone surrogate, which UTF-8 cannot encode: the encoder
    # raised, and the batch (every task's spans in it) was lost.
    from lockgate.tracing.otlp import encode

    spans = recorded("job-name:\ud800x", "orders")
    message = ExportTraceServiceRequest()
    message.ParseFromString(encode(spans))
    objects = [
        a.value.string_value
        for rs in message.resource_spans
        for ss in rs.scope_spans
        for s in ss.spans
        for a in s.attributes
        if a.key == "lockgate.object"
    ]
    assert objects == ["job-name:?x", "orders"]


# -- collectors that misbehave ------------------------------------------------------------------
def test_a_trickling_collector_is_given_up_at_the_timeout() -> None:
    def trickle(conn: socket.socket) -> None:
        for byte in b"HTTP/1.1 200 OK\r\n" * 100:
            conn.sendall(bytes((byte,)))
            time.sleep(0.1)  # each byte well within the socket's timeout

    with collector(trickle) as (port, _):
        exporter = OtlpHttpExporter(f"http://127.0.0.1:{port}/v1/traces", timeout=1.0)
        started = time.monotonic()
        assert export_one(exporter) is SpanExportResult.FAILURE
        assert time.monotonic() - started < 3.0
        assert exporter.dropped == 1
        exporter.shutdown()


def test_an_endless_answer_is_read_no_further_than_a_status() -> None:
    sent = [0]

    def endless(conn: socket.socket) -> None:
        size = 64 * 1024 * 1024
        conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % size)
        chunk = b"x" * 65536
        while sent[0] < size:
            conn.sendall(chunk)
            sent[0] += len(chunk)

    with collector(endless) as (port, heads):
        exporter = OtlpHttpExporter(f"http://127.0.0.1:{port}/v1/traces", timeout=5.0)
        assert export_one(exporter) is SpanExportResult.SUCCESS
        exporter.shutdown()
        time.sleep(0.2)
    assert len(heads) == 1
    assert sent[0] < 32 * 1024 * 1024  # the exporter hung up instead of reading it all


def test_a_redirect_is_not_followed_and_the_headers_stay_unlogged(
    caplog: pytest.LogCaptureFixture,
) -> None:
    def elsewhere(conn: socket.socket) -> None:
        conn.sendall(b"HTTP/1.1 307 Temporary Redirect\r\nLocation: http://127.0.0.1:9/x\r\n"
                     b"Content-Length: 0\r\n\r\n")  # fmt: skip

    caplog.set_level(logging.DEBUG)
    with collector(elsewhere) as (port, heads):
        exporter = OtlpHttpExporter(
            f"http://127.0.0.1:{port}/v1/traces", {"x-api-key": API_KEY}, timeout=2.0
        )
        assert export_one(exporter) is SpanExportResult.FAILURE
        exporter.shutdown()
    assert len(heads) == 1 and API_KEY.encode() in heads[0]  # sent to the collector only
    (line,) = [r for r in caplog.records if r.getMessage() == "spans not exported"]
    assert line.fields["error"] == "HTTP 307"  # type: ignore[attr-defined]
    assert all(API_KEY not in r.getMessage() + str(vars(r)) for r in caplog.records)


def test_a_stop_never_waits_long_on_a_collector_that_does_not_answer(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # A collector that takes the request and says nothing: each export waited out the
    # timeout (10 s) twice, and the stop joined the export thread for up to 30 s more.
    hold = threading.Event()
    monkeypatch.setattr(tracing, "STOP_GRACE", 0.5)
    with collector(lambda conn: hold.wait(30)) as (port, heads):
        tracing.configure(TracingSettings(enabled=True, otlp_endpoint=f"http://127.0.0.1:{port}"))
        for _ in range(3):
            tracing.start_request("http", "api", "GET", traceparent=SAMPLED).end(status=200)
        started = time.monotonic()
        tracing.shutdown()
        took = time.monotonic() - started
        hold.set()
    assert took < 3.0
    assert heads  # it did try


# -- cost ---------------------------------------------------------------------------------------
def test_an_unsampled_request_is_decided_before_its_attributes_are_cleaned(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    tracing.configure(
        TracingSettings(enabled=True, sample_ratio=0.0), exporter=InMemorySpanExporter()
    )
    try:

        def never(*args: object) -> None:
            raise AssertionError("attributes cleaned for a span that is not recorded")

        monkeypatch.setattr(tracing, "clean_attributes", never)
        attrs = {"url.path": "/items/1", "lockgate.dag_id": "etl"}
        assert tracing.start_request("http", "api", "GET", traceparent=UNSAMPLED,
                                     attributes=attrs) is tracing.NO_SPAN  # fmt: skip
        assert tracing.start_request("http", "api", "GET", attributes=attrs) is tracing.NO_SPAN
        assert tracing.start_mint("prod", traceparent=UNSAMPLED) is tracing.NO_SPAN
    finally:
        tracing.shutdown()


def test_tracing_off_makes_nothing_per_attempt() -> None:
    span = tracing.NO_SPAN
    assert span.upstream_attempt(1) is span.upstream_attempt(2)  # one shared no-op
    with pytest.raises(KeyError), span.upstream_attempt(1):
        raise KeyError("an attempt's failure still propagates")


def dropped(reason: str) -> float:
    from lockgate.metrics import REGISTRY

    value = REGISTRY.get_sample_value("lockgate_spans_dropped_total", {"reason": reason})
    return value or 0.0


def test_a_collector_slower_than_the_gateway_costs_counted_drops_not_memory(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setenv("OTEL_BSP_MAX_QUEUE_SIZE", "8")
    monkeypatch.setenv("OTEL_BSP_MAX_EXPORT_BATCH_SIZE", "4")
    monkeypatch.setattr(tracing, "STOP_GRACE", 0.5)
    caplog.set_level(logging.DEBUG)
    hold = threading.Event()
    full, failed = dropped("queue_full"), dropped("export_failed")
    with collector(lambda conn: hold.wait(30)) as (port, _):
        tracing.configure(TracingSettings(enabled=True, otlp_endpoint=f"http://127.0.0.1:{port}"))
        for _ in range(200):
            tracing.start_request("http", "api", "GET", traceparent=SAMPLED).end(status=200)
        queued = tracing._tracing.handed - tracing._tracing.exporter.taken  # type: ignore[union-attr]
        tracing.shutdown()
        hold.set()
    assert queued <= 8  # the queue's bound, whatever the collector does
    assert dropped("queue_full") - full >= 200 - 8 - 4  # all but what was queued or posted
    assert dropped("export_failed") - failed >= 1
    # counted, not logged per span by the SDK
    assert not [r for r in caplog.records if "Queue full" in r.getMessage()]


def test_a_status_that_is_no_code_goes_through_the_filter_too() -> None:
    exporter = InMemorySpanExporter()
    tracing.configure(TracingSettings(enabled=True), exporter=exporter)
    try:
        token = "eyJhbGciOiJFZERTQSJ9.eyJzdWIiOiJ4In0.c2ln"
        for protocol, status in (
            ("postgres", f"failed for {token}"),
            ("http", "closed; password 'hunter2'"),
            ("cql", "closed 'hunter2'"),
        ):
            tracing.start_request(protocol, "r", "GET").end(status=status)  # type: ignore[arg-type]
        assert tracing.flush()
        kinds = [dict(s.attributes or {}).get("error.type") for s in exporter.get_finished_spans()]
    finally:
        tracing.shutdown()
    assert kinds == ["error", "closed", "closed"]


@pytest.mark.parametrize(
    "line",
    [
        "X-Api-Key: k\u00e9y-\u2603-s3cr3t",
        "X Api Key: s3cr3t",
        "X-Api-Key: s3cr3t\x00",
        "X-Api-Key:",
    ],
)
def test_a_header_http_cannot_carry_is_refused_at_start_by_line_only(
    tmp_path: Any, line: str
) -> None:
    # A value outside Latin-1 failed every export (http.client raised in the export thread).
    headers = tmp_path / "otlp-headers"
    headers.write_text(f"# key\nContent-Encoding: identity\n{line}\n", encoding="utf-8")
    settings = TracingSettings(
        enabled=True, otlp_endpoint="https://otel.example", otlp_headers_file=headers
    )
    with pytest.raises(ValueError, match=r"otlp-headers:3: expected") as refused:
        settings.otlp_headers()
    assert "s3cr3t" not in str(refused.value)


def test_a_header_http_client_refuses_fails_the_export_quietly(
    caplog: pytest.LogCaptureFixture,
) -> None:
    # Headers given to the exporter directly skip the configuration's check: http.client's
    # ValueError escaped to the SDK, which logged its traceback on every batch.
    caplog.set_level(logging.DEBUG)
    with collector(lambda conn: None) as (port, _):
        for value in ("k\u2603-" + API_KEY, API_KEY + "\r\nX-Injected: 1"):
            exporter = OtlpHttpExporter(
                f"http://127.0.0.1:{port}/v1/traces", {"x-api-key": value}, timeout=1.0
            )
            assert export_one(exporter) is SpanExportResult.FAILURE
            exporter.shutdown()
    assert all(API_KEY not in r.getMessage() + str(vars(r)) for r in caplog.records)
