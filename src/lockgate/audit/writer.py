"""The audit writer process: owns the SQLite chain, fed by gateway processes over a socket.

    python -m lockgate.audit.writer --socket PATH DB [--jsonl FILE] [--ocsf FILE]
        [--ocsf-datastore NAME=TYPE_ID ...] [--parent-pid PID]

Strategy: one thread, one ``selectors`` loop. Senders (one per gateway process, see
:mod:`lockgate.audit.remote`) connect to a Unix socket and stream batches of raw record
values (:mod:`lockgate.audit.wire`). This process does everything that costs CPU per record:
sanitising (but for written-ahead records, which their sender sanitised before journaling
them), hashing, batched INSERTs, the JSON-lines and OCSF mirrors. Records from all senders go
into one chain, gathered for up to ``batch_interval`` per transaction unless a sender marked
a batch urgent (someone awaits durability).

Exactly once: every record carries its sender's sequence number. The highest committed one
per sender is stored in ``audit_senders`` in the same transaction as the rows, and returned
in the ``hello`` reply, so after a crash of either side the sender resends only what is not
committed, and a duplicate resend (seq already accepted) is skipped here.

Journals: each sender also writes its allowed records ahead to a journal file
(:mod:`lockgate.audit.journal`). At start, whenever a sender says hello (a restarted worker)
and every ``_REPLAY_EVERY`` seconds, the journals of senders that are gone are replayed: what
is past a sender's committed mark is chained, then its files are removed. A sender whose
records this process holds but has not committed yet is left for a later pass.

Failures: a failing commit (or mirror write) is retried with a capped backoff; senders are
told ``error`` at once and ``ok`` on recovery, and keep their records until acknowledged. The
process exits after draining on SIGTERM/SIGINT, and when its parent process is gone.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import selectors
import signal
import socket
import sqlite3
import sys
import time
from collections import deque
from collections.abc import Container
from pathlib import Path
from typing import Any

from lockgate import _log
from lockgate.audit import chain
from lockgate.audit.door import describe
from lockgate.audit.journal import journal_dir, replay
from lockgate.audit.record import EVENTS, RECORD_FIELDS, AuditRecord, AuditRow, sanitize
from lockgate.audit.shipper import Shipper
from lockgate.audit.shipping import AuditShipping
from lockgate.audit.sinks import catch_up, mirror, open_mirrors
from lockgate.audit.wire import FrameBuffer, WireError, frame

log = _log.get("audit.writer")

_MAX_BACKOFF = 0.5
_LOG_EVERY = 10.0
_NFIELDS = len(RECORD_FIELDS)
_REPLAY_EVERY = 5.0  # seconds between looks for journals of senders that died


class _Conn:
    __slots__ = ("frames", "out", "sender", "sock")

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.frames = FrameBuffer()
        self.out = bytearray()
        self.sender: str | None = None


class Writer:
    def __init__(
        self,
        db_path: Path,
        socket_path: Path,
        jsonl_path: Path | None = None,
        *,
        batch_size: int = 2_000,
        batch_interval: float = 0.02,
        busy_timeout: float = 0.5,
        parent_pid: int | None = None,
        shipping: AuditShipping | None = None,
        ocsf_path: Path | None = None,
        datastores: dict[str, int] | None = None,
    ) -> None:
        self.db_path = Path(db_path)
        self.shipping = shipping
        self.socket_path = Path(socket_path)
        self.batch_size = batch_size
        self.batch_interval = batch_interval
        self.busy_timeout = busy_timeout
        self.parent_pid = parent_pid
        self._sink = open_mirrors(jsonl_path, ocsf_path, datastores)
        self._sel = selectors.DefaultSelector()
        self._conns: dict[str, _Conn] = {}  # sender id → its current connection
        # (sender, seq, values, clean): clean ones were sanitised by the sender (written ahead)
        self._pending: deque[tuple[str, int, Any, bool]] = deque()
        self._pending_since = 0.0
        self._urgent = False
        self._accepted: dict[str, int] = {}  # highest seq taken into _pending, per sender
        self._done: dict[str, int] = {}  # highest seq committed, per sender
        self._error: str | None = None
        self._retry_at = 0.0
        self._backoff = 0.0
        self._last_warn = 0.0
        self._stopping = False
        # the batch being written: kept across retries so a retry writes the same rows
        self._batch: list[tuple[str, int, Any, bool]] = []
        self._records: list[AuditRecord] = []
        self._unsunk: list[AuditRow] = []
        self._db: sqlite3.Connection | None = None
        # test hooks, set by a ("fault", ...) message
        self._fault_error: str | None = None
        self._fault_hang = 0.0
        self._replay_at = 0.0  # next look at the journals (monotonic); 0: at once
        self._shipper: Shipper | None = None

    # -- loop ------------------------------------------------------------------------------
    def run(self) -> None:
        self._db = chain.connect(self.db_path, timeout=self.busy_timeout)
        self._done = chain.read_senders(self._db)
        self._accepted = dict(self._done)
        if self._sink is not None:  # rows a killed writer committed but never mirrored
            catch_up(self._sink, self._db, chain.read_head(self._db)[0])
        self._replay()  # before any sender connects: leftovers of a previous run first
        # shipping reads what is committed here, on a thread of its own (never blocks us)
        shipper = Shipper(self.db_path, self.shipping) if self.shipping is not None else None
        if shipper is not None:
            shipper.start()
        self._shipper = shipper
        listener = self._listen()
        wake_r, wake_w = socket.socketpair()
        wake_r.setblocking(False)
        wake_w.setblocking(False)
        signal.set_wakeup_fd(wake_w.fileno())
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, self._on_signal)
        self._sel.register(listener, selectors.EVENT_READ, "listen")
        self._sel.register(wake_r, selectors.EVENT_READ, "wake")
        log.info("audit writer ready", extra={"fields": {"socket": str(self.socket_path)}})
        try:
            while True:
                if self._stopping and not self._pending and not self._batch:
                    break
                if self.parent_pid and os.getppid() != self.parent_pid:
                    self._stopping = True  # parent gone: drain what we have, then exit
                for key, events in self._sel.select(self._timeout()):
                    if key.data == "listen":
                        self._accept(listener)
                    elif key.data == "wake":
                        with contextlib.suppress(OSError):
                            wake_r.recv(4096)
                    else:
                        self._io(key.data, events)
                if self._due():
                    self._commit()
                if time.monotonic() >= self._replay_at:
                    self._replay()
        finally:
            for c in list(self._conns.values()):
                self._flush_out(c)
            self._sel.close()
            listener.close()
            with contextlib.suppress(OSError):
                self.socket_path.unlink()
            if self._sink is not None:
                self._sink.close()
            if self._db is not None:
                seq, h = chain.read_head(self._db)
                self._db.close()
                log.info("audit head", extra={"fields": {"audit_seq": seq, "audit_hash": h}})
            if shipper is not None:
                shipper.stop()

    def _replay(self) -> None:
        """Chain what dead senders journaled but never sent (see the module docstring)."""
        self._replay_at = time.monotonic() + _REPLAY_EVERY
        if self._batch or self._error is not None or self._db is None:
            return  # a failing database: the next pass tries again

        def busy(sender: str) -> bool:  # records of it taken but not committed yet
            return self._accepted.get(sender, 0) != self._done.get(sender, 0)

        try:
            rows = replay(journal_dir(self.db_path), self._db, skip=busy, forget=True)
        except (OSError, sqlite3.Error) as exc:
            log.error("audit journal replay failed", extra={"fields": {"error": describe(exc)}})
            return
        if rows and self._sink is not None:
            mirror(self._sink, rows)

    def _on_signal(self, signum: int, frame_: Any) -> None:
        self._stopping = True

    def _listen(self) -> socket.socket:
        with contextlib.suppress(FileNotFoundError):
            self.socket_path.unlink()  # stale socket of a writer that died
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        old = os.umask(0o177)  # the socket itself is 0600 from birth
        try:
            s.bind(str(self.socket_path))
        finally:
            os.umask(old)
        s.listen(64)
        s.setblocking(False)
        return s

    def _timeout(self) -> float:
        if self._stopping:
            return 0.0 if (self._pending or self._batch) and not self._error else 0.1
        if self._batch or self._pending:
            now = time.monotonic()
            if self._error is not None or self._batch:
                return max(0.0, self._retry_at - now)
            if self._urgent or len(self._pending) >= self.batch_size:
                return 0.0
            return max(0.0, self._pending_since + self.batch_interval - now)
        return 1.0  # idle: still look at the parent now and then

    def _due(self) -> bool:
        if not self._batch and not self._pending:
            return False
        now = time.monotonic()
        if self._batch or self._error is not None:
            return now >= self._retry_at
        return (
            self._urgent
            or self._stopping
            or len(self._pending) >= self.batch_size
            or now >= self._pending_since + self.batch_interval
        )

    # -- connections -----------------------------------------------------------------------
    def _accept(self, listener: socket.socket) -> None:
        while True:
            try:
                sock, _ = listener.accept()
            except BlockingIOError:
                return
            sock.setblocking(False)
            c = _Conn(sock)
            self._sel.register(sock, selectors.EVENT_READ, c)

    def _close(self, c: _Conn) -> None:
        with contextlib.suppress(KeyError, ValueError):
            self._sel.unregister(c.sock)
        c.sock.close()
        if c.sender is not None and self._conns.get(c.sender) is c:
            del self._conns[c.sender]

    def _io(self, c: _Conn, events: int) -> None:
        if events & selectors.EVENT_WRITE:
            self._flush_out(c)
        if not events & selectors.EVENT_READ:
            return
        try:
            data = c.sock.recv(1 << 20)
        except BlockingIOError:
            return
        except OSError:
            data = b""
        if not data:
            self._close(c)
            return
        try:
            for msg in c.frames.feed(data):
                self._handle(c, msg)
        except (WireError, ValueError, TypeError, IndexError) as exc:
            log.error("audit sender dropped: bad frame", extra={"fields": {"error": str(exc)}})
            self._close(c)

    def _send(self, c: _Conn, msg: tuple[Any, ...]) -> None:
        c.out += frame(msg)
        self._flush_out(c)

    def _flush_out(self, c: _Conn) -> None:
        try:
            while c.out:
                n = c.sock.send(c.out)
                del c.out[:n]
        except BlockingIOError:
            pass
        except OSError:
            self._close(c)
            return
        want = selectors.EVENT_READ | (selectors.EVENT_WRITE if c.out else 0)
        with contextlib.suppress(KeyError, ValueError):
            if self._sel.get_key(c.sock).events != want:
                self._sel.modify(c.sock, want, c)

    def _handle(self, c: _Conn, msg: tuple[Any, ...]) -> None:
        kind = msg[0]
        if kind == "recs":
            if c.sender is None:
                raise WireError("records before hello")
            _, first, vals, urgent, *rest = msg
            self._take(c.sender, int(first), vals, set(rest[0]) if rest else ())
            if urgent:
                self._urgent = True
        elif kind == "hello":
            sender = str(msg[1])
            old = self._conns.get(sender)
            if old is not None and old is not c:
                self._close(old)
            c.sender = sender
            self._conns[sender] = c
            self._replay_at = 0.0  # a new sender may be a restarted one: look for leftovers
            # records of this sender still in _pending/_batch are not committed yet: the
            # sender resends them and _take skips them (already accepted)
            self._send(c, ("hello", self._done.get(sender, 0), self._error))
        elif kind == "fault":
            self._fault(str(msg[1]), msg[2])
        else:
            raise WireError(f"unknown message {kind!r}")

    def _take(self, sender: str, first: int, vals: list[Any], clean: Container[int] = ()) -> None:
        have = self._accepted.get(sender, 0)
        if not self._pending:
            self._pending_since = time.monotonic()
        seq = first
        for i, v in enumerate(vals):
            if seq > have:  # anything at or below is a resend of a record we already have
                self._pending.append((sender, seq, v, i in clean))
                have = seq
            seq += 1
        self._accepted[sender] = have

    def _fault(self, kind: str, arg: Any) -> None:
        log.warning("audit writer fault injected", extra={"fields": {"fault": kind}})
        if kind == "error":
            self._fault_error = str(arg)
        elif kind == "hang":
            self._fault_hang = float(arg)
        elif kind == "exit":
            os._exit(70)
        else:
            self._fault_error, self._fault_hang = None, 0.0

    def _broadcast(self, msg: tuple[Any, ...]) -> None:
        for c in list(self._conns.values()):
            self._send(c, msg)

    # -- commit ----------------------------------------------------------------------------
    def _commit(self) -> None:
        if not self._batch:
            n = min(len(self._pending), self.batch_size)
            self._batch = [self._pending.popleft() for _ in range(n)]
            now = time.time()
            self._records = [_record(v, clean, now) for _, _, v, clean in self._batch]
            if self._pending:
                self._pending_since = time.monotonic()
            else:
                self._urgent = False
        try:
            if self._fault_hang:
                h, self._fault_hang = self._fault_hang, 0.0
                time.sleep(h)
            if self._fault_error is not None:
                raise OSError(self._fault_error)
            if self._records:  # not yet in the database
                if self._db is None:
                    self._db = chain.connect(self.db_path, timeout=self.busy_timeout)
                # past each sender's mark only: another process may have replayed the
                # journal of a sender that died while its records waited here
                entries = [
                    (sender, seq, r)
                    for (sender, seq, _, _), r in zip(self._batch, self._records, strict=True)
                ]
                kept, placed = chain.append_past_marks(self._db, entries)
                if self._sink is not None:
                    self._unsunk = [
                        AuditRow(**r.to_dict(), seq=s, prev_hash=p, hash=h)
                        for r, (s, p, h) in zip(kept, placed, strict=True)
                    ]
                self._records = []
            if self._unsunk:
                assert self._sink is not None
                self._sink.write(self._unsunk)
                self._unsunk = []
        except Exception as exc:  # stay unhealthy, keep the batch, retry
            self._failed(exc)
            return
        acks: dict[str, int] = {}
        for sender, seq, _, _ in self._batch:
            acks[sender] = seq
        self._done.update(acks)
        self._batch = []
        self._backoff = 0.0
        if self._error is not None:
            log.warning("audit writer recovered", extra={"fields": {"was": self._error}})
            self._error = None
            self._broadcast(("ok",))
        if self._shipper is not None:
            self._shipper.kick()
        for sender, seq in acks.items():
            c = self._conns.get(sender)
            if c is not None:  # else: it learns from the next hello
                self._send(c, ("ack", seq))

    def _failed(self, exc: Exception) -> None:
        msg = describe(exc)
        if isinstance(exc, sqlite3.Error) and self._db is not None:
            self._db.close()  # reopen next time: the file may have been replaced
            self._db = None
        if msg != self._error:
            self._broadcast(("error", msg))
        self._error = msg
        now = time.monotonic()
        if now - self._last_warn > _LOG_EVERY:
            self._last_warn = now
            log.error(
                "audit write failed; retrying",
                extra={"fields": {"error": msg, "queued": len(self._pending) + len(self._batch)}},
            )
        self._backoff = min(max(self._backoff * 2, 0.02), _MAX_BACKOFF)
        self._retry_at = now + self._backoff


def _record(vals: Any, clean: bool, now: float) -> AuditRecord:
    """The record a sender sent; sanitised here unless the sender did (a written-ahead one)."""
    if type(vals) is tuple and len(vals) == _NFIELDS and vals[0] in EVENTS:
        rec = AuditRecord(*vals)
        return rec if clean and rec.ts else sanitize(rec, now)
    # never from our own senders; recorded rather than dropped so the gap is visible
    odd = AuditRecord(event="allowed", reason="malformed audit record from a sender")
    return sanitize(odd, now)


def _datastores(args: list[str]) -> dict[str, int]:
    out: dict[str, int] = {}
    for arg in args:
        name, _, type_id = arg.rpartition("=")
        out[name] = int(type_id)
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m lockgate.audit.writer")
    p.add_argument("db", type=Path)
    p.add_argument("--socket", type=Path, required=True)
    p.add_argument("--jsonl", type=Path)
    p.add_argument("--ocsf", type=Path)
    p.add_argument(
        "--ocsf-datastore",
        action="append",
        default=[],
        metavar="NAME=TYPE_ID",
        help="a resource whose requests are OCSF Datastore Activity, with its database type",
    )
    p.add_argument("--batch-interval", type=float, default=0.02)
    p.add_argument("--busy-timeout", type=float, default=0.5)
    p.add_argument("--parent-pid", type=int)
    p.add_argument("--log-level", default="info")
    p.add_argument(
        "--shipping-stdin",
        action="store_true",
        help="read where to ship the chain (JSON, with the checkpoint key) from stdin",
    )
    a = p.parse_args(argv)
    _log.setup(a.log_level)
    shipping = AuditShipping.from_json(sys.stdin.read()) if a.shipping_stdin else None
    Writer(
        a.db,
        a.socket,
        a.jsonl,
        batch_interval=a.batch_interval,
        busy_timeout=a.busy_timeout,
        parent_pid=a.parent_pid,
        shipping=shipping,
        ocsf_path=a.ocsf,
        datastores=_datastores(a.ocsf_datastore),
    ).run()
    return 0


if __name__ == "__main__":
    sys.exit(main())
