"""Where quota budgets are kept: the bucket math, and the budgets of one process.

A budget is named by a key (``<quota id>|<scope>``: the scope is the deployment and DAG,
the principal, or ``*``, as the quota's ``per`` says). Four kinds:

- a **rate** is a token bucket (``rate`` a second, up to ``burst``). A take may leave the
  bucket in debt down to ``-max_debt`` (``rate * max_delay``): the request is then held
  until its token would have refilled (pacing); past that it is refused with the time until
  a token would be there;
- **concurrency** and **sessions** are caps on slots held (released when the request or
  session ends);
- **runs** is a cap on run starts reserved plus runs started and not finished (a run stops
  counting after the quota's ``run_max_age``).

:class:`Budgets` is what the gate asks; :class:`MemoryBudgets` keeps them in this process
(no state configured, and the fallback of shared budgets while their database is out of
reach). Shared budgets: :mod:`lockgate.quotas.shared`.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from lockgate.errors import StoreUnavailable

#: Seconds a client is told to wait when a cap (not a rate) refused it: a slot frees when
#: some request ends, which the gateway cannot foresee.
CAP_RETRY_AFTER = 1.0
#: Seconds between tries to open budgets that could not be opened.
REOPEN_SECONDS = 5.0


@dataclass(frozen=True, slots=True)
class RateAnswer:
    """A take from a bucket: ``granted`` with ``wait`` seconds of pacing (0: go now), or
    refused with ``wait`` the seconds until a token would be there."""

    granted: bool
    wait: float


@dataclass(frozen=True, slots=True)
class Bucket:
    tokens: float
    updated_at: float


def refill(bucket: Bucket | None, rate: float, burst: float, now: float) -> float:
    """The bucket's level at ``now`` (a new bucket is full; time never runs backwards)."""
    if bucket is None:
        return burst
    elapsed = now - bucket.updated_at if now > bucket.updated_at else 0.0
    return min(bucket.tokens + elapsed * rate, burst)


def take(
    bucket: Bucket | None, rate: float, burst: float, now: float, cost: float, max_debt: float
) -> tuple[RateAnswer, Bucket]:
    """Take ``cost`` tokens, going at most ``max_debt`` below zero (pacing)."""
    level = refill(bucket, rate, burst, now)
    after = level - cost
    stamp = max(now, bucket.updated_at) if bucket is not None else now
    if after >= -max_debt:
        return RateAnswer(True, -after / rate if after < 0 else 0.0), Bucket(after, stamp)
    return RateAnswer(False, max(0.001, (-after - max_debt) / rate)), Bucket(level, stamp)


class Budgets(Protocol):
    """The budgets the gate draws from. ``take``, ``acquire`` and ``reserve_run`` may do
    I/O (``blocking`` says whether the gate must keep them off the event loop); the give
    backs never block and never raise."""

    blocking: bool

    def take(self, key: str, rate: float, burst: float, max_debt: float) -> RateAnswer: ...

    def refund(self, key: str, rate: float, burst: float) -> None: ...

    def charge(self, key: str, rate: float, burst: float, tokens: float) -> None:
        """Take ``tokens`` more from an admitted request's bucket, into debt if need be: the
        rest of a batch (its first token admitted it; later requests wait the debt out).
        Never raises."""
        ...

    def acquire(self, key: str, cap: int) -> bool: ...

    def release(self, key: str) -> None: ...

    def reserve_run(self, key: str, cap: int) -> bool: ...

    def run_started(self, key: str, resource: str, run_id: str, max_age: float) -> None: ...

    def run_finished(self, resource: str, run_id: str) -> None: ...

    def close(self) -> None: ...


