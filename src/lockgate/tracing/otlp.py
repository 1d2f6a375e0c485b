"""OTLP/HTTP export of spans: protobuf written by hand, posted with the standard library.

The OpenTelemetry exporter builds each span through generic Python encoders (30-60 us a
span); on a gateway that records two spans per request that is more than the request
itself, and it runs in the batch thread under the same interpreter lock as the engines.
Lockgate's spans have one shape (string, int, float and bool attributes; events; a status),
so this writes ``ExportTraceServiceRequest`` directly from the OTLP ``trace.proto`` field
numbers, with each attribute's bytes cached (resources, methods, rules and decisions repeat
request after request). The collector decodes it like any other OTLP/HTTP export
(``Content-Type: application/x-protobuf``, ``POST <endpoint>/v1/traces``).

A failed export drops its batch (spans are not worth holding a gateway's memory for) and
is logged at most once a minute with the collector's status or the error's type: never the
headers, which often carry an API key. A collector is never waited on past ``timeout`` for
one batch, whatever it does (a trickled answer resets a socket's timeout on every byte, so
a watchdog closes the socket at the deadline); its answer is read up to 64 KiB; redirects
are not followed (the headers would go along); and :meth:`OtlpHttpExporter.stop_by` bounds
how long a stopping gateway keeps trying.
"""

from __future__ import annotations

import contextlib
import functools
import http.client
import math
import socket
import ssl
import struct
import threading
import time
from collections.abc import Mapping, Sequence
from urllib.parse import urlsplit

from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export import SpanExporter, SpanExportResult
from opentelemetry.sdk.util.instrumentation import InstrumentationScope
from opentelemetry.util.types import Attributes

from lockgate import _log, metrics

log = _log.get("tracing")
_LOG_EVERY = 60.0  # seconds between two export-failure log lines
_MAX_ANSWER = 64 * 1024  # a collector's answer is a short status; more is never read
_U64 = (1 << 64) - 1


# -- protobuf wire format -----------------------------------------------------------------------
_ONE_BYTE = [bytes((n,)) for n in range(0x80)]


