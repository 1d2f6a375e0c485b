"""Event → body bytes, one body writer per message (protocol v4 bodies).

Writers append pieces to a list and raise ValueError/struct.error on fields that cannot be
encoded; :meth:`Connection.send` turns those into ``LocalProtocolError``. The frame around a
body is built by :func:`.bodies.encode_frame`, the single place that builds a header, so
every synthesized reply (denials, rewritten system rows, the protocol-version error) goes
through the same code.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from . import events as ev
from ._meta import write_prepared_metadata, write_rows_metadata
from ._wire import (
    Out,
    w_byte,
    w_bytes,
    w_inet,
    w_int,
    w_long,
    w_long_string,
    w_short_bytes,
    w_string,
    w_string_list,
    w_string_map,
    w_string_multimap,
    w_ushort,
    w_value,
)


def _v4_only(e: Any) -> None:
    for name in ("keyspace", "now_in_seconds", "result_metadata_id"):
        if getattr(e, name, None) is not None:
            raise ValueError(f"{name} needs protocol v5")


def _params(out: Out, e: ev._Parameters) -> None:
    _v4_only(e)
    flags = e.query_flags & ~(
        ev.Q_VALUES
        | ev.Q_NAMES_FOR_VALUES
        | ev.Q_PAGE_SIZE
        | ev.Q_PAGING_STATE
        | ev.Q_SERIAL_CONSISTENCY
        | ev.Q_TIMESTAMP
        | ev.Q_KEYSPACE
    )
    if e.values is not None:
        flags |= ev.Q_VALUES
        if e.names is not None:
            if len(e.names) != len(e.values):
                raise ValueError("names and values differ in length")
            flags |= ev.Q_NAMES_FOR_VALUES
    if e.page_size is not None:
        flags |= ev.Q_PAGE_SIZE
    if e.paging_state is not None:
        flags |= ev.Q_PAGING_STATE
    w_ushort(out, e.consistency)
    w_byte(out, flags | _serial_and_timestamp_flags(e))
    if e.values is not None:
        w_ushort(out, len(e.values))
        for i, v in enumerate(e.values):
            if e.names is not None:
                w_string(out, e.names[i])
            w_value(out, v)
    if e.page_size is not None:
        w_int(out, e.page_size)
    if e.paging_state is not None:
        w_bytes(out, e.paging_state)
    _serial_and_timestamp(out, e)


def _serial_and_timestamp_flags(e: ev._Parameters | ev.Batch) -> int:
    """The flag bits of the optional serial consistency and timestamp (queries, batches)."""
    flags = 0
    if e.serial_consistency is not None:
        flags |= ev.Q_SERIAL_CONSISTENCY
    if e.timestamp is not None:
        flags |= ev.Q_TIMESTAMP
    return flags


def _serial_and_timestamp(out: Out, e: ev._Parameters | ev.Batch) -> None:
    """The optional serial consistency and timestamp, last in queries and batches."""
    if e.serial_consistency is not None:
        w_ushort(out, e.serial_consistency)
    if e.timestamp is not None:
        w_long(out, e.timestamp)


def startup(out: Out, e: ev.Startup) -> None:
    w_string_map(out, e.options)


def empty(out: Out, e: ev.Event) -> None:
    return None


def auth_token(out: Out, e: ev.AuthResponse | ev.AuthChallenge | ev.AuthSuccess) -> None:
    w_bytes(out, e.token)


def query(out: Out, e: ev.Query) -> None:
    w_long_string(out, e.query)
    _params(out, e)


def prepare(out: Out, e: ev.Prepare) -> None:
    _v4_only(e)
    w_long_string(out, e.query)


def execute(out: Out, e: ev.Execute) -> None:
    w_short_bytes(out, e.query_id)
    _params(out, e)


def batch(out: Out, e: ev.Batch) -> None:
    _v4_only(e)
    w_byte(out, e.batch_type)
    w_ushort(out, len(e.statements))
    for s in e.statements:
        w_byte(out, s.kind)
        if s.kind == 0 and s.query is not None:
            w_long_string(out, s.query)
        elif s.kind == 1 and s.query_id is not None:
            w_short_bytes(out, s.query_id)
        else:
            raise ValueError("batch statement needs query (kind 0) or query_id (kind 1)")
        w_ushort(out, len(s.values))
        for v in s.values:
            w_value(out, v)
    w_ushort(out, e.consistency)
    flags = e.batch_flags & ~(ev.Q_SERIAL_CONSISTENCY | ev.Q_TIMESTAMP)
    w_byte(out, flags | _serial_and_timestamp_flags(e))
    _serial_and_timestamp(out, e)


def register(out: Out, e: ev.Register) -> None:
    w_string_list(out, e.event_types)


def error(out: Out, e: ev.Error) -> None:
    w_int(out, e.code)
    w_string(out, e.message)
    if e.code == ev.ERR_UNPREPARED:
        w_short_bytes(out, e.unprepared_id or b"")
    elif e.code == ev.ERR_ALREADY_EXISTS:
        w_string(out, e.keyspace or "")
        w_string(out, e.table or "")
    else:
        out.append(bytes(e.extra))


def authenticate(out: Out, e: ev.Authenticate) -> None:
    w_string(out, e.authenticator)


def supported(out: Out, e: ev.Supported) -> None:
    w_string_multimap(out, e.options)


def _schema_fields(out: Out, e: ev.SchemaChange | ev.ServerEvent) -> None:
    w_string(out, e.change_type)
    w_string(out, e.target or "")
    w_string(out, e.keyspace or "")
    if e.target != "KEYSPACE":
        w_string(out, e.name or "")
        if e.target in ("FUNCTION", "AGGREGATE"):
            w_string_list(out, e.arg_types or [])


def server_event(out: Out, e: ev.ServerEvent) -> None:
    w_string(out, e.event_type)
    if e.event_type == "SCHEMA_CHANGE":
        _schema_fields(out, e)
    else:
        w_string(out, e.change_type)
        w_inet(out, e.address or b"", e.port or 0)


def void(out: Out, e: ev.Void) -> None:
    w_int(out, ev.RESULT_VOID)


def rows(out: Out, e: ev.Rows) -> None:
    w_int(out, ev.RESULT_ROWS)
    write_rows_metadata(out, e.metadata, e.version)
    ncols = e.metadata.column_count
    w_int(out, len(e.rows))
    for row in e.rows:
        if len(row) != ncols:
            raise ValueError("row length differs from the column count")
        for cell in row:
            w_bytes(out, cell)


def set_keyspace(out: Out, e: ev.SetKeyspace) -> None:
    w_int(out, ev.RESULT_SET_KEYSPACE)
    w_string(out, e.keyspace)


def prepared(out: Out, e: ev.Prepared) -> None:
    if e.result_metadata_id is not None:
        raise ValueError("result_metadata_id needs protocol v5")
    w_int(out, ev.RESULT_PREPARED)
    w_short_bytes(out, e.query_id)
    write_prepared_metadata(out, e.metadata)
    write_rows_metadata(out, e.result_metadata, e.version)


def schema_change(out: Out, e: ev.SchemaChange) -> None:
    w_int(out, ev.RESULT_SCHEMA_CHANGE)
    _schema_fields(out, e)


BodyWriter = Callable[[Out, Any], None]

__all__ = ["BodyWriter"]
