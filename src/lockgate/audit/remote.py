"""RemoteAuditLog: the AuditLog front door with the writing done in another process.

Strategy: the gateway's event loop only snapshots a record's field values (one C call) and
appends them to a queue. A small sender *thread* wakes every ``batch_interval`` (or at once
for an awaited ``write``), numbers the records with this sender's sequence numbers, marshals
them as one frame and sends it over a Unix socket to the writer process
(:mod:`lockgate.audit.writer`), which sanitises, hashes and commits, then acknowledges the
highest committed sequence number. Per record, the gateway process spends about 1 µs
instead of ~20 µs, and the thread holds the GIL only briefly per batch.

Rules (same contract as :class:`lockgate.audit.log.AuditLog`):

- fail closed: :meth:`check_writable` raises AuditUnavailable when the writer reported a
  write error, when the oldest unacknowledged record is older than ``write_timeout``, when
  the writer is unreachable or died, when the queue is full, or after :meth:`close`;
- nothing lost, nothing twice: a record leaves memory only when acknowledged; after a
  reconnect the writer says what it has committed and the rest is resent (the writer skips
  sequence numbers it already has);
- write-ahead: :meth:`RemoteAuditLog.write_ahead` (an allowed request, before forwarding)
  also appends the record to this sender's journal under the same sequence number, so a
  crash of this process loses nothing: the writer replays what it never committed
  (:mod:`lockgate.audit.journal`). Sequence numbers are therefore handed out on enqueue;
- the owner (``socket_path=None``) starts the writer process itself and restarts it when it
  dies; with ``socket_path`` given, a supervisor owns the writer and this only reconnects.
"""

from __future__ import annotations

import contextlib
import marshal
import selectors
import socket
import threading
import time
from collections import deque
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from lockgate import _log, metrics
from lockgate.audit import chain
from lockgate.audit.door import (
    AUDIT_QUEUE,
    LOG_EVERY,
    MAX_BACKOFF,
    AuditDoor,
    Waiter,
    describe,
    resolve,
)
from lockgate.audit.health import check_health
from lockgate.audit.journal import Journal, journal_dir
from lockgate.audit.record import AuditRecord, Values, sanitize, values
from lockgate.audit.shipping import AuditShipping
from lockgate.audit.wire import FrameBuffer, WireError, frame
from lockgate.audit.writer_process import WriterProcess
from lockgate.errors import AuditUnavailable

log = _log.get("audit")

__all__ = ["RemoteAuditLog", "WriterProcess"]

_MAX_OUTBUF = 4 << 20  # stop framing more while this much is unsent (the writer is stuck)
_FAULT = "\0fault"  # first value of a test hook's entry: sent in order, not a record


class _Entry:
    __slots__ = ("clean", "enqueued", "seq", "vals", "waiter")

    def __init__(
        self, vals: Values, enqueued: float, waiter: Waiter | None, seq: int, clean: bool
    ) -> None:
        self.vals = vals
        self.enqueued = enqueued  # time.monotonic()
        self.waiter = waiter
        self.seq = seq  # this sender's sequence number (0: a test hook, not a record)
        self.clean = clean  # sanitised already (written ahead): the writer does not redo it