def _varint(n: int) -> bytes:
    if 0 <= n < 0x80:
        return _ONE_BYTE[n]
    n &= _U64  # int64 negatives are ten-byte two's complement
    out = bytearray()
    while n > 0x7F:
        out.append((n & 0x7F) | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


def _utf8(text: str) -> bytes:
    """``text`` as protobuf strings must be: UTF-8. A lone surrogate (JSON's ``\\ud800``
    decodes to one) becomes ``?`` instead of failing the whole batch it rides in."""
    return text.encode("utf-8", "replace")


def _field(number: int, payload: bytes) -> bytes:
    """A length-delimited field (wire type 2); every field number here is under 16, so its
    key is one byte."""
    return _ONE_BYTE[number << 3 | 2] + _varint(len(payload)) + payload


def _fixed64(number: int, value: int) -> bytes:
    return _ONE_BYTE[number << 3 | 1] + struct.pack("<Q", value & _U64)


@functools.lru_cache(maxsize=8192)
def _attribute(number: int, key: str, value: str | bool | int | float, kind: str) -> bytes:
    """Field ``number`` holding one ``KeyValue`` (``kind``, the value's type name, keeps True
    and 1 apart in the cache)."""
    if kind == "bool":
        any_value = _ONE_BYTE[2 << 3] + _varint(int(value))
    elif kind == "int":
        any_value = _ONE_BYTE[3 << 3] + _varint(int(value))
    elif kind == "float":
        any_value = _ONE_BYTE[4 << 3 | 1] + struct.pack("<d", float(value))
    else:
        any_value = _field(1, _utf8(str(value)))
    return _field(number, _field(1, _utf8(key)) + _field(2, any_value))


def _attributes(number: int, attributes: Attributes) -> bytes:
    if not attributes:
        return b""
    return b"".join(
        [
            _attribute(number, key, value, type(value).__name__)
            for key, value in attributes.items()
            if isinstance(value, str | bool | int | float)
        ]
    )


def _span(span: ReadableSpan) -> bytes:
    ctx = span.context
    assert ctx is not None  # every span Lockgate makes has one
    out = _field(1, ctx.trace_id.to_bytes(16, "big")) + _field(2, ctx.span_id.to_bytes(8, "big"))
    if span.parent is not None:
        out += _field(4, span.parent.span_id.to_bytes(8, "big"))
    out += _field(5, _utf8(span.name))
    out += _ONE_BYTE[6 << 3] + _ONE_BYTE[span.kind.value + 1]  # the proto counts from UNSPECIFIED
    out += _fixed64(7, span.start_time or 0) + _fixed64(8, span.end_time or 0)
    out += _attributes(9, span.attributes)
    for event in span.events:
        body = _fixed64(1, event.timestamp) + _field(2, _utf8(event.name))
        out += _field(11, body + _attributes(3, event.attributes))
    code = span.status.status_code.value  # UNSET 0, OK 1, ERROR 2: the proto's numbers
    return out + _field(15, _ONE_BYTE[3 << 3] + _ONE_BYTE[code] if code else b"")


@functools.lru_cache(maxsize=16)
def _resource(resource: Resource) -> bytes:
    return _field(1, _attributes(1, resource.attributes))


@functools.lru_cache(maxsize=16)
def _scope(scope: InstrumentationScope) -> bytes:
    return _field(1, _field(1, _utf8(scope.name)) + _field(2, _utf8(scope.version or "")))


def encode(spans: Sequence[ReadableSpan]) -> bytes:
    """An ``ExportTraceServiceRequest`` of ``spans``, grouped by resource and scope."""
    # By identity: a Resource hashes by serialising itself, and every span shares one.
    groups: dict[tuple[int, int], tuple[Resource, InstrumentationScope | None, list[bytes]]] = {}
    for span in spans:
        key = (id(span.resource), id(span.instrumentation_scope))
        group = groups.get(key)
        if group is None:
            group = groups[key] = (span.resource, span.instrumentation_scope, [])
        group[2].append(_field(2, _span(span)))
    out = b""
    for resource, scope, encoded in groups.values():
        scope_spans = (_scope(scope) if scope is not None else b"") + b"".join(encoded)
        out += _field(1, _resource(resource) + _field(2, scope_spans))
    return out


# -- the exporter -------------------------------------------------------------------------------
class OtlpHttpExporter(SpanExporter):
    """Posts each batch to ``url`` over one kept-alive connection (https or loopback http,
    as the configuration allows)."""

    def __init__(
        self, url: str, headers: Mapping[str, str] | None = None, *, timeout: float = 10.0
    ) -> None:
        parts = urlsplit(url)
        self._https = parts.scheme == "https"
        self._host = parts.hostname or "localhost"
        self._port = parts.port or (443 if self._https else 80)
        self._path = parts.path or "/"
        self._headers = {
            **dict(headers or {}),
            "Content-Type": "application/x-protobuf",
            "User-Agent": "lockgate-otlp",
        }
        self._timeout = timeout
        self._conn: http.client.HTTPConnection | None = None
        self._lock = threading.Lock()
        self._last_logged = 0.0
        self._closed = False
        self._give_up_at = math.inf  # monotonic time after which nothing more is sent
        self.dropped = 0  # spans in batches that failed, since start
        self.taken = 0  # spans handed to export, since start (the queue's depth is kept by it)
        self._export_failed = metrics.SPANS_DROPPED.labels("export_failed")

    def _connection(self) -> http.client.HTTPConnection:
        if self._conn is None:
            if self._https:
                self._conn = http.client.HTTPSConnection(
                    self._host,
                    self._port,
                    timeout=self._timeout,
                    context=ssl.create_default_context(),
                )
            else:
                self._conn = http.client.HTTPConnection(
                    self._host, self._port, timeout=self._timeout
                )
        return self._conn

    def _post(self, body: bytes, deadline: float) -> int:
        conn = self._connection()
        # The socket's timeout bounds each read, not the answer: a collector trickling a
        # byte at a time would hold the export thread (and the gateway's stop) for ever.
        watchdog = threading.Timer(max(0.0, deadline - time.monotonic()), _abort, (conn,))
        watchdog.daemon = True
        watchdog.start()
        try:
            conn.request("POST", self._path, body=body, headers=self._headers)
            response = conn.getresponse()
            response.read(_MAX_ANSWER)
            if not response.isclosed():  # an answer longer than a status: not kept alive
                conn.close()
                self._conn = None
            return response.status
        except (OSError, http.client.HTTPException):
            conn.close()
            self._conn = None
            raise
        finally:
            watchdog.cancel()

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        self.taken += len(spans)
        if self._closed or time.monotonic() >= self._give_up_at:
            self._failed("stopping", len(spans))
            return SpanExportResult.FAILURE
        body = encode(spans)
        with self._lock:
            deadline = min(time.monotonic() + self._timeout, self._give_up_at)
            try:
                try:
                    status = self._post(body, deadline)
                except (OSError, http.client.HTTPException):
                    if time.monotonic() >= deadline:
                        raise
                    # once more: a kept-alive connection may be stale
                    status = self._post(body, deadline)
            except (OSError, http.client.HTTPException, ValueError) as exc:
                # ValueError: a header http.client will not send (its message may quote the
                # value, an API key): named by type only, like every failure here.
                self._failed(type(exc).__name__, len(spans))
                return SpanExportResult.FAILURE
        if 200 <= status < 300:
            return SpanExportResult.SUCCESS
        self._failed(f"HTTP {status}", len(spans))
        return SpanExportResult.FAILURE

    def _failed(self, why: str, count: int) -> None:
        self.dropped += count
        self._export_failed.inc(count)
        now = time.monotonic()
        if now - self._last_logged >= _LOG_EVERY:
            self._last_logged = now
            log.warning(
                "spans not exported",
                extra={"fields": {"error": why, "dropped": count, "dropped_total": self.dropped}},
            )

    def stop_by(self, seconds: float) -> None:
        """Give up exporting ``seconds`` from now: the batch being posted then is abandoned
        (its socket closed) and later ones fail at once, so a stopping gateway flushes what
        a live collector takes and never waits on a dead one for longer than that."""
        self._give_up_at = time.monotonic() + seconds
        timer = threading.Timer(seconds, self._abandon)
        timer.daemon = True
        timer.start()

    def _abandon(self) -> None:
        conn = self._conn  # read without the lock: the export holding it is what to end
        if conn is not None:
            _abort(conn)

    def force_flush(self, timeout_millis: int = 30_000) -> bool:
        return True

    def shutdown(self) -> None:
        self._closed = True
        self._abandon()
        with self._lock:
            if self._conn is not None:
                self._conn.close()
                self._conn = None


def _abort(conn: http.client.HTTPConnection) -> None:
    """End what ``conn`` is waiting for, from another thread: a blocked read returns."""
    sock = conn.sock
    if sock is not None:
        # The plain socket's shutdown, even under TLS: SSLSocket.shutdown would drop its
        # TLS state under the reading thread's feet (a ValueError, not a failed read).
        with contextlib.suppress(OSError):  # already closed
            socket.socket.shutdown(sock, socket.SHUT_RDWR)


__all__ = ["OtlpHttpExporter", "encode"]
