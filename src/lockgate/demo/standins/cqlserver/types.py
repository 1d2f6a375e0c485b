"""CQL data types: names, wire type options, value (de)serialisation, literal coercion.

Strategy: one ``CqlType`` value object (name + parameters) parsed from CQL type text
("map<text, frozen<list<int>>>"). Values live in Python form (str, int, float, bool, UUID,
bytes, Decimal, ip_address, list/set/dict); timestamps are kept as integer milliseconds since
the epoch, as the wire carries them. Literals from CQL text are coerced per column type.

Part of a stand-in for demos and tests, written from the public docs: not the service.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import struct
import uuid
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from .wire import INVALID, CqlError, short

# Type option ids from the spec (section 4.2.5.2).
_IDS = {
    "ascii": 0x0001,
    "bigint": 0x0002,
    "blob": 0x0003,
    "boolean": 0x0004,
    "counter": 0x0005,
    "decimal": 0x0006,
    "double": 0x0007,
    "float": 0x0008,
    "int": 0x0009,
    "timestamp": 0x000B,
    "uuid": 0x000C,
    "text": 0x000D,
    "varint": 0x000E,
    "timeuuid": 0x000F,
    "inet": 0x0010,
    "date": 0x0011,
    "time": 0x0012,
    "smallint": 0x0013,
    "tinyint": 0x0014,
    "list": 0x0020,
    "map": 0x0021,
    "set": 0x0022,
}
_ALIASES = {"varchar": "text"}
_FIXED = {"int": (">i", 4), "bigint": (">q", 8), "counter": (">q", 8), "timestamp": (">q", 8)}
_FIXED.update({"smallint": (">h", 2), "tinyint": (">b", 1), "time": (">q", 8)})
_EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)


def invalid(msg: str) -> CqlError:
    return CqlError(INVALID, msg)


@dataclass(frozen=True, slots=True)
class CqlType:
    name: str
    params: tuple[CqlType, ...] = ()
    frozen: bool = False

    def __str__(self) -> str:
        if not self.params:
            return self.name
        inner = f"{self.name}<{', '.join(str(p) for p in self.params)}>"
        return f"frozen<{inner}>" if self.frozen else inner

    @property
    def is_collection(self) -> bool:
        return self.name in ("list", "set", "map")

    def option(self) -> bytes:
        """The ``[option]`` describing this type in result metadata."""
        return short(_IDS[self.name]) + b"".join(p.option() for p in self.params)

    # -- wire form -------------------------------------------------------------------
    def serialize(self, v: Any) -> bytes:
        n = self.name
        if n in ("text", "ascii"):
            return str(v).encode()
        if n in _FIXED:
            fmt, _ = _FIXED[n]
            return struct.pack(fmt, int(v))
        if n == "boolean":
            return b"\x01" if v else b"\x00"
        if n == "double":
            return struct.pack(">d", float(v))
        if n == "float":
            return struct.pack(">f", float(v))
        if n in ("uuid", "timeuuid"):
            return bytes(v.bytes)
        if n == "blob":
            return bytes(v)
        if n == "varint":
            return _varint(int(v))
        if n == "decimal":
            sign, digits, exp = Decimal(v).as_tuple()
            unscaled = int("".join(map(str, digits)) or "0") * (-1 if sign else 1)
            return struct.pack(">i", -int(exp)) + _varint(unscaled)
        if n == "inet":
            return bytes(v.packed)
        if n == "date":
            return struct.pack(">I", (int(v) + 2**31) & 0xFFFFFFFF)
        if n in ("list", "set"):
            items = sorted(v, key=_sort_key) if n == "set" else list(v)
            return struct.pack(">i", len(items)) + b"".join(
                _cell(self.params[0].serialize(i)) for i in items
            )
        if n == "map":
            kt, vt = self.params
            keys = sorted(v, key=_sort_key)
            body = b"".join(_cell(kt.serialize(k)) + _cell(vt.serialize(v[k])) for k in keys)
            return struct.pack(">i", len(keys)) + body
        raise invalid(f"cannot serialize type {self}")

    def deserialize(self, b: bytes) -> Any:
        n = self.name
        try:
            if n in ("text", "ascii"):
                return b.decode()
            if n in _FIXED:
                fmt, size = _FIXED[n]
                if len(b) != size:
                    raise ValueError(f"expected {size} bytes")
                return struct.unpack(fmt, b)[0]
            if n == "boolean":
                return b != b"\x00"
            if n == "double":
                return struct.unpack(">d", b)[0]
            if n == "float":
                return struct.unpack(">f", b)[0]
            if n in ("uuid", "timeuuid"):
                return uuid.UUID(bytes=b)
            if n == "blob":
                return bytes(b)
            if n == "varint":
                return int.from_bytes(b, "big", signed=True)
            if n == "decimal":
                scale = struct.unpack(">i", b[:4])[0]
                return Decimal(int.from_bytes(b[4:], "big", signed=True)).scaleb(-scale)
            if n == "inet":
                return ipaddress.ip_address(b)
            if n == "date":
                return struct.unpack(">I", b)[0] - 2**31
            if n in ("list", "set", "map"):
                return self._deserialize_collection(b)
        except (ValueError, struct.error, UnicodeDecodeError, IndexError) as exc:
            raise invalid(f"Invalid value for type {self}: {exc}") from exc
        raise invalid(f"cannot deserialize type {self}")

    def _deserialize_collection(self, b: bytes) -> Any:
        count = struct.unpack(">i", b[:4])[0]
        pos, cells = 4, []
        for _ in range(count * (2 if self.name == "map" else 1)):
            size = struct.unpack(">i", b[pos : pos + 4])[0]
            cells.append(b[pos + 4 : pos + 4 + size])
            pos += 4 + size
        if self.name == "map":
            kt, vt = self.params
            return {
                kt.deserialize(cells[i]): vt.deserialize(cells[i + 1])
                for i in range(0, len(cells), 2)
            }
        items = [self.params[0].deserialize(c) for c in cells]
        return set(items) if self.name == "set" else items

    # -- literals from CQL text ----------------------------------------------------------
    def coerce(self, lit: Any) -> Any:
        """Turn a parsed literal (str/int/float/bool/UUID/bytes/list/dict/set) into a value."""
        n = self.name
        if lit is None:
            return None
        try:
            if n in ("text", "ascii") and isinstance(lit, str):
                return lit
            if n in _FIXED and n != "timestamp" and isinstance(lit, int):
                return lit
            if n in ("bigint", "int", "smallint", "tinyint", "varint") and isinstance(lit, int):
                return lit
            if n == "timestamp":
                return _timestamp(lit)
            if n == "boolean" and isinstance(lit, bool):
                return lit
            if n in ("double", "float") and isinstance(lit, int | float):
                return float(lit)
            if n == "decimal" and isinstance(lit, int | float):
                return Decimal(str(lit))
            if n in ("uuid", "timeuuid"):
                return lit if isinstance(lit, uuid.UUID) else uuid.UUID(str(lit))
            if n == "blob" and isinstance(lit, bytes):
                return lit
            if n == "inet" and isinstance(lit, str):
                return ipaddress.ip_address(lit)
            if n in ("list", "set") and isinstance(lit, list | set):
                items = [self.params[0].coerce(i) for i in lit]
                return set(items) if n == "set" else items
            if n == "map" and isinstance(lit, dict):
                kt, vt = self.params
                return {kt.coerce(k): vt.coerce(v) for k, v in lit.items()}
        except ValueError as exc:
            raise invalid(f"Invalid literal for type {self}: {exc}") from exc
        raise invalid(f"Invalid {type(lit).__name__} constant ({lit!r}) for type {self}")


def _cell(b: bytes) -> bytes:
    return struct.pack(">i", len(b)) + b


def _varint(n: int) -> bytes:
    size = max(1, (n.bit_length() + 8) // 8)
    return n.to_bytes(size, "big", signed=True)


def _sort_key(v: Any) -> Any:
    return (str(type(v)), v)


def _timestamp(lit: Any) -> int:
    if isinstance(lit, int) and not isinstance(lit, bool):
        return lit
    if isinstance(lit, str):
        text = lit.strip().replace(" ", "T", 1)
        if text.endswith("Z"):
            text = text[:-1] + "+00:00"
        parsed = dt.datetime.fromisoformat(text)
        if parsed.tzinfo is None:
            parsed = parsed.replace(tzinfo=dt.UTC)
        return (parsed - _EPOCH) // dt.timedelta(milliseconds=1)
    raise ValueError(f"not a timestamp: {lit!r}")


def parse_type(text: str) -> CqlType:
    """Parse CQL type text such as ``map<text, frozen<set<int>>>``."""
    t, rest = _parse(text.replace(" ", "").lower())
    if rest:
        raise invalid(f"Unknown type {text}")
    return t


def _parse(s: str) -> tuple[CqlType, str]:
    i = 0
    while i < len(s) and (s[i].isalnum() or s[i] == "_"):
        i += 1
    name, rest = _ALIASES.get(s[:i], s[:i]), s[i:]
    if name == "frozen":
        inner, rest = _parse_args(rest, 1)
        return CqlType(inner[0].name, inner[0].params, frozen=True), rest
    if name in ("list", "set", "map"):
        params, rest = _parse_args(rest, 2 if name == "map" else 1)
        return CqlType(name, tuple(params)), rest
    if name not in _IDS:
        raise invalid(f"Unknown type {name or s!r}")
    return CqlType(name), rest


def _parse_args(s: str, count: int) -> tuple[list[CqlType], str]:
    if not s.startswith("<"):
        raise invalid("expected '<' in type")
    params, rest = [], s[1:]
    for k in range(count):
        t, rest = _parse(rest)
        params.append(t)
        sep = "," if k < count - 1 else ">"
        if not rest.startswith(sep):
            raise invalid(f"expected {sep!r} in type")
        rest = rest[1:]
    return params, rest


TEXT = CqlType("text")
INT = CqlType("int")
BIGINT = CqlType("bigint")
BOOLEAN = CqlType("boolean")
UUID_T = CqlType("uuid")
INET = CqlType("inet")
DOUBLE = CqlType("double")
BLOB = CqlType("blob")
TEXT_SET = CqlType("set", (TEXT,), frozen=True)
TEXT_LIST = CqlType("list", (TEXT,), frozen=True)
TEXT_MAP = CqlType("map", (TEXT, TEXT), frozen=True)
BLOB_MAP = CqlType("map", (TEXT, BLOB), frozen=True)
