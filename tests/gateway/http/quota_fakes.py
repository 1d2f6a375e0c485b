"""A small quota gate with the :class:`lockgate.quotas.QuotaGate` shape, counting every slot
it hands out, so a test fails when one is never given back."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable
from dataclasses import dataclass, field
from typing import Any

from lockgate.quotas import NO_TICKET, Admission, RunAdmission, Throttled


@dataclass
class Ticket:
    gate: FakeGate
    kind: str = "request"
    released: int = 0
    run_id: str | None = None

    def release(self) -> None:
        if self.released == 0 and self.run_id is None:
            self.gate.held.discard(id(self))
        self.released += 1

    def started(self, run_id: str) -> None:
        self.run_id = run_id
        self.gate.held.discard(id(self))
        self.gate.running[run_id] = self


@dataclass
class FakeGate:
    """``limit`` requests admitted, then throttled (``retry_after``); ``delay``: answers
    are awaitables that sleep that long first (a pacing quota); ``run_cap``: concurrent
    runs started (None: no cap)."""

    limit: int | None = None
    retry_after: float = 1.2
    delay: float | None = None
    run_cap: int | None = None
    asked: list[tuple[str, str, str]] = field(default_factory=list)
    held: set[int] = field(default_factory=set)
    tickets: list[Ticket] = field(default_factory=list)
    running: dict[str, Ticket] = field(default_factory=dict)
    finished: list[str] = field(default_factory=list)
    waits_cancelled: int = 0

    def _take(self, kind: str) -> Ticket:
        t = Ticket(self, kind)
        self.tickets.append(t)
        self.held.add(id(t))
        return t

    def _admit(self, resource: str, action: str, obj: str) -> Admission:
        self.asked.append((resource, action, obj))
        if self.limit is not None and len(self.asked) > self.limit:
            return Throttled("orders-writes", "rate", self.retry_after)
        return self._take("request")

    def admit(
        self, claims: Any, resource: str, action: str, obj: str, also: tuple[str, ...] = ()
    ) -> Admission | Awaitable[Admission]:
        if self.delay is None:
            return self._admit(resource, action, obj)
        return self._paced(resource, action, obj)

    async def _paced(self, resource: str, action: str, obj: str) -> Admission:
        try:
            await asyncio.sleep(self.delay or 0)
        except asyncio.CancelledError:
            self.waits_cancelled += 1
            raise
        return self._admit(resource, action, obj)

    def open_session(self, claims: Any, resource: str) -> Admission:
        return NO_TICKET

    def start_run(
        self, claims: Any, resource: str, obj: str, also: tuple[str, ...] = ()
    ) -> RunAdmission:
        runs = len(self.running) + sum(1 for t in self.tickets if t.kind == "run" and
                                       id(t) in self.held)  # fmt: skip
        if self.run_cap is not None and runs >= self.run_cap:
            return Throttled("two-runs", "runs", 30.0)
        return self._take("run")

    def run_finished(self, resource: str, run_id: str) -> None:
        self.finished.append(run_id)
        self.running.pop(run_id, None)

    @property
    def leaked(self) -> int:
        """Slots handed out and neither given back nor counting a started run."""
        return len(self.held)


@dataclass
class BucketGate(FakeGate):
    """A token bucket: ``rate`` requests a second, ``burst`` at once; a request over it is
    throttled with the wait until its token (what a rate quota answers)."""

    rate: float = 10.0
    burst: float = 2.0
    throttled: int = 0
    _tokens: float = -1.0
    _at: float = 0.0

    def _admit(self, resource: str, action: str, obj: str) -> Admission:
        now = time.monotonic()
        if self._tokens < 0:
            self._tokens, self._at = self.burst, now
        self._tokens = min(self.burst, self._tokens + (now - self._at) * self.rate)
        self._at = now
        self.asked.append((resource, action, obj))
        if self._tokens >= 1.0:
            self._tokens -= 1.0
            return self._take("request")
        self.throttled += 1
        return Throttled("cosmos-writes", "rate", (1.0 - self._tokens) / self.rate)
