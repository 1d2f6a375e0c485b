"""CQL primitive types: a bounds-checked reader over one frame body and append-only writers.

Rules: every read checks the remaining length first and raises :class:`Malformed` (never
IndexError, struct.error or UnicodeDecodeError); every element count is checked against the
bytes left (``count(n, min_size)``) before a loop runs, so a forged count can neither
allocate nor spin. Writers append to a ``list[bytes]`` and never concatenate mid-way.
Big-endian throughout, as the spec says.
"""

from __future__ import annotations

import struct
from typing import Final

_H = struct.Struct(">H")
_h = struct.Struct(">h")
_I = struct.Struct(">i")
_Q = struct.Struct(">q")


class Malformed(Exception):
    """Internal: the body does not follow the grammar. Converted at the codec boundary."""


class UnsetType:
    """The ``[value]`` -2 marker: "leave this bound variable unset" (protocol v4+)."""

    _instance: UnsetType | None = None

    def __new__(cls) -> UnsetType:
        if cls._instance is None:
            cls._instance = super().__new__(cls)
        return cls._instance

    def __repr__(self) -> str:
        return "UNSET"


UNSET: Final = UnsetType()

Value = bytes | None | UnsetType


class Reader:
    """Sequential reader over ``data[pos:end]``."""

    __slots__ = ("data", "end", "pos")

    def __init__(self, data: bytes, pos: int = 0, end: int | None = None) -> None:
        self.data = data
        self.pos = pos
        self.end = len(data) if end is None else end

    @property
    def remaining(self) -> int:
        return self.end - self.pos

    def take(self, n: int) -> bytes:
        if n < 0 or n > self.end - self.pos:
            raise Malformed("truncated body")
        start = self.pos
        self.pos = start + n
        return self.data[start : self.pos]

    def u8(self) -> int:
        if self.pos >= self.end:
            raise Malformed("truncated body")
        b = self.data[self.pos]
        self.pos += 1
        return b

    def u16(self) -> int:
        if self.end - self.pos < 2:
            raise Malformed("truncated body")
        v: int = _H.unpack_from(self.data, self.pos)[0]
        self.pos += 2
        return v

    def i16(self) -> int:
        if self.end - self.pos < 2:
            raise Malformed("truncated body")
        v: int = _h.unpack_from(self.data, self.pos)[0]
        self.pos += 2
        return v

    def i32(self) -> int:
        if self.end - self.pos < 4:
            raise Malformed("truncated body")
        v: int = _I.unpack_from(self.data, self.pos)[0]
        self.pos += 4
        return v

    def i64(self) -> int:
        if self.end - self.pos < 8:
            raise Malformed("truncated body")
        v: int = _Q.unpack_from(self.data, self.pos)[0]
        self.pos += 8
        return v

    def count(self, n: int, min_size: int) -> int:
        """Validate an element count: each element needs at least ``min_size`` bytes."""
        if n < 0 or n * max(min_size, 1) > self.end - self.pos:
            raise Malformed("element count larger than the body")
        return n

    def _utf8(self, raw: bytes) -> str:
        try:
            return raw.decode("utf-8")
        except UnicodeDecodeError:
            raise Malformed("invalid UTF-8 in string") from None

    def string(self) -> str:
        return self._utf8(self.take(self.u16()))

    def long_string(self) -> str:
        n = self.i32()
        if n < 0:
            raise Malformed("negative long string length")
        return self._utf8(self.take(n))

    def bytes_(self) -> bytes | None:
        n = self.i32()
        if n < 0:
            if n != -1:
                raise Malformed("bad [bytes] length")
            return None
        return self.take(n)

    def short_bytes(self) -> bytes:
        return self.take(self.u16())

    def value(self) -> Value:
        n = self.i32()
        if n == -1:
            return None
        if n == -2:
            return UNSET
        if n < 0:
            raise Malformed("bad [value] length")
        return self.take(n)

    def string_list(self) -> list[str]:
        n = self.count(self.u16(), 2)
        return [self.string() for _ in range(n)]

    def string_map(self) -> dict[str, str]:
        n = self.count(self.u16(), 4)
        out: dict[str, str] = {}
        for _ in range(n):
            k = self.string()
            if k in out:
                raise Malformed("duplicate key in string map")
            out[k] = self.string()
        return out

    def string_multimap(self) -> dict[str, list[str]]:
        n = self.count(self.u16(), 4)
        out: dict[str, list[str]] = {}
        for _ in range(n):
            k = self.string()
            if k in out:
                raise Malformed("duplicate key in string multimap")
            out[k] = self.string_list()
        return out

    def bytes_map(self) -> dict[str, bytes | None]:
        n = self.count(self.u16(), 6)
        out: dict[str, bytes | None] = {}
        for _ in range(n):
            k = self.string()
            if k in out:
                raise Malformed("duplicate key in bytes map")
            out[k] = self.bytes_()
        return out

    def inet(self) -> tuple[bytes, int]:
        """``[inet]``: one-byte address size (4 or 16), address, ``[int]`` port."""
        size = self.u8()
        if size not in (4, 16):
            raise Malformed("bad inet address size")
        return self.take(size), self.i32()

    def done(self) -> None:
        if self.pos != self.end:
            raise Malformed("trailing bytes after the message body")


# -- writers: each appends to ``out`` -----------------------------------------------------------
Out = list[bytes]


def w_byte(out: Out, v: int) -> None:
    out.append(bytes((v,)))


def w_ushort(out: Out, v: int) -> None:
    out.append(_H.pack(v))


def w_short(out: Out, v: int) -> None:
    out.append(_h.pack(v))


def w_int(out: Out, v: int) -> None:
    out.append(_I.pack(v))


def w_long(out: Out, v: int) -> None:
    out.append(_Q.pack(v))


def w_string(out: Out, s: str) -> None:
    b = s.encode("utf-8")
    out.append(_H.pack(len(b)))
    out.append(b)


def w_long_string(out: Out, s: str) -> None:
    b = s.encode("utf-8")
    out.append(_I.pack(len(b)))
    out.append(b)


def w_bytes(out: Out, b: bytes | None) -> None:
    if b is None:
        out.append(_I.pack(-1))
    else:
        out.append(_I.pack(len(b)))
        out.append(bytes(b))


def w_short_bytes(out: Out, b: bytes) -> None:
    out.append(_H.pack(len(b)))
    out.append(bytes(b))


def w_value(out: Out, v: Value) -> None:
    if v is UNSET:
        out.append(_I.pack(-2))
    else:
        w_bytes(out, v)  # type: ignore[arg-type]


def w_string_list(out: Out, items: list[str]) -> None:
    w_ushort(out, len(items))
    for s in items:
        w_string(out, s)


def w_string_map(out: Out, m: dict[str, str]) -> None:
    w_ushort(out, len(m))
    for k, v in m.items():
        w_string(out, k)
        w_string(out, v)


def w_string_multimap(out: Out, m: dict[str, list[str]]) -> None:
    w_ushort(out, len(m))
    for k, v in m.items():
        w_string(out, k)
        w_string_list(out, v)


def w_bytes_map(out: Out, m: dict[str, bytes | None]) -> None:
    w_ushort(out, len(m))
    for k, v in m.items():
        w_string(out, k)
        w_bytes(out, v)


def w_inet(out: Out, addr: bytes, port: int) -> None:
    w_byte(out, len(addr))
    out.append(bytes(addr))
    w_int(out, port)
