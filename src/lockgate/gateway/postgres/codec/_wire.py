"""Wire primitives shared by every PostgreSQL message: errors, C strings, a body cursor.

All integers are network byte order. A "string" on the wire is UTF-8 text ending in one NUL
byte; the engine admits only client encodings whose bytes are UTF-8, so text that is not
valid UTF-8 is a protocol error here rather than something to pass through half-understood.
"""

from __future__ import annotations

import struct

from lockgate.errors import RemoteProtocolError

INT16 = struct.Struct("!h")
UINT16 = struct.Struct("!H")
INT32 = struct.Struct("!i")
UINT32 = struct.Struct("!I")


class ProtocolError(RemoteProtocolError):
    """The peer's bytes break the protocol; ``sqlstate`` is what PostgreSQL would answer."""

    sqlstate: str = "08P01"  # protocol_violation


class MessageTooLarge(ProtocolError):
    """A length header announces more than the cap; raised before the body is buffered.

    PostgreSQL answers an over-long message with 08P01 ("invalid message length") too.
    """


class UnsupportedProtocolVersion(ProtocolError):
    """A StartupMessage asks for a major version other than 3 (PostgreSQL answers 0A000)."""

    sqlstate = "0A000"  # feature_not_supported


def text(raw: bytes) -> str:
    """Decode wire text (UTF-8); anything else is a protocol error."""
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ProtocolError(f"invalid UTF-8 in message: {exc.reason}") from None


def cstr(value: str) -> bytes:
    """Encode one NUL-terminated string; an embedded NUL would split the message, so refuse it."""
    raw = value.encode("utf-8")
    if b"\0" in raw:
        raise ValueError("a protocol string cannot contain a NUL byte")
    return raw + b"\0"


def single_cstr(body: bytes, what: str) -> str:
    """A body that is exactly one string (Query, PasswordMessage, CommandComplete, ...)."""
    if not body or body.find(b"\0") != len(body) - 1:
        raise ProtocolError(f"malformed {what} message")
    return text(body[:-1])


def expect_empty(body: bytes, what: str) -> None:
    if body:
        raise ProtocolError(f"malformed {what} message: unexpected body")


class Cursor:
    """Reads fields off one message body in order; every overrun is a ProtocolError."""

    __slots__ = ("body", "pos", "what")

    def __init__(self, body: bytes, what: str) -> None:
        self.body = body
        self.pos = 0
        self.what = what

    def fail(self, why: str = "truncated") -> ProtocolError:
        return ProtocolError(f"malformed {self.what} message: {why}")

    def cstr(self) -> str:
        end = self.body.find(b"\0", self.pos)
        if end < 0:
            raise self.fail("unterminated string")
        value = text(self.body[self.pos : end])
        self.pos = end + 1
        return value

    def _unpack(self, fmt: struct.Struct) -> int:
        if self.pos + fmt.size > len(self.body):
            raise self.fail()
        (value,) = fmt.unpack_from(self.body, self.pos)
        self.pos += fmt.size
        return int(value)

    def int16(self) -> int:
        return self._unpack(INT16)

    def uint16(self) -> int:
        return self._unpack(UINT16)

    def int32(self) -> int:
        return self._unpack(INT32)

    def uint32(self) -> int:
        return self._unpack(UINT32)

    def byte(self) -> int:
        if self.pos >= len(self.body):
            raise self.fail()
        value = self.body[self.pos]
        self.pos += 1
        return value

    def take(self, count: int) -> bytes:
        if count < 0 or self.pos + count > len(self.body):
            raise self.fail()
        value = self.body[self.pos : self.pos + count]
        self.pos += count
        return value

    def rest(self) -> bytes:
        value = self.body[self.pos :]
        self.pos = len(self.body)
        return value

    def values(self) -> tuple[bytes | None, ...]:
        """An int16 count of (int32 length, bytes) values, length -1 meaning NULL."""
        count = self.uint16()
        body, pos, size = self.body, self.pos, len(self.body)
        unpack = INT32.unpack_from
        out: list[bytes | None] = []
        append = out.append
        for _ in range(count):
            if pos + 4 > size:
                raise self.fail()
            (length,) = unpack(body, pos)
            pos += 4
            if length == -1:
                append(None)
                continue
            if length < 0 or pos + length > size:
                raise self.fail("bad value length")
            append(body[pos : pos + length])
            pos += length
        self.pos = pos
        return tuple(out)

    def int16_list(self) -> tuple[int, ...]:
        count = self.uint16()
        if self.pos + 2 * count > len(self.body):
            raise self.fail()
        values = struct.unpack_from(f"!{count}h", self.body, self.pos)
        self.pos += 2 * count
        return values

    def uint32_list(self, count: int) -> tuple[int, ...]:
        if self.pos + 4 * count > len(self.body):
            raise self.fail()
        values = struct.unpack_from(f"!{count}I", self.body, self.pos)
        self.pos += 4 * count
        return values

    def end(self) -> None:
        if self.pos != len(self.body):
            raise self.fail("trailing bytes")


def encode_values(values: tuple[bytes | None, ...] | list[bytes | None]) -> bytes:
    parts = [UINT16.pack(len(values))]
    for value in values:
        if value is None:
            parts.append(INT32.pack(-1))
        else:
            parts.append(INT32.pack(len(value)))
            parts.append(value)
    return b"".join(parts)


def encode_int16_list(values: tuple[int, ...] | list[int]) -> bytes:
    return UINT16.pack(len(values)) + struct.pack(f"!{len(values)}h", *values)
