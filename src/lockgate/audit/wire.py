"""Framing between gateway processes (senders) and the audit writer process.

A frame is a 4-byte big-endian length and a :mod:`marshal` body (C speed, no pickle
classes). Messages are tuples whose first item names them:

sender → writer
    ``("hello", sender_id)``                     first message on every connection
    ``("recs", first_seq, [values, ...], urgent, [i, ...])`` records, sender seqs first_seq,
                                                 first_seq+1…; the ``i`` are the positions of
                                                 records the sender sanitised already (written
                                                 ahead), which the writer takes as they are
    ``("fault", kind, arg)``                     test hook: ``error``/``hang``/``exit``/``clear``

writer → sender
    ``("hello", committed_seq, error_or_None)``  the sender resends everything after that seq
    ``("ack", seq)``                             cumulative: every seq <= this one is committed
    ``("error", message)`` / ``("ok",)``         write trouble began / ended

``values`` is the tuple of record fields in ``RECORD_FIELDS`` order. marshal must never
read bytes from someone untrusted: the socket lives in a 0700 directory of the gateway's
user, who can write the audit database anyway.
"""

from __future__ import annotations

import marshal
import struct
from typing import Any

HEADER = struct.Struct(">I")
MAX_FRAME = 64 * 1024 * 1024  # a batch of 2,000 records is well under 2 MiB


class WireError(Exception):
    """The peer sent something that is not a frame of this protocol."""


def frame(msg: tuple[Any, ...]) -> bytes:
    """Encode one message; raises ValueError when it holds an unmarshallable value."""
    body = marshal.dumps(msg)
    return HEADER.pack(len(body)) + body


class FrameBuffer:
    """Bytes in, messages out; keeps a partial frame for the next :meth:`feed`."""

    __slots__ = ("_buf",)

    def __init__(self) -> None:
        self._buf = bytearray()

    def feed(self, data: bytes) -> list[tuple[Any, ...]]:
        buf = self._buf
        buf += data
        out: list[tuple[Any, ...]] = []
        pos = 0
        end = len(buf)
        while end - pos >= 4:
            (size,) = HEADER.unpack_from(buf, pos)
            if size > MAX_FRAME:
                raise WireError(f"frame of {size} bytes is over the limit")
            if end - pos - 4 < size:
                break
            try:
                # trusted peer only: see the module docstring
                msg = marshal.loads(bytes(buf[pos + 4 : pos + 4 + size]))  # noqa: S302
            except (EOFError, ValueError, TypeError) as exc:
                raise WireError("undecodable frame") from exc
            if not isinstance(msg, tuple) or not msg or not isinstance(msg[0], str):
                raise WireError("frame is not a message tuple")
            out.append(msg)
            pos += 4 + size
        if pos:
            del buf[:pos]
        return out
