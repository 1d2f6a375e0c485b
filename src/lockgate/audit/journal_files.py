"""The journal files once their writer is gone: found, trusted, locked, read back, chained.

:mod:`lockgate.audit.journal` writes the files (one per process and generation, its first
line naming the fields); this room reads them. :func:`replay` chains the entries past each
dead sender's mark and removes its files; :func:`backlog` counts, read only, what every
sender's journal holds past its mark (``lockgate audit verify``). A file is read only when
this user wrote it and no one else could (see the journal's docstring, "Trust"); a file
its owner still holds (an exclusive ``flock``) belongs to a live process and is left alone.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import sqlite3
import stat
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from lockgate import _log
from lockgate.audit import chain
from lockgate.audit.record import RECORD_FIELDS, AuditRecord, AuditRow, sanitize

log = _log.get("audit")

SUFFIX = ".journal"


def remove_locked(path: Path, fd: int) -> None:
    """Remove a journal file, then close the descriptor that holds its lock."""
    with contextlib.suppress(OSError):
        path.unlink()  # while still locked: nobody replays a file being removed
    os.close(fd)


# -- replay ------------------------------------------------------------------------------------
def replay(
    directory: Path,
    conn: sqlite3.Connection,
    *,
    skip: Callable[[str], bool] = lambda sender: False,
    forget: bool = False,
) -> list[AuditRow]:
    """Chain the unchained entries of every journal no live process holds; remove the files.

    ``skip(sender)`` says to leave a sender's files alone (the caller still holds records of
    it that are not committed). ``forget`` drops a replayed sender's mark: only the writer
    process may, as only it knows that no one else holds records of that sender (a dead
    worker's records may still wait in the writer; they are committed past the mark, so the
    mark must outlive the journal). Returns the rows appended, for the JSON-lines mirror.
    """
    rows: list[AuditRow] = []
    for sender, paths in _by_sender(Path(directory)).items():
        if skip(sender):
            continue
        held = _lock_all(paths)
        if held is None:
            continue  # its owner lives
        try:
            entries = [e for path, fd in held for e in _read(path, fd)]
            placed = chain.append_after_mark(conn, sender, entries)
            rows.extend(placed)
            for path, fd in held:
                remove_locked(path, fd)
            held = []
            if forget:
                chain.forget_sender(conn, sender)
        finally:
            for _, fd in held:
                os.close(fd)
        if placed:
            log.warning(
                "audit journal replayed",
                extra={"fields": {"sender": sender, "records": len(placed)}},
            )
    return rows


@dataclass(frozen=True, slots=True)
class Backlog:
    """Journal entries of one sender that the chain does not hold yet."""

    sender: str
    entries: int
    live: bool  # its process holds the journal and chains them itself; else only a replay will


def backlog(directory: Path, marks: dict[str, int]) -> list[Backlog]:
    """What every journal in ``directory`` holds past its sender's mark (read only).

    A stopped process's entries wait for the next audit log to start on this database (or
    ``lockgate audit verify --replay``); a live one's are on their way into the chain."""
    out: list[Backlog] = []
    for sender, paths in _by_sender(Path(directory)).items():
        held = _lock_all(paths)
        live = held is None
        fds = held or [(p, fd) for p in paths if (fd := _open(p)) >= 0]
        try:
            mark = marks.get(sender, 0)
            count = sum(1 for path, fd in fds for seq, _ in _read(path, fd) if seq > mark)
        finally:
            for _, fd in fds:
                os.close(fd)
        if count:
            out.append(Backlog(sender, count, live))
    return out


def _by_sender(directory: Path) -> dict[str, list[Path]]:
    by_sender: dict[str, list[Path]] = {}
    if directory.is_dir():
        for path in sorted(directory.glob(f"*{SUFFIX}")):
            sender = path.name[: -len(SUFFIX)].rpartition(".")[0]
            if sender and _trusted(path):
                by_sender.setdefault(sender, []).append(path)
    return by_sender


def _trusted(path: Path) -> bool:
    """A journal this user wrote and no one else could have: see the module docstring."""
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return False
    if stat.S_ISREG(st.st_mode) and st.st_uid == os.geteuid() and not st.st_mode & 0o022:
        return True
    log.error("audit journal file not trusted, not replayed", extra={"fields": {"path": str(path)}})
    return False


def _open(path: Path) -> int:
    try:
        return os.open(path, os.O_RDONLY)
    except FileNotFoundError:
        return -1


def _lock_all(paths: list[Path]) -> list[tuple[Path, int]] | None:
    held: list[tuple[Path, int]] = []
    for path in paths:
        try:
            fd = os.open(path, os.O_RDONLY)
        except FileNotFoundError:
            continue  # removed by another replayer meanwhile
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(fd)
            for _, f in held:
                os.close(f)
            return None
        held.append((path, fd))
    return held


def _read(path: Path, fd: int) -> Iterator[tuple[float, AuditRecord]]:
    """(seq, record) per complete line; a torn last line is skipped (never acknowledged)."""
    with os.fdopen(os.dup(fd), "rb") as fh:
        data = fh.read()
    lines = data.split(b"\n")
    if lines and lines[-1]:
        log.warning("audit journal: torn last line skipped", extra={"fields": {"file": path.name}})
    lines = lines[:-1]
    if not lines:
        return
    try:
        header = json.loads(lines[0])
        names = [str(n) for n in header["fields"]]
    except (ValueError, KeyError, TypeError):
        names = list(RECORD_FIELDS)
        lines.insert(0, b"")  # no header: treat every line as an entry
    known = set(RECORD_FIELDS)
    last: float = 0
    for raw in lines[1:]:
        try:
            seq, *vals = json.loads(raw)
            fields = {n: v for n, v in zip(names, vals, strict=True) if n in known}
            rec = AuditRecord(**fields)
            last = int(seq)
        except (ValueError, TypeError):
            # A complete line we cannot read: record the gap right after the previous entry.
            # Half a step past it, so it is chained exactly when its predecessor's successors
            # are (after the mark), and never taken for a record of its own.
            last += 0.5
            rec = AuditRecord(
                event="admitted",
                decision="allow",
                reason="unreadable audit journal entry",
                detail={"journal": path.name},
            )
        yield last, sanitize(rec, 0.0) if rec.ts else sanitize(rec, _mtime(fd))


def _mtime(fd: int) -> float:
    return os.fstat(fd).st_mtime
