"""The quota gate the server builds: the quotas of the policy files served now, with budgets
shared by every process (and replica) on the same state.

Per request the gate looks up the quotas matching (principal, resource, action) in a cache
rebuilt when the policy set is swapped; none (the usual case) answers :data:`NO_TICKET` at
once. Otherwise every matching quota applies: the request takes a token from each rate and
a slot from each cap, in file order; the first empty one refuses it and what it took from
the others is given back (the tightest quota wins, and a refused request costs no budget).
A rate with ``max_delay`` holds the request until its token is due instead (the gate's
answer is then an awaitable that sleeps).
"""

from __future__ import annotations

import asyncio
import inspect
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, TypeVar

from lockgate import _log, metrics
from lockgate.policy.engine import PolicySet, Quota
from lockgate.quotas import (
    NO_QUOTAS,
    NO_TICKET,
    Admission,
    LimitKind,
    QuotaGate,
    RunAdmission,
    Throttled,
)
from lockgate.quotas.budgets import CAP_RETRY_AFTER, Budgets, MemoryBudgets, OpenedOnFirstUse
from lockgate.quotas.shared import DOMAIN, SharedBudgets

if TYPE_CHECKING:
    from lockgate.config import LockgateConfig
    from lockgate.identity import Claims
    from lockgate.policy import PolicyStore
    from lockgate.store import Database

log = _log.get("quotas")

#: How often a request held for a cap's slot (``max_delay``) asks again.
SLOT_POLL_SECONDS = 0.05
#: Requests held at once for one budget's slot (per process); more are refused at once, so
#: a DAG opening thousands of connections cannot make the worker spend itself on polls.
MAX_HELD_PER_BUDGET = 64

#: Matching quotas remembered per (principal, resource, what); cleared past this many.
_CACHE_SIZE = 65536
# What a session login and a run start ask for (never an action's name, so the cache keys
# of requests, sessions and run starts stay apart).
_SESSION = "<session>"
_RUN_START = "<run start>"


def budget_key(quota: Quota, claims: Claims) -> str:
    """The budget a request of ``claims`` draws from under ``quota`` (its ``per``)."""
    if quota.per == "dag":
        scope = f"{claims.deployment}/{claims.dag_id}"
    elif quota.per == "task":
        scope = claims.principal
    else:
        scope = "*"
    return f"{quota.id}|{scope}"


class _Ticket:
    """Slots one admitted request or session holds; :meth:`release` gives them back once."""

    __slots__ = ("_budgets", "_keys")

    def __init__(self, budgets: Budgets, keys: list[str]) -> None:
        self._budgets = budgets
        self._keys: list[str] | None = keys

    def release(self) -> None:
        keys, self._keys = self._keys, None
        for key in keys or ():
            self._budgets.release(key)

    def started(self, run_id: str) -> None:  # a request ticket is no run slot
        return None


class _RunSlot:
    """Run reservations: :meth:`started` turns them into runs, :meth:`release` frees them."""

    __slots__ = ("_budgets", "_open", "_resource")

    def __init__(self, budgets: Budgets, resource: str, reserved: list[tuple[str, float]]) -> None:
        self._budgets = budgets
        self._resource = resource
        self._open: list[tuple[str, float]] | None = reserved

    def started(self, run_id: str) -> None:
        reserved, self._open = self._open, None
        for key, max_age in reserved or ():
            self._budgets.run_started(key, self._resource, run_id, max_age)

    def release(self) -> None:
        reserved, self._open = self._open, None
        for key, _max_age in reserved or ():
            self._budgets.release(key)


_A = TypeVar("_A", Admission, RunAdmission)
_T = TypeVar("_T")

# A cap one request or session takes a slot of: (quota, budget key, cap, kind).
_Cap = tuple[Quota, str, int | None, LimitKind]


@dataclass(frozen=True, slots=True)
class _Plan:
    """What one request asks of its quotas: rate takes and cap slots, in file order."""

    resource: str
    rates: tuple[tuple[Quota, str], ...]
    caps: tuple[_Cap, ...]


