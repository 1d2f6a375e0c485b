"""Typed messages after the startup phase: the framing, the reader, the type bytes.

Every message is one type byte, an int32 length that counts itself and the body but not the
type byte, then the body. :class:`MessageReader` splits a byte stream into
:class:`Message` values; the decoders in :mod:`.frontend` and :mod:`.backend` read bodies.
Several type bytes mean different things per direction ('C' is Close from a client and
CommandComplete from a server), so the constants are named per direction.
"""

from __future__ import annotations

import struct
from typing import NamedTuple

from ._wire import MessageTooLarge, ProtocolError

_HEADER = struct.Struct("!Bi")
HEADER_SIZE = _HEADER.size  # type byte + int32 length
_unpack_header = _HEADER.unpack_from

# frontend (client -> server)
QUERY = ord("Q")
PARSE = ord("P")
BIND = ord("B")
EXECUTE = ord("E")
DESCRIBE = ord("D")
CLOSE = ord("C")
SYNC = ord("S")
FLUSH = ord("H")
TERMINATE = ord("X")
PASSWORD = ord("p")  # also SASLInitialResponse, SASLResponse, GSSResponse
COPY_DATA = ord("d")  # both directions
COPY_DONE = ord("c")  # both directions
COPY_FAIL = ord("f")
FUNCTION_CALL = ord("F")

# backend (server -> client)
AUTHENTICATION = ord("R")
PARAMETER_STATUS = ord("S")
BACKEND_KEY_DATA = ord("K")
READY_FOR_QUERY = ord("Z")
ERROR_RESPONSE = ord("E")
NOTICE_RESPONSE = ord("N")
COMMAND_COMPLETE = ord("C")
EMPTY_QUERY = ord("I")
ROW_DESCRIPTION = ord("T")
DATA_ROW = ord("D")
PARSE_COMPLETE = ord("1")
BIND_COMPLETE = ord("2")
CLOSE_COMPLETE = ord("3")
NO_DATA = ord("n")
PORTAL_SUSPENDED = ord("s")
PARAMETER_DESCRIPTION = ord("t")
NOTIFICATION = ord("A")
COPY_IN_RESPONSE = ord("G")
COPY_OUT_RESPONSE = ord("H")
COPY_BOTH_RESPONSE = ord("W")
NEGOTIATE_PROTOCOL_VERSION = ord("v")
FUNCTION_CALL_RESPONSE = ord("V")

FRONTEND_TYPES = frozenset(
    {QUERY, PARSE, BIND, EXECUTE, DESCRIBE, CLOSE, SYNC, FLUSH, TERMINATE, PASSWORD}
    | {COPY_DATA, COPY_DONE, COPY_FAIL, FUNCTION_CALL}
)
BACKEND_TYPES = frozenset(
    {AUTHENTICATION, PARAMETER_STATUS, BACKEND_KEY_DATA, READY_FOR_QUERY, ERROR_RESPONSE}
    | {NOTICE_RESPONSE, COMMAND_COMPLETE, EMPTY_QUERY, ROW_DESCRIPTION, DATA_ROW}
    | {PARSE_COMPLETE, BIND_COMPLETE, CLOSE_COMPLETE, NO_DATA, PORTAL_SUSPENDED}
    | {PARAMETER_DESCRIPTION, NOTIFICATION, COPY_IN_RESPONSE, COPY_OUT_RESPONSE}
    | {COPY_BOTH_RESPONSE, NEGOTIATE_PROTOCOL_VERSION, FUNCTION_CALL_RESPONSE}
    | {COPY_DATA, COPY_DONE}
)


class Message(NamedTuple):
    """One typed message: ``type`` is the type byte as an int (``ord('Q')``)."""

    type: int
    body: bytes

    def encode(self) -> bytes:
        return encode(self.type, self.body)

    def __repr__(self) -> str:
        # Bodies carry tokens (PasswordMessage), bound values and statement text: a message
        # that ends up in a log line or an exception shows its kind and size only.
        return f"Message({chr(self.type)!r}, {len(self.body)} bytes)"


