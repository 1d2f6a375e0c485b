"""OpenTelemetry tracing of the gateway: one span per mint and per request or statement.

Off by default (``tracing.enabled: false``): every function here then returns a shared
no-op at the cost of one global read, and the OpenTelemetry SDK is not even imported. When
on, a request's span joins the Airflow task's trace: the secrets backend sends the task's
W3C ``traceparent`` with its token request, the token carries it (claim ``traceparent``),
and every request made with that token is a child of it. Spans follow the HTTP and
database semantic conventions; no token, secret, query string or statement literal is ever
an attribute: whatever an engine passes goes through :func:`clean_attributes` (an
allow-list of keys, values cut at a query string or a string literal, lengths capped).

Sampling is parent-based: a task whose trace is sampled gets every span; an unsampled or
absent parent (Airflow's own tracing off) is sampled at ``tracing.sample_ratio``, so the
gateway's spans still carry the task's trace id. Spans leave through the SDK's batch
processor and the OTLP/HTTP exporter of :mod:`lockgate.tracing.otlp` when
``tracing.otlp_endpoint`` is set (headers read from ``otlp_headers_file``, never logged);
with no endpoint they are made and dropped, which is only useful to tests and the
benchmark.

Engines use :func:`start_request` and the :class:`RequestSpan` it returns; the control
plane :func:`start_mint`. :func:`configure` is called once per process by the server,
:func:`shutdown` at its stop (flushes what is batched). Rooms: :mod:`.attributes` (the
allow-list filter), :mod:`.spans` (spans recorded by hand and handed to the SDK),
:mod:`.otlp` (the exporter).
"""

from __future__ import annotations

import os
import socket
from collections.abc import Mapping
from contextlib import AbstractContextManager, nullcontext
from typing import TYPE_CHECKING, Literal, Protocol

from lockgate import __version__
from lockgate.errors import ConfigError
from lockgate.tracing.attributes import (
    ALLOWED_KEYS,
    AttributeValue,
    clean_attributes,
    clean_name,
    clean_text,
)
from lockgate.tracing.spans import TRACEPARENT_RE, Recording, valid_traceparent

if TYPE_CHECKING:
    from opentelemetry.sdk.trace.export import SpanExporter

    from lockgate.config.tracing import TracingSettings

Protocol_ = Literal["http", "cql", "postgres"]


class RequestSpan(Protocol):
    """One request's or statement's span (SERVER kind), ended exactly once."""

    def decided(
        self, action: str, obj: str, decision: str, rule: str | None, reason: str | None
    ) -> None:
        """The policy decision (``lockgate.decision``, ``lockgate.rule`` ...)."""
        ...

    def throttled(self, limit: str, retry_after: float) -> None: ...

    def upstream_attempt(self, attempt: int) -> AbstractContextManager[None]:
        """A CLIENT child span around one upstream attempt (1, 2, ...)."""
        ...

    def retried(self, reason: str, delay: float) -> None:
        """An event: the attempt is retried after ``delay`` seconds for ``reason``."""
        ...

    def end(self, *, status: int | str | None = None, error: str | None = None) -> None:
        """End the span with the protocol's status (HTTP status, CQL/PG error code)."""
        ...


class _NoSpan:
    __slots__ = ()

    def decided(
        self, action: str, obj: str, decision: str, rule: str | None, reason: str | None
    ) -> None:
        return None

    def throttled(self, limit: str, retry_after: float) -> None:
        return None

    def upstream_attempt(self, attempt: int) -> AbstractContextManager[None]:
        return _NO_ATTEMPT  # shared: no generator made per attempt while tracing is off

    def retried(self, reason: str, delay: float) -> None:
        return None

    def end(self, *, status: int | str | None = None, error: str | None = None) -> None:
        return None


_NO_ATTEMPT: AbstractContextManager[None] = nullcontext()
NO_SPAN: RequestSpan = _NoSpan()

_DB_SYSTEM = {"cql": "cassandra", "postgres": "postgresql"}

_tracing: Recording | None = None
STOP_GRACE = 5.0  # seconds a stopping process keeps exporting its batched spans


