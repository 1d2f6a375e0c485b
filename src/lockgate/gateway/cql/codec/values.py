"""Cell value helpers for the types the engine rewrites in system.local / system.peers rows.

``encode_*`` return the cell bytes (without the ``[bytes]`` length); ``decode_*`` take cell
bytes and raise ValueError on a wrong size or encoding. ``None`` (a null cell) is the caller's
business: these helpers never see it.
"""

from __future__ import annotations

import ipaddress
import struct
import uuid as _uuid

_i32 = struct.Struct(">i")
_i64 = struct.Struct(">q")


def encode_inet(address: str | ipaddress.IPv4Address | ipaddress.IPv6Address) -> bytes:
    """``inet``: 4 bytes for IPv4, 16 for IPv6 (no port in a cell)."""
    return ipaddress.ip_address(address).packed


def decode_inet(cell: bytes) -> str:
    if len(cell) not in (4, 16):
        raise ValueError("inet cell must be 4 or 16 bytes")
    return str(ipaddress.ip_address(bytes(cell)))


def encode_int(v: int) -> bytes:
    return _i32.pack(v)


def decode_int(cell: bytes) -> int:
    if len(cell) != 4:
        raise ValueError("int cell must be 4 bytes")
    return int(_i32.unpack(cell)[0])


def encode_bigint(v: int) -> bytes:
    return _i64.pack(v)


def decode_bigint(cell: bytes) -> int:
    if len(cell) != 8:
        raise ValueError("bigint cell must be 8 bytes")
    return int(_i64.unpack(cell)[0])


def encode_varchar(v: str) -> bytes:
    return v.encode("utf-8")


def decode_varchar(cell: bytes) -> str:
    return bytes(cell).decode("utf-8")


def encode_boolean(v: bool) -> bytes:
    return b"\x01" if v else b"\x00"


def decode_boolean(cell: bytes) -> bool:
    if len(cell) != 1:
        raise ValueError("boolean cell must be 1 byte")
    return cell != b"\x00"


def encode_uuid(v: _uuid.UUID | str) -> bytes:
    return (v if isinstance(v, _uuid.UUID) else _uuid.UUID(v)).bytes


def decode_uuid(cell: bytes) -> _uuid.UUID:
    if len(cell) != 16:
        raise ValueError("uuid cell must be 16 bytes")
    return _uuid.UUID(bytes=bytes(cell))


def encode_blob(v: bytes) -> bytes:
    return bytes(v)


def decode_blob(cell: bytes) -> bytes:
    return bytes(cell)


def encode_set_of_varchar(items: list[str]) -> bytes:
    """``set<varchar>`` / ``list<varchar>`` cell (v3+: int count, then int-length elements);
    system.local's ``tokens`` column uses it."""
    out = [_i32.pack(len(items))]
    for s in items:
        b = s.encode("utf-8")
        out.append(_i32.pack(len(b)))
        out.append(b)
    return b"".join(out)


def decode_set_of_varchar(cell: bytes) -> list[str]:
    data = bytes(cell)
    if len(data) < 4:
        raise ValueError("collection cell too short")
    (n,) = _i32.unpack_from(data, 0)
    pos, items = 4, []
    if n < 0 or n * 4 > len(data) - 4:
        raise ValueError("bad collection count")
    for _ in range(n):
        if pos + 4 > len(data):
            raise ValueError("truncated collection")
        (size,) = _i32.unpack_from(data, pos)
        pos += 4
        if size < 0 or pos + size > len(data):
            raise ValueError("bad collection element length")
        items.append(data[pos : pos + size].decode("utf-8"))
        pos += size
    if pos != len(data):
        raise ValueError("trailing bytes in collection")
    return items
