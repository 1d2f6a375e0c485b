"""RESULT body encoders (Rows, Prepared, Set_keyspace, Schema_change) and fault error extras.

Strategy: results are built as bytes from the executor's dataclasses; rows metadata always uses
the global table spec (one table per result, as the fake never joins). Cells are serialised
with their column type; ``None`` becomes a null [bytes].

Part of a stand-in for demos and tests, written from the public docs: not the service.
"""

from __future__ import annotations

from .executor import Result, Rows, SchemaChange, SetKeyspace, Spec
from .types import CqlType
from .wire import (
    ALREADY_EXISTS,
    READ_TIMEOUT,
    RESULT_PREPARED,
    RESULT_ROWS,
    RESULT_SCHEMA_CHANGE,
    RESULT_SET_KEYSPACE,
    RESULT_VOID,
    UNAVAILABLE,
    UNPREPARED,
    WRITE_TIMEOUT,
    bytes_,
    int32,
    short,
    short_bytes,
    string,
)

_GLOBAL = 0x0001
_HAS_MORE = 0x0002
_NO_METADATA = 0x0004


def rows_metadata(
    ks: str, table: str, columns: list[tuple[str, CqlType]], paging: bytes | None, skip: bool
) -> bytes:
    flags = (_HAS_MORE if paging is not None else 0) | (_NO_METADATA if skip else _GLOBAL)
    out = int32(flags) + int32(len(columns))
    if paging is not None:
        out += bytes_(paging)
    if skip:
        return out
    out += string(ks) + string(table)
    return out + b"".join(string(name) + t.option() for name, t in columns)


def result(res: Result, skip_metadata: bool = False) -> bytes:
    if isinstance(res, Rows):
        parts = [
            int32(RESULT_ROWS),
            rows_metadata(res.keyspace, res.table, res.columns, res.paging_state, skip_metadata),
            int32(len(res.rows)),
        ]
        types = [t for _, t in res.columns]
        for row in res.rows:
            parts.append(
                b"".join(
                    bytes_(None if v is None else t.serialize(v))
                    for v, t in zip(row, types, strict=True)
                )
            )
        return b"".join(parts)
    if isinstance(res, SetKeyspace):
        return int32(RESULT_SET_KEYSPACE) + string(res.keyspace)
    if isinstance(res, SchemaChange):
        body = string(res.change) + string(res.target) + string(res.keyspace)
        if res.name is not None:
            body += string(res.name)
        return int32(RESULT_SCHEMA_CHANGE) + body
    return int32(RESULT_VOID)


def prepared(
    qid: bytes,
    specs: list[Spec],
    pk_indexes: list[int],
    result_cols: tuple[str, str, list[tuple[str, CqlType]]] | None,
) -> bytes:
    tables = {(s.keyspace, s.table) for s in specs}
    global_spec = len(tables) == 1
    out = int32(RESULT_PREPARED) + short_bytes(qid)
    out += int32(_GLOBAL if global_spec else 0) + int32(len(specs)) + int32(len(pk_indexes))
    out += b"".join(short(i) for i in pk_indexes)
    if global_spec:
        ks, table = next(iter(tables))
        out += string(ks) + string(table)
    for s in specs:
        if not global_spec:
            out += string(s.keyspace) + string(s.table)
        out += string(s.name) + s.type.option()
    if result_cols is None:
        return out + int32(_NO_METADATA) + int32(0)
    ks, table, cols = result_cols
    return out + rows_metadata(ks, table, cols, None, False)


def error_extra(code: int, qid: bytes = b"") -> bytes:
    """Code-specific extra bytes so the driver can decode injected errors."""
    one = short(1)
    if code == UNAVAILABLE:
        return one + int32(1) + int32(0)
    if code == WRITE_TIMEOUT:
        return one + int32(0) + int32(1) + string("SIMPLE")
    if code == READ_TIMEOUT:
        return one + int32(0) + int32(1) + b"\x00"
    if code == 0x1300:  # Read_failure
        return one + int32(0) + int32(1) + int32(1) + b"\x00"
    if code == 0x1500:  # Write_failure
        return one + int32(0) + int32(1) + int32(1) + string("SIMPLE")
    if code == 0x1400:  # Function_failure
        return string("ks") + string("f") + short(0)
    if code == ALREADY_EXISTS:
        return string("ks") + string("")
    if code == UNPREPARED:
        return short_bytes(qid)
    return b""
