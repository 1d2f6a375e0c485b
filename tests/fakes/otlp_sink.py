"""An OTLP/HTTP trace receiver for tests: keeps every export's raw bytes and decodes them
with ``opentelemetry-proto`` (the reference decoder, not the gateway's encoder).

Written from the OTLP/HTTP specification (``POST /v1/traces``, ``application/x-protobuf``);
it shares no code with :mod:`lockgate.tracing`. Binds 127.0.0.1 on a free port.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field

from aiohttp import web
from google.protobuf.json_format import MessageToJson
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.common.v1.common_pb2 import AnyValue
from opentelemetry.proto.trace.v1.trace_pb2 import Span


@dataclass
class OtlpSink:
    """What reached the receiver: raw bodies, decoded requests, each request's headers."""

    port: int = 0
    bodies: list[bytes] = field(default_factory=list)
    requests: list[ExportTraceServiceRequest] = field(default_factory=list)
    headers: list[dict[str, str]] = field(default_factory=list)
    arrived: asyncio.Event = field(default_factory=asyncio.Event)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def receive(self, request: web.Request) -> web.Response:
        body = await request.read()
        message = ExportTraceServiceRequest()
        message.ParseFromString(body)
        self.bodies.append(body)
        self.requests.append(message)
        self.headers.append({k.lower(): v for k, v in request.headers.items()})
        self.arrived.set()
        return web.Response(body=b"", content_type="application/x-protobuf")

    def spans(self) -> Iterator[Span]:
        for request in self.requests:
            for resource_spans in request.resource_spans:
                for scope_spans in resource_spans.scope_spans:
                    yield from scope_spans.spans

    def text(self) -> str:
        """Every decoded export as JSON (names, attributes, events, status, resource) and
        the raw bytes read as Latin-1: a secret anywhere in what was sent shows here."""
        decoded = "\n".join(MessageToJson(r) for r in self.requests)
        raw = "\n".join(b.decode("latin-1") for b in self.bodies)
        return decoded + "\n" + raw


def attributes(span: Span) -> dict[str, object]:
    """A decoded span's attributes as plain Python values."""
    return {a.key: value_of(a.value) for a in span.attributes}


def value_of(value: AnyValue) -> object:
    kind = value.WhichOneof("value")
    return getattr(value, kind) if kind is not None else None


@asynccontextmanager
async def otlp_sink() -> AsyncIterator[OtlpSink]:
    sink = OtlpSink()
    app = web.Application(client_max_size=64 * 1024 * 1024)
    app.router.add_post("/v1/traces", sink.receive)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    sink.port = runner.addresses[0][1]
    try:
        yield sink
    finally:
        await runner.cleanup()
