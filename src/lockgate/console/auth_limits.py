"""How many failed sign-ins a client address may have audited one by one.

Every failed sign-in (a made-up one-time link token, a forged or stale OIDC callback, a
provider's refusal) is a refusal, and every refusal is audited; but nobody needs to be
signed in to fail, so without a bound a loop of bad requests writes the trail full.

:class:`SignInFailures` counts failures per client address in windows of
:data:`WINDOW` seconds. The first :data:`LIMIT` of a window are audited one by one, as
before. Past them the answer is 429 with Retry-After (until the window ends), and a failure
is audited on its own only when it is the first of its kind (its reason) in that window,
so a new kind of attack is never hidden behind an old one; the others are counted, and
the window's count is audited once, when it ends (:meth:`SignInFailures.ended`): one
``console_sign_in_failed`` with reason ``too_many_failures`` and detail ``failures``,
``unaudited``, ``window_start``, ``window_s`` and ``client``.

At most :data:`MAX_CLIENTS` addresses are counted apart; past that, new addresses share
one count (``client`` ``"(many addresses)"``), so neither memory nor the trail grows with
the number of addresses an attacker can send from. The counts live in the one process
that serves the console. A successful sign-in is never limited here.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from lockgate import _log

log = _log.get("console.auth")

#: failures of one address in one window audited one by one
LIMIT = 10
#: seconds of a window
WINDOW = 60.0
#: addresses counted apart; more share :data:`MANY`
MAX_CLIENTS = 4096
MANY = "(many addresses)"


@dataclass
class _Window:
    start: float
    failures: int = 0
    unaudited: int = 0
    kinds: set[str] = field(default_factory=set)


@dataclass(frozen=True)
class Verdict:
    """What to do with one failure: ``audit`` it on its own; answer 429 when
    ``retry_after`` is set (seconds until the window ends)."""

    audit: bool
    retry_after: int | None = None


@dataclass(frozen=True)
class Flood:
    """A window that ended with failures not audited one by one."""

    client: str
    window_start: float
    failures: int
    unaudited: int
    window_s: float

    def detail(self) -> dict[str, object]:
        return {
            "via": "limit",
            "client": self.client,
            "window_start": self.window_start,
            "window_s": self.window_s,
            "failures": self.failures,
            "unaudited": self.unaudited,
        }


class SignInFailures:
    """Failed sign-ins per client address (see the module docstring). Not thread-safe: it
    is used on the console's event loop only."""

    def __init__(
        self, *, limit: int | None = None, window: float | None = None,
        max_clients: int | None = None,
    ) -> None:  # fmt: skip
        # the module's values as they are now (None): tests and benchmarks may set them
        self.limit = LIMIT if limit is None else limit
        self.window = WINDOW if window is None else window
        self.max_clients = MAX_CLIENTS if max_clients is None else max_clients
        self._windows: dict[str, _Window] = {}
        self._floods: list[Flood] = []  # windows over, not reported yet

    def note(self, client: str, kind: str, now: float) -> Verdict:
        """Count a failure of ``kind`` from ``client`` at ``now``."""
        if client not in self._windows and len(self._windows) >= self.max_clients:
            self._retire(now)  # make room: forget the windows that are over
        key = client if client in self._windows or len(self._windows) < self.max_clients else MANY
        current = self._windows.get(key)
        if current is None or now >= current.start + self.window:
            if current is not None:
                self._retire_one(key, current)
            current = self._windows[key] = _Window(start=now)
        current.failures += 1
        first_of_kind = kind not in current.kinds
        current.kinds.add(kind)
        if current.failures <= self.limit:
            return Verdict(audit=True)
        if not first_of_kind:
            current.unaudited += 1
        retry_after = max(1, math.ceil(current.start + self.window - now))
        return Verdict(audit=first_of_kind, retry_after=retry_after)

    def ended(self, now: float) -> list[Flood]:
        """The windows over by ``now`` that had failures not audited one by one, each
        reported once; every window that is over is forgotten."""
        self._retire(now)
        floods, self._floods = self._floods, []
        return floods

    def next_end(self) -> float | None:
        """When the earliest window with unaudited failures ends (None: no such window)."""
        ends = [w.start + self.window for w in self._windows.values() if w.unaudited]
        return min(ends) if ends else None

    def _retire(self, now: float) -> None:
        for key, w in list(self._windows.items()):
            if now >= w.start + self.window:
                self._retire_one(key, w)

    def _retire_one(self, key: str, w: _Window) -> None:
        del self._windows[key]
        if w.unaudited:
            self._floods.append(Flood(key, w.start, w.failures, w.unaudited, self.window))


class FailureAudit:
    """:class:`SignInFailures` on the console's loop, with the ended windows' counts
    audited by ``report``: on the next failure, when the earliest flooded window ends (a
    timer), and at :meth:`close`."""

    def __init__(
        self,
        report: Callable[[Flood], Awaitable[None]],
        failures: SignInFailures | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.report = report
        self.failures = failures or SignInFailures()
        self.clock = clock
        self._timer: asyncio.TimerHandle | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    async def failed(self, client: str, kind: str) -> Verdict:
        """Count a failure (see :meth:`SignInFailures.note`); the caller audits it on its
        own when the verdict says so."""
        await self.flush()
        verdict = self.failures.note(client, kind, self.clock())
        if not verdict.audit:
            self._schedule()
        return verdict

    async def flush(self) -> None:
        """Audit the count of every flooded window that is over."""
        for flood in self.failures.ended(self.clock()):
            await self.report(flood)

    async def close(self) -> None:
        """Stop the timer; audit what is over (a window still open at shutdown is reported
        as over: its count would be lost otherwise)."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        for task in list(self._tasks):
            task.cancel()
        for flood in self.failures.ended(math.inf):
            try:
                await self.report(flood)
            except Exception as exc:  # logged: shutdown goes on
                _not_audited(flood, exc)

    def _schedule(self) -> None:
        end = self.failures.next_end()
        if self._timer is not None or end is None:
            return
        self._timer = asyncio.get_running_loop().call_later(
            max(0.0, end - self.clock()) + 0.01, self._fire
        )

    def _fire(self) -> None:
        self._timer = None
        task = asyncio.ensure_future(self._background())
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _background(self) -> None:
        for flood in self.failures.ended(self.clock()):
            try:
                await self.report(flood)
            except Exception as exc:  # no request to fail: the log keeps the count
                _not_audited(flood, exc)
        self._schedule()


def _not_audited(flood: Flood, exc: Exception) -> None:
    log.error(
        "failed console sign-ins over the limit not audited",
        extra={"fields": {**flood.detail(), "error": str(exc)[:200]}},
    )


__all__ = [
    "LIMIT",
    "MANY",
    "MAX_CLIENTS",
    "WINDOW",
    "FailureAudit",
    "Flood",
    "SignInFailures",
    "Verdict",
]
