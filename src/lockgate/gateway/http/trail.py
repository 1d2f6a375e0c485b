"""The HTTP engine's audit trail: the written-ahead record, the outcome, the refusals.

Rules it keeps for every request, whichever path served it:

* an allowed request's ``admitted`` record is written ahead (and, with ``durability:
  fsync``, awaited) before its first byte goes upstream; when that fails the client gets
  503 ``audit_unavailable`` and nothing is forwarded;
* every outcome (``allowed``, ``upstream_error``) names its ``admitted`` record (``ref``);
* every refusal is counted, logged and audited
  (:class:`~lockgate.gateway.refusals.RefusalRecorder`).

Records are built by the engines' one builder (:mod:`lockgate.gateway.records`).
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

from lockgate import _log
from lockgate.errors import AuditUnavailable
from lockgate.gateway.engine import AuditSink
from lockgate.gateway.records import RecordBuilder
from lockgate.gateway.refusals import RefusalRecorder

if TYPE_CHECKING:
    from lockgate.identity import Claims

log = _log.get("gateway.http")


class Trail:
    """Audit records of one HTTP engine (see the module docstring)."""

    __slots__ = ("_audit", "_clock", "records", "refusals")

    def __init__(self, audit: AuditSink, clock: Callable[[], float] = time.monotonic) -> None:
        self._audit = audit
        self._clock = clock
        self.records = RecordBuilder(audit, clock)
        # Every refusal: counted, logged, audited; budgeted per peer before authentication.
        self.refusals = RefusalRecorder("http", self.records.emit, log, clock=clock)

    def write_ahead(
        self,
        claims: Claims | None,
        resource: str,
        action: str,
        obj: str,
        rule: str | None,
        reason: str | None,
        detail: dict[str, Any] | None = None,
    ) -> str | AuditUnavailable:
        """The reference of the durable ``admitted`` record, or the failure (then recorded
        as ``upstream_error``/``audit_unavailable``: the caller answers 503)."""
        record = RecordBuilder.admitted(claims, resource, action, obj, rule, reason, detail)
        try:
            return self._audit.write_ahead(record)
        except AuditUnavailable as exc:
            self.records.emit(
                "upstream_error",
                claims,
                resource,
                self._clock(),
                action=action,
                obj=obj,
                status=503,
                decision="error",
                rule=rule,
                reason="audit_unavailable",
                detail={"error": str(exc)[:200]},
            )
            return exc

    def durable(self) -> Awaitable[None] | None:
        """None unless audit durability is fsync and records are still on their way."""
        return self._audit.durable()

    async def until_durable(
        self,
        wait: Awaitable[None],
        claims: Claims | None,
        resource: str,
        action: str,
        obj: str,
        ref: str | None,
    ) -> bool:
        """Wait until the written-ahead record is on the device; False (recorded) when it
        cannot be: the caller answers 503 and forwards nothing."""
        try:
            await wait
        except AuditUnavailable as exc:
            self.records.emit(
                "upstream_error",
                claims,
                resource,
                self._clock(),
                action=action,
                obj=obj,
                status=503,
                decision="error",
                reason="audit_unavailable",
                detail={"ref": ref, "error": str(exc)[:200]},
            )
            return False
        return True

    def writable(self) -> AuditUnavailable | None:
        """None when audit can take records, else why not."""
        try:
            self._audit.check_writable()
        except AuditUnavailable as exc:
            return exc
        return None
