"""The alerts at work: one task that reads the trail, runs the checks and hands alerts on.

Every round (``alerts.poll_interval``): take or renew the sender lease; while held, read
the committed records past the cursor, feed the denial and credential groups, store the
cursor, and send the groups whose window passed. Every ``alerts.check_interval``: this
process's audit sink (every replica, for itself) and, while the lease is held, credential
ages and signing keys. Refresh and rotation failures that are only logged (a token
endpoint refusing a refresh) are picked up from this process's log records. Nothing here
blocks the gateway: database reads run in a worker thread and notifiers have their own
queues.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import secrets
import time
from collections import deque
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

from lockgate import _log
from lockgate.alerts import checks, trail_rules
from lockgate.alerts.checks import AuditHealth, AuditRefusing, Conditions
from lockgate.alerts.dispatch import Dispatcher
from lockgate.alerts.model import Alert
from lockgate.alerts.senders import Notifier
from lockgate.alerts.trail import Lease, TrailFollower, open_alerts_db
from lockgate.audit.record import AuditRow
from lockgate.errors import LockgateError

if TYPE_CHECKING:
    from lockgate.config import LockgateConfig
    from lockgate.store import Database

log = _log.get("alerts")

#: Seconds a sender lease lasts without renewal (renewed every round).
LEASE_TTL = 30.0
#: Seconds before a round failing the same way is logged again.
REPEAT_LOG_AFTER = 60.0
#: Log messages (lower case) that mean a refresh or rotation failed.
_FAILURE_WORDS = ("refresh failed", "rotation failed", "rotate failed", "not refreshed")


class AlertState(Protocol):
    """What the alerts read of :class:`lockgate.state.State`."""

    config: LockgateConfig
    shared: bool
    replica_id: str

    @property
    def credentials(self) -> checks.CredentialsLike: ...
    @property
    def keys(self) -> checks.KeysLike: ...

    def database(self, name: str) -> Database: ...


def build_notifiers(config: LockgateConfig, source: str) -> list[Notifier]:
    """A Notifier per configured one; one whose secret cannot be read is logged and left
    out (the others still send)."""
    settings = config.alerts
    # relative secret files are the config file's neighbours, as the other *_file fields
    base = config.source.parent if config.source is not None else Path.cwd()
    out: list[Notifier] = []
    for n in settings.notifiers:
        try:
            out.append(Notifier(n, console_url=settings.console_url, source=source,
                                config_dir=base))  # fmt: skip
        except LockgateError as exc:
            fields = {"notifier": n.name, "error": str(exc)}
            log.error("alerts notifier unusable", extra={"fields": fields})
    return out


class _FailureLog(logging.Handler):
    """Refresh and rotation failures logged by the credential room, kept for the next round."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.seen: deque[logging.LogRecord] = deque(maxlen=100)

    def emit(self, record: logging.LogRecord) -> None:
        text = record.getMessage().lower()
        if any(w in text for w in _FAILURE_WORDS):
            self.seen.append(record)

    def drain(self) -> list[Alert]:
        out: list[Alert] = []
        while self.seen:
            record = self.seen.popleft()
            fields = getattr(record, "fields", None) or {}
            name = str(fields.get("credential") or fields.get("credential_name") or "unknown")
            error = str(fields.get("error") or "")[:500]
            out.append(Alert(
                kind="rotation_failure",
                severity="error",
                summary=f"credential {name}: {record.getMessage()}",
                subject=name,
                resource=str(fields["resource"]) if fields.get("resource") else None,
                details={"credential_name": name, "error": error, "logger": record.name},
            ))  # fmt: skip
        return out


