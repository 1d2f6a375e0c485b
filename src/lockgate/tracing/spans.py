"""The recording side of :mod:`lockgate.tracing`: spans made by hand, handed to the SDK.

Spans are recorded here, not through the SDK's Tracer: its start_span (sampler call,
attribute re-validation, locks, context objects) cost ~60 us a span, more than the HTTP
engine's whole request. A span is a few fields until it ends; then one ReadableSpan goes to
the SDK's span processor (batching, the exporters). Attributes are already clean. The SDK is
imported when a :class:`Recording` is made (tracing on), never on import of this module.
"""

from __future__ import annotations

import functools
import random
import re
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Protocol, cast

from lockgate import __version__
from lockgate.tracing.attributes import AttributeValue, clean_attributes, clean_name, clean_text

if TYPE_CHECKING:
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import SpanProcessor
    from opentelemetry.sdk.trace.export import SpanExporter
    from opentelemetry.trace import SpanKind, StatusCode

#: W3C trace context, version 00 only: 32 and 16 lowercase hex digits, neither all zeros.
TRACEPARENT_RE = re.compile(
    r"\A00-(?!0{32})[0-9a-f]{32}-(?!0{16})[0-9a-f]{16}-[0-9a-f]{2}\Z", re.ASCII
)


def valid_traceparent(value: object) -> str | None:
    """``value`` if it is a well-formed version-00 ``traceparent``, else None (never raises)."""
    if isinstance(value, str) and len(value) == 55 and TRACEPARENT_RE.match(value):
        return value
    return None


_SAMPLED = 1  # W3C trace-flags bit
_ID_LIMIT = (1 << 64) - 1


class _Counting(Protocol):
    """An exporter that counts the spans handed to it (:class:`OtlpHttpExporter`)."""

    taken: int


class Recording:
    """What the process records with: its span processor (None: spans are made and
    dropped), resource and sampling bound, and the SDK's classes, imported once."""

    def __init__(
        self,
        processor: SpanProcessor | None,
        resource: Resource,
        ratio: float,
        exporter: SpanExporter | None = None,
        queue_limit: int = 2048,
    ) -> None:
        from opentelemetry.sdk.trace import Event, ReadableSpan
        from opentelemetry.sdk.util.instrumentation import InstrumentationScope
        from opentelemetry.trace import SpanContext, SpanKind, Status, StatusCode, TraceFlags

        self.server, self.client, self.error = SpanKind.SERVER, SpanKind.CLIENT, StatusCode.ERROR
        self._event, self._readable, self._context = Event, ReadableSpan, SpanContext
        self._status, self._ok = Status, Status()
        self._flags = TraceFlags(_SAMPLED)
        self.processor = processor
        self.exporter = exporter  # its stop_by, if any, bounds a stop (a dead collector)
        # An exporter that counts the spans it took (Lockgate's) lets the queue's bound be
        # kept here: a span past it is dropped and counted before the SDK's processor, which
        # would drop one too but only say so in a log line made per span.
        self._counting = (
            cast("_Counting", exporter)
            if processor is not None and hasattr(exporter, "taken")
            else None
        )
        self.handed = 0  # spans given to the processor
        self.queue_limit = queue_limit
        # Imported here: the Airflow provider imports this module for its format rule alone.
        from lockgate import metrics

        self._queue_full = metrics.SPANS_DROPPED.labels("queue_full")
        self.resource = resource
        self.scope = InstrumentationScope("lockgate", __version__)
        # TraceIdRatioBased's rule: the low 64 bits of the trace id under ratio * 2**64.
        self.bound = round(ratio * (_ID_LIMIT + 1))

    def sample(self, traceparent: str | None) -> tuple[int, tuple[int, int] | None] | None:
        """(trace id, parent) of a span to record, None when it is not sampled: decided
        before anything else is done for the span, so an unsampled request costs little."""
        if traceparent is not None and len(traceparent) == 55:  # the cache keeps short keys
            parent = _parent(traceparent)
            if parent is not None:
                trace_id, span_id, caller_sampled = parent
                # Parent-based: a sampled caller is always recorded; others at the ratio.
                if caller_sampled or (trace_id & _ID_LIMIT) < self.bound:
                    return trace_id, (trace_id, span_id)
                return None
        trace_id = random.getrandbits(128) or 1
        return (trace_id, None) if (trace_id & _ID_LIMIT) < self.bound else None

    def start(
        self,
        protocol: str,
        name: str,
        sampled: tuple[int, tuple[int, int] | None],
        attributes: dict[str, AttributeValue],
    ) -> Span:
        trace_id, parent = sampled
        name = clean_name(name) or "request"
        return Span(self, protocol, name, trace_id, parent, self.server, attributes)

    def finish(self, span: Span, end_ns: int) -> None:
        if self.processor is None:
            return
        counting = self._counting
        if counting is not None:
            if self.handed - counting.taken >= self.queue_limit:
                self._queue_full.inc()
                return
            self.handed += 1
        context, flags = self._context, self._flags
        parent = span.parent
        readable = self._readable(
            name=span.name,
            context=context(span.trace_id, span.span_id, is_remote=False, trace_flags=flags),
            parent=None
            if parent is None
            else context(parent[0], parent[1], is_remote=True, trace_flags=flags),
            resource=self.resource,
            attributes=span.attributes,
            events=tuple(self._event(name, attrs, at) for name, attrs, at in span.events),
            kind=span.kind,
            status=self._ok if span.status is None else self._status(span.status),
            start_time=span.start_ns,
            end_time=end_ns,
            instrumentation_scope=self.scope,
        )
        self.processor.on_end(readable)


