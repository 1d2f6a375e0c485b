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
never glued to a whole one (the rows it held are in the chain; the export's check names the
gap).
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import IO, Any, Protocol

from lockgate import _log
from lockgate.audit import ocsf
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

    def __init__(self, path: Path, encode: Callable[[AuditRow], dict[str, Any]]) -> None:
        self.path = path
        self._encode = encode
        self._fh: IO[bytes] | None = None

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
        encode = _ENCODER.encode
        data = b"".join(encode(self._encode(r)).encode() + b"\n" for r in rows)
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


class JsonlSink(LineSink):
    """``audit.jsonl``: each row as its own dict (record fields, seq, prev_hash, hash)."""

    def __init__(self, path: Path) -> None:
        super().__init__(path, AuditRow.to_dict)


class OcsfSink(LineSink):
    """``audit.ocsf``: each row as one OCSF event; ``datastores`` names the resources whose
    requests are Datastore Activity (:func:`lockgate.audit.ocsf.datastores`)."""

    def __init__(self, path: Path, datastores: Mapping[str, int] | None = None) -> None:
        names = dict(datastores or {})
        super().__init__(path, lambda row: ocsf.event(row, names))


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
        error = f"{type(exc).__name__}: {exc}"[:200]
        log.error(
            "audit mirror missed replayed records",
            extra={"fields": {"records": len(rows), "error": error}},
        )