class MemoryBudgets:
    """Budgets of this process only: exact, no I/O."""

    blocking = False

    def __init__(self, clock: Callable[[], float] = time.time) -> None:
        self._clock = clock
        self._lock = threading.Lock()  # ticket releases may come from other threads
        self._buckets: dict[str, Bucket] = {}
        self._held: dict[str, int] = {}
        self._runs: dict[tuple[str, str], tuple[str, float]] = {}  # (resource, run) -> key, until

    def take(self, key: str, rate: float, burst: float, max_debt: float) -> RateAnswer:
        with self._lock:
            answer, self._buckets[key] = take(
                self._buckets.get(key), rate, burst, self._clock(), 1.0, max_debt
            )
            return answer

    def refund(self, key: str, rate: float, burst: float) -> None:
        with self._lock:
            bucket = self._buckets.get(key)
            if bucket is not None:
                now = self._clock()
                self._buckets[key] = Bucket(
                    min(refill(bucket, rate, burst, now) + 1.0, burst), max(now, bucket.updated_at)
                )

    def charge(self, key: str, rate: float, burst: float, tokens: float) -> None:
        with self._lock:
            now = self._clock()
            bucket = self._buckets.get(key)
            level = refill(bucket, rate, burst, now)
            stamp = max(now, bucket.updated_at) if bucket is not None else now
            self._buckets[key] = Bucket(level - tokens, stamp)

    def acquire(self, key: str, cap: int) -> bool:
        with self._lock:
            held = self._held.get(key, 0)
            if held >= cap:
                return False
            self._held[key] = held + 1
            return True

    def release(self, key: str) -> None:
        with self._lock:
            held = self._held.get(key, 0) - 1
            if held > 0:
                self._held[key] = held
            else:
                self._held.pop(key, None)

    def reserve_run(self, key: str, cap: int) -> bool:
        now = self._clock()
        with self._lock:
            for run in [run for run, (_key, until) in self._runs.items() if until <= now]:
                del self._runs[run]
            running = sum(1 for k, _until in self._runs.values() if k == key)
            if running + self._held.get(key, 0) >= cap:
                return False
            self._held[key] = self._held.get(key, 0) + 1
            return True

    def run_started(self, key: str, resource: str, run_id: str, max_age: float) -> None:
        self.release(key)
        with self._lock:
            self._runs[(resource, run_id)] = (key, self._clock() + max_age)

    def run_finished(self, resource: str, run_id: str) -> None:
        with self._lock:
            self._runs.pop((resource, run_id), None)

    def close(self) -> None:
        return None


class OpenedOnFirstUse:
    """Budgets opened when a quota first needs them (a gateway with no quota never opens
    the quota database); while they cannot be opened, ``memory`` counts (retried every
    :data:`REOPEN_SECONDS`). ``memory`` is also what the opened budgets fall back to, so a
    slot taken during an outage is given back where it was taken."""

    def __init__(
        self,
        open_budgets: Callable[[MemoryBudgets], Budgets],
        *,
        blocking: bool,
        clock: Callable[[], float] = time.time,
        on_failure: Callable[[Exception], None] = lambda exc: None,
    ) -> None:
        self.blocking = blocking
        self.memory = MemoryBudgets(clock)
        self._open = open_budgets
        self._clock = clock
        self._on_failure = on_failure
        self._lock = threading.Lock()
        self._budgets: Budgets | None = None
        self._retry_at = 0.0

    def _get(self) -> Budgets:
        opened = self._budgets
        if opened is not None:
            return opened
        with self._lock:
            if self._budgets is None and self._clock() >= self._retry_at:
                try:
                    self._budgets = self._open(self.memory)
                except StoreUnavailable as exc:
                    self._retry_at = self._clock() + REOPEN_SECONDS
                    self._on_failure(exc)
            return self._budgets or self.memory

    def take(self, key: str, rate: float, burst: float, max_debt: float) -> RateAnswer:
        return self._get().take(key, rate, burst, max_debt)

    def refund(self, key: str, rate: float, burst: float) -> None:
        self._get().refund(key, rate, burst)

    def charge(self, key: str, rate: float, burst: float, tokens: float) -> None:
        self._get().charge(key, rate, burst, tokens)

    def acquire(self, key: str, cap: int) -> bool:
        return self._get().acquire(key, cap)

    def release(self, key: str) -> None:
        (self._budgets or self.memory).release(key)

    def reserve_run(self, key: str, cap: int) -> bool:
        return self._get().reserve_run(key, cap)

    def run_started(self, key: str, resource: str, run_id: str, max_age: float) -> None:
        (self._budgets or self.memory).run_started(key, resource, run_id, max_age)

    def run_finished(self, resource: str, run_id: str) -> None:
        self.memory.run_finished(resource, run_id)
        if self._budgets is not None:
            self._budgets.run_finished(resource, run_id)

    def close(self) -> None:
        with self._lock:
            opened, self._budgets = self._budgets, None
            self._retry_at = float("inf")  # closed: never opened again
        if opened is not None:
            opened.close()
