"""Secondary audit sinks: mirrors of committed records, one JSON line each.

- ``audit.jsonl``: each committed row as ``{...record, "seq": n, "prev_hash": ..., "hash": ...}``.
  Shipping that file off the box (to a log pipeline or WORM storage) gives anchors that a
  person with write access to ``audit.db`` cannot rewrite.
- ``audit.ocsf``: each committed row as one OCSF event (:mod:`lockgate.audit.ocsf`), for a
  SIEM; the row itself rides along in ``unmapped.lockgate``.

Both are written as one (:class:`Mirrors`): all or nothing. A failed write truncates every
file back to where it was, so a retry never leaves half a line nor a line twice, and raises:
the writer treats the sink as failing and the gateway fails closed (docs/audit.md says why
the OCSF export fails closed too). A process killed in the middle of a write cannot cut its
file back: the next one to open the file does, before its first line, so a half line is
never glued to a whole one. Rows the chain committed but a killed writer never mirrored
are written by :func:`catch_up` when the next writer opens the chain: each file gets the
rows past its own last line, so the mirrors have no gap.
"""

from __future__ import annotations

import contextlib
import json
import os
import sqlite3
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import IO, Any, Protocol

from lockgate import _log
from lockgate.audit import chain, ocsf
from lockgate.audit.record import AuditRow

log = _log.get("audit")
# built once: json.dumps with options builds an encoder per call (half the cost of a line)
_ENCODER = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False)


class Mirror(Protocol):
    """What the writers hold: append committed rows (all or nothing, OSError), close."""

    def write(self, rows: list[AuditRow]) -> None: ...

    def close(self) -> None: ...


class LineSink:
    """An append-only file of one JSON object per committed row (``encode(row)``)."""

    def __init__(
        self,
        path: Path,
        encode: Callable[[AuditRow], dict[str, Any]],
        seq_of: Callable[[dict[str, Any]], int],
    ) -> None:
        self.path = path
        self._encode = encode
        self._seq_of = seq_of  # the row's seq, read back from one line's object
        self._fh: IO[bytes] | None = None

    def last_seq(self) -> int | None:
        """The seq of the file's last whole line; None when it has none (or it is not ours)."""
        fd = self._open().fileno()  # opening cuts a partial last line
        end = os.fstat(fd).st_size
        if not end:
            return None
        start, pos = 0, end - 1  # the last line begins after the newline before its own
        while pos > 0:
            low = max(0, pos - 65536)
            newline = os.pread(fd, pos - low, low).rfind(b"\n")
            if newline >= 0:
                start = low + newline + 1
                break
            pos = low
        try:
            return int(self._seq_of(json.loads(os.pread(fd, end - start, start))))
        except (ValueError, TypeError, KeyError):
            return None

    def _open(self) -> IO[bytes]:
        if self._fh is None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_APPEND, 0o600)
            try:
                _cut_partial_line(fd, self.path)
            except OSError:
                os.close(fd)
                raise
            self._fh = os.fdopen(fd, "ab", buffering=0)
        return self._fh

    def write(self, rows: list[AuditRow]) -> None:
        """Append ``rows``; all or nothing. Raises OSError when the file cannot be written."""
        self.append(rows)

    def append(self, rows: list[AuditRow]) -> int:
        """Append ``rows`` (all or nothing); return the file's size before, for
        :meth:`undo`. Raises OSError when the file cannot be written."""
        data = b"".join(encode_line(self._encode(r)).encode() + b"\n" for r in rows)
        try:
            fh = self._open()
            start = os.fstat(fh.fileno()).st_size
        except OSError:
            self.close()
            raise
        try:
            view = memoryview(data)
            while view:
                n = fh.write(view)
                if not n:
                    raise OSError("short write to audit mirror")
                view = view[n:]
        except OSError:
            self.undo(start)
            raise
        return start

    def undo(self, start: int) -> None:
        """Cut the file back to ``start`` (what :meth:`append` returned): no half line, no
        line a retry would write again."""
        if self._fh is not None:
            with contextlib.suppress(OSError):
                os.ftruncate(self._fh.fileno(), start)
        self.close()

    def close(self) -> None:
        if self._fh is not None:
            with contextlib.suppress(OSError):
                self._fh.close()
            self._fh = None


def _cut_partial_line(fd: int, path: Path) -> None:
    """Cut the file back to its last newline when it ends in part of a line (a writer killed
    mid-write): appending after it would glue the next line to the fragment."""
    size = end = os.fstat(fd).st_size
    if not size or os.pread(fd, 1, size - 1) == b"\n":
        return
    while end > 0:
        start = max(0, end - 65536)
        chunk = os.pread(fd, end - start, start)
        newline = chunk.rfind(b"\n")
        if newline >= 0:
            end = start + newline + 1
            break
        end = start
    os.ftruncate(fd, end)
    log.warning(
        "audit mirror ended in part of a line (a write was cut off): cut to its last whole line",
        extra={"fields": {"path": str(path), "bytes_cut": size - end}},
    )


