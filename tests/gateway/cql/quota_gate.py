"""A quota gate for engine tests (throttles, paces or admits, counts slots held) and a span
that records what the engine told it."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any, Literal

from lockgate.quotas import NO_TICKET, RunAdmission, Throttled

Mode = Literal["admit", "throttle", "pace"]


class FakeTicket:
    def __init__(self, gate: FakeGate) -> None:
        self.gate = gate
        self.released = False
        gate.held += 1

    def release(self) -> None:
        if not self.released:
            self.released = True
            self.gate.held -= 1


@dataclass
class FakeGate:
    """``statements`` / ``sessions``: what :meth:`admit` / :meth:`open_session` answer
    (only for ``actions`` when given); ``held``: tickets not given back yet."""

    statements: Mode = "admit"
    sessions: Mode = "admit"
    actions: tuple[str, ...] = ()
    delay: float = 0.3
    limit: str = "etl-writes"
    held: int = 0
    asked: list[tuple[str, str]] = field(default_factory=list)
    costs: list[int] = field(default_factory=list)  # of each ask: statements of a batch
    sessions_asked: int = 0
    cancelled: int = 0

    def _answer(self, mode: Mode, kind: Any) -> Any:
        if mode == "throttle":
            return Throttled(self.limit, kind, 1.25)
        if mode == "pace":
            return self._paced()
        return FakeTicket(self)

    async def _paced(self) -> FakeTicket:
        try:
            await asyncio.sleep(self.delay)
        except asyncio.CancelledError:
            self.cancelled += 1
            raise
        return FakeTicket(self)

    def admit(self, claims: Any, resource: str, action: str, obj: str, cost: int = 1) -> Any:
        self.asked.append((action, obj))
        self.costs.append(cost)
        if self.actions and action not in self.actions:
            return FakeTicket(self)
        return self._answer(self.statements, "rate")

    def open_session(self, claims: Any, resource: str) -> Any:
        self.sessions_asked += 1
        return self._answer(self.sessions, "sessions")

    def start_run(self, claims: Any, resource: str, obj: str) -> RunAdmission:
        return NO_TICKET

    def run_finished(self, resource: str, run_id: str) -> None:
        return None


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