def encode(type_: int, body: bytes) -> bytes:
    """Frame a body: type byte, int32 length (itself + body), body."""
    return _HEADER.pack(type_, len(body) + 4) + body


#: Where one message lies in a block (:meth:`MessageReader.frames`): its type byte, the
#: offset of that byte and the offset just past the message (the body starts 5 bytes in).
Frame = tuple[int, int, int]

# Building the tuple directly skips NamedTuple.__new__'s argument handling (hot path).
_new_message = tuple.__new__


class MessageReader:
    """Splits a byte stream into messages; checks each length header against the cap.

    ``max_message_bytes`` bounds the length field (4 + body): a larger header raises
    :class:`MessageTooLarge` as soon as its 5 bytes are in, so at most one partial message
    (never more than the cap + the type byte) waits in the buffer once drained. After a
    ProtocolError the reader stays failed: the stream can no longer be framed.
    """

    __slots__ = ("_buf", "_failed", "_max", "_pos")

    def __init__(self, max_message_bytes: int) -> None:
        if max_message_bytes < 4:
            raise ValueError("max_message_bytes must be at least 4")
        self._buf = bytearray()
        self._pos = 0
        self._max = max_message_bytes
        self._failed: ProtocolError | None = None

    def feed(self, data: bytes) -> None:
        if self._pos and self._pos >= len(self._buf) // 2:
            # Drop consumed bytes only when they are the larger part: amortised O(1) per byte.
            del self._buf[: self._pos]
            self._pos = 0
        self._buf += data

    def next_message(self) -> Message | None:
        """The next whole message, or None when more bytes are needed."""
        buf, pos = self._buf, self._pos
        if len(buf) - pos < HEADER_SIZE or self._failed is not None:
            if self._failed is not None:
                raise self._failed
            return None
        type_, length = _unpack_header(buf, pos)
        if length < 4 or length > self._max:
            raise self._fail(length)
        end = pos + 1 + length
        if end > len(buf):
            return None
        self._pos = end
        return _new_message(Message, (type_, bytes(buf[pos + HEADER_SIZE : end])))

    def messages(self) -> list[Message]:
        """Every whole message buffered now; the error of a bad header is raised once the
        messages before it have been taken."""
        block, frames = self.frames()
        return [_new_message(Message, (t, block[s + HEADER_SIZE : e])) for t, s, e in frames]

    def frames(self) -> tuple[bytes, list[Frame]]:
        """Every whole message buffered now as one block of bytes, and where each lies in it
        (the relay's fast path: a run of messages it passes on unchanged is one slice of the
        block, and nothing is framed again). The error of a bad header is raised once the
        messages before it have been taken."""
        frames: list[Frame] = []
        buf, pos, cap = self._buf, self._pos, self._max
        first, size = pos, len(buf)
        while self._failed is None and size - pos >= HEADER_SIZE:
            type_, length = _unpack_header(buf, pos)
            end = pos + 1 + length
            if length < 4 or length > cap:
                if frames:
                    break  # hand these over first; the next call raises
                self._pos = pos
                raise self._fail(length)
            if end > size:
                break
            frames.append((type_, pos - first, end - first))
            pos = end
        if not frames:
            if self._failed is not None:
                raise self._failed
            return b"", frames
        if first == 0 and pos == size:
            block = bytes(buf)
            buf.clear()
            self._pos = 0
        else:
            block = bytes(buf[first:pos])
            self._pos = pos
        return block, frames

    def _fail(self, length: int) -> ProtocolError:
        if length < 4:
            self._failed = ProtocolError(f"invalid message length {length}")
        else:
            self._failed = MessageTooLarge(
                f"message of {length} bytes exceeds the limit of {self._max} bytes"
            )
        return self._failed

    def buffered(self) -> int:
        """Bytes fed but not yet returned as messages."""
        return len(self._buf) - self._pos

    def rest(self) -> bytes:
        """The unread bytes (e.g. to hand the stream to another reader); empties the buffer."""
        data = bytes(self._buf[self._pos :])
        self._buf = bytearray()
        self._pos = 0
        return data
