"""AuditLog: a non-blocking, fail-closed front door to the hash-chained audit trail.

Strategy: the event loop never touches the disk. ``emit`` appends to a bounded in-memory
queue; one background writer *thread* owns the SQLite connection (WAL, synchronous=NORMAL),
takes whatever is queued (up to ``batch_size``), appends it to the chain in one transaction,
mirrors it to the JSON-lines sink, then wakes anyone awaiting durability.

Write-ahead. The record of an allowed request goes through :meth:`AuditLog.write_ahead`
before the request is forwarded: it is sanitised, appended to this process's journal with one
``write()`` (:mod:`lockgate.audit.journal`), then queued like any other record. A crash of the
process after that point loses nothing: the next audit log to start on this database replays
the journal entries the chain does not hold yet (the chain stores, per sender, the highest
journal sequence number it committed, in the same transaction as the rows).

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

import asyncio
import contextlib
import os
import secrets
import sqlite3
import threading
import time
from collections import deque
from collections.abc import Callable
from pathlib import Path
from typing import NamedTuple

from prometheus_client import Counter, Gauge

from lockgate import _log, metrics
from lockgate.audit import chain
from lockgate.audit.health import check_health
from lockgate.audit.journal import Journal, journal_dir, replay
from lockgate.audit.reader import AuditQueries, AuditReader
from lockgate.audit.record import EVENTS, AuditRecord, AuditRow, sanitize, values
from lockgate.audit.sinks import JsonlSink
from lockgate.errors import AuditUnavailable

log = _log.get("audit")

AUDIT_DROPPED = Counter(
    "lockgate_audit_dropped_total",
    "Audit records dropped because the writer queue was full",
    registry=metrics.REGISTRY,
)
AUDIT_QUEUE = Gauge(
    "lockgate_audit_queue_depth", "Audit records waiting to be written", registry=metrics.REGISTRY
)

_MAX_BACKOFF = 0.5  # seconds between retries of a failing batch; small so recovery is quick
_LOG_EVERY = 10.0  # seconds between repeated warnings of the same trouble


class _Waiter(NamedTuple):
    loop: asyncio.AbstractEventLoop
    future: asyncio.Future[None]


class _Entry(NamedTuple):
    record: AuditRecord
    enqueued: float  # time.monotonic()
    waiter: _Waiter | None
    jseq: int = 0  # journal sequence number of a written-ahead record (already sanitised)


class AuditLog(AuditQueries):
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
        _fault: Callable[[], None] | None = None,
    ) -> None:
        self.db_path = Path(db_path)
        self.write_timeout = write_timeout
        self.max_queue = max_queue
        self.batch_size = batch_size
        # Gather records for up to this long between commits (unless someone awaits one):
        # fewer, larger transactions cost the writer thread far less CPU under load.
        self.batch_interval = batch_interval
        self._fault = _fault
        self._reader = AuditReader(self.db_path)
        self._sink = JsonlSink(Path(jsonl_path)) if jsonl_path else None

        # Open once here so a bad path or a corrupt file fails at start, not in the thread.
        self.db_path.parent.mkdir(parents=True, exist_ok=True)
        conn = chain.connect(self.db_path)
        try:
            replayed = replay(journal_dir(self.db_path), conn)
            seq, h = chain.read_head(conn)
        finally:
            conn.close()
        if replayed and self._sink is not None:
            mirror(self._sink, replayed)
        log.info("audit head", extra={"fields": {"audit_seq": seq, "audit_hash": h}})
        self.sender_id = f"{os.getpid()}-{secrets.token_hex(6)}"
        self._journal = Journal(journal_dir(self.db_path), self.sender_id, fsync=fsync)
        self._journal_lock = threading.Lock()
        self._jseq = 0  # last journal sequence number handed out
        self._chained_jseq = 0  # highest one committed to the chain

        self._pending: deque[_Entry] = deque()
        # When the batch being written was taken (hang detection), and when a batch last
        # committed (a backlog that moves is healthy; a writer that stopped taking is not).
        self._busy_since: float | None = None
        self._last_progress = time.monotonic()
        self._error: str | None = None
        self._closing = False
        self._abandon = False
        self._dropped = 0
        self._last_drop_log = 0.0
        self._wake = threading.Event()
        self._urgent = threading.Event()  # a caller awaits a commit: do not gather
        self._idle = threading.Condition()
        self._thread = threading.Thread(target=self._run, name="lockgate-audit", daemon=True)
        self._thread.start()

    # -- write side (event loop) -----------------------------------------------------------
    def emit(self, record: AuditRecord) -> None:
        """Queue ``record`` without blocking. Used by the data path after serving."""
        self._enqueue(record, None)

    def write_ahead(self, record: AuditRecord) -> str:
        """Make ``record`` survive a crash of this process, then queue it for the chain.

        The data path calls this for an allowed request *before* forwarding it. Returns the
        record's reference (``<sender>/<seq>``) for the outcome record to carry. Raises
        AuditUnavailable (the caller refuses the request) when the log is unhealthy or the
        journal cannot be written.
        """
        self.check_writable()
        if record.event not in EVENTS:
            raise ValueError(f"unknown audit event {record.event!r}")
        record = sanitize(record, time.time())
        vals = values(record)
        with self._journal_lock:
            seq = self._jseq + 1
            try:
                self._journal.append(seq, vals)
            except AuditUnavailable:
                metrics.AUDIT_FAILURES.inc()
                raise
            self._jseq = seq
            if not self._enqueue(record, None, seq):
                # on disk, so it is not lost (replayed at the next start), but the queue is
                # full: refuse rather than serve past the bound
                raise AuditUnavailable("audit log queue is full")
        return f"{self.sender_id}/{seq}"

    def durable(self) -> asyncio.Future[None] | None:
        """With ``durability: fsync``: a future done once every record written ahead so far
        is on the device (AuditUnavailable when it cannot be); None when that is already so
        (always, with ``durability: process``). Await it before forwarding."""
        return self._journal.durable()

    async def write(self, record: AuditRecord) -> None:
        """Queue ``record`` and wait until it is committed, at most ``write_timeout``.

        Raises AuditUnavailable when the log is unhealthy or the commit takes too long.
        """
        self.check_writable()
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[None] = loop.create_future()
        if not self._enqueue(record, _Waiter(loop, fut)):
            raise AuditUnavailable("audit log queue is full")
        self._urgent.set()
        try:
            await asyncio.wait_for(asyncio.shield(fut), self.write_timeout)
        except TimeoutError:
            metrics.AUDIT_FAILURES.inc()
            raise AuditUnavailable(
                f"audit record not durable within {self.write_timeout:g}s"
            ) from None

    def _enqueue(self, record: AuditRecord, waiter: _Waiter | None, jseq: int = 0) -> bool:
        if record.event not in EVENTS:
            raise ValueError(f"unknown audit event {record.event!r}")
        if not record.ts:
            record.ts = time.time()
        if self._closing or len(self._pending) >= self.max_queue:
            self._drop()
            return False
        self._pending.append(_Entry(record, time.monotonic(), waiter, jseq))
        if not self._wake.is_set():
            self._wake.set()
        return True

    def _drop(self) -> None:
        self._dropped += 1
        AUDIT_DROPPED.inc()
        now = time.monotonic()
        if now - self._last_drop_log > _LOG_EVERY:
            self._last_drop_log = now
            log.error(
                "audit record dropped",
                extra={"fields": {"dropped_total": self._dropped, "closing": self._closing}},
            )

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
    def healthy(self) -> bool:
        try:
            self.check_writable()
        except AuditUnavailable:
            return False
        return True

    @property
    def pending(self) -> int:
        return len(self._pending) + (0 if self._busy_since is None else 1)

    @property
    def dropped(self) -> int:
        return self._dropped

    def flush(self, timeout: float = 5.0) -> bool:
        """Wait until everything queued so far is written; False on timeout."""
        self._urgent.set()
        self._wake.set()
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
        self._wake.set()
        self._thread.join(timeout)
        if self._thread.is_alive():
            self._abandon = True
            self._wake.set()
            self._thread.join(1.0)
            log.error(
                "audit log closed with unwritten records",
                extra={"fields": {"unwritten": len(self._pending), "error": self._error}},
            )
        # what the chain holds is removed; the rest stays for the next start to replay
        with self._journal_lock:
            self._journal.close(chained_up_to=self._chained_jseq)

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
        records: list[AuditRecord] = []
        unsunk: list[AuditRow] = []  # committed but not yet in the JSON-lines sink
        waiters: list[_Waiter] = []  # committed, waiting for the sink too
        backoff = 0.0
        last_warn = 0.0
        last_commit = 0.0
        jseq = 0  # highest journal seq in the batch being written
        try:
            while not self._abandon:
                if not batch and not unsunk:
                    gather = last_commit + self.batch_interval - time.monotonic()
                    if gather > 0 and len(self._pending) < self.batch_size:
                        self._urgent.wait(gather)
                    self._urgent.clear()
                    self._wake.clear()
                    batch = self._take()
                    AUDIT_QUEUE.set(len(self._pending))
                    if not batch:
                        if self._closing:
                            break
                        self._wake.wait(0.25)
                        continue
                    now = time.time()
                    records = [e.record if e.jseq else sanitize(e.record, now) for e in batch]
                    jseq = max(e.jseq for e in batch)
                try:
                    if batch:
                        if conn is None:
                            conn = chain.connect(self.db_path, timeout=self._busy_timeout())
                        if self._fault is not None:
                            self._fault()
                        marks = {self.sender_id: jseq} if jseq else None
                        placed = chain.append(conn, records, marks)
                        waiters.extend(e.waiter for e in batch if e.waiter is not None)
                        if self._sink is not None:
                            unsunk.extend(_rows(records, placed))
                        if jseq:  # the chain holds them now, whatever the mirror does
                            self._chained_jseq = jseq
                        batch, records = [], []
                    if unsunk:
                        assert self._sink is not None
                        self._sink.write(unsunk)
                        unsunk = []
                except Exception as exc:  # any failure: stay unhealthy, keep the batch, retry
                    metrics.AUDIT_FAILURES.inc()
                    self._error = _describe(exc)
                    if conn is not None and isinstance(exc, sqlite3.Error):
                        conn.close()  # reopen next time: the file may have been replaced
                        conn = None
                    now_m = time.monotonic()
                    if now_m - last_warn > _LOG_EVERY:
                        last_warn = now_m
                        log.error(
                            "audit write failed; refusing allowed requests until it recovers",
                            extra={"fields": {"error": self._error, "queued": self.pending}},
                        )
                    backoff = min(max(backoff * 2, 0.02), _MAX_BACKOFF)
                    time.sleep(backoff)
                    continue
                # success
                if self._error is not None:
                    log.warning("audit log recovered", extra={"fields": {"was": self._error}})
                self._error = None
                backoff = 0.0
                last_commit = time.monotonic()
                self._last_progress = last_commit
                if jseq:
                    self._chained_jseq = jseq
                    self._journal.committed(jseq)
                    jseq = 0
                for w in waiters:
                    _resolve(w)
                waiters = []
                self._busy_since = None
                with self._idle:
                    self._idle.notify_all()
        except BaseException as exc:  # a bug in the writer: fail closed for good
            self._error = f"audit writer stopped: {_describe(exc)}"
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


def mirror(sink: JsonlSink, rows: list[AuditRow]) -> None:
    """Mirror replayed rows; a failing mirror is reported, never a reason to lose them."""
    try:
        sink.write(rows)
    except OSError as exc:
        log.error(
            "audit mirror missed replayed records",
            extra={"fields": {"records": len(rows), "error": _describe(exc)}},
        )


def _rows(records: list[AuditRecord], placed: list[tuple[int, str, str]]) -> list[AuditRow]:
    return [
        AuditRow(**r.to_dict(), seq=seq, prev_hash=prev, hash=h)
        for r, (seq, prev, h) in zip(records, placed, strict=True)
    ]


def _resolve(w: _Waiter) -> None:
    def done(fut: asyncio.Future[None] = w.future) -> None:
        if not fut.done():
            fut.set_result(None)

    with contextlib.suppress(RuntimeError):  # the caller's loop is gone: nobody waits
        w.loop.call_soon_threadsafe(done)


def _describe(exc: BaseException) -> str:
    # error text from sqlite/OS never carries record contents, only the failure
    msg = str(exc) or type(exc).__name__
    return f"{type(exc).__name__}: {msg}"[:200]
