"""Native protocol v4 primitives: frame header, opcodes, error codes, body reader/writer.

Strategy: a tiny cursor-based ``Reader`` that raises ``WireError`` on any truncation (the
server turns that into "close this connection"), and free functions that build body bytes.
Everything is big-endian as the spec says. Written from ``native_protocol_v4.spec``; it does
not share code with Lockgate's own codec on purpose, so each checks the other.

Part of a stand-in for demos and tests, written from the public docs: not the service.
"""

from __future__ import annotations

import builtins
import struct
from dataclasses import dataclass

HEADER = struct.Struct(">BBhBi")
HEADER_SIZE = HEADER.size  # 9
MAX_BODY = 256 * 1024 * 1024
VERSION = 4
RESPONSE_BIT = 0x80

# Frame flags.
FLAG_COMPRESSION = 0x01
FLAG_TRACING = 0x02
FLAG_CUSTOM_PAYLOAD = 0x04
FLAG_WARNING = 0x08

# Opcodes.
ERROR = 0x00
STARTUP = 0x01
READY = 0x02
AUTHENTICATE = 0x03
OPTIONS = 0x05
SUPPORTED = 0x06
QUERY = 0x07
RESULT = 0x08
PREPARE = 0x09
EXECUTE = 0x0A
REGISTER = 0x0B
EVENT = 0x0C
BATCH = 0x0D
AUTH_CHALLENGE = 0x0E
AUTH_RESPONSE = 0x0F
AUTH_SUCCESS = 0x10

# Error codes.
SERVER_ERROR = 0x0000
PROTOCOL_ERROR = 0x000A
BAD_CREDENTIALS = 0x0100
UNAVAILABLE = 0x1000
OVERLOADED = 0x1001
IS_BOOTSTRAPPING = 0x1002
TRUNCATE_ERROR = 0x1003
WRITE_TIMEOUT = 0x1100
READ_TIMEOUT = 0x1200
SYNTAX_ERROR = 0x2000
UNAUTHORIZED = 0x2100
INVALID = 0x2200
CONFIG_ERROR = 0x2300
ALREADY_EXISTS = 0x2400
UNPREPARED = 0x2500

# RESULT kinds.
RESULT_VOID = 1
RESULT_ROWS = 2
RESULT_SET_KEYSPACE = 3
RESULT_PREPARED = 4
RESULT_SCHEMA_CHANGE = 5

# Query parameter flags (v4: one byte).
QF_VALUES = 0x01
QF_SKIP_METADATA = 0x02
QF_PAGE_SIZE = 0x04
QF_PAGING_STATE = 0x08
QF_SERIAL_CONSISTENCY = 0x10
QF_TIMESTAMP = 0x20
QF_NAMES = 0x40

UNSET = object()  # a bound [value] of length -2


class WireError(Exception):
    """The bytes do not follow the protocol; the connection that sent them is closed."""


class CqlError(Exception):
    """An ERROR response: code, message and the code-specific extra body bytes."""

    def __init__(self, code: int, message: str, extra: bytes = b"") -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.extra = extra


@dataclass(frozen=True, slots=True)
class Header:
    version: int
    flags: int
    stream: int
    opcode: int
    length: int


class Reader:
    """Cursor over one frame body; every read checks bounds."""

    __slots__ = ("buf", "pos")

    def __init__(self, buf: bytes) -> None:
        self.buf = buf
        self.pos = 0

    def take(self, n: int) -> bytes:
        if n < 0 or self.pos + n > len(self.buf):
            raise WireError("truncated body")
        out = self.buf[self.pos : self.pos + n]
        self.pos += n
        return out

    def byte(self) -> int:
        return self.take(1)[0]

    def short(self) -> int:
        return int.from_bytes(self.take(2), "big")

    def int(self) -> int:
        return int.from_bytes(self.take(4), "big", signed=True)

    def long(self) -> builtins.int:
        return int.from_bytes(self.take(8), "big", signed=True)

    def string(self) -> str:
        return self._utf8(self.take(self.short()))

    def long_string(self) -> str:
        n = self.int()
        if n < 0:
            raise WireError("negative long string length")
        return self._utf8(self.take(n))

    def bytes_(self) -> bytes | None:
        n = self.int()
        return None if n < 0 else self.take(n)

    def short_bytes(self) -> bytes:
        return self.take(self.short())

    def value(self) -> bytes | object | None:
        n = self.int()
        if n == -1:
            return None
        if n == -2:
            return UNSET
        if n < 0:
            raise WireError("bad value length")
        return self.take(n)

    def string_map(self) -> dict[str, str]:
        return {self.string(): self.string() for _ in range(self.short())}

    def bytes_map(self) -> dict[str, bytes | None]:
        return {self.string(): self.bytes_() for _ in range(self.short())}

    @staticmethod
    def _utf8(raw: bytes) -> str:
        try:
            return raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise WireError("invalid UTF-8") from exc


def short(n: int) -> bytes:
    return n.to_bytes(2, "big")


def int32(n: int) -> bytes:
    return n.to_bytes(4, "big", signed=True)


def string(s: str) -> bytes:
    raw = s.encode()
    return short(len(raw)) + raw


def long_string(s: str) -> bytes:
    raw = s.encode()
    return int32(len(raw)) + raw


def bytes_(b: bytes | None) -> bytes:
    return int32(-1) if b is None else int32(len(b)) + b


def short_bytes(b: bytes) -> bytes:
    return short(len(b)) + b


def string_list(items: list[str]) -> bytes:
    return short(len(items)) + b"".join(string(i) for i in items)


def string_multimap(m: dict[str, list[str]]) -> bytes:
    return short(len(m)) + b"".join(string(k) + string_list(v) for k, v in m.items())


def frame(stream: int, opcode: int, body: bytes, version: int = VERSION) -> bytes:
    return HEADER.pack(version | RESPONSE_BIT, 0, stream, opcode, len(body)) + body


def error_body(err: CqlError) -> bytes:
    return int32(err.code) + string(err.message) + err.extra


@dataclass(slots=True)
class QueryParams:
    """Decoded ``<query_parameters>`` (consistency, flags, values, paging)."""

    consistency: int
    values: list[bytes | object | None]
    names: list[str] | None
    page_size: int | None
    paging_state: bytes | None
    skip_metadata: bool


def read_query_params(r: Reader) -> QueryParams:
    consistency = r.short()
    flags = r.byte()
    values: list[bytes | object | None] = []
    names: list[str] | None = None
    if flags & QF_VALUES:
        n = r.short()
        if flags & QF_NAMES:
            names = []
            for _ in range(n):
                names.append(r.string())
                values.append(r.value())
        else:
            values = [r.value() for _ in range(n)]
    page_size = r.int() if flags & QF_PAGE_SIZE else None
    paging_state = r.bytes_() if flags & QF_PAGING_STATE else None
    if flags & QF_SERIAL_CONSISTENCY:
        r.short()
    if flags & QF_TIMESTAMP:
        r.long()
    return QueryParams(
        consistency, values, names, page_size, paging_state, bool(flags & QF_SKIP_METADATA)
    )
