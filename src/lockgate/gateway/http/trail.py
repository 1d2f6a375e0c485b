"""The HTTP engine's audit trail: the written-ahead record, the outcome, the refusals.

Rules it keeps for every request, whichever path served it:

* an allowed request's ``admitted`` record is written ahead (and, with ``durability:
  fsync``, awaited) before its first byte goes upstream; when that fails the client gets
  503 ``audit_unavailable`` and nothing is forwarded;
* every outcome (``allowed``, ``upstream_error``) names its ``admitted`` record (``ref``);
* every refusal is counted, logged and audited
  (:class:`~lockgate.gateway.refusals.RefusalRecorder`).

Records are built by the engines' one builder (:mod:`lockgate.gateway.records`), shared
through :class:`~lockgate.gateway.engine.Collaborators`.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any, Protocol

from lockgate import _log
from lockgate.errors import AuditUnavailable
from lockgate.gateway.engine import AuditSink
from lockgate.gateway.records import RecordBuilder
from lockgate.gateway.refusals import RefusalRecorder

if TYPE_CHECKING:
    from lockgate.identity import Claims

log = _log.get("gateway.http")


class Subject(Protocol):
    """An allowed request, as its audit records name it."""

    claims: Claims
    action: str
    obj: str
    rule: str | None
    reason: str
    ref: str | None

    @property
    def resource(self) -> str: ...


class Trail:
    """Audit records of one HTTP engine (see the module docstring)."""

    __slots__ = ("_audit", "_clock", "records", "refusals")

    def __init__(
        self,
        audit: AuditSink,
        records: RecordBuilder,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._audit = audit
        self._clock = clock
        self.records = records  # the process's one builder, shared with every engine
        # Every refusal: counted, logged, audited; budgeted per peer before authentication.
        self.refusals = RefusalRecorder("http", self.records.emit, log, clock=clock)

    def write_ahead(self, subject: Subject, detail: dict[str, Any] | None) -> bool:
        """Make ``subject``'s ``admitted`` record durable, setting its ``ref``; False when it
        cannot be (recorded as ``upstream_error``/``audit_unavailable``: answer 503)."""
        record = self.records.admitted(
            subject.claims, subject.resource, subject.action, subject.obj, subject.rule,
            subject.reason, detail,
        )  # fmt: skip
        try:
            subject.ref = self._audit.write_ahead(record)
        except AuditUnavailable as exc:
            self._audit_failed(subject, exc)
            return False
        return True

    def durable(self) -> Awaitable[None] | None:
        """None unless audit durability is fsync and records are still on their way."""
        return self._audit.durable()

    async def until_durable(self, wait: Awaitable[None], subject: Subject) -> bool:
        """Wait until the written-ahead record is on the device; False (recorded) when it
        cannot be: the caller answers 503 and forwards nothing."""
        try:
            await wait
        except AuditUnavailable as exc:
            self._audit_failed(subject, exc)
            return False
        return True

    def _audit_failed(self, subject: Subject, exc: AuditUnavailable) -> None:
        detail: dict[str, Any] = {"error": str(exc)[:200]}
        if subject.ref is not None:
            detail["ref"] = subject.ref
        self.records.emit(
            "upstream_error", subject.claims, subject.resource, self._clock(),
            action=subject.action, obj=subject.obj, status=503, decision="error",
            rule=subject.rule, reason="audit_unavailable", detail=detail,
        )  # fmt: skip

    def writable(self) -> AuditUnavailable | None:
        """None when audit can take records, else why not."""
        try:
            self._audit.check_writable()
        except AuditUnavailable as exc:
            return exc
        return None
