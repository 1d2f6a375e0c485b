"""Connection accounting for every listener: who is open, a cap, and memory given back.

Every listener (``http``, each resource's own ``listen``, ``forward_proxy``, ``cql`` and
``control``) owns one :class:`ConnectionGuard`. Its :meth:`ConnectionGuard.factory` wraps the
listener's protocol factory, so each accepted connection gets a :class:`Ticket` that lives
through three stages::

    accepted (TLS handshake under way) ──opened()──► open ──closed()──► done
         └──────────── handshake failed, timed out, peer gone ────────────┘

Why this exists: with ``create_server(ssl=...)`` the application protocol is built when the
socket is accepted, *before* the handshake, and it never hears of a handshake that does not
complete (``connection_made`` and ``connection_lost`` are both skipped). A registry filled in
the factory therefore kept every port scan, TCP health check and wrong-CA client forever. So:

* registries (the HTTP engine's open connections, CQL sessions) are filled in
  ``connection_made`` and emptied in ``connection_lost``; the ticket covers the stage before;
* a TLS connection still in its handshake is counted against the cap from accept until
  ``opened()`` or until its protocol object is dropped by the TLS layer (a weak reference
  finalizer: the handshake failed or timed out), so the count never drifts;
* at the cap the factory hands out :func:`refusal` instead: for plain HTTP a ``503`` naming
  the cap, for TLS listeners the same answer after the handshake (the event loop's TLS
  server gives no earlier hook), for CQL and the control plane a close. The handshake
  timeout bounds how long any refused TLS connection can live. One log line per listener
  per :data:`LOG_EVERY` seconds says how many were refused (no audit record: no principal
  is known before authentication, and a flood must not flood the trail);
* the C allocator keeps the memory of TLS handshakes that never finished (OpenSSL and the
  event loop's TLS buffers; Python objects are all freed): RSS grew by ~25 MiB per 1,000
  abandoned handshakes without end. After a burst of closed TLS connections
  :class:`_MemoryRelease` asks glibc to give free memory back (``malloc_trim``), from a
  timer once the burst is over (at most every :data:`TRIM_LATEST` seconds under steady
  churn), never on a connection's path.

``lockgate_open_connections{listener}`` (accepted, not yet closed) is read when ``/metrics``
is scraped; ``lockgate_connections_refused_total{listener}`` counts cap refusals.

From a listener's config, :func:`server_ssl_context` builds its TLS context and
:func:`limits` the keywords every engine's low-level ``start`` takes.
"""

from __future__ import annotations

import asyncio
import ctypes
import ctypes.util
import gc
import json
import ssl
import time
import weakref
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from lockgate import _log, metrics

if TYPE_CHECKING:
    from lockgate.config import ForwardProxyConfig, ListenerConfig

log = _log.get("gateway.listeners")

DEFAULT_HANDSHAKE_TIMEOUT = 10.0
DEFAULT_MAX_CONNECTIONS = 10_000
LOG_EVERY = 10.0  # seconds between two "connections refused" lines of one listener
TRIM_AFTER = 100  # closed TLS connections that make a trim worth its few milliseconds
TRIM_QUIET = 0.5  # seconds without such a close before the trim runs
TRIM_LATEST = 5.0  # seconds; under steady churn, trim at least this often

_PENDING, _OPEN, _DONE = range(3)


class Ticket:
    """One accepted connection's place in its listener's count; every method is idempotent."""

    __slots__ = ("_guard", "_state")

    def __init__(self, guard: ConnectionGuard) -> None:
        self._guard = guard
        self._state = _PENDING

    def opened(self) -> None:
        """The connection is usable (after the TLS handshake, if any)."""
        if self._state == _PENDING:
            self._state = _OPEN
            self._guard.pending -= 1
            self._guard.open += 1

    def abandoned(self) -> None:
        """The protocol was dropped: a connection still in its handshake is gone."""
        if self._state == _PENDING:
            self.closed()

    def closed(self) -> None:
        """The connection is gone, whatever stage it reached."""
        state = self._state
        if state == _DONE:
            return
        self._state = _DONE
        guard = self._guard
        if state == _PENDING:
            guard.pending -= 1
        else:
            guard.open -= 1
        if guard.tls_memory:
            _RELEASE.note_closed()


