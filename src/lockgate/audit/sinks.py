"""Secondary audit sinks: a JSON-lines mirror of committed records.

Each committed row becomes one line ``{...record, "seq": n, "prev_hash": ..., "hash": ...}``.
Shipping that file off the box (to a log pipeline or WORM storage) gives anchors that a
person with write access to ``audit.db`` cannot rewrite.

A failed write truncates the file back to where it was, so a retry never leaves half a line,
and raises: the writer treats the sink as failing and the gateway fails closed.
"""

from __future__ import annotations

import contextlib
import json
import os
from pathlib import Path
from typing import IO

from lockgate import _log
from lockgate.audit.record import AuditRow

log = _log.get("audit")


class JsonlSink:
    def __init__(self, path: Path) -> None:
        self.path = path
        self._fh: IO[bytes] | None = None

    def _open(self) -> IO[bytes]:
        if self._fh is None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
            self._fh = os.fdopen(fd, "ab", buffering=0)
        return self._fh

    def write(self, rows: list[AuditRow]) -> None:
        """Append ``rows``; all or nothing. Raises OSError when the file cannot be written."""
        data = b"".join(
            json.dumps(r.to_dict(), separators=(",", ":"), ensure_ascii=False).encode() + b"\n"
            for r in rows
        )
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
                    raise OSError("short write to audit JSON-lines sink")
                view = view[n:]
        except OSError:
            with contextlib.suppress(OSError):  # leave no half line behind for the retry
                os.ftruncate(fh.fileno(), start)
            self.close()
            raise

    def close(self) -> None:
        if self._fh is not None:
            with contextlib.suppress(OSError):
                self._fh.close()
            self._fh = None


def mirror(sink: JsonlSink, rows: list[AuditRow]) -> None:
    """Mirror replayed rows; a failing mirror is reported, never a reason to lose them."""
    try:
        sink.write(rows)
    except OSError as exc:  # an OS error's text names the failure, never a record
        error = f"{type(exc).__name__}: {exc}"[:200]
        log.error(
            "audit mirror missed replayed records",
            extra={"fields": {"records": len(rows), "error": error}},
        )
