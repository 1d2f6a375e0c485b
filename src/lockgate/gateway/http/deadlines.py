"""Deadlines of many waiters on one loop timer, instead of a timer per request.

A request's upstream head timeout is armed and disarmed once per request, and almost never
fires. ``loop.call_later`` + ``cancel`` per request allocates a timer handle, pushes it on the
loop's heap and leaves the cancelled handle there until the loop sweeps it. Here arming is a
dict store and disarming a dict pop; one loop timer stands for the earliest deadline, and it
is moved only when a deadline earlier than it is armed (rare: requests of one upstream share
their timeout, so later arms end later).
"""

from __future__ import annotations

import asyncio
from typing import Protocol

#: Deadlines this close are due when the timer runs (a loop may wake a little early).
_SLACK = 0.001


class Expiring(Protocol):
    def expired(self) -> None:
        """The deadline passed before it was disarmed (called once, then forgotten)."""
        ...


class Deadlines:
    """Armed deadlines (``loop.time()`` based) of :class:`Expiring` waiters on one loop."""

    __slots__ = ("_armed", "_at", "_handle", "_loop")

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._armed: dict[Expiring, float] = {}
        self._handle: asyncio.TimerHandle | None = None
        self._at = float("inf")  # when the timer runs

    def arm(self, waiter: Expiring, timeout: float) -> None:
        """Call ``waiter.expired()`` in ``timeout`` seconds unless disarmed (re-arming moves
        the deadline)."""
        at = self._loop.time() + (timeout if timeout > 0.0 else 0.0)
        self._armed[waiter] = at
        if at < self._at:
            self._schedule(at)

    def disarm(self, waiter: Expiring) -> None:
        self._armed.pop(waiter, None)

    def armed(self, waiter: Expiring) -> bool:
        return waiter in self._armed

    def close(self) -> None:
        self._armed.clear()
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None
        self._at = float("inf")

    def _schedule(self, at: float) -> None:
        if self._handle is not None:
            self._handle.cancel()
        self._at = at
        self._handle = self._loop.call_at(at, self._sweep)

    def _sweep(self) -> None:
        self._handle = None
        self._at = float("inf")
        armed = self._armed
        due = self._loop.time() + _SLACK
        expired = [waiter for waiter, at in armed.items() if at <= due]
        for waiter in expired:
            del armed[waiter]
        if armed:
            self._schedule(min(armed.values()))
        for waiter in expired:
            try:
                waiter.expired()
            except Exception as exc:  # one waiter's failure must not starve the others
                self._loop.call_exception_handler(
                    {"message": "deadline callback failed", "exception": exc}
                )