class PolicyQuotaGate:
    """A :class:`~lockgate.quotas.QuotaGate` over the quotas of ``policy()`` and
    ``budgets``."""

    def __init__(
        self,
        policy: Callable[[], PolicySet],
        budgets: Budgets,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        self._policy = policy
        self._budgets = budgets
        self._sleep = sleep
        self._held: dict[str, int] = {}  # requests waiting for a slot, per budget key
        self._cached_for: PolicySet | None = None
        self._cache: dict[tuple[str, str, str], tuple[Quota, ...]] = {}

    # -- matching (cached per policy set) ----------------------------------------------------
    def _matching(self, principal: str, resource: str, what: str) -> tuple[Quota, ...]:
        policy = self._policy()
        if policy is not self._cached_for:  # a reload: matches are recomputed
            self._cache = {}
            self._cached_for = policy
        key = (principal, resource, what)
        found = self._cache.get(key)
        if found is None:
            if len(self._cache) >= _CACHE_SIZE:
                self._cache.clear()
            found = tuple(
                q for q in policy.quotas if _asks(q, what) and q.applies_to(principal, resource)
            )
            self._cache[key] = found
        return found

    # -- the door ----------------------------------------------------------------------------
    def admit(
        self,
        claims: Claims,
        resource: str,
        action: str,
        obj: str,
        cost: int = 1,
        also: Sequence[str] = (),
    ) -> Admission | Awaitable[Admission]:
        quotas = self._matching(claims.principal, resource, action)
        if not quotas:
            return NO_TICKET
        quotas = _on_objects(quotas, obj, also)
        if not quotas:
            return NO_TICKET
        plan = _Plan(
            resource,
            tuple((q, budget_key(q, claims)) for q in quotas if q.rate is not None),
            tuple(
                (q, budget_key(q, claims), q.concurrency, "concurrency")
                for q in quotas
                if q.concurrency is not None
            ),
        )
        if self._budgets.blocking:
            answer: Admission | Awaitable[Admission] = self._admit_off_loop(plan)
        else:
            answer = self._admit_now(plan)
        if cost <= 1 or not plan.rates:
            return answer
        if inspect.isawaitable(answer):
            return self._billed_later(plan.rates, cost - 1, answer)
        if not isinstance(answer, Throttled):
            self._bill(plan.rates, cost - 1)
        return answer

    # -- batches -----------------------------------------------------------------------------
    def _bill(self, rates: Sequence[tuple[Quota, str]], tokens: int) -> None:
        """An admitted batch of ``tokens + 1`` statements: its first token admitted it, the
        rest are taken from each rate into debt (later requests wait it out), so a batch
        is no way past a rate."""
        for quota, key in rates:
            assert quota.rate is not None
            try:
                self._budgets.charge(key, quota.rate, quota.burst, float(tokens))
            except Exception:  # a brake's bookkeeping never fails an admitted request
                log.exception("quota batch charge failed")

    async def _billed_later(
        self, rates: Sequence[tuple[Quota, str]], tokens: int, answer: Awaitable[Admission]
    ) -> Admission:
        admitted = await answer
        if not isinstance(admitted, Throttled):
            if self._budgets.blocking:
                await asyncio.to_thread(self._bill, rates, tokens)
            else:
                self._bill(rates, tokens)
        return admitted

    def open_session(self, claims: Claims, resource: str) -> Admission | Awaitable[Admission]:
        quotas = self._matching(claims.principal, resource, _SESSION)
        if not quotas:
            return NO_TICKET
        caps: tuple[_Cap, ...] = tuple(
            (q, budget_key(q, claims) + "|sessions", q.sessions, "sessions")
            for q in quotas
            if q.sessions is not None
        )
        return self._hold_or_wait(_Plan(resource, (), caps))

    def start_run(
        self, claims: Claims, resource: str, obj: str, also: Sequence[str] = ()
    ) -> RunAdmission | Awaitable[RunAdmission]:
        quotas = _on_objects(self._matching(claims.principal, resource, _RUN_START), obj, also)
        if not quotas:
            return NO_TICKET

        def attempt() -> RunAdmission:
            return self._reserve_runs(claims, resource, quotas)

        keys = {q.id: budget_key(q, claims) + "|runs" for q in quotas}
        if self._budgets.blocking:
            return self._slot_off_loop(attempt, resource, quotas, keys)
        first = attempt()
        if isinstance(first, Throttled) and _delay_of(quotas, first) > 0:
            return self._wait_for_slot(attempt, first, resource, quotas, keys)
        return first

    def run_finished(self, resource: str, run_id: str) -> None:
        if self._policy().quotas:
            self._budgets.run_finished(resource, run_id)

    # -- the work ----------------------------------------------------------------------------
    def _admit_now(self, plan: _Plan) -> Admission | Awaitable[Admission]:
        taken = self._take_rates(plan.rates)
        if isinstance(taken, Throttled):
            return taken
        wait, quota_id = taken
        if wait > 0:
            return self._paced(plan, wait, quota_id)
        return self._hold_or_wait(plan)

    async def _admit_off_loop(self, plan: _Plan) -> Admission:
        def give_back(taken: tuple[float, str] | Throttled) -> None:
            if not isinstance(taken, Throttled):  # a refusal gave its tokens back already
                self._refund(plan.rates)

        taken = await _off_loop(lambda: self._take_rates(plan.rates), give_back)
        if isinstance(taken, Throttled):
            return taken
        return await self._paced(plan, *taken)

    async def _paced(self, plan: _Plan, wait: float, quota_id: str) -> Admission:
        """After the rate's pacing wait (none: 0), the caps' slots. A request cancelled
        while it waits (its client went away) gives its tokens back."""
        if wait > 0:
            try:
                await self._sleep(wait)
            except asyncio.CancelledError:
                self._refund(plan.rates)
                raise
            metrics.QUOTA_WAIT.labels(plan.resource, quota_id).observe(wait)
        held = self._hold_or_wait(plan)
        return await held if inspect.isawaitable(held) else held

    def _hold_or_wait(self, plan: _Plan) -> Admission | Awaitable[Admission]:
        """The caps' slots; refused by a cap with ``max_delay``, an awaitable that waits for
        one (the rate tokens are given back if none frees in time)."""
        if not plan.caps:
            return NO_TICKET
        quotas = [q for q, *_ in plan.caps]
        keys = {q.id: key for q, key, *_ in plan.caps}
        if self._budgets.blocking:
            return self._slot_off_loop(
                lambda: self._hold(plan.caps), plan.resource, quotas, keys, plan.rates
            )
        first = self._hold(plan.caps)
        if isinstance(first, Throttled):
            if _delay_of(quotas, first) > 0:
                return self._wait_for_slot(
                    lambda: self._hold(plan.caps), first, plan.resource, quotas, keys, plan.rates
                )
            self._refund(plan.rates)
        return first

    async def _slot_off_loop(
        self,
        attempt: Callable[[], _A],
        resource: str,
        quotas: Sequence[Quota],
        keys: Mapping[str, str],
        rates: Sequence[tuple[Quota, str]] = (),
    ) -> _A:
        first = await _off_loop(attempt, _release)
        if isinstance(first, Throttled):
            if _delay_of(quotas, first) > 0:
                return await self._wait_for_slot(attempt, first, resource, quotas, keys, rates)
            self._refund(rates)
        return first

    async def _wait_for_slot(
        self,
        attempt: Callable[[], _A],
        refusal: Throttled,
        resource: str,
        quotas: Sequence[Quota],
        keys: Mapping[str, str],
        rates: Sequence[tuple[Quota, str]] = (),
    ) -> _A:
        """Ask ``attempt`` again every :data:`SLOT_POLL_SECONDS` for at most the refusing
        quota's ``max_delay``; the last refusal if no slot freed (rate tokens given back).
        At most :data:`MAX_HELD_PER_BUDGET` requests wait for one budget's slot; more are
        refused at once (each waiter costs the worker a wake-up per poll)."""
        delay = _delay_of(quotas, refusal)
        held_key = keys.get(refusal.limit, refusal.limit)
        if self._held.get(held_key, 0) >= MAX_HELD_PER_BUDGET:
            self._refund(rates)
            return refusal
        self._held[held_key] = self._held.get(held_key, 0) + 1
        waited = 0.0
        answer: _A | Throttled = refusal
        try:
            while waited < delay:
                step = min(SLOT_POLL_SECONDS, delay - waited)
                await self._sleep(step)
                waited += step
                if self._budgets.blocking:
                    answer = await _off_loop(attempt, _release)
                else:
                    answer = attempt()
                if not isinstance(answer, Throttled):
                    metrics.QUOTA_WAIT.labels(resource, refusal.limit).observe(waited)
                    return answer
        except asyncio.CancelledError:  # the client went away while it waited
            self._refund(rates)
            raise
        finally:
            left = self._held.pop(held_key) - 1
            if left:
                self._held[held_key] = left
        self._refund(rates)
        return answer

    def _take_rates(self, rates: Sequence[tuple[Quota, str]]) -> tuple[float, str] | Throttled:
        """A token from every rate (the longest pacing wait and its quota), or the first
        refusal with the tokens already taken given back."""
        wait, longest = 0.0, ""
        for n, (quota, key) in enumerate(rates):
            assert quota.rate is not None
            answer = self._budgets.take(key, quota.rate, quota.burst, quota.rate * quota.max_delay)
            if not answer.granted:
                self._refund(rates[:n])
                return Throttled(quota.id, "rate", round(answer.wait, 3))
            if answer.wait > wait:
                wait, longest = answer.wait, quota.id
        return wait, longest

    def _refund(self, rates: Sequence[tuple[Quota, str]]) -> None:
        for quota, key in rates:
            assert quota.rate is not None
            self._budgets.refund(key, quota.rate, quota.burst)

    def _hold(self, caps: Sequence[_Cap]) -> Admission:
        """A slot of every cap, or the first refusal with the slots taken given back."""
        if not caps:
            return NO_TICKET
        keys: list[str] = []
        for quota, key, cap, kind in caps:
            assert cap is not None
            if not self._budgets.acquire(key, cap):
                for k in keys:
                    self._budgets.release(k)
                return Throttled(quota.id, kind, CAP_RETRY_AFTER)
            keys.append(key)
        return _Ticket(self._budgets, keys)

    def _reserve_runs(self, claims: Claims, resource: str, quotas: Sequence[Quota]) -> RunAdmission:
        reserved: list[tuple[str, float]] = []
        for quota in quotas:
            assert quota.runs is not None
            key = budget_key(quota, claims) + "|runs"
            if not self._budgets.reserve_run(key, quota.runs):
                for k, _age in reserved:
                    self._budgets.release(k)
                return Throttled(quota.id, "runs", CAP_RETRY_AFTER)
            reserved.append((key, float(quota.run_max_age)))
        return _RunSlot(self._budgets, resource, reserved)


async def _off_loop(work: Callable[[], _T], undo: Callable[[_T], None]) -> _T:
    """``work()`` in a worker thread. Cancelled while it runs, its answer is undone when it
    lands (a slot taken for a request that is gone would otherwise never be given back)."""
    running = asyncio.ensure_future(asyncio.to_thread(work))
    try:
        return await asyncio.shield(running)
    except asyncio.CancelledError:
        running.add_done_callback(lambda done: _undo_landed(done, undo))
        raise


def _undo_landed(done: asyncio.Future[_T], undo: Callable[[_T], None]) -> None:
    if not done.cancelled() and done.exception() is None:
        undo(done.result())


def _release(answer: Admission | RunAdmission) -> None:
    if not isinstance(answer, Throttled):
        answer.release()


def _delay_of(quotas: Sequence[Quota], refusal: Throttled) -> float:
    """How long the quota that refused may hold a request for a slot (its ``max_delay``)."""
    return next((q.max_delay for q in quotas if q.id == refusal.limit), 0.0)


def _on_objects(quotas: tuple[Quota, ...], obj: str, also: Sequence[str]) -> tuple[Quota, ...]:
    """The quotas whose objects hold ``obj`` or any of ``also`` (the other names of what the
    request touches: its path as a case-blind upstream reads it, a job's id and name)."""
    return tuple(
        q
        for q in quotas
        if q.objects.match_all or q.objects(obj) or any(q.objects(o) for o in also)
    )


def _asks(quota: Quota, what: str) -> bool:
    """Whether ``quota`` has a limit for ``what`` (an action, a session, a run start)."""
    if what == _SESSION:
        return quota.sessions is not None
    if what == _RUN_START:
        return quota.runs is not None and "run" in quota.actions
    if quota.rate is None and quota.concurrency is None:
        return False
    return what in quota.actions


class QuotaService:
    """Owns the gate of one process: :attr:`gate` for the engines, :meth:`close` at stop.

    Budgets live in the state database (domain ``quotas``: ``quotas.db`` on SQLite, shared
    by every ``--workers`` process; the shared PostgreSQL database across replicas), opened
    when a quota first needs them."""

    def __init__(
        self,
        config: LockgateConfig,
        policy: PolicyStore,
        database_for: Callable[[str], Database],
    ) -> None:
        def open_shared(memory: MemoryBudgets) -> Budgets:
            return SharedBudgets(database_for(DOMAIN), memory=memory)

        self.budgets = OpenedOnFirstUse(
            open_shared,
            blocking=config.state.postgresql is not None,
            on_failure=_log_unopened,
        )
        self.gate: QuotaGate = PolicyQuotaGate(lambda: policy.current, self.budgets)

    def close(self) -> None:
        self.budgets.close()


def _log_unopened(exc: Exception) -> None:
    log.error(
        "quotas counted in this process's memory: quota state cannot be opened",
        extra={"fields": {"error": str(exc)}},
    )


__all__ = ["NO_QUOTAS", "PolicyQuotaGate", "QuotaService", "budget_key"]
