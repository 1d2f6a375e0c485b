"""Audit records of the engines: one builder, the same fields from every protocol.

Every engine writes the same shape (:class:`lockgate.audit.AuditRecord`): who acted, taken
straight from the verified token's :class:`lockgate.identity.Claims` (``None`` before a
token verified), then what was done, the decision and the outcome. Two moments:

* :meth:`RecordBuilder.admitted` — an allowed request's record, written ahead
  (``AuditSink.write_ahead``) before any byte goes upstream; it has no status nor latency;
* :meth:`RecordBuilder.emit` — an outcome or a refusal: latency measured from ``t0`` (the
  engine's clock), sent to the sink without blocking; a failing sink is logged, never
  raised into a request (:func:`emit_safely`).

Shadow policies: when the policy has a shadow set (``mode: shadow`` files), the builder asks
it about every ``admitted`` record and every policy ``denied`` one, and where it decides
otherwise adds ``detail["shadow"] = {"decision", "rule", "reason"}`` ("would deny" / "would
allow"). Only differing verdicts are written, so records stay small and ``audit search
--shadow`` finds exactly what a shadow policy would change. Without a shadow set this costs
one attribute read per record and no policy decision. The enforced outcome never depends on
it: the record is built after the engine decided.

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

#: ``verdict(claims, resource, action, obj, allowed)``: the shadow set's decision as a record
#: detail when it differs from the enforced one (``allowed``), else None.
ShadowVerdict = Callable[["Claims", str, str, str, bool], "dict[str, str | None] | None"]


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

    __slots__ = ("_audit", "_clock", "_shadow")

    def __init__(
        self, audit: RecordSink, clock: Clock = time.monotonic, shadow: ShadowVerdict | None = None
    ) -> None:
        self._audit = audit
        self._clock = clock
        self._shadow = shadow

    def _with_shadow(
        self,
        detail: dict[str, Any] | None,
        claims: Claims | None,
        resource: str | None,
        action: str | None,
        obj: str | None,
        allowed: bool,
    ) -> dict[str, Any] | None:
        """``detail`` plus the shadow verdict when there is one that differs."""
        if claims is None or resource is None or action is None or obj is None:
            return detail
        assert self._shadow is not None
        verdict = self._shadow(claims, resource, action, obj, allowed)
        if verdict is None:
            return detail
        return {**(detail or {}), "shadow": verdict}  # the caller's dict is left as it was

    def admitted(
        self,
        claims: Claims | None,
        resource: str,
        action: str,
        obj: str,
        rule: str | None,
        reason: str | None,
        detail: dict[str, Any] | None = None,
    ) -> AuditRecord:
        """The ``admitted`` record of an allowed request, to write ahead."""
        if self._shadow is not None:
            detail = self._with_shadow(detail, claims, resource, action, obj, True)
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
        if self._shadow is not None and event == "denied" and decision == "deny":
            detail = self._with_shadow(detail, claims, resource, action, obj, False)
        rec = record(
            event, claims, resource, action=action, obj=obj, decision=decision, rule=rule,
            reason=reason, status=status,
            latency_ms=round((self._clock() - t0) * 1000.0, 3),
            bytes_in=bytes_in, bytes_out=bytes_out, detail=detail,
        )  # fmt: skip
        emit_safely(self._audit, rec)


__all__ = ["RecordBuilder", "RecordSink", "ShadowVerdict", "emit_safely", "record"]
