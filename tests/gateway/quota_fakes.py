"""A quota gate for engine tests, with the :class:`lockgate.quotas.QuotaGate` shape: it
admits, throttles or paces, counts every slot it hands out (so a test fails when one is
never given back) and caps runs; a span that records what the engine told it."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Iterator
from dataclasses import dataclass, field
from typing import Any, Literal

from lockgate.quotas import Admission, LimitKind, RunAdmission, Throttled

Mode = Literal["admit", "throttle", "pace"]


@dataclass(eq=False)
class Ticket:
    gate: FakeGate
    kind: str = "request"
    released: int = 0
    run_id: str | None = None

    def release(self) -> None:
        if self.released == 0 and self.run_id is None:
            self.gate.outstanding.discard(self)
        self.released += 1

    def started(self, run_id: str) -> None:
        self.run_id = run_id
        self.gate.outstanding.discard(self)
        self.gate.running[run_id] = self


@dataclass
class FakeGate:
    """``statements`` / ``sessions``: what :meth:`admit` / :meth:`open_session` answer
    (``admit`` only for ``actions`` when given; ``pace``: an awaitable that sleeps
    ``delay`` first); ``admits``: requests admitted before the rest are throttled (None:
    no count); a throttle names quota ``limit`` and waits ``retry_after``; ``run_cap``:
    concurrent runs started (None: no cap)."""

    statements: Mode = "admit"
    sessions: Mode = "admit"
    actions: tuple[str, ...] = ()
    admits: int | None = None
    limit: str = "etl-writes"
    retry_after: float = 1.25
    delay: float = 0.3
    run_cap: int | None = None
    asked: list[tuple[str, str]] = field(default_factory=list)  # (action, object) of each ask
    costs: list[int] = field(default_factory=list)  # of each ask: statements of a batch
    tickets: list[Ticket] = field(default_factory=list)
    outstanding: set[Ticket] = field(default_factory=set)  # neither given back nor a run
    running: dict[str, Ticket] = field(default_factory=dict)
    finished: list[str] = field(default_factory=list)
    sessions_asked: int = 0
    cancelled: int = 0  # paced waits given up

    @property
    def held(self) -> int:
        """Slots handed out and neither given back nor counting a started run."""
        return len(self.outstanding)

    leaked = held

    def _take(self, kind: str) -> Ticket:
        ticket = Ticket(self, kind)
        self.tickets.append(ticket)
        self.outstanding.add(ticket)
        return ticket

    def _decide(self, mode: Mode, kind: LimitKind) -> Admission:
        over_count = self.admits is not None and len(self.asked) > self.admits
        if mode == "throttle" or over_count:
            return Throttled(self.limit, kind, self.retry_after)
        return self._take("request")

    def _answer(self, mode: Mode, kind: LimitKind) -> Admission | Awaitable[Admission]:
        if mode == "pace":
            return self._paced(kind)
        return self._decide(mode, kind)

    async def _paced(self, kind: LimitKind) -> Admission:
        try:
            await asyncio.sleep(self.delay)
        except asyncio.CancelledError:
            self.cancelled += 1
            raise
        return self._decide("admit", kind)

    def admit(
        self,
        claims: Any,
        resource: str,
        action: str,
        obj: str,
        cost: int = 1,
        also: tuple[str, ...] = (),
    ) -> Admission | Awaitable[Admission]:
        self.asked.append((action, obj))
        self.costs.append(cost)
        if self.actions and action not in self.actions:
            return self._take("request")
        return self._answer(self.statements, "rate")

    def open_session(self, claims: Any, resource: str) -> Admission | Awaitable[Admission]:
        self.sessions_asked += 1
        return self._answer(self.sessions, "sessions")

    def start_run(
        self, claims: Any, resource: str, obj: str, also: tuple[str, ...] = ()
    ) -> RunAdmission:
        starting = sum(1 for t in self.outstanding if t.kind == "run")
        if self.run_cap is not None and len(self.running) + starting >= self.run_cap:
            return Throttled("two-runs", "runs", 30.0)
        return self._take("run")

    def run_finished(self, resource: str, run_id: str) -> None:
        self.finished.append(run_id)
        self.running.pop(run_id, None)


@dataclass
class BucketGate(FakeGate):
    """A token bucket: ``rate`` requests a second, ``burst`` at once; a request over it is
    throttled with the wait until its token (what a rate quota answers)."""

    rate: float = 10.0
    burst: float = 2.0
    throttled: int = 0
    _tokens: float = -1.0
    _at: float = 0.0

    def _decide(self, mode: Mode, kind: LimitKind) -> Admission:
        now = time.monotonic()
        if self._tokens < 0:
            self._tokens, self._at = self.burst, now
        self._tokens = min(self.burst, self._tokens + (now - self._at) * self.rate)
        self._at = now
        if self._tokens >= 1.0:
            self._tokens -= 1.0
            return self._take("request")
        self.throttled += 1
        return Throttled("cosmos-writes", kind, (1.0 - self._tokens) / self.rate)


class RecordingSpan:
    def __init__(self, name: str, attributes: dict[str, object], traceparent: object) -> None:
        self.name, self.attributes, self.traceparent = name, attributes, traceparent
        self.calls: list[tuple[str, object]] = []

    def decided(self, *args: object) -> None:
        self.calls.append(("decided", args))

    def throttled(self, limit: str, retry_after: float) -> None:
        self.calls.append(("throttled", limit))

    @contextlib.contextmanager
    def upstream_attempt(self, attempt: int) -> Iterator[None]:
        self.calls.append(("attempt", attempt))
        yield
        self.calls.append(("attempt_done", attempt))

    def retried(self, reason: str, delay: float) -> None:
        self.calls.append(("retried", reason))

    def end(self, *, status: object = None, error: object = None) -> None:
        self.calls.append(("end", status))


async def eventually(check: Any, timeout: float = 3.0) -> None:
    """Wait until ``check()`` is true (slots are given back as the session ends)."""
    async with asyncio.timeout(timeout):
        while not check():
            await asyncio.sleep(0.02)
