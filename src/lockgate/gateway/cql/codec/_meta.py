"""Read and write the type option tree, column specs, rows metadata and prepared metadata."""

from __future__ import annotations

from ._wire import Malformed, Out, Reader, w_int, w_short_bytes, w_string, w_ushort
from .types import (
    CUSTOM,
    GLOBAL_TABLES_SPEC,
    HAS_MORE_PAGES,
    LIST,
    MAP,
    MAX_TYPE_DEPTH,
    METADATA_CHANGED,
    NO_METADATA,
    SET,
    SIMPLE_TYPES,
    TUPLE,
    UDT,
    ColumnSpec,
    CqlType,
    PreparedMetadata,
    RowsMetadata,
)


def read_type(r: Reader, depth: int = 0) -> CqlType:
    if depth > MAX_TYPE_DEPTH:
        raise Malformed("type tree nested too deeply")
    code = r.u16()
    if code in SIMPLE_TYPES:
        return CqlType(code=code)
    if code == CUSTOM:
        return CqlType(code=code, custom=r.string())
    if code in (LIST, SET):
        return CqlType(code=code, params=(read_type(r, depth + 1),))
    if code == MAP:
        k = read_type(r, depth + 1)
        return CqlType(code=code, params=(k, read_type(r, depth + 1)))
    if code == TUPLE:
        n = r.count(r.u16(), 2)
        return CqlType(code=code, params=tuple(read_type(r, depth + 1) for _ in range(n)))
    if code == UDT:
        ks = r.string()
        name = r.string()
        n = r.count(r.u16(), 4)
        names: list[str] = []
        params: list[CqlType] = []
        for _ in range(n):
            names.append(r.string())
            params.append(read_type(r, depth + 1))
        return CqlType(
            code=code, keyspace=ks, name=name, field_names=tuple(names), params=tuple(params)
        )
    raise Malformed(f"unknown type option 0x{code:04x}")


def write_type(out: Out, t: CqlType) -> None:
    w_ushort(out, t.code)
    if t.code == CUSTOM:
        w_string(out, t.custom or "")
    elif t.code in (LIST, SET, MAP):
        for p in t.params:
            write_type(out, p)
    elif t.code == TUPLE:
        w_ushort(out, len(t.params))
        for p in t.params:
            write_type(out, p)
    elif t.code == UDT:
        w_string(out, t.keyspace or "")
        w_string(out, t.name or "")
        w_ushort(out, len(t.params))
        for fname, p in zip(t.field_names, t.params, strict=True):
            w_string(out, fname)
            write_type(out, p)


def _read_specs(r: Reader, flags: int, n: int) -> list[ColumnSpec]:
    # Each column needs at least a name (2 bytes) and a type (2 bytes).
    n = r.count(n, 4)
    if flags & GLOBAL_TABLES_SPEC:
        ks, table = r.string(), r.string()
        return [
            ColumnSpec(keyspace=ks, table=table, name=r.string(), type=read_type(r))
            for _ in range(n)
        ]
    cols = []
    for _ in range(n):
        ks, table, name = r.string(), r.string(), r.string()
        cols.append(ColumnSpec(keyspace=ks, table=table, name=name, type=read_type(r)))
    return cols


def _write_specs(out: Out, flags: int, cols: list[ColumnSpec]) -> None:
    if flags & GLOBAL_TABLES_SPEC:
        if cols:
            if len({(c.keyspace, c.table) for c in cols}) != 1:
                raise ValueError("global table spec flag with columns of several tables")
            w_string(out, cols[0].keyspace)
            w_string(out, cols[0].table)
        for c in cols:
            w_string(out, c.name)
            write_type(out, c.type)
        return
    for c in cols:
        w_string(out, c.keyspace)
        w_string(out, c.table)
        w_string(out, c.name)
        write_type(out, c.type)


def read_rows_metadata(r: Reader, version: int) -> RowsMetadata:
    flags = r.i32()
    count = r.i32()
    if count < 0:
        raise Malformed("negative column count")
    paging_state = None
    if flags & HAS_MORE_PAGES:
        paging_state = r.bytes_()
        if paging_state is None:
            raise Malformed("null paging state")
    new_id = r.short_bytes() if version >= 5 and flags & METADATA_CHANGED else None
    if flags & NO_METADATA:
        return RowsMetadata(
            flags=flags,
            columns_count=count,
            paging_state=paging_state,
            new_metadata_id=new_id,
            columns=None,
        )
    cols = _read_specs(r, flags, count)
    return RowsMetadata(
        flags=flags,
        columns_count=count,
        paging_state=paging_state,
        new_metadata_id=new_id,
        columns=cols,
    )


def write_rows_metadata(out: Out, m: RowsMetadata, version: int) -> None:
    flags = m.flags & ~(HAS_MORE_PAGES | NO_METADATA)
    if version >= 5:
        flags &= ~METADATA_CHANGED  # derived from new_metadata_id; a bare bit in v4
    if m.paging_state is not None:
        flags |= HAS_MORE_PAGES
    if m.columns is None:
        flags |= NO_METADATA
    if m.new_metadata_id is not None:
        if version < 5:
            raise ValueError("new_metadata_id needs protocol v5")
        flags |= METADATA_CHANGED
    w_int(out, flags)
    w_int(out, m.column_count)
    if m.paging_state is not None:
        out.append(len(m.paging_state).to_bytes(4, "big"))
        out.append(bytes(m.paging_state))
    if m.new_metadata_id is not None:
        w_short_bytes(out, m.new_metadata_id)
    if m.columns is not None:
        _write_specs(out, flags, m.columns)


def read_prepared_metadata(r: Reader) -> PreparedMetadata:
    flags = r.i32()
    count = r.i32()
    pk_count = r.count(r.i32(), 2)
    pk = [r.u16() for _ in range(pk_count)]
    return PreparedMetadata(flags=flags, pk_indexes=pk, columns=_read_specs(r, flags, count))


def write_prepared_metadata(out: Out, m: PreparedMetadata) -> None:
    w_int(out, m.flags)
    w_int(out, len(m.columns))
    w_int(out, len(m.pk_indexes))
    for i in m.pk_indexes:
        w_ushort(out, i)
    _write_specs(out, m.flags, m.columns)
