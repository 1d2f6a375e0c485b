"""The write-ahead journal: an allowed request's record is on disk before it goes upstream.

Why: records reach the SQLite chain through a queue (a writer thread or process commits
them in batches). A gateway killed between "forward" and "commit" would have served requests
that the trail never shows. So the engines hand the record of an allowed request to
:meth:`Journal.append` first: it is serialised as one JSON line and written with **one**
``os.write`` on an ``O_APPEND`` descriptor. Once that call returns the line is in the page
cache, which outlives the process (``kill -9``, an OOM kill, a crash); only then is the
request forwarded. With ``fsync=True`` each line is also flushed to the device (group
commit: one ``fdatasync`` covers every line written while the previous one ran), which
outlives a machine crash too, at the cost reported by ``benchmarks/http_proxy.py``.

Layout: one directory per audit database (:func:`journal_dir`), one file per writing
process and generation, ``<sender>.<generation>.journal``. The first line names the fields
(so a replay after an upgrade still maps values to names), every other line is
``[sender_seq, value, ...]`` in the chain's canonical JSON (:func:`canonical_json`: UTF-8,
sorted keys; a JSON string never holds a raw newline), so the writer hashes the very text
it journaled: the chain's hashed text is this line with the chain's seq in front. Older
journals (ASCII, unsorted keys) replay the same way. The owner holds an exclusive ``flock``
on each of its files for as long as it lives; a file nobody holds belongs to a process that
is gone.

Marks: every record carries its sender's sequence number, and the chain stores the highest
one committed per sender (``audit_senders``) in the same transaction as the rows. So
:func:`replay` (at start-up of any audit log and, with a writer process, whenever a sender
connects) appends exactly the entries past the mark of each dead sender, then removes its
files: a crash loses nothing that went upstream, and nothing is chained twice. Reading the
files back (replay, backlog) is :mod:`lockgate.audit.journal_files`.

Trust: a replayed line becomes a chained ``admitted`` record, so only files that this
process's user wrote and no one else could are replayed: regular files (no symlink), owned
by the effective uid, not writable by group or others. Any other file is left in place and
logged as an error. The directory is made 0700 whenever a journal opens in it (a directory
that existed with looser modes is tightened). Whoever runs as the gateway's user (or root)
can still write a journal line; see docs/audit.md for what the chain proves against whom.

A torn last line (the process died inside ``write``, or the disk filled up) was never
acknowledged, so its request was never forwarded: it is skipped. An unreadable complete line
is chained as a marker record, so the gap is visible instead of silent.

Lag: every live journal remembers when each line was appended until :meth:`Journal.committed`
covers it; ``lockgate_audit_journal_lag_records`` and ``..._seconds`` read that at scrape
time (how far the chain is behind what went upstream).
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import json
import os
import threading
import time
import weakref
from collections import deque
from pathlib import Path

from lockgate import _log, metrics
from lockgate.audit.journal_files import SUFFIX, remove_locked
from lockgate.audit.journal_files import Backlog as Backlog  # re-exported for the readers
from lockgate.audit.journal_files import backlog as backlog
from lockgate.audit.journal_files import replay as replay
from lockgate.audit.record import RECORD_FIELDS, Values, canonical_json
from lockgate.errors import AuditUnavailable

log = _log.get("audit")

#: Start a new generation file past this size; the old one is removed once chained.
ROTATE_BYTES = 64 << 20
_ENCODER = json.JSONEncoder(separators=(",", ":"))  # the header line


def journal_dir(db_path: Path) -> Path:
    """Where the journals of the audit database ``db_path`` live."""
    return Path(db_path).parent / "audit-journal"


class Journal:
    """This process's append-only journal (see the module docstring).

    :meth:`append` is called on the data path (any thread); :meth:`committed` by whoever
    learns that the chain holds records up to a sequence number (writer thread, sender
    thread), which removes rotated files that are fully chained.
    """

    def __init__(
        self,
        directory: Path,
        sender: str,
        *,
        fsync: bool = False,
        rotate_bytes: int = ROTATE_BYTES,
    ) -> None:
        self.directory = Path(directory)
        self.sender = sender
        self.fsync = fsync
        self.rotate_bytes = rotate_bytes
        self.directory.mkdir(parents=True, exist_ok=True, mode=0o700)
        with contextlib.suppress(OSError):  # mkdir leaves an existing directory's modes alone
            os.chmod(self.directory, 0o700)
        self._generation = 0
        self._fd = -1
        self._path: Path | None = None
        self._size = 0
        self._last_seq = 0  # highest seq in the current file
        self._retired: list[tuple[Path, int, int]] = []  # (path, fd, last seq), oldest first
        self._lock = threading.Lock()
        # (seq, monotonic time) of each line appended and not yet committed, oldest first
        self._uncommitted: deque[tuple[int, float]] = deque()
        self._open_next()
        self._sync = _Flusher(self) if fsync else None
        _LIVE.add(self)

    @property
    def path(self) -> Path | None:
        return self._path

    def append(self, seq: int, vals: Values) -> str:
        """Write one record (sanitised values in RECORD_FIELDS order) with one ``write``;
        return the line's text (without its newline) for the writer to reuse.

        Raises AuditUnavailable when the line is not wholly written: the caller must not
        forward the request. With ``fsync``, await :meth:`durable` before forwarding too.
        """
        try:
            text = canonical_json([seq, *vals])
            line = text.encode() + b"\n"
        except (TypeError, ValueError) as exc:  # sanitised values always encode: fail closed
            raise AuditUnavailable(f"audit record not serialisable: {exc}") from None
        with self._lock:
            if self._fd < 0 or self._size >= self.rotate_bytes:
                self._rotate()
            fd = self._fd
            try:
                n = os.write(fd, line)
            except OSError as exc:
                self._broken()
                raise AuditUnavailable(f"audit journal not writable: {exc}") from None
            if n != len(line):  # disk full mid-line: that torn line is skipped on replay
                self._broken()
                raise AuditUnavailable("audit journal not writable: short write")
            self._size += n
            self._last_seq = seq
            self._uncommitted.append((seq, time.monotonic()))
        if self._sync is not None:
            self._sync.wrote()
        return text

    def durable(self) -> asyncio.Future[None] | None:
        """With ``fsync``: a future done once every line appended so far is on the device
        (AuditUnavailable if the device refuses); None when that is already so."""
        return self._sync.future() if self._sync is not None else None

    def sync(self, timeout: float = 5.0) -> None:
        """Blocking :meth:`durable`, for callers outside an event loop."""
        if self._sync is not None:
            self._sync.wait(timeout)

    def fdatasync(self) -> None:
        with self._lock:  # a descriptor of its own: appends go on while the device flushes
            if self._fd < 0:
                raise OSError("audit journal file is closed")
            fd = os.dup(self._fd)
        try:
            os.fdatasync(fd)
        finally:
            os.close(fd)

    def committed(self, seq: int) -> None:
        """The chain holds this sender's records up to ``seq``: drop fully chained files."""
        waiting = self._uncommitted
        while waiting and waiting[0][0] <= seq:  # only this (committing) thread pops
            waiting.popleft()
        if not self._retired or self._retired[0][2] > seq:
            return
        with self._lock:
            while self._retired and self._retired[0][2] <= seq:
                path, fd, _ = self._retired.pop(0)
                remove_locked(path, fd)

    def close(self, *, chained_up_to: int | None) -> None:
        """Close every file; remove those wholly chained (``chained_up_to`` ≥ their last seq).

        Files left behind are replayed by the next audit log that starts on this database.
        """
        if self._sync is not None:
            self._sync.stop()
        _LIVE.discard(self)
        with self._lock:
            self._uncommitted.clear()
            files = [*self._retired]
            if self._fd >= 0 and self._path is not None:
                files.append((self._path, self._fd, self._last_seq))
            self._retired, self._fd, self._path = [], -1, None
            for path, fd, last in files:
                if chained_up_to is not None and last <= chained_up_to:
                    remove_locked(path, fd)
                else:
                    os.close(fd)

    # -- internals (lock held) -------------------------------------------------------------
    def _open_next(self) -> None:
        self._generation += 1
        path = self.directory / f"{self.sender}.{self._generation:06d}{SUFFIX}"
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_APPEND, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            header = _ENCODER.encode({"lockgate_journal": 1, "fields": RECORD_FIELDS})
            data = header.encode("ascii") + b"\n"
            if os.write(fd, data) != len(data):
                raise OSError("short write of the journal header")
        except BaseException:
            os.close(fd)
            with contextlib.suppress(OSError):
                path.unlink()
            raise
        self._fd, self._path, self._size = fd, path, len(data)

    def _rotate(self) -> None:
        try:
            if self._fd >= 0 and self._path is not None:
                if self._sync is not None:  # waiters sync the new file only
                    os.fdatasync(self._fd)
                self._retired.append((self._path, self._fd, self._last_seq))
                self._fd, self._path = -1, None
            self._open_next()
        except OSError as exc:
            raise AuditUnavailable(f"audit journal not writable: {exc}") from None

    def _broken(self) -> None:
        """Never append after a torn line: the next record starts a new file."""
        if self._fd >= 0 and self._path is not None:
            self._retired.append((self._path, self._fd, self._last_seq))
        self._fd, self._path = -1, None

    def lag(self) -> tuple[int, float]:
        """(lines appended and not yet committed, seconds the oldest of them has waited)."""
        waiting = self._uncommitted
        try:
            oldest = waiting[0][1]
        except IndexError:  # none, or the last one committed meanwhile
            return 0, 0.0
        return len(waiting), max(0.0, time.monotonic() - oldest)


