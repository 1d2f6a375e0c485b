"""Spans of requests and mints: named and attributed per the conventions, children of the
token's ``traceparent``, free of literals, tokens and query strings; nothing when off; and
exported over OTLP/HTTP to a collector."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode
from pydantic import ValidationError

from lockgate import tracing
from lockgate.config.tracing import TracingSettings
from tests.tracing_helpers import (
    PARENT_SPAN,
    SAMPLED,
    TRACE_ID,
    UNSAMPLED,
    finished,
    recording_spans,
)

SECRET_LITERAL = "hunter2-Zx9"
A_TOKEN = "eyJhbGciOiJFZERTQSJ9.eyJzdWIiOiJ4In0.c2lnbmF0dXJl"


def every_value(span: ReadableSpan) -> list[str]:
    values = [span.name, *(str(v) for v in (span.attributes or {}).values())]
    for event in span.events:
        values += [event.name, *(str(v) for v in (event.attributes or {}).values())]
    return values


def test_off_by_default_costs_one_shared_no_op() -> None:
    tracing.configure(TracingSettings())
    assert not tracing.enabled()
    assert tracing.start_request("http", "orders", "GET", traceparent=SAMPLED) is tracing.NO_SPAN
    assert tracing.start_mint("prod", traceparent=SAMPLED) is tracing.NO_SPAN
    span = tracing.NO_SPAN
    span.decided("read", "x", "allow", "r", None)
    with span.upstream_attempt(1):
        span.retried("timeout", 0.1)
    span.end(status=200)


def test_http_request_span_is_a_child_of_the_tokens_traceparent(
    spans: InMemorySpanExporter,
) -> None:
    span = tracing.start_request(
        "http",
        "orders-cosmos",
        "GET /dbs/sales/colls/orders?sig=abc",
        traceparent=SAMPLED,
        attributes={
            "http.request.method": "GET",
            "url.path": "/dbs/sales/colls/orders?sig=abc",
            "url.full": "https://acct/dbs/sales?sig=abc",
            "url.query": "sig=abc",
            "user_agent.original": "x",
            "lockgate.token": A_TOKEN,
            "enduser.id": "airflow:prod/etl/load",
        },
    )
    span.decided("read", "sales/orders", "allow", "etl-read", "allowed by etl-read")
    with span.upstream_attempt(1):
        span.retried("429 from upstream", 0.25)
    with span.upstream_attempt(2):
        pass
    span.end(status=200)
    span.end(status=500)  # once only

    by_kind: dict[SpanKind, list[ReadableSpan]] = {s.kind: [] for s in finished(spans)}
    for s in finished(spans):
        by_kind[s.kind].append(s)
    (server,) = by_kind[SpanKind.SERVER]
    attempts = by_kind[SpanKind.CLIENT]
    assert server.name == "GET /dbs/sales/colls/orders"
    assert format(server.context.trace_id, "032x") == TRACE_ID
    assert server.parent is not None and format(server.parent.span_id, "016x") == PARENT_SPAN
    attrs = dict(server.attributes or {})
    assert attrs["http.request.method"] == "GET"
    assert attrs["url.path"] == "/dbs/sales/colls/orders"
    assert attrs["http.response.status_code"] == 200
    assert attrs["lockgate.resource"] == "orders-cosmos"
    assert attrs["lockgate.protocol"] == "http"
    assert attrs["lockgate.decision"] == "allow" and attrs["lockgate.rule"] == "etl-read"
    assert attrs["lockgate.object"] == "sales/orders"
    assert attrs["enduser.id"] == "airflow:prod/etl/load"
    assert not {"url.full", "url.query", "user_agent.original", "lockgate.token"} & set(attrs)
    assert server.status.status_code is StatusCode.UNSET
    assert [e.name for e in server.events] == ["lockgate.retry"]
    assert sorted(str(dict(a.attributes or {})["lockgate.attempt"]) for a in attempts) == ["1", "2"]
    assert all(a.parent is not None and a.parent.span_id == server.context.span_id
               for a in attempts)  # fmt: skip
    assert all(a.context.trace_id == server.context.trace_id for a in attempts)
    for s in finished(spans):
        for value in every_value(s):
            assert "sig=" not in value and "eyJ" not in value


def test_statement_span_carries_no_literal(spans: InMemorySpanExporter) -> None:
    statement = "SELECT * FROM ks.users WHERE name = 'bob' AND pw = '" + SECRET_LITERAL + "'"  # noqa: S608 - fed to a span, never run
    span = tracing.start_request(
        "cql",
        "cass",
        f"SELECT ks.users WHERE pw='{SECRET_LITERAL}'",
        traceparent=SAMPLED,
        attributes={
            "db.query.text": statement,
            "db.query.summary": statement,
            "db.operation.name": "SELECT",
            "db.namespace": "ks",
            "db.collection.name": "users",
            "lockgate.object": f"ks.users'{SECRET_LITERAL}",
        },
    )
    span.decided("read", "ks.users", "deny", None, "no rule allows read on ks.users")
    span.end(status=0x2100, error="unauthorized")
    (s,) = finished(spans)
    attrs = dict(s.attributes or {})
    assert s.name == "SELECT ks.users"
    assert attrs["db.system.name"] == "cassandra"
    assert attrs["db.operation.name"] == "SELECT"
    assert attrs["db.collection.name"] == "users" and attrs["db.namespace"] == "ks"
    assert "db.query.text" not in attrs
    assert attrs["db.response.status_code"] == "0x2100"
    assert attrs["error.type"] == "unauthorized"
    assert s.status.status_code is StatusCode.ERROR
    assert not any(SECRET_LITERAL in v for v in every_value(s))


@pytest.mark.parametrize(
    ("protocol", "status", "attribute", "error"),
    [
        ("http", 200, ("http.response.status_code", 200), None),
        ("http", 404, ("http.response.status_code", 404), None),
        ("http", 503, ("http.response.status_code", 503), "503"),
        ("cql", 2, None, None),  # a Rows result
        ("cql", 0x1001, ("db.response.status_code", "0x1001"), "0x1001"),
        ("cql", 0, ("db.response.status_code", "0x0000"), "0x0000"),  # server error
        ("postgres", "ok", None, None),
        ("postgres", "00000", ("db.response.status_code", "00000"), None),
        ("postgres", "42501", ("db.response.status_code", "42501"), "42501"),
        ("postgres", "cancelled", None, "cancelled"),
        ("postgres", None, None, None),
    ],
)
def test_a_protocols_status_is_named_per_the_conventions(
    spans: InMemorySpanExporter,
    protocol: tracing.Protocol_,
    status: int | str | None,
    attribute: tuple[str, object] | None,
    error: str | None,
) -> None:
    tracing.start_request(protocol, "r", "X").end(status=status)
    (s,) = finished(spans)
    attrs = dict(s.attributes or {})
    codes = {k: v for k, v in attrs.items() if k.endswith("status_code")}
    assert codes == (dict([attribute]) if attribute else {})
    assert attrs.get("error.type") == error
    assert s.status.status_code is (StatusCode.ERROR if error else StatusCode.UNSET)


def test_postgres_throttled_span(spans: InMemorySpanExporter) -> None:
    span = tracing.start_request("postgres", "pg", "INSERT public.orders", traceparent=UNSAMPLED)
    span.throttled("etl-writes", 1.23456)
    span.end(status="53300", error="throttled")
    (s,) = finished(spans)
    assert dict(s.attributes or {})["db.system.name"] == "postgresql"
    assert dict(s.attributes or {})["lockgate.reason"] == "throttled"
    (event,) = s.events
    assert event.name == "lockgate.throttled"
    assert dict(event.attributes or {}) == {"lockgate.limit": "etl-writes",
                                            "lockgate.retry_after": 1.235}  # fmt: skip


@pytest.mark.parametrize(
    "bad",
    [
        f"00-{TRACE_ID.upper()}-{PARENT_SPAN}-01",
        f"00-{'0' * 32}-{PARENT_SPAN}-01",
        f"00-{TRACE_ID}-{'0' * 16}-01",
        f"01-{TRACE_ID}-{PARENT_SPAN}-01",
        f"00-{TRACE_ID}-{PARENT_SPAN}-01-extra",
        f"00-{TRACE_ID}-{PARENT_SPAN}-01\n",
        "",
    ],
)
def test_an_invalid_traceparent_starts_a_new_trace(spans: InMemorySpanExporter, bad: str) -> None:
    assert tracing.valid_traceparent(bad) is None
    tracing.start_request("http", "r", "GET", traceparent=bad).end(status=200)
    (s,) = finished(spans)
    assert s.parent is None
    assert format(s.context.trace_id, "032x") != TRACE_ID


def test_sampling_follows_a_sampled_parent_and_the_ratio_otherwise() -> None:
    with recording_spans(TracingSettings(enabled=True, sample_ratio=0.0)) as exporter:
        tracing.start_request("http", "r", "GET", traceparent=UNSAMPLED).end(status=200)
        tracing.start_request("http", "r", "GET").end(status=200)
        tracing.start_request("http", "r", "POST", traceparent=SAMPLED).end(status=200)
        assert [s.name for s in finished(exporter)] == ["POST"]


def test_mint_span(spans: InMemorySpanExporter) -> None:
    span = tracing.start_mint("prod", traceparent=SAMPLED)
    span.decided("mint", "orders-api", "allow", "etl", None)
    span.end(status=200)
    (s,) = finished(spans)
    assert s.name == "lockgate.mint" and s.kind is SpanKind.SERVER
    assert dict(s.attributes or {})["lockgate.deployment"] == "prod"
    assert s.parent is not None and format(s.parent.span_id, "016x") == PARENT_SPAN
    assert dict(s.resource.attributes)["service.name"] == "lockgate"
    assert str(dict(s.resource.attributes)["service.instance.id"]).endswith("/t")


def test_config_refuses_an_endpoint_in_clear_or_with_credentials(tmp_path: Path) -> None:
    for url in ("http://collector.internal:4318", "https://u:p@collector", "https://c/x?k=v"):
        with pytest.raises(ValidationError):
            TracingSettings(enabled=True, otlp_endpoint=url)
    with pytest.raises(ValidationError):
        TracingSettings(enabled=True, otlp_headers_file=tmp_path / "h")
    with pytest.raises(ValidationError):
        TracingSettings(enabled=True, sample_ratio=1.5)
    ok = TracingSettings(enabled=True, otlp_endpoint="https://otel.example.com:4318/")
    assert ok.traces_url() == "https://otel.example.com:4318/v1/traces"
    custom = TracingSettings(enabled=True, otlp_endpoint="http://127.0.0.1:4318/otlp/traces")
    assert custom.traces_url() == "http://127.0.0.1:4318/otlp/traces"
    bad = tmp_path / "bad"
    bad.write_text("Authorization Bearer s3cr3t-value\n")
    settings = TracingSettings(enabled=True, otlp_endpoint="https://c", otlp_headers_file=bad)
    with pytest.raises(ValueError, match="bad:1") as exc:
        settings.otlp_headers()
    assert "s3cr3t" not in str(exc.value)


class Collector:
    """An OTLP/HTTP receiver: ``POST /v1/traces`` with a protobuf ExportTraceServiceRequest."""

    def __init__(self) -> None:
        self.requests: list[ExportTraceServiceRequest] = []
        self.headers: list[dict[str, str]] = []
        self.arrived = asyncio.Event()

    async def receive(self, request: web.Request) -> web.Response:
        assert request.content_type == "application/x-protobuf"
        message = ExportTraceServiceRequest()
        message.ParseFromString(await request.read())
        self.requests.append(message)
        self.headers.append(dict(request.headers))
        self.arrived.set()
        return web.Response(body=b"", content_type="application/x-protobuf")


@pytest.fixture
async def collector() -> AsyncIterator[tuple[Collector, int]]:
    receiver = Collector()
    app = web.Application()
    app.router.add_post("/v1/traces", receiver.receive)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    yield receiver, port
    await runner.cleanup()


async def test_spans_reach_an_otlp_http_collector(
    collector: tuple[Collector, int], tmp_path: Path
) -> None:
    receiver, port = collector
    headers = tmp_path / "otlp-headers"
    headers.write_text("# the collector's key\nX-Api-Key: k-123\n")
    settings = TracingSettings(
        enabled=True, otlp_endpoint=f"http://127.0.0.1:{port}", otlp_headers_file=headers
    )
    tracing.configure(settings, service_instance="worker-0")
    try:
        span = tracing.start_request("http", "orders", "GET", traceparent=SAMPLED)
        span.decided("read", "orders", "allow", "etl", None)
        span.end(status=200)
        # The exporter posts from its own thread with a blocking client: flush off the loop.
        assert await asyncio.to_thread(tracing.flush)
        await asyncio.wait_for(receiver.arrived.wait(), 10)
    finally:
        await asyncio.to_thread(tracing.shutdown)
    (request,) = receiver.requests
    assert receiver.headers[0]["x-api-key"] == "k-123"
    (resource_spans,) = request.resource_spans
    resource = {a.key: a.value.string_value for a in resource_spans.resource.attributes}
    assert resource["service.name"] == "lockgate"
    (scope,) = resource_spans.scope_spans
    (span_pb,) = scope.spans
    assert span_pb.name == "GET"
    assert span_pb.trace_id.hex() == TRACE_ID and span_pb.parent_span_id.hex() == PARENT_SPAN
    attrs = {a.key: a.value for a in span_pb.attributes}
    assert attrs["lockgate.decision"].string_value == "allow"
    assert attrs["http.response.status_code"].int_value == 200


async def test_the_token_route_starts_a_mint_span_and_the_token_carries_the_traceparent(
    tmp_path: Path,
) -> None:
    from lockgate.identity.tokens import unverified_claims

    from .control._stack import basic, deployment, running_gateway

    policy = (
        "rules:\n"
        "  - {id: all, effect: allow, principals: ['*'], actions: [read], resources: ['*']}\n"
    )
    api = {"name": "api", "kind": "http", "upstream": "http://127.0.0.1:9", "conn_id": "api"}
    task = {"dag_id": "etl", "task_id": "load", "run_id": "r1", "try_number": "1",
            "resource": "api"}  # fmt: skip
    async with running_gateway(
        tmp_path, policy=policy, deployments=[deployment("prod", "s3-Qm")], resources=[api]
    ) as gw:
        with recording_spans() as exporter:
            url = f"http://127.0.0.1:{gw.control_port}/v1/token"
            answers = []
            async with aiohttp.ClientSession() as session:
                for header in (SAMPLED, "00-zz"):
                    headers = {**basic("prod", "s3-Qm"), "traceparent": header}
                    async with session.post(url, data=task, headers=headers) as resp:
                        answers.append((resp.status, json.loads(await resp.read())))
                # A secret pasted as the client id: refused, and never a span attribute.
                pasted = {**task, "client_id": "pasted-s3cr3t", "client_secret": "x"}
                async with session.post(url, data=pasted, headers={"traceparent": SAMPLED}) as r:
                    assert r.status == 401
            mints = finished(exporter)
    assert [status for status, _ in answers] == [200, 200]
    with_trace, without = (unverified_claims(body["access_token"]) for _, body in answers)
    assert with_trace["traceparent"] == SAMPLED
    assert "traceparent" not in without
    assert [s.name for s in mints] == ["lockgate.mint"] * 3
    assert mints[0].parent is not None and format(mints[0].parent.span_id, "016x") == PARENT_SPAN
    assert mints[1].parent is None
    assert dict(mints[0].attributes or {})["lockgate.decision"] == "allow"
    assert dict(mints[0].attributes or {})["lockgate.deployment"] == "prod"  # the Basic user
    refused = dict(mints[2].attributes or {})
    assert refused["lockgate.decision"] == "deny" and refused["http.response.status_code"] == 401
    assert "lockgate.deployment" not in refused
    assert not any("s3cr3t" in value for value in every_value(mints[2]))


def test_the_hand_written_otlp_encoding_matches_the_sdks(spans: InMemorySpanExporter) -> None:
    from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans

    from lockgate.tracing.otlp import encode

    span = tracing.start_request(
        "postgres",
        "pg",
        "UPDATE public.orders",
        traceparent=SAMPLED,
        attributes={
            "server.port": 5432,
            "lockgate.weight": 0.5,
            "lockgate.cached": True,
            "lockgate.offset": -3,
            "db.namespace": "sales",
        },
    )
    span.throttled("pg-writes", 0.5)
    with pytest.raises(TimeoutError), span.upstream_attempt(1):
        raise TimeoutError
    span.retried("timeout", 0.2)
    with span.upstream_attempt(2):
        pass
    span.end(status="57014", error="query_canceled")
    tracing.start_mint("prod").end(status=200)  # a root span
    recorded = finished(spans)
    assert len(recorded) == 4

    ours = ExportTraceServiceRequest()
    ours.ParseFromString(encode(recorded))
    sdk = encode_spans(recorded)
    for resource_spans in sdk.resource_spans:
        for scope_spans in resource_spans.scope_spans:
            for span_pb in scope_spans.spans:
                span_pb.ClearField("flags")  # W3C flags and is_remote bits: not sent
    assert ours == sdk


def test_an_unreadable_headers_file_is_a_config_error(tmp_path: Path) -> None:
    from lockgate.errors import ConfigError

    missing = TracingSettings(
        enabled=True, otlp_endpoint="https://c", otlp_headers_file=tmp_path / "absent"
    )
    with pytest.raises(ConfigError, match="otlp_headers_file"):
        tracing.configure(missing)
    assert not tracing.enabled()
    bad = tmp_path / "bad"
    bad.write_text("X-Api-Key k-secret-1\n")
    with pytest.raises(ConfigError, match="bad:1") as exc:
        tracing.configure(missing.model_copy(update={"otlp_headers_file": bad}))
    assert "k-secret-1" not in str(exc.value)


def test_a_refused_export_drops_the_batch_and_says_so_without_the_headers(
    caplog: pytest.LogCaptureFixture,
) -> None:
    import threading
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    from opentelemetry.sdk.trace.export import SpanExportResult

    from lockgate.tracing.otlp import OtlpHttpExporter

    seen: list[str | None] = []

    class Refusing(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            self.rfile.read(int(self.headers["Content-Length"]))
            seen.append(self.headers.get("Authorization"))
            self.send_response(503)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Refusing)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    with recording_spans() as exporter:
        tracing.start_request("http", "r", "GET", traceparent=SAMPLED).end(status=200)
        recorded = finished(exporter)
    url = f"http://127.0.0.1:{server.server_address[1]}/v1/traces"
    otlp = OtlpHttpExporter(url, {"Authorization": "Bearer otlp-key-77"})
    try:
        caplog.set_level("WARNING", logger="lockgate.tracing")
        assert otlp.export(recorded) is SpanExportResult.FAILURE
        assert otlp.export(recorded) is SpanExportResult.FAILURE
    finally:
        otlp.shutdown()
        server.shutdown()
    assert seen == ["Bearer otlp-key-77"] * 2
    lines = [r for r in caplog.records if r.name == "lockgate.tracing"]
    assert len(lines) == 1  # at most once a minute
    assert "otlp-key-77" not in caplog.text and "HTTP 503" in str(lines[0].__dict__)
    assert otlp.export(recorded) is SpanExportResult.FAILURE  # shut down: nothing sent
    assert len(seen) == 2


def test_clean_attributes() -> None:
    cleaned = tracing.clean_attributes(
        {
            "lockgate.ratio": float("nan"),
            "lockgate.limit": float("inf"),
            "lockgate.weight": 0.5,
            "lockgate.object": "x" * 100_000,
            "lockgate.rule": f"prefix {A_TOKEN}",
            "lockgate.api_key": "k",
            "lockgate.secret_name": "s",
            "lockgate.authorization": "a",
            "db.query.summary": "SELECT ks.t WHERE a = 1",
            "http.request.header.authorization": "Bearer x",
        }
    )
    assert cleaned == {
        "lockgate.weight": 0.5,
        "lockgate.object": "x" * 256,
        "db.query.summary": "SELECT ks.t",
    }
