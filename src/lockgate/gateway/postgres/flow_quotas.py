"""Quotas and spans of one PostgreSQL session's statements (mixed into :class:`~.flow.Flow`).

:meth:`FlowQuotas._quota_tickets` asks the gate for each statement of an allowed text,
once per object it touches, before anything is written ahead; a paced answer is awaited
where the statement stands (every later message of the session waits with it). Over a
quota: :meth:`FlowQuotas._throttled`, a refusal with SQLSTATE :data:`TOO_MANY_CONNECTIONS`
audited ``throttled`` (an ERROR: the session goes on; in an extended-protocol batch the
flow's refusal path drops the rest up to its Sync). SET, BEGIN and other statements on no
object ask nothing. :func:`span_name_and_attributes` names a statement's span per the
database semantic conventions (never its text).
"""

from __future__ import annotations

import asyncio
import inspect
from collections.abc import Awaitable, Iterable, Mapping
from typing import TYPE_CHECKING, Any

from lockgate import tracing
from lockgate.quotas import NO_QUOTAS, THROTTLED, QuotaTicket, Throttled
from lockgate.quotas.engines import (
    Answer,
    admit_each,
    count_throttled,
    release_all,
    throttled_detail,
    throttled_message,
)
from lockgate.tracing.attributes import identity_attributes

from .judge import Admission, Judge, Refusal, StatementRecord

if TYPE_CHECKING:
    from .context import EngineContext
    from .flow import SessionInfo


class ClientGone(Exception):
    """The client closed its side while a statement of it waited for its quota."""


#: SQLSTATE of a quota's refusal (too_many_connections: what clients know as "try later")
TOO_MANY_CONNECTIONS = "53300"


class FlowQuotas:
    """Quotas and spans of statements; :class:`~.flow.Flow` provides the session."""

    info: SessionInfo
    ctx: EngineContext
    name: str
    judge: Judge

    async def _quota_tickets(
        self, records: tuple[StatementRecord, ...], admission: Admission
    ) -> list[list[QuotaTicket]] | Refusal:
        """Ask the quotas for each statement's objects (a statement without one, e.g. SET
        or BEGIN, asks none): its tickets per statement, or the refusal of the first one
        over a quota (the tickets taken are given back). A paced statement is awaited here,
        so the session's messages keep their order."""
        gate = self.ctx.quotas
        if gate is NO_QUOTAS:
            return []
        claims = self.judge.claims
        taken: list[list[QuotaTicket]] = []
        try:
            for rec in records:
                # one statement is one token per object, however often it names it
                accesses = list(
                    dict.fromkeys((a.action, a.obj) for a in rec.statement.accesses if a.obj)
                )
                answer = admit_each(gate, claims, self.name, accesses) if accesses else []
                if inspect.isawaitable(answer):
                    answer = await self._paced(answer)
                if isinstance(answer, Throttled):
                    for tickets in taken:
                        release_all(tickets)
                    return self._throttled(rec, admission, answer)
                taken.append(answer)
        except BaseException:  # the session ended meanwhile
            for tickets in taken:
                release_all(tickets)
            raise
        return taken

    async def _paced(self, answer: Awaitable[Answer]) -> Answer:
        """Wait for a paced answer, unless the client leaves first (:class:`ClientGone`:
        the statement is dropped unrun and its tickets given back)."""
        gone = self.info.client_gone
        if gone is None:
            return await answer
        waiting = asyncio.ensure_future(answer)
        watching = asyncio.ensure_future(gone())
        try:
            done, _ = await asyncio.wait((waiting, watching), return_when=asyncio.FIRST_COMPLETED)
        finally:
            if not waiting.done():
                # its tickets are given back (:func:`~lockgate.quotas.engines.settle`)
                waiting.cancel()
            watching.cancel()
            # the client's reader is free again only once the watcher has left its read
            await asyncio.wait((watching,))
        if waiting in done:
            return waiting.result()
        raise ClientGone

    def _throttled(
        self, rec: StatementRecord, admission: Admission, throttled: Throttled
    ) -> Refusal:
        """Over a quota: SQLSTATE 53300 (ERROR: the session goes on), audited ``throttled``
        under the rule that allowed the statement."""
        count_throttled(self.name, throttled)
        if tracing.enabled():
            span = self._span(rec, *admission.rule_for(rec))
            span.throttled(throttled.limit, throttled.retry_after)
            span.end(status=TOO_MANY_CONNECTIONS)
        what = f"{rec.action} on {rec.obj}"
        return Refusal(
            TOO_MANY_CONNECTIONS,
            throttled_message(throttled, what, self.judge.claims.sub, self.name),
            THROTTLED,
            action=rec.action,
            obj=rec.obj,
            rule=admission.rule_for(rec)[0],
            event=THROTTLED,
            detail=throttled_detail(throttled),
        )

    def _span(
        self, rec: StatementRecord, rule: str | None, reason: str | None
    ) -> tracing.RequestSpan:
        """The statement's span (database conventions; never its text)."""
        objects = (a.obj for a in rec.statement.accesses)
        name, attributes = span_name_and_attributes(rec.statement.command, objects, self.info)
        span = tracing.start_request(
            "postgres",
            self.name,
            name,
            traceparent=getattr(self.judge.claims, "traceparent", None),
            attributes=attributes,
        )
        span.decided(rec.action, rec.obj, "allow", rule, reason)
        return span

    def _denied_span(self, refusal: Refusal, detail: Mapping[str, Any]) -> None:
        """The span of a statement policy refused (named by its command when one)."""
        command = str(detail.get("command") or refusal.action)
        name, attributes = span_name_and_attributes(command, (refusal.obj or "",), self.info)
        span = tracing.start_request(
            "postgres",
            self.name,
            name,
            traceparent=getattr(self.judge.claims, "traceparent", None),
            attributes=attributes,
        )
        span.decided(refusal.action or "", refusal.obj or "", "deny", refusal.rule, "denied")
        span.end(status=refusal.sqlstate)


def span_name_and_attributes(
    operation: str, objects: Iterable[str], info: SessionInfo
) -> tuple[str, dict[str, tracing.AttributeValue]]:
    """``"<COMMAND> <schema.table>"`` and the span's attributes (database semantic
    conventions, the upstream server, the token's identity)."""
    resource, claims = info.resource, info.claims
    attributes: dict[str, tracing.AttributeValue] = {
        "db.system.name": "postgresql",
        "db.operation.name": operation,
        "db.namespace": resource.database,
        "server.address": resource.host,
        "server.port": resource.port,
        "lockgate.resource": resource.name,
        **identity_attributes(claims),
    }
    distinct = dict.fromkeys(obj for obj in objects if obj)
    if len(distinct) != 1:
        return operation, attributes
    obj = next(iter(distinct))
    attributes["db.collection.name"] = obj
    return f"{operation} {obj}", attributes


__all__ = ["TOO_MANY_CONNECTIONS", "ClientGone", "FlowQuotas", "span_name_and_attributes"]
