"""Quotas and spans in the HTTP engine: the gate's answer, the 429, the request's span.

A request policy allowed asks the quota gate (:mod:`lockgate.quotas`) before its
``admitted`` record is written ahead; a request that starts a Databricks job run or a Data
Factory pipeline run (``Verdict.starts_run``) also asks the ``runs`` cap. The gate answers a
ticket (kept on the :class:`~.admission.Admitted` request and given back when its response
has been relayed or it failed, whatever the path: :meth:`Quota.release`) or
:class:`~lockgate.quotas.Throttled`. A throttled request gets the protocol's own throttling
answer, which stock clients back off on: 429 with ``Retry-After`` (whole seconds, at least
1) and a JSON body naming principal, resource, action, object, limit and wait, in the
upstream's error shape when the resource has a profile (Cosmos DB adds
``x-ms-retry-after-ms`` and ``x-ms-substatus: 3200``). It is audited as ``throttled``
(decision deny, reason ``throttled``, the allowing rule, ``detail.limit``) and counted.

:func:`request_span` opens the request's tracing span (:mod:`lockgate.tracing`): with
tracing off it is one call that returns the shared no-op span.
"""

from __future__ import annotations

from collections.abc import Awaitable
from typing import TYPE_CHECKING, Any

from lockgate import tracing
from lockgate.gateway.http import responses
from lockgate.gateway.http.profiles.hooks import retry_after_seconds
from lockgate.gateway.refusals import request_line
from lockgate.quotas import (
    NO_TICKET,
    THROTTLED,
    Admission,
    QuotaGate,
    QuotaTicket,
    RunAdmission,
    RunSlot,
    Throttled,
)
from lockgate.quotas.engines import count_throttled, throttled_detail
from lockgate.tracing import NO_SPAN, AttributeValue, RequestSpan
from lockgate.tracing.attributes import identity_attributes

if TYPE_CHECKING:
    from lockgate.gateway.http.admission import Admitted
    from lockgate.gateway.http.resources import ResourceState
    from lockgate.gateway.records import RecordBuilder
    from lockgate.identity import Claims


class Quota:
    """What an admitted request holds of its quotas until it ends (see the module doc)."""

    __slots__ = ("run", "sent", "ticket")

    def __init__(self) -> None:
        self.ticket: QuotaTicket = NO_TICKET
        self.run: RunSlot | None = None  # a run start's slot under a ``runs`` cap
        self.sent = False  # the request went upstream: what it starts may exist there

    def run_answered(self, run_id: object | None) -> None:
        """The upstream answered the run start: ``run_id`` when it started one, else None
        (the slot is given back)."""
        slot, self.run = self.run, None
        if slot is None:
            return
        if run_id is None:
            slot.release()
        else:
            slot.started(str(run_id))

    def run_settled(
        self, status: int, error: str | None, run_id: object | None, unnamed: str
    ) -> None:
        """A run start ended. Named by the answer: it counts as that run. Refused by the
        upstream (a complete answer other than 200), or never sent: the slot goes back. Sent
        and not refused, but no run named (the client left, the upstream timed out or cut
        the answer short): the run may be running, so it counts as ``unnamed`` until its
        maximum age; giving the slot back would let a task start runs past the cap by
        hanging up after each start."""
        refused = error is None and status != 200
        if run_id is None and self.sent and not refused:
            run_id = unnamed
        self.run_answered(run_id)

    def release(self) -> None:
        """Give everything back (idempotent): the request ended, answered or not."""
        ticket, self.ticket = self.ticket, NO_TICKET
        slot, self.run = self.run, None
        try:
            ticket.release()
        finally:
            if slot is not None:
                slot.release()


def ask(
    gate: QuotaGate,
    claims: Claims,
    resource: str,
    action: str,
    obj: str,
    also: tuple[str, ...],
    cost: int = 1,
) -> Admission | Awaitable[Admission]:
    """The gate's answer for a request; ``also``: the other names of what it touches,
    ``cost``: the operations it carries (each given only when it says something, so a gate
    that knows neither keeps working)."""
    if cost > 1:
        return gate.admit(claims, resource, action, obj, cost=cost, also=also)
    if also:
        return gate.admit(claims, resource, action, obj, also=also)
    return gate.admit(claims, resource, action, obj)


def ask_run(
    gate: QuotaGate, claims: Claims, resource: str, obj: str, also: tuple[str, ...]
) -> RunAdmission | Awaitable[RunAdmission]:
    """The ``runs`` cap's answer for a run start (``also`` as for :func:`ask`)."""
    if also:
        return gate.start_run(claims, resource, obj, also=also)
    return gate.start_run(claims, resource, obj)


def throttled_body(
    claims: Claims, resource: str, action: str, obj: str, over: Throttled
) -> dict[str, Any]:
    """The JSON of a throttled request's 429 (the 403's style: who, what, why)."""
    wait = round(over.retry_after, 3)
    return {
        "error": "throttled",
        "principal": claims.sub,
        "action": action,
        "resource": resource,
        "object": obj,
        "limit": over.limit,
        "kind": over.kind,
        "retry_after": wait,
        "reason": f"over quota {over.limit} ({over.kind}): retry after {wait} s",
    }


def throttled_answer(
    rs: ResourceState,
    claims: Claims,
    action: str,
    obj: str,
    over: Throttled,
    *,
    close: bool,
    head_only: bool,
) -> bytes:
    """The 429 of a throttled request, in the resource's profile's shape when it has one."""
    body = throttled_body(claims, rs.name, action, obj, over)
    profile = rs.profile
    if profile is None:
        extra = [("Retry-After", str(retry_after_seconds(over.retry_after)))]
        return responses.json_response(429, body, close=close, head_only=head_only, extra=extra)
    return responses.json_response(
        429, body, close=close, head_only=head_only,
        extra=profile.throttle_headers(over.retry_after), shape=profile.error_body,
    )  # fmt: skip


def throttled(records: RecordBuilder, adm: Admitted, over: Throttled, *, close: bool) -> bytes:
    """Count and audit a request over a quota, end its span; the 429 to write."""
    rs, claims = adm.rs, adm.claims
    count_throttled(rs.name, over)
    rs.count(adm.action, "deny", claims.dag_id)
    records.emit(
        THROTTLED, claims, rs.name, adm.t0, action=adm.action, obj=adm.obj, status=429,
        decision="deny", rule=adm.rule, reason=THROTTLED, detail=throttled_detail(over),
    )  # fmt: skip
    adm.span.throttled(over.limit, over.retry_after)
    adm.span.end(status=429)
    return throttled_answer(
        rs, claims, adm.action, adm.obj, over, close=close, head_only=adm.head_only
    )


def request_span(rs: ResourceState, claims: Claims, method: str, path: str) -> RequestSpan:
    """The SERVER span of one request (HTTP semantic conventions); the no-op span when
    tracing is off. ``path`` is the upstream-relative path: no query, no token segment."""
    if not tracing.enabled():
        return NO_SPAN
    attributes: dict[str, AttributeValue] = {
        "http.request.method": method,
        "url.path": request_line(path.encode("utf-8", "replace")).decode("utf-8", "replace"),
        "server.address": rs.target.host,
        "server.port": rs.target.port,
        "lockgate.resource": rs.name,
        **identity_attributes(claims),
    }
    return tracing.start_request(
        "http", rs.name, method,
        traceparent=getattr(claims, "traceparent", None), attributes=attributes,
    )  # fmt: skip


__all__ = [
    "Quota",
    "ask",
    "ask_run",
    "request_span",
    "throttled",
    "throttled_answer",
    "throttled_body",
]