class ConnectionGuard:
    """Counts one listener's connections and refuses past ``max_connections``."""

    def __init__(
        self,
        listener: str,
        *,
        max_connections: int = DEFAULT_MAX_CONNECTIONS,
        tls: bool = False,
        refusal: bytes = b"",
        tls_inside: bool = False,
    ) -> None:
        self.listener = listener
        self.max_connections = max_connections
        self.tls = tls  # the listener's own TLS: protocols are built before the handshake
        self.tls_memory = tls or tls_inside  # closes worth a memory release (see module doc)
        self.pending = 0  # accepted, TLS handshake not finished
        self.open = 0
        self.refused = 0
        self._refusal = refusal
        self._refused_since_log = 0
        self._last_log = float("-inf")
        self._last_collect = float("-inf")
        self._refused_metric = metrics.CONNECTIONS_REFUSED.labels(listener)
        metrics.OPEN_CONNECTIONS.labels(listener).set_function(self.count)

    def count(self) -> int:
        """Connections accepted and not yet closed."""
        return self.pending + self.open

    def admit(self) -> Ticket | None:
        """A ticket for a connection just accepted, or None when the listener is full."""
        if self.pending + self.open >= self.max_connections and not self._reclaim():
            self._note_refused()
            return None
        self.pending += 1
        return Ticket(self)

    def factory(self, make: Callable[[Ticket], asyncio.BaseProtocol]) -> Callable[[], Any]:
        """A protocol factory for ``create_server``: ``make(ticket)`` builds the protocol of
        an admitted connection, which must call ``ticket.opened()`` in ``connection_made``
        and ``ticket.closed()`` in ``connection_lost``."""

        def build() -> asyncio.BaseProtocol:
            ticket = self.admit()
            if ticket is None:
                return _Refusal(self._refusal)
            protocol = make(ticket)
            if self.tls:  # the TLS layer drops a protocol whose handshake failed, silently
                weakref.finalize(protocol, ticket.abandoned)
            return protocol

        return build

    def _reclaim(self) -> bool:
        """At the cap with handshakes pending: collect cycles once a second, then look again.

        asyncio's own TLS layer (not uvloop's) keeps a failed handshake's protocol in a
        reference cycle through the exception it stores, so its finalizer waits for the
        collector; without this the count could stay at the cap after such a burst.
        """
        now = time.monotonic()
        if not self.pending or now - self._last_collect < 1.0:
            return False
        self._last_collect = now
        gc.collect()
        return self.pending + self.open < self.max_connections

    def _note_refused(self) -> None:
        self.refused += 1
        self._refused_since_log += 1
        self._refused_metric.inc()
        now = time.monotonic()
        if now - self._last_log >= LOG_EVERY:
            log.warning(
                "listener at its connection cap: refusing new connections",
                extra={
                    "fields": {
                        "listener": self.listener,
                        "max_connections": self.max_connections,
                        "refused": self._refused_since_log,
                    }
                },
            )
            self._last_log = now
            self._refused_since_log = 0


def server_ssl_context(listener: ListenerConfig | ForwardProxyConfig) -> ssl.SSLContext | None:
    """The TLS context a listener serves with (TLS 1.2 or newer), None when it is plain."""
    if listener.tls is None:
        return None
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.load_cert_chain(str(listener.tls.cert), str(listener.tls.key))
    return ctx


def limits(listener: ListenerConfig) -> dict[str, Any]:
    """A listener's connection limits, as the engines' ``start`` takes them."""
    return {
        "handshake_timeout": listener.handshake_timeout,
        "max_connections": listener.max_connections,
    }