class Alerts:
    """Watches what alerts are raised on and sends them; ``state`` is the gateway's
    :class:`lockgate.state.State`. ``audit``: this process's audit log (its
    ``check_writable``), for ``audit_refusing``; without it only the write-failure counter
    is watched."""

    def __init__(
        self, config: LockgateConfig, state: AlertState, *, audit: AuditHealth | None = None
    ) -> None:
        self.config = config
        self.state = state
        self.settings = config.alerts
        self.audit = audit
        self.dispatcher: Dispatcher | None = None
        self._task: asyncio.Task[None] | None = None
        self._lease: Lease | None = None
        self._follower: TrailFollower | None = None
        self._leading = False
        self._conditions = Conditions()
        self._failures = _FailureLog()
        d = self.settings.denials
        self._groups = [
            trail_rules.denial_grouper(d.window, d.max_groups),
            trail_rules.credential_grouper(d.window),
        ]
        self._refusing = AuditRefusing(audit, state.replica_id)
        self._clock = time.time
        self._last_failure: tuple[str, float] = ("", 0.0)  # what the last failed round said

    @property
    def leading(self) -> bool:
        """True while this process holds the sender lease."""
        return self._leading

    async def start(self) -> None:
        if not self.settings.enabled:
            return
        replica = self.state.replica_id
        notifiers = build_notifiers(self.config, source=f"lockgate/{replica}")
        if not notifiers:
            return
        self.dispatcher = Dispatcher(notifiers)
        self.dispatcher.start()
        try:
            await asyncio.to_thread(self._open)
        except Exception as exc:  # the alerts must never keep the gateway from serving
            log.error("alerts cannot follow the audit trail", extra={"fields": {"error": str(exc)}})
        logging.getLogger("lockgate.credentials").addHandler(self._failures)
        self._task = asyncio.create_task(self._run(), name="lockgate-alerts")

    def _open(self) -> None:
        db = open_alerts_db(self.state.database("alerts"))
        holder = f"{self.state.replica_id}/{os.getpid()}/{secrets.token_hex(4)}"
        self._lease = Lease(db, holder, ttl=LEASE_TTL)
        shared = self.state.database("audit") if self.state.shared else None
        self._follower = TrailFollower(db, self.config.data_dir / "audit.db",
                                       shared_trail=shared)  # fmt: skip
        # the first start marks the tail now: what is written from here on is news
        self._follower.load(time.time())

    async def close(self) -> None:
        logging.getLogger("lockgate.credentials").removeHandler(self._failures)
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        if self.dispatcher is None:
            return
        if self._leading:  # what was gathered so far still goes out
            for g in self._groups:
                self._offer(g.due(self._clock(), everything=True))
            if self._lease is not None:
                with contextlib.suppress(Exception):
                    await asyncio.to_thread(self._lease.release)
        await self.dispatcher.close()
        self.dispatcher = None

    async def _run(self) -> None:
        next_check = 0.0
        while True:
            try:
                await self.round(check=time.monotonic() >= next_check)
            except Exception as exc:  # retried next round; never the gateway's problem
                self._round_failed(exc)
            if time.monotonic() >= next_check:
                next_check = time.monotonic() + self.settings.check_interval
            await asyncio.sleep(self.settings.poll_interval)

    def _round_failed(self, exc: Exception) -> None:
        """Log a failed round, the same failure at most once a minute (a database that is
        down fails every round)."""
        what, now = f"{type(exc).__name__}: {exc}", time.monotonic()
        last, when = self._last_failure
        if what != last or now - when >= REPEAT_LOG_AFTER:
            self._last_failure = (what, now)
            log.error("alerts round failed", extra={"fields": {"error": what}})

    async def round(self, *, check: bool) -> None:
        """One round: lease, trail, due groups, logged failures and (``check``) the checks."""
        now = self._clock()
        self._offer(self._failures.drain())
        if check:
            self._offer(self._conditions.update(["audit_refusing"], self._refusing.check()))
        if self._lease is None or self._follower is None:
            return
        was = self._leading
        self._leading = await asyncio.to_thread(self._lease.hold, now)
        if not self._leading:
            # another replica sends from here on, resuming at the stored cursor: past what
            # was gathered here, so this holder sends it now or nobody ever does
            if was:
                for g in self._groups:
                    self._offer(g.due(now, everything=True))
            return
        follower = self._follower
        if not was:  # (again) the sender: resume where the last sender stopped
            await asyncio.to_thread(follower.load, now)
        before = dict(follower.cursor)
        rows = await asyncio.to_thread(follower.read, now)
        if follower.cursor != before:
            await asyncio.to_thread(follower.save, now)
        self._feed(rows, now)
        for g in self._groups:
            self._offer(g.due(now))
        if check:
            found = await asyncio.to_thread(self._shared_checks, now)
            self._offer(self._conditions.update(["credential_age", "signing_key_expiry"], found))

    def _feed(self, rows: list[AuditRow], now: float) -> None:
        denials, credentials = self._groups
        for row in rows:
            if trail_rules.is_denial(row):
                denials.add(row, now)
            elif trail_rules.is_credential_failure(row):
                credentials.add(row, now)
            elif trail_rules.is_rotation_failure(row):
                self._offer([trail_rules.rotation_alert(row)])

    def _shared_checks(self, now: float) -> list[Alert]:
        found: list[Alert] = []
        try:
            found += checks.credential_age(self.state.credentials, self.settings, now)
        except Exception:
            log.exception("credential ages not checked")
        try:
            found += checks.signing_keys(self.state.keys, self.settings, now)
        except Exception:
            log.exception("signing keys not checked")
        return found

    def _offer(self, alerts: list[Alert]) -> None:
        if self.dispatcher is None:
            return
        for alert in alerts:
            self.dispatcher.offer(alert)


__all__ = ["AlertState", "Alerts", "build_notifiers"]
