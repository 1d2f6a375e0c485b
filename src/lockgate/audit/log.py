"""AuditLog: a non-blocking, fail-closed front door to the hash-chained audit trail.

Strategy: the event loop never touches the disk. ``emit`` appends to a bounded in-memory
queue; one background writer *thread* owns the SQLite connection (WAL, synchronous=NORMAL),
takes whatever is queued (up to ``batch_size``), appends it to the chain in one transaction,
mirrors it to the JSON-lines and OCSF sinks, then wakes anyone awaiting durability.

Write-ahead. The record of an allowed request goes through :meth:`AuditLog.write_ahead`
before the request is forwarded: it is sanitised, appended to this process's journal with one
``write()`` (:mod:`lockgate.audit.journal`), then queued like any other record. A crash of the
process after that point loses nothing: the next audit log to start on this database replays
the journal entries the chain does not hold yet (every record gets this process's next
sequence number; the chain stores, per sender, the highest one it committed, in the same
transaction as the rows). What is shared with :class:`RemoteAuditLog` lives in
:mod:`lockgate.audit.door`.

Fail closed. The data path calls :meth:`AuditLog.check_writable` before serving an allowed
request; it raises :class:`~lockgate.errors.AuditUnavailable` when

- the last write attempt failed (disk full, "database is locked", sink OSError ...), or
- the oldest unwritten record has waited longer than ``write_timeout`` (a hung write), or
- the queue is full, or the log is closed.

Recovery is automatic: the writer keeps retrying the same batch with a capped backoff and
the first success makes the log healthy again. Records are never dropped while unhealthy;
only an overflowing queue drops (counted in ``lockgate_audit_dropped_total`` and logged).

``write`` (used by the token service) enqueues and awaits the commit for up to
``write_timeout``. On timeout the caller must not act (no token is issued), but the record
stays queued and may still land later: the trail then shows an issuance attempt that the
caller refused, never the reverse.
"""

from __future__ import annotations

import sqlite3
import threading
import time
from collections import deque
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import NamedTuple

from lockgate import _log, metrics
from lockgate.audit import chain
from lockgate.audit.door import (
    AUDIT_DROPPED,
    AUDIT_QUEUE,
    LOG_EVERY,
    MAX_BACKOFF,
    AuditDoor,
    Waiter,
    describe,
    resolve,
)
from lockgate.audit.health import check_health
from lockgate.audit.journal import Journal, journal_dir, replay
from lockgate.audit.record import (
    RECORD_FIELDS,
    AuditRecord,
    AuditRow,
    Values,
    sanitize,
    values,
)
from lockgate.audit.shipper import Shipper
from lockgate.audit.shipping import AuditShipping
from lockgate.audit.sinks import catch_up, mirror, open_mirrors

log = _log.get("audit")

__all__ = ["AUDIT_DROPPED", "AUDIT_QUEUE", "AuditLog", "mirror"]


class _Entry(NamedTuple):
    # A snapshot of the record's values, not the record: tuples of plain values leave the
    # garbage collector's lists at its next pass, so a queue that holds thousands of records
    # for a batch interval adds nothing to the full collections that pause the event loop.
    vals: Values
    enqueued: float  # time.monotonic()
    waiter: Waiter | None
    seq: int  # this sender's sequence number
    # a written-ahead record's journal line: sanitised already (the writer does not do it
    # again), and its canonical JSON (the chain's hash reuses it); None for the others
    line: str | None