# Characters JSON leaves raw (ensure_ascii=False) that many readers take as a line break
# (Python's str.splitlines, JavaScript, some log shippers): escaped, an event stays one line
# for every reader, and parses to the same text.
_LINE_BREAKS = {0x85: "\\u0085", 0x2028: "\\u2028", 0x2029: "\\u2029"}


def _one_line(text: str) -> str:
    if text.isascii():  # the usual line: nothing to look for
        return text
    return text.translate(_LINE_BREAKS)


def encode_line(obj: dict[str, Any]) -> str:
    """``obj`` as one line of the mirrors (and of ``lockgate audit export``), no newline."""
    return _one_line(_ENCODER.encode(obj))


class JsonlSink(LineSink):
    """``audit.jsonl``: each row as its own dict (record fields, seq, prev_hash, hash)."""

    def __init__(self, path: Path) -> None:
        super().__init__(path, AuditRow.to_dict, lambda line: line["seq"])


class OcsfSink(LineSink):
    """``audit.ocsf``: each row as one OCSF event; ``datastores`` names the resources whose
    requests are Datastore Activity (:func:`lockgate.audit.ocsf.datastores`)."""

    def __init__(self, path: Path, datastores: Mapping[str, int] | None = None) -> None:
        names = dict(datastores or {})
        super().__init__(
            path, lambda row: ocsf.event(row, names), lambda ev: ev["metadata"]["sequence"]
        )


class Mirrors:
    """Several sinks written as one: a row is in every file or in none."""

    def __init__(self, sinks: list[LineSink]) -> None:
        self.sinks = sinks

    def write(self, rows: list[AuditRow]) -> None:
        done: list[tuple[LineSink, int]] = []
        try:
            for sink in self.sinks:
                done.append((sink, sink.append(rows)))
        except OSError:
            for sink, start in done:  # the retry writes them again: leave them nowhere
                sink.undo(start)
            raise

    def close(self) -> None:
        for sink in self.sinks:
            sink.close()


def open_mirrors(
    jsonl: Path | None,
    ocsf_path: Path | None = None,
    datastores: Mapping[str, int] | None = None,
) -> Mirror | None:
    """The mirrors the ``audit`` section asks for (``jsonl``, ``ocsf``), or None."""
    sinks: list[LineSink] = []
    if jsonl:
        sinks.append(JsonlSink(Path(jsonl)))
    if ocsf_path:
        sinks.append(OcsfSink(Path(ocsf_path), datastores))
    if not sinks:
        return None
    return sinks[0] if len(sinks) == 1 else Mirrors(sinks)


def mirror(sink: Mirror, rows: list[AuditRow]) -> None:
    """Mirror replayed rows; a failing mirror is reported, never a reason to lose them."""
    try:
        sink.write(rows)
    except OSError as exc:  # an OS error's text names the failure, never a record
        error = _error_text(exc)
        log.error(
            "audit mirror missed replayed records",
            extra={"fields": {"records": len(rows), "error": error}},
        )


def _error_text(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}"[:200]  # an OS error's text names no record


def catch_up(sink: Mirror, conn: sqlite3.Connection, start: int) -> int:
    """Mirror what each file lacks of the chain in ``conn``: the rows past its last line (a
    file still empty starts at ``start``, the chain's head: ``lockgate audit export`` gives
    the past). Call it when the chain is opened, before the journal replay (whose rows are
    mirrored as before). Best effort, as for replayed rows: a failure is logged, and the
    chain holds the rows. The number of rows written, all files counted."""
    sinks = sink.sinks if isinstance(sink, Mirrors) else [sink]
    written = 0
    for one in sinks:
        if not isinstance(one, LineSink):
            continue
        try:
            after = one.last_seq()
            after = start if after is None else after
            while rows := chain.stored_after(conn, after, 1000):
                one.append([chain.row_from_columns(r) for r in rows])
                written += len(rows)
                after = rows[-1][0]
        except (OSError, sqlite3.Error) as exc:
            log.error(
                "audit mirror not caught up with the chain",
                extra={
                    "fields": {"path": str(one.path), "error": f"{type(exc).__name__}: {exc}"[:200]}
                },
            )
    if written:
        log.warning("audit mirror caught up with the chain", extra={"fields": {"records": written}})
    return written