def http_refusal(listener: str, max_connections: int) -> bytes:
    """The ``503`` an HTTP listener answers at its cap, naming the cap."""
    body = json.dumps(
        {
            "error": "too_many_connections",
            "error_description": f"listener {listener!r} is at its cap of "
            f"{max_connections} open connections; retry later",
        }
    ).encode()
    head = (
        "HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\nRetry-After: 1\r\nConnection: close\r\n\r\n"
    )
    return head.encode("ascii") + body


class _Refusal(asyncio.Protocol):
    """A connection past the cap: answer (if the protocol has words for it) and close."""

    __slots__ = ("_answer",)

    def __init__(self, answer: bytes) -> None:
        self._answer = answer

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        if self._answer:
            transport.write(self._answer)  # type: ignore[attr-defined]
        transport.close()

    def data_received(self, data: bytes) -> None:
        return None


class TrackedProtocol(asyncio.Protocol):
    """Wraps a protocol the gateway does not own (aiohttp's) so its ticket sees open/close."""

    __slots__ = ("__weakref__", "_inner", "_ticket")

    def __init__(self, inner: Any, ticket: Ticket) -> None:
        self._inner = inner
        self._ticket = ticket

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._ticket.opened()
        self._inner.connection_made(transport)

    def connection_lost(self, exc: Exception | None) -> None:
        self._ticket.closed()
        self._inner.connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        self._inner.data_received(data)

    def eof_received(self) -> bool | None:
        return self._inner.eof_received()  # type: ignore[no-any-return]

    def pause_writing(self) -> None:
        self._inner.pause_writing()

    def resume_writing(self) -> None:
        self._inner.resume_writing()


class _MemoryRelease:
    """Gives glibc's free memory back to the OS after bursts of closed TLS connections.

    A trim waits until closes have been quiet for :data:`TRIM_QUIET` seconds (the burst is
    over), but never more than :data:`TRIM_LATEST` seconds after it was due (steady churn).
    """

    def __init__(self) -> None:
        self._trim = _malloc_trim()
        self._closed = 0
        self._last_close = 0.0
        self._due = 0.0
        self._timer: asyncio.TimerHandle | None = None
        self.trims = 0

    def note_closed(self) -> None:
        if self._trim is None:
            return
        self._closed += 1
        if self._closed < TRIM_AFTER:
            return
        now = time.monotonic()
        self._last_close = now
        if self._timer is not None:
            return
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:  # closed outside the loop (shutdown): nothing to schedule
            return
        self._due = now
        self._timer = loop.call_later(TRIM_QUIET, self._maybe_release, loop)

    def _maybe_release(self, loop: asyncio.AbstractEventLoop) -> None:
        now = time.monotonic()
        quiet_at = self._last_close + TRIM_QUIET
        if now < quiet_at and now < self._due + TRIM_LATEST:
            self._timer = loop.call_later(quiet_at - now, self._maybe_release, loop)
            return
        self.release()
        if now < quiet_at:  # mid-burst: the rest of the burst gets its own trim
            self._closed = TRIM_AFTER

    def release(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._closed = 0
        if self._trim is not None:
            self._trim(0)
            self.trims += 1


def _malloc_trim() -> Callable[[int], int] | None:
    """glibc's ``malloc_trim``, or None (musl, macOS: their allocators behave otherwise)."""
    name = ctypes.util.find_library("c")
    try:
        trim = ctypes.CDLL(name).malloc_trim if name else None
    except (OSError, AttributeError):
        return None
    if trim is not None:
        trim.argtypes = [ctypes.c_size_t]
        trim.restype = ctypes.c_int
    return trim


_RELEASE = _MemoryRelease()

__all__ = [
    "DEFAULT_HANDSHAKE_TIMEOUT",
    "DEFAULT_MAX_CONNECTIONS",
    "ConnectionGuard",
    "Ticket",
    "TrackedProtocol",
    "http_refusal",
    "limits",
    "server_ssl_context",
]