@functools.lru_cache(maxsize=4096)  # one token, one traceparent: a task's requests repeat it
def _parent(traceparent: str) -> tuple[int, int, bool] | None:
    """(trace id, span id, sampled) of a valid ``traceparent``, else None."""
    if valid_traceparent(traceparent) is None:
        return None
    return (
        int(traceparent[3:35], 16),
        int(traceparent[36:52], 16),
        bool(int(traceparent[53:55], 16) & _SAMPLED),
    )


class Span:
    """A recording :class:`RequestSpan`: plain fields until :meth:`end`."""

    __slots__ = (
        "attributes",
        "ended",
        "events",
        "kind",
        "name",
        "parent",
        "protocol",
        "recording",
        "span_id",
        "start_ns",
        "status",
        "trace_id",
    )

    def __init__(
        self,
        recording: Recording,
        protocol: str,
        name: str,
        trace_id: int,
        parent: tuple[int, int] | None,
        kind: SpanKind,
        attributes: dict[str, AttributeValue],
    ) -> None:
        self.recording = recording
        self.protocol = protocol
        self.name = name
        self.trace_id = trace_id
        self.span_id = random.getrandbits(64) or 1
        self.parent = parent
        self.kind = kind
        self.attributes = attributes
        self.events: list[tuple[str, dict[str, AttributeValue], int]] = []
        self.status: StatusCode | None = None  # StatusCode.ERROR once failed
        self.start_ns = time.time_ns()
        self.ended = False

    def decided(
        self, action: str, obj: str, decision: str, rule: str | None, reason: str | None
    ) -> None:
        self.attributes.update(
            clean_attributes(
                {
                    "lockgate.action": action,
                    "lockgate.object": obj,
                    "lockgate.decision": decision,
                    "lockgate.rule": rule or "",
                    "lockgate.reason": reason or "",
                }
            )
        )

    def throttled(self, limit: str, retry_after: float) -> None:
        attrs = clean_attributes(
            {"lockgate.limit": limit, "lockgate.retry_after": round(float(retry_after), 3)}
        )
        self.attributes.update({"lockgate.decision": "deny", "lockgate.reason": "throttled"})
        self.events.append(("lockgate.throttled", attrs, time.time_ns()))

    @contextmanager
    def upstream_attempt(self, attempt: int) -> Iterator[None]:
        attrs: dict[str, AttributeValue] = {"lockgate.attempt": attempt}
        if attempt > 1:
            attrs["http.request.resend_count"] = attempt - 1
        child = Span(
            self.recording,
            self.protocol,
            f"{self.name} upstream",
            self.trace_id,
            (self.trace_id, self.span_id),
            self.recording.client,
            attrs,
        )
        try:
            yield
        except BaseException as exc:
            child.attributes["error.type"] = type(exc).__name__
            child.status = self.recording.error
            raise
        finally:
            child.ended = True
            self.recording.finish(child, time.time_ns())

    def retried(self, reason: str, delay: float) -> None:
        attrs = clean_attributes({"lockgate.reason": reason, "lockgate.delay": round(delay, 3)})
        self.events.append(("lockgate.retry", attrs, time.time_ns()))

    def end(self, *, status: int | str | None = None, error: str | None = None) -> None:
        if self.ended:
            return
        self.ended = True
        key, code, failed = _status(self.protocol, status)
        if code is not None:
            self.attributes[key] = code
        if failed or error is not None:
            # Through the filter too: a status that is no code (an outcome word) is free text.
            kind = clean_text(error if error is not None else str(code or status), 64)
            self.attributes["error.type"] = kind or "error"
            self.status = self.recording.error
        self.recording.finish(self, time.time_ns())


_SQLSTATE = re.compile(r"\A[0-9A-Z]{5}\Z")
_SQL_SUCCESS = ("00", "01", "02")  # SQLSTATE classes: success, warning, no data
_CQL_RESULT_KINDS = range(1, 6)  # Void .. SchemaChange: a successful answer, not an error


def _status(protocol: str, status: int | str | None) -> tuple[str, AttributeValue | None, bool]:
    """(attribute key, value or None, failed) of what a protocol answered: an HTTP status
    (5xx failed), a CQL RESULT kind (success) or ERROR code (``0x2200``, failed), a
    PostgreSQL SQLSTATE (failed outside classes 00-02) or an outcome word (``ok``: success,
    anything else failed)."""
    if status is None or isinstance(status, bool):
        return "", None, False
    if protocol == "http":
        if isinstance(status, int):
            return "http.response.status_code", status, status >= 500
        return "", None, True
    key = "db.response.status_code"
    if isinstance(status, int):
        if protocol == "cql" and status in _CQL_RESULT_KINDS:
            return key, None, False
        return key, f"0x{status:04X}" if protocol == "cql" else str(status), True
    if _SQLSTATE.match(status):
        return key, status, not status.startswith(_SQL_SUCCESS)
    return "", None, status != "ok"


__all__ = ["TRACEPARENT_RE", "Recording", "Span", "valid_traceparent"]
