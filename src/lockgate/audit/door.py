"""The front door both audit logs share: numbering, write-ahead, awaited writes, drops.

:class:`AuditLog` (a writer thread) and :class:`RemoteAuditLog` (a writer process) differ only
in who commits the queue. Everything a caller touches is here, written once:

- every record gets this process's next sequence number (``sender_id``/seq) under one lock,
  so seq order is queue order whichever thread emits, and the chain's per-sender mark means
  "everything up to here is committed";
- :meth:`AuditDoor.write_ahead` sanitises the ``admitted`` record of an allowed request
  *once* (the writer does not do it again), appends it to the journal with one ``write()``
  and queues it, before the caller forwards anything;
- :meth:`AuditDoor.write` awaits the commit for at most ``write_timeout``;
- a full queue or a closed log drops an emitted record (counted and logged) and refuses a
  written-ahead or awaited one.

A subclass provides the queue (:meth:`_push`, :meth:`_queued`), how its writer is woken
(:meth:`_wake`, :meth:`_hurry`) and :meth:`check_writable`.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import secrets
import threading
import time
from pathlib import Path
from typing import NamedTuple

from prometheus_client import Counter, Gauge

from lockgate import _log, metrics
from lockgate.audit.journal import Journal
from lockgate.audit.reader import AuditReader
from lockgate.audit.record import EVENTS, AuditRecord, Values, sanitize, values
from lockgate.audit.shipping import AuditShipping
from lockgate.errors import AuditUnavailable

log = _log.get("audit")

AUDIT_DROPPED = Counter(
    "lockgate_audit_dropped_total",
    "Audit records dropped because the writer queue was full",
    registry=metrics.REGISTRY,
)
AUDIT_QUEUE = Gauge(
    "lockgate_audit_queue_depth",
    "Audit records waiting to be written",
    registry=metrics.REGISTRY,
    multiprocess_mode="livesum",  # serve --workers: the workers' queues add up
)

LOG_EVERY = 10.0  # seconds between repeated warnings of the same trouble
MAX_BACKOFF = 0.5  # seconds between retries of a failing write; small so recovery is quick


class Waiter(NamedTuple):
    """Someone awaiting a commit: the future to resolve, on its own loop."""

    loop: asyncio.AbstractEventLoop
    future: asyncio.Future[None]


def resolve(w: Waiter) -> None:
    """Resolve ``w`` from any thread; a waiter whose loop is gone is nobody."""

    def done(fut: asyncio.Future[None] = w.future) -> None:
        if not fut.done():
            fut.set_result(None)

    with contextlib.suppress(RuntimeError):
        w.loop.call_soon_threadsafe(done)


def describe(exc: BaseException) -> str:
    """An error for logs and health: sqlite and OS texts never carry record contents."""
    msg = str(exc) or type(exc).__name__
    return f"{type(exc).__name__}: {msg}"[:200]


def _known(record: AuditRecord) -> None:
    if record.event not in EVENTS:
        raise ValueError(f"unknown audit event {record.event!r}")


class AuditDoor(AuditReader):
    """The write side's shared half; reads (tail, search, verify, head) come with it."""

    _journal: Journal

    def __init__(
        self,
        db_path: Path,
        write_timeout: float,
        max_queue: int,
        shipping: AuditShipping | None = None,
    ) -> None:
        super().__init__(db_path, shipping=shipping)
        self.write_timeout = write_timeout
        self.max_queue = max_queue
        self.sender_id = f"{os.getpid()}-{secrets.token_hex(6)}"
        self._seq_lock = threading.Lock()  # seq order == queue order, whichever thread emits
        self._next_seq = 1
        self._closing = False
        self._abandon = False
        self._dropped = 0
        self._last_drop_log = 0.0
        self._idle = threading.Condition()  # notified when the queue drains

    # -- what a subclass provides -----------------------------------------------------------
    def _queued(self) -> int:
        """Records not yet committed."""
        raise NotImplementedError

    def _push(
        self,
        record: AuditRecord,
        vals: Values | None,
        waiter: Waiter | None,
        seq: int,
        line: str | None = None,
    ) -> None:
        """Queue one record; lock held. ``vals`` given: sanitised and journaled already, as
        ``line`` (its canonical JSON, which the chain's hash can reuse)."""
        raise NotImplementedError

    def _wake(self) -> None:
        """A record was queued: wake the writer if it sleeps with nothing to do."""

    def _hurry(self) -> None:
        """Someone awaits a commit: write what is queued without gathering more."""

    def check_writable(self) -> None:
        """Raise AuditUnavailable unless records are currently being written in time."""
        raise NotImplementedError

    # -- write side (any thread; usually the event loop) ------------------------------------
    def emit(self, record: AuditRecord) -> None:
        """Queue ``record`` without blocking. Used by the data path after serving."""
        self._enqueue(record, None)

    def write_ahead(self, record: AuditRecord) -> str:
        """Make ``record`` survive a crash of this process, then queue it for the chain.

        The data path calls this for an allowed request *before* forwarding it. Returns the
        record's reference (``<sender>/<seq>``) for the outcome record to carry. Raises
        AuditUnavailable (the caller refuses the request) when the log is unhealthy, the
        queue is full or the journal cannot be written.
        """
        self.check_writable()
        _known(record)
        vals = values(sanitize(record, time.time()))  # no secret ever reaches the journal
        with self._seq_lock:
            if self._closing or self._queued() >= self.max_queue:
                raise AuditUnavailable("audit log queue is full")
            seq = self._next_seq
            try:
                line = self._journal.append(seq, vals)
            except AuditUnavailable:
                metrics.AUDIT_FAILURES.inc()
                raise
            self._next_seq = seq + 1
            self._push(record, vals, None, seq, line)
        self._wake()
        return f"{self.sender_id}/{seq}"

    def durable(self) -> asyncio.Future[None] | None:
        """With ``durability: fsync``: a future done once every record written ahead so far
        is on the device (AuditUnavailable when it cannot be); None when that is already so
        (always, with ``durability: process``). Await it before forwarding."""
        return self._journal.durable()

    async def write(self, record: AuditRecord) -> None:
        """Queue ``record`` and wait until it is committed, at most ``write_timeout``.

        Raises AuditUnavailable when the log is unhealthy or the commit takes too long. On
        timeout the record stays queued and may still land later.
        """
        self.check_writable()
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[None] = loop.create_future()
        if not self._enqueue(record, Waiter(loop, fut)):
            raise AuditUnavailable("audit log queue is full")
        self._hurry()
        try:
            await asyncio.wait_for(asyncio.shield(fut), self.write_timeout)
        except TimeoutError:
            metrics.AUDIT_FAILURES.inc()
            raise AuditUnavailable(
                f"audit record not durable within {self.write_timeout:g}s"
            ) from None

    def _enqueue(self, record: AuditRecord, waiter: Waiter | None) -> bool:
        _known(record)
        if not record.ts:
            record.ts = time.time()
        with self._seq_lock:
            if self._closing or self._queued() >= self.max_queue:
                self._drop()
                return False
            self._push(record, None, waiter, self._next_seq)
            self._next_seq += 1
        self._wake()
        return True

    def _drop(self) -> None:
        self._dropped += 1
        AUDIT_DROPPED.inc()
        now = time.monotonic()
        if now - self._last_drop_log > LOG_EVERY:
            self._last_drop_log = now
            log.error(
                "audit record dropped",
                extra={"fields": {"dropped_total": self._dropped, "closing": self._closing}},
            )

    @property
    def healthy(self) -> bool:
        try:
            self.check_writable()
        except AuditUnavailable:
            return False
        return True

    @property
    def dropped(self) -> int:
        return self._dropped