def configure(
    settings: TracingSettings,
    *,
    service_instance: str = "",
    exporter: SpanExporter | None = None,
) -> None:
    """Set up the tracer provider and exporter of this process (once, at start).

    ``exporter`` replaces the OTLP one (tests, the benchmark). A second call replaces the
    first, whose batched spans are flushed. :class:`ConfigError` when the SDK is missing or
    the headers file cannot be read (named by path and line, never by its values)."""
    global _tracing
    shutdown()
    if not settings.enabled:
        return
    try:
        from opentelemetry.sdk.resources import Resource
        from opentelemetry.sdk.trace.export import BatchSpanProcessor
    except ImportError:
        raise ConfigError(
            "tracing.enabled needs the OpenTelemetry SDK: pip install 'lockgate[tracing]'"
        ) from None

    instance = f"{socket.gethostname()}/{service_instance or os.getpid()}"
    resource = Resource.create(
        {
            "service.name": settings.service_name,
            "service.version": __version__,
            "service.instance.id": instance,
        }
    )
    if exporter is None and settings.otlp_endpoint:
        try:
            exporter = _otlp_exporter(settings)
        except (OSError, ValueError) as exc:
            # ValueError names the file and line; OSError only says why it is unreadable.
            why = exc.strerror if isinstance(exc, OSError) else str(exc)
            raise ConfigError(f"tracing.otlp_headers_file: {why}") from None
    limit = _queue_limit()
    processor = None
    if exporter is not None:
        processor = BatchSpanProcessor(exporter, max_queue_size=limit)
    # An unsampled caller (the task's own tracing off) gets the ratio, not silence.
    _tracing = Recording(processor, resource, settings.sample_ratio, exporter, limit)


def _queue_limit() -> int:
    """The batch queue's bound: ``OTEL_BSP_MAX_QUEUE_SIZE`` as the SDK reads it, or 2048."""
    try:
        return max(1, int(os.environ.get("OTEL_BSP_MAX_QUEUE_SIZE", "2048")))
    except ValueError:
        return 2048


def _otlp_exporter(settings: TracingSettings) -> SpanExporter:
    from lockgate.tracing.otlp import OtlpHttpExporter

    return OtlpHttpExporter(settings.traces_url(), settings.otlp_headers())


def flush(timeout_millis: int = 5_000) -> bool:
    """Export what is batched now (tests; the server before it stops)."""
    processor = _tracing.processor if _tracing is not None else None
    return processor.force_flush(timeout_millis) if processor is not None else True


def shutdown() -> None:
    """Flush and stop the exporter; tracing is off afterwards. A collector that does not
    answer holds this for at most :data:`STOP_GRACE` seconds (what is left is dropped)."""
    global _tracing
    current, _tracing = _tracing, None
    if current is not None and current.processor is not None:
        stop_by = getattr(current.exporter, "stop_by", None)
        if stop_by is not None:
            stop_by(STOP_GRACE)
        current.processor.shutdown()


def enabled() -> bool:
    return _tracing is not None


def start_request(
    protocol: Protocol_,
    resource: str,
    name: str,
    *,
    traceparent: str | None = None,
    attributes: Mapping[str, AttributeValue] | None = None,
) -> RequestSpan:
    """A request's span named ``name`` (``GET``, ``SELECT ks.table``...), child of
    ``traceparent`` (the token's claim) when given; :data:`NO_SPAN` when tracing is off."""
    tracing = _tracing
    if tracing is None:
        return NO_SPAN
    sampled = tracing.sample(traceparent)
    if sampled is None:
        return NO_SPAN
    attrs = clean_attributes(attributes)
    attrs["lockgate.resource"] = clean_text(resource)
    attrs["lockgate.protocol"] = protocol
    if protocol in _DB_SYSTEM:
        attrs.setdefault("db.system.name", _DB_SYSTEM[protocol])
    return tracing.start(protocol, name, sampled, attrs)


def start_mint(deployment: str, *, traceparent: str | None = None) -> RequestSpan:
    """The token service's span for one mint, child of the caller's ``traceparent``."""
    tracing = _tracing
    if tracing is None:
        return NO_SPAN
    sampled = tracing.sample(traceparent)
    if sampled is None:
        return NO_SPAN
    attrs = clean_attributes({"lockgate.deployment": deployment})  # "" (unknown): none
    return tracing.start("http", "lockgate.mint", sampled, attrs)


__all__ = [
    "ALLOWED_KEYS",
    "NO_SPAN",
    "TRACEPARENT_RE",
    "AttributeValue",
    "RequestSpan",
    "clean_attributes",
    "clean_name",
    "clean_text",
    "configure",
    "enabled",
    "flush",
    "shutdown",
    "start_mint",
    "start_request",
    "valid_traceparent",
]
