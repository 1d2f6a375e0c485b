"""Asking the quota gate from an engine, and answering a refusal: what the HTTP, CQL and
PostgreSQL engines share.

A statement may touch several objects (a CQL BATCH over two tables, a PostgreSQL text of
three statements); each distinct ``(action, object)`` asks :meth:`QuotaGate.admit` once,
with ``cost`` the number of targets naming it (the statements of a BATCH on that table), so
a quota on one table is spent by every statement that touches it: a batch is no way past
a rate. :func:`admit_each`
returns the tickets, the first :class:`Throttled` (the tickets already taken are given
back), or an awaitable of either when the gate paces (a quota's ``max_delay``): the engine
then holds that statement, and only it, until the answer comes.

:func:`throttled_detail` is the audit detail of a refusal, :func:`count_throttled` its
count, :func:`throttled_message` the client's message (it names the limit and when to
retry, never the token). :class:`Outstanding` is what a forwarded statement holds until its
answer (its tickets, its span), given back and ended once.
"""

from __future__ import annotations

import asyncio
import inspect
from collections import Counter
from collections.abc import Awaitable, Iterable, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from lockgate import _log, metrics, tracing
from lockgate.quotas import QuotaGate, QuotaTicket, Throttled

if TYPE_CHECKING:
    from lockgate.identity import Claims

log = _log.get("gateway.quota")

Tickets = list[QuotaTicket]
Answer = Tickets | Throttled


def admit_each(
    gate: QuotaGate, claims: Claims, resource: str, targets: Iterable[tuple[str, str]]
) -> Answer | Awaitable[Answer]:
    """Ask ``gate`` once per distinct ``(action, object)``; see the module docstring."""
    tickets: Tickets = []
    pending = list(Counter(targets).items())
    for i, (target, cost) in enumerate(pending):
        answer = _ask(gate, claims, resource, target, cost)
        if inspect.isawaitable(answer):
            return _admit_rest(gate, claims, resource, pending[i + 1 :], answer, tickets)
        if isinstance(answer, Throttled):
            release_all(tickets)
            return answer
        tickets.append(answer)
    return tickets


def _ask(
    gate: QuotaGate, claims: Claims, resource: str, target: tuple[str, str], cost: int
) -> QuotaTicket | Throttled | Awaitable[QuotaTicket | Throttled]:
    action, obj = target
    if cost > 1:
        return gate.admit(claims, resource, action, obj, cost=cost)
    return gate.admit(claims, resource, action, obj)


async def _admit_rest(
    gate: QuotaGate,
    claims: Claims,
    resource: str,
    rest: Sequence[tuple[tuple[str, str], int]],
    first: Awaitable[QuotaTicket | Throttled],
    tickets: Tickets,
) -> Answer:
    try:
        answer: Any = await settle(first)
        for target, cost in rest:
            if isinstance(answer, Throttled):
                break
            tickets.append(answer)
            answer = _ask(gate, claims, resource, target, cost)
            if inspect.isawaitable(answer):
                answer = await settle(answer)
        if isinstance(answer, Throttled):
            release_all(tickets)
            return answer
        tickets.append(answer)
        return tickets
    except BaseException:  # cancelled (the session ended) or the gate failed: give all back
        release_all(tickets)
        raise


async def settle(answer: Awaitable[QuotaTicket | Throttled]) -> QuotaTicket | Throttled:
    """Await one answer; a ticket that arrives after this wait was cancelled is given back
    (a future may complete just before the cancellation reaches this frame)."""
    future = asyncio.ensure_future(answer)
    try:
        return await future
    except asyncio.CancelledError:
        if future.done():
            _release_answer(future)
        else:
            future.cancel()
            future.add_done_callback(_release_answer)
        raise


def _release_answer(future: asyncio.Future[QuotaTicket | Throttled]) -> None:
    if future.cancelled() or future.exception() is not None:
        return
    answer = future.result()
    if not isinstance(answer, Throttled):
        answer.release()


def release_all(tickets: Iterable[QuotaTicket]) -> None:
    """Give every ticket back (idempotent; a failing ticket is logged, never raised)."""
    for ticket in tickets:
        try:
            ticket.release()
        except Exception:
            log.exception("quota ticket release failed")


def throttled_detail(throttled: Throttled) -> dict[str, Any]:
    """The audit record's detail of a refusal by a quota."""
    return {
        "limit": throttled.limit,
        "kind": throttled.kind,
        "retry_after": round(throttled.retry_after, 3),
    }


def throttled_message(throttled: Throttled, what: str, principal: str, resource: str) -> str:
    """The client's message: which limit, for whom, and when to try again."""
    return (
        f"Lockgate throttled {what} in {resource} for {principal}: over quota "
        f"{throttled.limit!r} ({throttled.kind}); retry after {throttled.retry_after:.3f} s"
    )


def count_throttled(resource: str, throttled: Throttled) -> None:
    """``lockgate_quota_throttled_total`` += 1 (the request counter is the engine's)."""
    metrics.QUOTA_THROTTLED.labels(resource, throttled.limit, throttled.kind).inc()


@dataclass(slots=True, kw_only=True)
class Outstanding:
    """A statement forwarded upstream: the quota tickets and the span it holds until its
    answer is relayed (or lost). The CQL and PostgreSQL engines' pending statements are
    these."""

    tickets: list[QuotaTicket] = field(default_factory=list)  # given back once answered
    span: tracing.RequestSpan = tracing.NO_SPAN
    attempt: AbstractContextManager[None] | None = None  # the span's upstream attempt

    def forwarded(self) -> None:
        """It goes upstream now: the span's (first) upstream attempt starts."""
        if self.span is not tracing.NO_SPAN:
            self.attempt = self.span.upstream_attempt(1)
            self.attempt.__enter__()

    def done(self, status: int | str | None, error: str | None = None) -> None:
        """Its outcome is known: give the quota back, end the span (once)."""
        tickets, self.tickets = self.tickets, []
        release_all(tickets)
        attempt, self.attempt = self.attempt, None
        if attempt is not None:
            attempt.__exit__(None, None, None)
        self.span.end(status=status, error=error)
        self.span = tracing.NO_SPAN


__all__ = [
    "Answer",
    "Outstanding",
    "Tickets",
    "admit_each",
    "count_throttled",
    "release_all",
    "settle",
    "throttled_detail",
    "throttled_message",
]