class AuditLog(AuditDoor):
    def __init__(
        self,
        db_path: Path,
        jsonl_path: Path | None = None,
        write_timeout: float = 1.0,
        *,
        max_queue: int = 100_000,
        batch_size: int = 256,
        batch_interval: float = 0.02,
        fsync: bool = False,
        shipping: AuditShipping | None = None,
        ocsf_path: Path | None = None,
        datastores: Mapping[str, int] | None = None,
        _fault: Callable[[], None] | None = None,
    ) -> None:
        super().__init__(db_path, write_timeout, max_queue, shipping)
        self.batch_size = batch_size
        # Gather records for up to this long between commits (unless someone awaits one):
        # fewer, larger transactions cost the writer thread far less CPU under load.
        self.batch_interval = batch_interval
        self._fault = _fault
        # audit.jsonl and audit.ocsf, written as one (all or nothing)
        self._sink = open_mirrors(jsonl_path, ocsf_path, datastores)

        # Open once here so a bad path or a corrupt file fails at start, not in the thread.
        self.db_path.parent.mkdir(parents=True, exist_ok=True)
        conn = chain.connect(self.db_path)
        try:
            if self._sink is not None:  # rows a killed writer committed but never mirrored
                catch_up(self._sink, conn, chain.read_head(conn)[0])
            replayed = replay(journal_dir(self.db_path), conn)
            seq, h = chain.read_head(conn)
        finally:
            conn.close()
        if replayed and self._sink is not None:
            mirror(self._sink, replayed)
        log.info("audit head", extra={"fields": {"audit_seq": seq, "audit_hash": h}})
        self._journal = Journal(journal_dir(self.db_path), self.sender_id, fsync=fsync)
        self._chained_seq = 0  # highest sender seq committed to the chain

        self._pending: deque[_Entry] = deque()
        # When the batch being written was taken (hang detection), and when a batch last
        # committed (a backlog that moves is healthy; a writer that stopped taking is not).
        self._busy_since: float | None = None
        self._last_progress = time.monotonic()
        self._error: str | None = None
        self._wakeup = threading.Event()
        self._urgent = threading.Event()  # a caller awaits a commit: do not gather
        # shipping to the shared trail reads what the writer committed (never blocks it)
        self._shipper = Shipper(self.db_path, shipping) if shipping is not None else None
        if self._shipper is not None:
            self._shipper.start()
        self._thread = threading.Thread(target=self._run, name="lockgate-audit", daemon=True)
        self._thread.start()

    # -- the queue (AuditDoor) ---------------------------------------------------------------
    def _queued(self) -> int:
        return len(self._pending)

    def _push(
        self,
        record: AuditRecord,
        vals: Values | None,
        waiter: Waiter | None,
        seq: int,
        line: str | None = None,
    ) -> None:
        snapshot = values(record) if vals is None else vals
        self._pending.append(_Entry(snapshot, time.monotonic(), waiter, seq, line))

    def _wake(self) -> None:
        if not self._wakeup.is_set():
            self._wakeup.set()

    def _hurry(self) -> None:
        self._urgent.set()

    def inject_fault(self, kind: str, arg: float | str = 0.0) -> None:
        """Test hook, same as RemoteAuditLog's: fail each write (``error``, message), stall
        the next write (``hang``, seconds) or behave again (``clear``)."""
        if kind == "clear":
            self._fault = None
        elif kind == "error":
            message = str(arg) or "injected audit failure"

            def fail() -> None:
                raise OSError(message)

            self._fault = fail
        elif kind == "hang":
            seconds = float(arg)

            def stall() -> None:
                self._fault = None
                time.sleep(seconds)

            self._fault = stall
        else:
            raise ValueError(f"unknown fault {kind!r}")

    def check_writable(self) -> None:
        """Raise AuditUnavailable unless records are currently being written in time."""
        since = self._busy_since  # a batch being written: measured from when it was taken
        if since is None and self._pending:
            since = max(self._pending[0].enqueued, self._last_progress)
        check_health(
            error=self._error,
            closing=self._closing,
            stalled_since=since,
            queued=len(self._pending),
            write_timeout=self.write_timeout,
            max_queue=self.max_queue,
        )

    @property
    def pending(self) -> int:
        return len(self._pending) + (0 if self._busy_since is None else 1)

    def flush(self, timeout: float = 5.0) -> bool:
        """Wait until everything queued so far is written; False on timeout."""
        self._urgent.set()
        self._wakeup.set()
        with self._idle:
            return self._idle.wait_for(
                lambda: not self._pending and self._busy_since is None, timeout
            )

    def close(self, timeout: float = 5.0) -> None:
        """Write what is queued (for up to ``timeout``), then stop the writer."""
        if self._closing and not self._thread.is_alive():
            return
        self._closing = True
        self._urgent.set()
        self._wakeup.set()
        self._thread.join(timeout)
        if self._thread.is_alive():
            self._abandon = True
            self._wakeup.set()
            self._thread.join(1.0)
            log.error(
                "audit log closed with unwritten records",
                extra={"fields": {"unwritten": len(self._pending), "error": self._error}},
            )
        # what the chain holds is removed; the rest stays for the next start to replay
        with self._seq_lock:
            self._journal.close(chained_up_to=self._chained_seq)
        if self._shipper is not None:
            self._shipper.stop()
        self.close_shared()

    # -- writer thread ---------------------------------------------------------------------
    def _take(self) -> list[_Entry]:
        batch: list[_Entry] = []
        pending = self._pending
        if pending:
            # mark busy *before* popping so check_writable never sees "nothing pending"
            self._busy_since = time.monotonic()
        while pending and len(batch) < self.batch_size:
            batch.append(pending.popleft())
        return batch

    def _run(self) -> None:
        conn: sqlite3.Connection | None = None
        batch: list[_Entry] = []
        rows: list[Values] = []  # the batch's sanitised values
        lines: list[str | None] = []  # and the journal lines of those written ahead
        unsunk: list[AuditRow] = []  # committed but not yet in the JSON-lines sink
        waiters: list[Waiter] = []  # committed, waiting for the sink too
        backoff = 0.0
        last_warn = 0.0
        last_commit = 0.0
        last_seq = 0  # the highest sender seq in the batch being written
        try:
            while not self._abandon:
                if not batch and not unsunk:
                    gather = last_commit + self.batch_interval - time.monotonic()
                    if gather > 0 and len(self._pending) < self.batch_size:
                        self._urgent.wait(gather)
                    self._urgent.clear()
                    self._wakeup.clear()
                    batch = self._take()
                    AUDIT_QUEUE.set(len(self._pending))
                    if not batch:
                        if self._closing:
                            break
                        self._wakeup.wait(0.25)
                        continue
                    now = time.time()
                    rows = [e.vals if e.line else _sanitized(e.vals, now) for e in batch]
                    lines = [e.line for e in batch]
                    last_seq = batch[-1].seq  # the queue is in seq order
                try:
                    if batch:
                        if conn is None:
                            conn = chain.connect(self.db_path, timeout=self._busy_timeout())
                        if self._fault is not None:
                            self._fault()
                        placed = chain.append(conn, rows, {self.sender_id: last_seq}, lines)
                        waiters.extend(e.waiter for e in batch if e.waiter is not None)
                        if self._sink is not None:
                            unsunk.extend(_stored(rows, placed))
                        self._chained_seq = last_seq  # the chain holds them, mirror or not
                        batch, rows = [], []
                    if unsunk:
                        assert self._sink is not None
                        self._sink.write(unsunk)
                        unsunk = []
                except Exception as exc:  # any failure: stay unhealthy, keep the batch, retry
                    metrics.AUDIT_FAILURES.inc()
                    self._error = describe(exc)
                    if conn is not None and isinstance(exc, sqlite3.Error):
                        conn.close()  # reopen next time: the file may have been replaced
                        conn = None
                    now_m = time.monotonic()
                    if now_m - last_warn > LOG_EVERY:
                        last_warn = now_m
                        log.error(
                            "audit write failed; refusing allowed requests until it recovers",
                            extra={"fields": {"error": self._error, "queued": self.pending}},
                        )
                    backoff = min(max(backoff * 2, 0.02), MAX_BACKOFF)
                    time.sleep(backoff)
                    continue
                # success
                if self._error is not None:
                    log.warning("audit log recovered", extra={"fields": {"was": self._error}})
                self._error = None
                backoff = 0.0
                last_commit = time.monotonic()
                self._last_progress = last_commit
                if last_seq:
                    self._journal.committed(last_seq)
                    last_seq = 0
                for w in waiters:
                    resolve(w)
                waiters = []
                if self._shipper is not None:
                    self._shipper.kick()
                self._busy_since = None
                with self._idle:
                    self._idle.notify_all()
        except BaseException as exc:  # a bug in the writer: fail closed for good
            self._error = f"audit writer stopped: {describe(exc)}"
            log.exception("audit writer crashed")
            raise
        finally:
            if self._sink is not None:
                self._sink.close()
            if conn is not None:
                seq, h = chain.read_head(conn)
                conn.close()
                log.info("audit head", extra={"fields": {"audit_seq": seq, "audit_hash": h}})
            with self._idle:
                self._idle.notify_all()

    def _busy_timeout(self) -> float:
        # wait for another process's write lock a little, but well inside write_timeout
        return max(0.05, min(self.write_timeout / 2, 1.0))


def _sanitized(vals: Values, now: float) -> Values:
    return values(sanitize(AuditRecord(*vals), now))


def _stored(rows: list[Values], placed: list[tuple[int, str, str]]) -> list[AuditRow]:
    return [
        AuditRow(**dict(zip(RECORD_FIELDS, vals, strict=True)), seq=seq, prev_hash=prev, hash=h)
        for vals, (seq, prev, h) in zip(rows, placed, strict=True)
    ]
