"""Audit records of the engines: one builder, the same fields from every protocol.

Every engine writes the same shape (:class:`lockgate.audit.AuditRecord`): who acted, taken
straight from the verified token's :class:`lockgate.identity.Claims` (``None`` before a
token verified), then what was done, the decision and the outcome. Two moments:

* :meth:`RecordBuilder.admitted` — an allowed request's record, written ahead
  (``AuditSink.write_ahead``) before any byte goes upstream; it has no status nor latency;
* :meth:`RecordBuilder.emit` — an outcome or a refusal: latency measured from ``t0`` (the
  engine's clock), sent to the sink without blocking; a failing sink is logged, never
  raised into a request (:func:`emit_safely`).

Hot path: no dict of identity fields, no ``getattr``; one dataclass built per record.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Protocol

from lockgate import _log
from lockgate.audit import AuditRecord

if TYPE_CHECKING:
    from lockgate.identity import Claims

log = _log.get("gateway")

Clock = Callable[[], float]


class RecordSink(Protocol):
    """What :func:`emit_safely` needs of an audit sink."""

    def emit(self, record: AuditRecord) -> None: ...


def record(
    event: str,
    claims: Claims | None,
    resource: str | None,
    *,
    action: str | None = None,
    obj: str | None = None,
    decision: str | None = None,
    rule: str | None = None,
    reason: str | None = None,
    status: int | None = None,
    latency_ms: float | None = None,
    bytes_in: int | None = None,
    bytes_out: int | None = None,
    detail: dict[str, Any] | None = None,
) -> AuditRecord:
    """One audit record; the identity fields come from ``claims`` (all None without)."""
    if claims is None:
        return AuditRecord(
            event=event, resource=resource, action=action, object=obj, decision=decision,
            rule=rule, reason=reason, status=status, latency_ms=latency_ms,
            bytes_in=bytes_in, bytes_out=bytes_out, detail=detail or {},
        )  # fmt: skip
    return AuditRecord(
        event=event, deployment=claims.deployment, dag_id=claims.dag_id,
        task_id=claims.task_id, run_id=claims.run_id, try_number=claims.try_number,
        map_index=claims.map_index, principal=claims.sub, jti=claims.jti,
        resource=resource, action=action, object=obj, decision=decision, rule=rule,
        reason=reason, status=status, latency_ms=latency_ms, bytes_in=bytes_in,
        bytes_out=bytes_out, detail=detail or {},
    )  # fmt: skip


def emit_safely(audit: RecordSink, rec: AuditRecord) -> None:
    """Emit an audit record; a sink failure is logged, never raised into a request."""
    try:
        audit.emit(rec)
    except Exception:
        log.exception("audit emit failed", extra={"fields": {"event": rec.event}})


class RecordBuilder:
    """Builds an engine's audit records and emits outcomes to its sink (one per engine)."""

    __slots__ = ("_audit", "_clock")

    def __init__(self, audit: RecordSink, clock: Clock = time.monotonic) -> None:
        self._audit = audit
        self._clock = clock

    @staticmethod
    def admitted(
        claims: Claims | None,
        resource: str,
        action: str,
        obj: str,
        rule: str | None,
        reason: str | None,
        detail: dict[str, Any] | None = None,
    ) -> AuditRecord:
        """The ``admitted`` record of an allowed request, to write ahead."""
        return record(
            "admitted", claims, resource, action=action, obj=obj, decision="allow",
            rule=rule, reason=reason, detail=detail,
        )  # fmt: skip

    def emit(
        self,
        event: str,
        claims: Claims | None,
        resource: str | None,
        t0: float,
        *,
        action: str | None = None,
        obj: str | None = None,
        status: int | None = None,
        decision: str | None = None,
        rule: str | None = None,
        reason: str | None = None,
        bytes_in: int | None = None,
        bytes_out: int | None = None,
        detail: dict[str, Any] | None = None,
    ) -> None:
        """Record an outcome or a refusal, ``latency_ms`` counted from ``t0``; never raises."""
        rec = record(
            event, claims, resource, action=action, obj=obj, decision=decision, rule=rule,
            reason=reason, status=status,
            latency_ms=round((self._clock() - t0) * 1000.0, 3),
            bytes_in=bytes_in, bytes_out=bytes_out, detail=detail,
        )  # fmt: skip
        emit_safely(self._audit, rec)


__all__ = ["RecordBuilder", "RecordSink", "emit_safely", "record"]