class RemoteAuditLog(AuditDoor):
    def __init__(
        self,
        db_path: Path,
        jsonl_path: Path | None = None,
        write_timeout: float = 1.0,
        *,
        socket_path: Path | None = None,
        max_queue: int = 100_000,
        batch_size: int = 2_000,
        batch_interval: float = 0.005,
        start_timeout: float = 15.0,
        fsync: bool = False,
        shipping: AuditShipping | None = None,
        ocsf_path: Path | None = None,
        datastores: Mapping[str, int] | None = None,
    ) -> None:
        # shipping: the writer process ships (this one's or, with socket_path, the
        # supervisor's, which must be given the same shipping); reads use it here
        super().__init__(db_path, write_timeout, max_queue, shipping)
        self.batch_size = batch_size
        self.batch_interval = batch_interval
        self.writer: WriterProcess | None = None
        if socket_path is None:
            # open once here so a bad path or a corrupt file fails at start, in this process
            self.db_path.parent.mkdir(parents=True, exist_ok=True)
            conn = chain.connect(self.db_path)
            conn.close()
            busy = max(0.05, min(write_timeout / 2, 1.0))
            self.writer = WriterProcess(
                self.db_path, jsonl_path, busy_timeout=busy, shipping=shipping,
                ocsf_path=ocsf_path, datastores=datastores,
            )  # fmt: skip
            self.writer.start()
            socket_path = self.writer.socket_path
        self.socket_path = Path(socket_path)
        self._journal = Journal(journal_dir(self.db_path), self.sender_id, fsync=fsync)
        self._acked = 0  # highest seq the writer committed

        self._outbox: deque[_Entry] = deque()  # emitted, not yet sent (event loop appends)
        self._inflight: deque[_Entry] = deque()  # sent, not yet acknowledged (thread only)
        self._error: str | None = "audit writer not connected yet"
        self._urgent = False
        self._sleeping = False
        self._last_progress = time.monotonic()  # last acknowledgement (a moving backlog is fine)
        self._sock: socket.socket | None = None
        self._frames = FrameBuffer()
        self._outbuf = bytearray()
        self._connected = threading.Event()
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        self._wake_w.setblocking(False)
        self._sel = selectors.DefaultSelector()
        self._sel.register(self._wake_r, selectors.EVENT_READ, "wake")
        self._thread = threading.Thread(target=self._run, name="lockgate-audit-send", daemon=True)
        self._thread.start()
        if not self._connected.wait(start_timeout):
            self.close(0.5)
            raise AuditUnavailable("audit writer process did not start")

    # -- the queue (AuditDoor) ---------------------------------------------------------------
    def _queued(self) -> int:
        return len(self._outbox) + len(self._inflight)

    def _push(
        self,
        record: AuditRecord,
        vals: Values | None,
        waiter: Waiter | None,
        seq: int,
        line: str | None = None,
    ) -> None:
        # the event loop only snapshots the values; the writer process sanitises the rest
        clean = vals is not None
        snapshot = values(record) if vals is None else vals
        self._outbox.append(_Entry(snapshot, time.monotonic(), waiter, seq, clean))

    def _wake(self) -> None:
        if self._sleeping:  # the sender idles with nothing queued: wake it (rare under load)
            self._sleeping = False
            self._poke()

    def _hurry(self) -> None:
        self._urgent = True
        self._poke()

    def _poke(self) -> None:
        with contextlib.suppress(OSError):  # full: a wake-up is already pending
            self._wake_w.send(b"\0")

    def check_writable(self) -> None:
        """Raise AuditUnavailable unless records are currently being acknowledged in time."""
        waiting = self._inflight or self._outbox
        check_health(
            error=self._error,
            closing=self._closing,
            stalled_since=max(waiting[0].enqueued, self._last_progress) if waiting else None,
            queued=len(self._outbox) + len(self._inflight),
            write_timeout=self.write_timeout,
            max_queue=self.max_queue,
        )

    @property
    def pending(self) -> int:
        return len(self._outbox) + len(self._inflight)

    def flush(self, timeout: float = 5.0) -> bool:
        """Wait until everything queued so far is acknowledged; False on timeout."""
        self._hurry()
        with self._idle:
            return self._idle.wait_for(lambda: not self._outbox and not self._inflight, timeout)

    def close(self, timeout: float = 5.0) -> None:
        """Send what is queued and wait for its acknowledgement (up to ``timeout``), then stop
        the sender thread and, when this log owns it, the writer process."""
        if self._closing and not self._thread.is_alive():
            return
        self._closing = True
        self._hurry()
        self._thread.join(timeout)
        if self._thread.is_alive():
            self._abandon = True
            self._poke()
            self._thread.join(1.0)
            log.error(
                "audit log closed with unacknowledged records",
                extra={"fields": {"unwritten": self.pending, "error": self._error}},
            )
        if not self._thread.is_alive():
            self._sel.close()
            self._wake_r.close()
            self._wake_w.close()
        # what the writer committed is removed; the rest stays for the writer to replay
        with self._seq_lock:
            self._journal.close(chained_up_to=self._acked)
        if self.writer is not None:
            self.writer.stop()
        self.close_shared()

    def inject_fault(self, kind: str, arg: float | str = 0.0) -> None:
        """Test hook: ask the writer to fail (``error``, message), stall once (``hang``,
        seconds), die (``exit``) or behave again (``clear``). Sent in order with records."""
        self._outbox.append(_Entry((_FAULT, kind, arg), time.monotonic(), None, 0, False))
        self._hurry()

    @property
    def writer_pid(self) -> int | None:
        return self.writer.pid if self.writer is not None else None

    # -- sender thread ---------------------------------------------------------------------
    def _run(self) -> None:
        backoff = 0.0
        last_warn = 0.0
        try:
            while not self._abandon:
                if self._closing and not self._outbox and not self._inflight:
                    break
                if self._sock is None:
                    try:
                        self._connect()
                        backoff = 0.0
                    except (OSError, WireError, ValueError) as exc:
                        self._error = f"audit writer unreachable: {describe(exc)}"
                        now = time.monotonic()
                        if now - last_warn > LOG_EVERY and self._connected.is_set():
                            last_warn = now
                            log.error("audit writer unreachable; refusing allowed requests")
                        backoff = min(max(backoff * 2, 0.02), MAX_BACKOFF)
                        self._wait(backoff)
                        continue
                self._pump()
        except BaseException as exc:  # a bug here: fail closed for good
            self._error = f"audit sender stopped: {describe(exc)}"
            log.exception("audit sender crashed")
            raise
        finally:
            self._disconnect(None)
            with self._idle:
                self._idle.notify_all()

    def _wait(self, timeout: float) -> None:
        for key, _ in self._sel.select(timeout):
            if key.data == "wake":
                with contextlib.suppress(OSError):
                    self._wake_r.recv(4096)

    def _connect(self) -> None:
        if self.writer is not None:
            self.writer.ensure_running()
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            s.settimeout(2.0)
            s.connect(str(self.socket_path))
            s.sendall(frame(("hello", self.sender_id)))
            frames = FrameBuffer()
            msgs: list[tuple[Any, ...]] = []
            while not msgs:
                data = s.recv(65536)
                if not data:
                    raise ConnectionResetError("writer closed the connection")
                msgs = frames.feed(data)
        except BaseException:
            s.close()
            raise
        hello, rest = msgs[0], msgs[1:]
        if hello[0] != "hello":
            s.close()
            raise WireError("writer did not say hello")
        s.setblocking(False)
        self._sock, self._frames = s, frames
        self._sel.register(s, selectors.EVENT_READ, "sock")
        self._ack(int(hello[1]))
        self._error = hello[2]
        if self._inflight:  # resend: the writer skips what it already holds
            self._outbuf += frame(_records(list(self._inflight), True))
        for m in rest:
            self._on_message(m)
        if not self._connected.is_set():
            self._connected.set()
        else:
            log.warning("audit writer reconnected", extra={"fields": {"resent": self.pending}})

    def _disconnect(self, reason: str | None) -> None:
        s, self._sock = self._sock, None
        if s is None:
            return
        with contextlib.suppress(KeyError, ValueError):
            self._sel.unregister(s)
        s.close()
        self._outbuf.clear()  # whatever was in it is still in _inflight: resent on reconnect
        if reason is not None:
            metrics.AUDIT_FAILURES.inc()
            self._error = reason
            log.error("audit writer connection lost", extra={"fields": {"reason": reason}})

    def _pump(self) -> None:
        """Send what is due, then wait for acknowledgements, a wake-up or the next batch."""
        outbox = self._outbox
        if outbox and len(self._outbuf) < _MAX_OUTBUF:
            now = time.monotonic()
            urgent = self._urgent
            if (
                urgent
                or self._closing
                or len(outbox) >= self.batch_size
                or now - outbox[0].enqueued >= self.batch_interval
            ):
                self._urgent = False
                self._frame_batch(urgent)
        if self._outbuf:
            assert self._sock is not None
            try:
                n = self._sock.send(self._outbuf)
                del self._outbuf[:n]
            except BlockingIOError:
                pass
            except OSError as exc:
                self._disconnect(f"audit writer connection lost: {describe(exc)}")
                return
        AUDIT_QUEUE.set(len(outbox) + len(self._inflight))
        # Sleep flag first, then look at the queue: an emit either sees the flag or is seen.
        self._sleeping = True
        if self._urgent:
            timeout = 0.0
        elif outbox:
            self._sleeping = False
            timeout = max(0.0, outbox[0].enqueued + self.batch_interval - time.monotonic())
        else:
            timeout = 0.25
        sock = self._sock
        assert sock is not None
        want = selectors.EVENT_READ | (selectors.EVENT_WRITE if self._outbuf else 0)
        if self._sel.get_key(sock).events != want:
            self._sel.modify(sock, want, "sock")
        events = self._sel.select(timeout)
        self._sleeping = False
        for key, ev in events:
            if key.data == "wake":
                with contextlib.suppress(OSError):
                    self._wake_r.recv(4096)
            elif ev & selectors.EVENT_READ:
                self._receive()
        if self.writer is not None and self._sock is not None and not self.writer.alive():
            self._disconnect("audit writer process exited")

    def _frame_batch(self, urgent: bool) -> None:
        outbox, inflight = self._outbox, self._inflight
        batch: list[_Entry] = []
        while outbox and len(batch) < self.batch_size:
            e = outbox.popleft()
            if e.vals and e.vals[0] == _FAULT:  # a test hook, in order with the records
                self._send_records(batch, urgent)
                batch = []
                self._outbuf += frame(("fault", e.vals[1], e.vals[2]))
                continue
            inflight.append(e)
            batch.append(e)
        self._send_records(batch, urgent)

    def _send_records(self, batch: list[_Entry], urgent: bool) -> None:
        if not batch:
            return
        # commit at once when someone awaits one of these (write, flush, close)
        urgent = urgent or self._closing or any(e.waiter is not None for e in batch)
        try:
            data = frame(_records(batch, urgent))
        except ValueError:  # an odd value (an object, a subclass): normalise it here
            for e in batch:
                try:
                    marshal.dumps(e.vals)
                except ValueError:
                    e.vals = values(sanitize(AuditRecord(*e.vals), time.time()))
                    e.clean = True
            data = frame(_records(batch, urgent))
        self._outbuf += data

    def _receive(self) -> None:
        assert self._sock is not None
        try:
            data = self._sock.recv(65536)
        except BlockingIOError:
            return
        except OSError as exc:
            self._disconnect(f"audit writer connection lost: {describe(exc)}")
            return
        if not data:
            self._disconnect("audit writer connection lost")
            return
        try:
            msgs = self._frames.feed(data)
        except WireError as exc:
            self._disconnect(f"audit writer protocol error: {exc}")
            return
        for m in msgs:
            self._on_message(m)

    def _on_message(self, m: tuple[Any, ...]) -> None:
        kind = m[0]
        if kind == "ack":
            self._ack(int(m[1]))
        elif kind == "error":
            if self._error is None:
                metrics.AUDIT_FAILURES.inc()
            self._error = str(m[1])
        elif kind == "ok":
            self._error = None

    def _ack(self, seq: int) -> None:
        if seq > self._acked:
            self._acked = seq
            self._journal.committed(seq)
        inflight = self._inflight
        done = False
        while inflight and inflight[0].seq <= seq:
            e = inflight.popleft()
            done = True
            self._last_progress = time.monotonic()
            if e.waiter is not None:
                resolve(e.waiter)
        if done and not inflight and not self._outbox:
            with self._idle:
                self._idle.notify_all()


def _records(batch: list[_Entry], urgent: bool) -> tuple[Any, ...]:
    """The ``recs`` message of ``batch`` (consecutive seqs): values, and which are clean."""
    clean = [i for i, e in enumerate(batch) if e.clean]
    return ("recs", batch[0].seq, [e.vals for e in batch], urgent, clean)