_LIVE: weakref.WeakSet[Journal] = weakref.WeakSet()


def _lag_records() -> float:
    return float(sum(j.lag()[0] for j in list(_LIVE)))


def _lag_seconds() -> float:
    return max((j.lag()[1] for j in list(_LIVE)), default=0.0)


metrics.AUDIT_JOURNAL_LAG_RECORDS.set_function(_lag_records)
metrics.AUDIT_JOURNAL_LAG_SECONDS.set_function(_lag_seconds)


class _Flusher:
    """Group commit: one thread runs ``fdatasync`` while lines are written; everyone who
    wrote before a sync began is released when it ends, so under load one device flush
    serves many requests. Waiting is asynchronous (an event-loop future) or blocking."""

    def __init__(self, journal: Journal) -> None:
        self._journal = journal
        self._cond = threading.Condition()
        self._written = 0  # lines appended (counter)
        self._synced = 0  # lines known to be on the device
        self._error: str | None = None
        self._waiters: list[tuple[int, asyncio.AbstractEventLoop, asyncio.Future[None]]] = []
        self._stop = False
        self._thread = threading.Thread(target=self._run, name="lockgate-journal-sync", daemon=True)
        self._thread.start()

    def wrote(self) -> None:
        with self._cond:
            self._written += 1
            self._cond.notify_all()

    def future(self) -> asyncio.Future[None] | None:
        """None when every line written so far is synced, else a future for that moment."""
        if self._synced >= self._written and self._error is None:
            return None
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[None] = loop.create_future()
        with self._cond:
            if self._error is not None:
                fut.set_exception(AuditUnavailable(f"audit journal not synced: {self._error}"))
            elif self._synced >= self._written:
                fut.set_result(None)
            else:
                self._waiters.append((self._written, loop, fut))
        return fut

    def wait(self, timeout: float = 5.0) -> None:
        with self._cond:
            target = self._written
            if not self._cond.wait_for(
                lambda: self._synced >= target or self._error is not None, timeout
            ):
                raise AuditUnavailable("audit journal not synced in time")
            if self._error is not None:
                raise AuditUnavailable(f"audit journal not synced: {self._error}")

    def stop(self) -> None:
        with self._cond:
            self._stop = True
            self._cond.notify_all()
        self._thread.join(5)

    def _run(self) -> None:
        while True:
            with self._cond:
                self._cond.wait_for(lambda: self._written > self._synced or self._stop)
                if self._stop and self._written <= self._synced:
                    return
                target = self._written
            try:
                self._journal.fdatasync()
                error = None
            except OSError as exc:
                error = str(exc) or type(exc).__name__
            with self._cond:
                self._error = error
                if error is None:
                    self._synced = target
                done = [w for w in self._waiters if error is not None or w[0] <= target]
                self._waiters = [w for w in self._waiters if w not in done]
                self._cond.notify_all()
            for _, loop, fut in done:
                with contextlib.suppress(RuntimeError):  # the loop is gone: nobody waits
                    loop.call_soon_threadsafe(_settle, fut, error)
            if error is not None:
                time.sleep(0.05)  # a failing device: retry, without spinning


def _settle(fut: asyncio.Future[None], error: str | None) -> None:
    if fut.done():
        return
    if error is None:
        fut.set_result(None)
    else:
        fut.set_exception(AuditUnavailable(f"audit journal not synced: {error}"))
