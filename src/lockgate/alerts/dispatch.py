"""Hand alerts to the notifiers without ever making the caller wait.

Each notifier has a bounded queue and one task that empties it: a notifier that is down
delays only its own alerts; a full queue drops the newest (counted as outcome ``dropped``
and logged). ``min_interval`` holds back an alert whose key (kind and subject) the notifier
sent less than that long ago (outcome ``suppressed``); a resolve always passes. What was
sent when is remembered for :data:`MAX_REMEMBERED` keys at most (DAG ids come from tokens:
a deployment may mint for thousands): past that, keys older than every ``min_interval`` are
forgotten, then the oldest (at worst a repeat goes out early, never an alert lost).

Metric: ``lockgate_alerts_sent_total{notifier, kind, outcome}``, outcome one of ``sent``,
``failed`` (retries spent), ``rejected`` (the receiver refused the body), ``dropped``,
``suppressed``.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable, Sequence

import aiohttp
from prometheus_client import Counter

from lockgate import _log
from lockgate.alerts.model import Alert
from lockgate.alerts.senders import Delivery, Notifier
from lockgate.metrics import REGISTRY

log = _log.get("alerts")

#: (notifier, alert key) pairs whose last send is remembered for ``min_interval``.
MAX_REMEMBERED = 10_000

ALERTS_SENT = Counter(
    "lockgate_alerts_sent_total",
    "Alerts by notifier, kind and outcome (sent, failed, rejected, dropped, suppressed)",
    ["notifier", "kind", "outcome"],
    registry=REGISTRY,
)


class Dispatcher:
    """Queues per notifier and the tasks that send them."""

    def __init__(
        self, notifiers: Sequence[Notifier], *, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.notifiers = list(notifiers)
        self._clock = clock
        self._queues = {
            n.name: asyncio.Queue[Alert](maxsize=n.settings.queue_size) for n in self.notifiers
        }
        self._last_sent: dict[tuple[str, str], float] = {}  # (notifier, alert key) -> when
        self._tasks: list[asyncio.Task[None]] = []
        self._session: aiohttp.ClientSession | None = None

    def start(self) -> None:
        self._session = aiohttp.ClientSession()
        self._tasks = [
            asyncio.create_task(self._run(n), name=f"lockgate-alerts-{n.name}")
            for n in self.notifiers
        ]

    def offer(self, alert: Alert) -> None:
        """Queue ``alert`` for every notifier that takes its kind; never blocks."""
        now = self._clock()
        for n in self.notifiers:
            if not n.wants(alert.kind):
                continue
            seen = (n.name, alert.key)
            last = self._last_sent.get(seen)
            if (
                alert.action == "trigger"
                and last is not None
                and now - last < n.settings.min_interval
            ):
                ALERTS_SENT.labels(n.name, alert.kind, "suppressed").inc()
                continue
            try:
                self._queues[n.name].put_nowait(alert)
            except asyncio.QueueFull:
                ALERTS_SENT.labels(n.name, alert.kind, "dropped").inc()
                log.warning(
                    "alert dropped: the notifier's queue is full",
                    extra={"fields": {"notifier": n.name, "kind": alert.kind,
                                      "queue_size": n.settings.queue_size}},
                )  # fmt: skip
                continue
            if alert.action == "trigger":
                self._last_sent[seen] = now
                if len(self._last_sent) > MAX_REMEMBERED:
                    self._forget(now)

    def _forget(self, now: float) -> None:
        """Keep what may still suppress a repeat; if that is still too much, the newest half."""
        longest = max(n.settings.min_interval for n in self.notifiers)
        recent = [(k, t) for k, t in self._last_sent.items() if now - t < longest]
        if len(recent) > MAX_REMEMBERED // 2:
            recent.sort(key=lambda kt: kt[1])
            recent = recent[-(MAX_REMEMBERED // 2) :]
        self._last_sent = dict(recent)

    async def drain(self, timeout: float) -> bool:
        """Wait up to ``timeout`` s for every queue to be sent; True if all were."""
        try:
            async with asyncio.timeout(timeout):
                for q in self._queues.values():
                    await q.join()
            return True
        except TimeoutError:
            return False

    async def close(self, timeout: float = 2.0) -> None:
        """Send what is queued for up to ``timeout`` s, then stop."""
        await self.drain(timeout)
        for t in self._tasks:
            t.cancel()
        for t in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await t
        self._tasks = []
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def send_now(self, notifier: Notifier, alert: Alert) -> Delivery:
        """Deliver ``alert`` through ``notifier`` at once, past queue and min_interval."""
        own = self._session is None
        session = self._session or aiohttp.ClientSession()
        try:
            return await self._deliver(notifier, session, alert)
        finally:
            if own:
                await session.close()

    async def _run(self, notifier: Notifier) -> None:
        queue = self._queues[notifier.name]
        while True:
            alert = await queue.get()
            try:
                assert self._session is not None
                await self._deliver(notifier, self._session, alert)
            except Exception:  # one broken alert must not stop the notifier
                log.exception("alert not sent", extra={"fields": {"notifier": notifier.name}})
            finally:
                queue.task_done()

    async def _deliver(
        self, notifier: Notifier, session: aiohttp.ClientSession, alert: Alert
    ) -> Delivery:
        delivery = await notifier.deliver(session, alert)
        ALERTS_SENT.labels(notifier.name, alert.kind, delivery.outcome).inc()
        if delivery.outcome != "sent":
            log.warning(
                "alert not delivered",
                extra={"fields": {"notifier": notifier.name, "kind": alert.kind,
                                  "outcome": delivery.outcome, "status": delivery.status,
                                  "error": delivery.error, "attempts": delivery.attempts}},
            )  # fmt: skip
        return delivery


__all__ = ["ALERTS_SENT", "Dispatcher"]
