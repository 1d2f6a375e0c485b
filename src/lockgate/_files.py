"""Reading a small file someone else puts in place (a secret id, a key set, a token) without
letting what sits at that path hold the process: the one way Lockgate reads such files."""

from __future__ import annotations

import os
import stat
from pathlib import Path


class NotRegularFile(ValueError):
    """The path names a FIFO, a device, a directory or a socket, not a regular file."""

    def __init__(self) -> None:
        super().__init__("not a regular file")


class FileTooLarge(ValueError):
    """The file holds more than the reader's limit."""

    def __init__(self, limit: int) -> None:
        super().__init__(f"larger than {limit} bytes")
        self.limit = limit


def read_regular_file(path: Path | str, limit: int) -> bytes:
    """The bytes of ``path``, a regular file of at most ``limit`` bytes.

    Opened non-blocking: a FIFO put in the file's place would otherwise wait for a writer and
    hold the event loop (and every request with it); no controlling terminal is taken on.
    Raises :class:`OSError` when it cannot be opened or read, :class:`NotRegularFile` and
    :class:`FileTooLarge` (both :class:`ValueError`) when what is there is not fit."""
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_NOCTTY", 0))
    with os.fdopen(fd, "rb") as fh:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise NotRegularFile()
        raw = fh.read(limit + 1)  # one byte past the limit tells "too large" from "just fits"
    if len(raw) > limit:
        raise FileTooLarge(limit)
    return raw


__all__ = ["FileTooLarge", "NotRegularFile", "read_regular_file"]
