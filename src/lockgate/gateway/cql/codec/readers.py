"""Frame body → event fields, one reader per message (and per RESULT kind).

Contract: a reader takes the :class:`Reader` positioned at its message's body and the
protocol version, returns the event's fields and raises only :class:`Malformed`;
:func:`.bodies.read_body` picks the reader, checks that the whole body was consumed (trailing
bytes are an error: the peer and Lockgate must agree on exactly what a frame says) and builds
the event. Readers parse protocol v4 bodies; v5 has its own framing, which this codec does
not implement (the engine downgrades v5 clients to v4).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from . import events as ev
from ._meta import read_prepared_metadata, read_rows_metadata, read_type
from ._wire import Malformed, Reader, Value

Common = dict[str, Any]


def _params(r: Reader, out: dict[str, Any]) -> dict[str, Any]:
    """``<query_parameters>`` after the query string / prepared id (v4: one flag byte), added
    to ``out`` (the fields read before them)."""
    out["consistency"] = r.u16()
    flags = r.u8()
    if flags & ev.Q_KEYSPACE:
        # 0x80 is the v5 keyspace flag; undefined in v4. Refused so that no per-request
        # keyspace can slip past classification.
        raise Malformed("query flag 0x80 is not valid in protocol v4")
    out["query_flags"] = flags
    if flags & ev.Q_VALUES:
        n = r.count(r.u16(), 4)
        if flags & ev.Q_NAMES_FOR_VALUES:
            names: list[str] = []
            values: list[Value] = []
            for _ in range(n):
                names.append(r.string())
                values.append(r.value())
            out["names"], out["values"] = names, values
        else:
            out["values"] = [r.value() for _ in range(n)]
    elif flags & ev.Q_NAMES_FOR_VALUES:
        raise Malformed("names-for-values flag without values")
    if flags & ev.Q_PAGE_SIZE:
        out["page_size"] = r.i32()
    if flags & ev.Q_PAGING_STATE:
        ps = r.bytes_()
        if ps is None:
            raise Malformed("null paging state")
        out["paging_state"] = ps
    _serial_and_timestamp(r, flags, out)
    return out


def _serial_and_timestamp(r: Reader, flags: int, out: dict[str, Any]) -> None:
    """The optional serial consistency and timestamp, last in queries and batches."""
    if flags & ev.Q_SERIAL_CONSISTENCY:
        out["serial_consistency"] = r.u16()
    if flags & ev.Q_TIMESTAMP:
        out["timestamp"] = r.i64()


def startup(r: Reader, version: int) -> dict[str, Any]:
    return {"options": r.string_map()}


def empty(r: Reader, version: int) -> dict[str, Any]:
    return {}


def auth_token(r: Reader, version: int) -> dict[str, Any]:
    return {"token": r.bytes_()}


def query(r: Reader, version: int) -> dict[str, Any]:
    query = r.long_string()
    return _params(r, {"query": query})


def prepare(r: Reader, version: int) -> dict[str, Any]:
    return {"query": r.long_string()}


def execute(r: Reader, version: int) -> dict[str, Any]:
    qid = r.short_bytes()
    return _params(r, {"query_id": qid})


def batch(r: Reader, version: int) -> dict[str, Any]:
    batch_type = r.u8()
    if batch_type > ev.BATCH_COUNTER:
        raise Malformed("unknown batch type")
    n = r.count(r.u16(), 5)
    stmts: list[ev.BatchStatement] = []
    for _ in range(n):
        kind = r.u8()
        if kind == 0:
            text: str | None = r.long_string()
            qid: bytes | None = None
        elif kind == 1:
            text, qid = None, r.short_bytes()
        else:
            raise Malformed("unknown batch statement kind")
        nv = r.count(r.u16(), 4)
        values = [r.value() for _ in range(nv)]
        stmts.append(ev.BatchStatement(kind=kind, query=text, query_id=qid, values=values))
    out: dict[str, Any] = {"batch_type": batch_type, "statements": stmts, "consistency": r.u16()}
    flags = r.u8()
    # Only serial consistency and timestamp are defined for v4 batches; names-for-values is
    # not supported by Cassandra in batches and 0x80 is v5's keyspace.
    if flags & ~(ev.Q_SERIAL_CONSISTENCY | ev.Q_TIMESTAMP):
        raise Malformed("unsupported batch flags")
    out["batch_flags"] = flags
    _serial_and_timestamp(r, flags, out)
    return out


def register(r: Reader, version: int) -> dict[str, Any]:
    return {"event_types": r.string_list()}


def error(r: Reader, version: int) -> dict[str, Any]:
    code = r.i32()
    out: dict[str, Any] = {"code": code, "message": r.string()}
    if code == ev.ERR_UNPREPARED:
        out["unprepared_id"] = r.short_bytes()
    elif code == ev.ERR_ALREADY_EXISTS:
        out["keyspace"], out["table"] = r.string(), r.string()
    else:
        out["extra"] = r.take(r.remaining)
    return out


def authenticate(r: Reader, version: int) -> dict[str, Any]:
    return {"authenticator": r.string()}


def supported(r: Reader, version: int) -> dict[str, Any]:
    return {"options": r.string_multimap()}


def _schema_change_fields(r: Reader) -> dict[str, Any]:
    out: dict[str, Any] = {"change_type": r.string(), "target": r.string(), "keyspace": r.string()}
    target = out["target"]
    if target == "KEYSPACE":
        return out
    out["name"] = r.string()
    if target in ("FUNCTION", "AGGREGATE"):
        out["arg_types"] = r.string_list()
    elif target not in ("TABLE", "TYPE"):
        raise Malformed("unknown schema change target")
    return out


def server_event(r: Reader, version: int) -> dict[str, Any]:
    etype = r.string()
    if etype in ("TOPOLOGY_CHANGE", "STATUS_CHANGE"):
        change = r.string()
        addr, port = r.inet()
        return {"event_type": etype, "change_type": change, "address": addr, "port": port}
    if etype == "SCHEMA_CHANGE":
        return {"event_type": etype, **_schema_change_fields(r)}
    raise Malformed("unknown event type")


def rows(r: Reader, version: int) -> dict[str, Any]:
    meta = read_rows_metadata(r, version)
    ncols = meta.column_count
    nrows = r.i32()
    # A forged rows/column count must not make us loop or allocate: every cell needs at
    # least its 4-byte length. Rows with zero columns are refused for the same reason.
    if nrows < 0 or nrows * max(ncols, 1) * 4 > r.remaining:
        raise Malformed("row count larger than the body")
    rows = [[r.bytes_() for _ in range(ncols)] for _ in range(nrows)]
    return {"metadata": meta, "rows": rows}


def set_keyspace(r: Reader, version: int) -> dict[str, Any]:
    return {"keyspace": r.string()}


def prepared(r: Reader, version: int) -> dict[str, Any]:
    qid = r.short_bytes()
    return {
        "query_id": qid,
        "metadata": read_prepared_metadata(r),
        "result_metadata": read_rows_metadata(r, version),
    }


def schema_change(r: Reader, version: int) -> dict[str, Any]:
    return _schema_change_fields(r)


BodyReader = Callable[[Reader, int], dict[str, Any]]

__all__ = ["BodyReader", "read_type"]
