"""Quotas and spans of one CQL connection's statements: the half of judging that comes
after policy allowed.

:class:`StatementQuotas` is mixed into :class:`~.judge.RequestJudging`: a statement over a
quota is answered Overloaded (0x1001) on its stream and audited ``throttled``; a statement
a quota paces (an awaitable answer: its ``max_delay``) waits in a task of its own while
later frames of the connection wait behind it in :class:`~.holds.UseHold` (it was judged
under the keyspace of now, so nothing may overtake it), then is written ahead and
forwarded; the held frames are judged next, in order. :func:`span_name_and_attributes`
names a statement's span per the database semantic conventions.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable
from typing import TYPE_CHECKING

from lockgate import _log, tracing
from lockgate.quotas import THROTTLED, QuotaTicket, Throttled
from lockgate.quotas.engines import Answer, count_throttled, throttled_detail, throttled_message
from lockgate.tracing.attributes import identity_attributes

from . import codec
from .classify import ANY_OBJECT

if TYPE_CHECKING:
    from .context import EngineContext
    from .handshake import Authenticated
    from .holds import UseHold
    from .judge import Judged
    from .statements import Plan

log = _log.get("gateway.cql")


class StatementQuotas:
    """Throttling, pacing and the span of a statement policy allowed (see the module)."""

    ctx: EngineContext
    auth: Authenticated | None
    holds: UseHold
    _paced: asyncio.Future[None] | None  # a statement a quota holds

    # What the other half of judging (:class:`~.judge.RequestJudging`) provides.
    def _write_ahead(
        self,
        event: codec.Event,
        judged: Judged,
        t0: float,
        rule: str | None,
        reason: str | None,
        tickets: list[QuotaTicket],
        span: tracing.RequestSpan,
    ) -> None:
        raise NotImplementedError

    def _answer(self, event: codec.Event, code: int, message: str) -> None:
        raise NotImplementedError

    def _refuse_request(
        self,
        event: codec.Event,
        plan: Plan | None,
        t0: float,
        code: int,
        message: str,
        reason: str,
    ) -> None:
        raise NotImplementedError

    def _on_request(self, event: codec.Event) -> None:
        raise NotImplementedError

    def _flush_upstream(self) -> None:
        raise NotImplementedError

    def _fields(self) -> dict[str, object]:
        raise NotImplementedError

    def _throttled(
        self,
        event: codec.Event,
        judged: Judged,
        t0: float,
        rule: str | None,
        throttled: Throttled,
        span: tracing.RequestSpan,
    ) -> None:
        """Over a quota: Overloaded on the statement's stream (the driver's retry policy
        decides what next), audited ``throttled`` under the rule that allowed it."""
        auth = self.auth
        assert auth is not None
        claims, name = auth.claims, auth.resource.name
        span.throttled(throttled.limit, throttled.retry_after)
        what = f"{judged.action} on {judged.obj}"
        self._answer(
            event, codec.ERR_OVERLOADED, throttled_message(throttled, what, claims.sub, name)
        )
        self.ctx.count(name, judged.action, "deny", claims.dag_id)
        count_throttled(name, throttled)
        self.ctx.record(
            THROTTLED, claims, name, t0, action=judged.action, obj=judged.obj,
            status=codec.ERR_OVERLOADED, decision="deny", rule=rule, reason=THROTTLED,
            detail={**judged.detail, **throttled_detail(throttled)},
        )  # fmt: skip
        span.end(status=codec.ERR_OVERLOADED)

    def _pace(
        self,
        event: codec.Event,
        judged: Judged,
        t0: float,
        rule: str | None,
        reason: str | None,
        answer: Awaitable[Answer],
        span: tracing.RequestSpan,
    ) -> None:
        """A quota holds this statement for a token: later frames wait behind it (it was
        judged under the keyspace of now), other streams' answers keep flowing."""
        self.holds.pace(event.stream)
        self._paced = asyncio.ensure_future(
            self._paced_admit(event, judged, t0, rule, reason, answer, span)
        )

    async def _paced_admit(
        self,
        event: codec.Event,
        judged: Judged,
        t0: float,
        rule: str | None,
        reason: str | None,
        answer: Awaitable[Answer],
        span: tracing.RequestSpan,
    ) -> None:
        try:
            result = await answer
        except asyncio.CancelledError:
            span.end(error="session_ended")
            raise
        except Exception:  # a gate that fails refuses, it never lets a statement through
            log.exception("cql quota check failed", extra={"fields": self._fields()})
            self._refuse_request(
                event, judged.plan, t0, codec.ERR_OVERLOADED,
                "Lockgate could not check this statement's quota; retry later",
                "quota_unavailable",
            )  # fmt: skip
            span.end(status=codec.ERR_OVERLOADED, error="quota_unavailable")
        else:
            if isinstance(result, Throttled):
                self._throttled(event, judged, t0, rule, result, span)
            else:
                self._write_ahead(event, judged, t0, rule, reason, result, span)
        self._paced = None
        self.holds.paced()
        while (held := self.holds.release_next()) is not None:
            self._on_request(held)
        self._flush_upstream()

    def _span(self, judged: Judged) -> tracing.RequestSpan:
        """The statement's span, named and described per the database conventions (never
        its text: literals may be secrets)."""
        auth = self.auth
        assert auth is not None
        name, attributes = span_name_and_attributes(judged.plan, auth)
        return tracing.start_request(
            "cql",
            auth.resource.name,
            name,
            traceparent=getattr(auth.claims, "traceparent", None),
            attributes=attributes,
        )


def span_name_and_attributes(
    plan: Plan, auth: Authenticated
) -> tuple[str, dict[str, tracing.AttributeValue]]:
    """``"<OPERATION> <keyspace.table>"`` and the span's attributes (database semantic
    conventions, the upstream node, the token's identity), for :func:`tracing.start_request`."""
    targets = plan.targets
    if plan.op == "batch":
        operation = "BATCH"
    else:
        operation = (targets[0].statement_kind if targets else plan.op).upper()
    claims = auth.claims
    host, _, port = auth.link.contact_point.rpartition(":")
    attributes: dict[str, tracing.AttributeValue] = {
        "db.system.name": "cassandra",
        "db.operation.name": operation,
        "server.address": host.strip("[]"),
        "lockgate.resource": auth.resource.name,
        **identity_attributes(claims),
    }
    if port.isdigit():
        attributes["server.port"] = int(port)
    objects = dict.fromkeys(t.object for t in targets if t.object != ANY_OBJECT)
    if len(objects) != 1:
        return operation, attributes
    obj = next(iter(objects))
    keyspace, _, table = obj.partition(".")
    attributes["db.namespace"] = keyspace
    if table:
        attributes["db.collection.name"] = table
    return f"{operation} {obj}", attributes
