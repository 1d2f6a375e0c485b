"""Differential tests against cassandra-driver's own encoder and decoder.

Requests: the driver encodes, Lockgate decodes (server role), fields are compared and the
event rebuilt from its fields re-encodes byte for byte. Responses: Lockgate encodes, the
driver decodes, fields are compared, and Lockgate decodes its own bytes back to the event.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import uuid

import pytest
from cassandra import ConsistencyLevel
from cassandra import protocol as dp
from cassandra.query import BatchType

from lockgate.gateway.cql import codec
from lockgate.gateway.cql.codec import types as t
from lockgate.gateway.cql.codec import values as v


def driver_frame(msg: object, stream: int = 1) -> bytes:
    return dp.ProtocolHandler.encode_message(
        msg, stream, protocol_version=4, compressor=None, allow_beta_protocol_version=False
    )


def decode_one(raw: bytes, role: codec.Role) -> codec.Event:
    conn = codec.Connection(role)
    conn.receive_data(raw)
    event = conn.next_event()
    assert event is not codec.NEED_DATA
    assert conn.next_event() is codec.NEED_DATA
    return event  # type: ignore[return-value]


def rebuilt(event: codec.Event) -> bytes:
    """Encode from fields only: a fresh copy without the parsed marker and without raw."""
    return codec.encode_frame(dataclasses.replace(event, raw=b""))


def _query(**kw: object) -> dp.QueryMessage:
    params = kw.pop("params", None)
    m = dp.QueryMessage(**kw)
    m.query_params = params
    return m


def _with(msg: dp._MessageType, **attrs: object) -> dp._MessageType:
    for k, val in attrs.items():
        setattr(msg, k, val)
    return msg


REQUESTS = [
    (
        dp.StartupMessage("3.4.6", {"DRIVER_NAME": "Apache Cassandra Python Driver"}),
        codec.Startup,
        {"options": {"DRIVER_NAME": "Apache Cassandra Python Driver", "CQL_VERSION": "3.4.6"}},
    ),
    (dp.OptionsMessage(), codec.Options, {}),
    (
        dp.AuthResponseMessage(b"\x00user\x00secret"),
        codec.AuthResponse,
        {"token": b"\x00user\x00secret"},
    ),
    (
        _query(
            query="SELECT * FROM system.local WHERE key='local'",
            consistency_level=ConsistencyLevel.ONE,
        ),
        codec.Query,
        {
            "query": "SELECT * FROM system.local WHERE key='local'",
            "consistency": 1,
            "query_flags": 0,
            "values": None,
        },
    ),
    (
        _query(
            query="SELECT * FROM ks.t WHERE k=? AND c=?",
            params=[b"\x00\x00\x00\x01", None],
            consistency_level=ConsistencyLevel.LOCAL_QUORUM,
            serial_consistency_level=ConsistencyLevel.LOCAL_SERIAL,
            fetch_size=5000,
            paging_state=b"\x01\x02page",
            timestamp=1_700_000_000_000_000,
        ),
        codec.Query,
        {
            "values": [b"\x00\x00\x00\x01", None],
            "consistency": 6,
            "serial_consistency": 9,
            "page_size": 5000,
            "paging_state": b"\x01\x02page",
            "timestamp": 1_700_000_000_000_000,
            "query_flags": 0x01 | 0x04 | 0x08 | 0x10 | 0x20,
        },
    ),
    (
        _with(
            _query(
                query="INSERT INTO ks.t (k) VALUES (?)",
                params=[b"x"],
                consistency_level=ConsistencyLevel.QUORUM,
            ),
            custom_payload={"k": b"v", "empty": b""},
            tracing=True,
        ),
        codec.Query,
        {"custom_payload": {"k": b"v", "empty": b""}, "flags": 0x02 | 0x04, "values": [b"x"]},
    ),
    (
        dp.PrepareMessage("SELECT v FROM ks.t WHERE k = ?"),
        codec.Prepare,
        {"query": "SELECT v FROM ks.t WHERE k = ?"},
    ),
    (
        dp.ExecuteMessage(
            b"\xde\xad\xbe\xef" * 4,
            [b"a", None, b""],
            ConsistencyLevel.ALL,
            fetch_size=100,
            timestamp=5,
            skip_meta=True,
        ),
        codec.Execute,
        {
            "query_id": b"\xde\xad\xbe\xef" * 4,
            "values": [b"a", None, b""],
            "consistency": 5,
            "page_size": 100,
            "timestamp": 5,
        },
    ),
    (
        dp.BatchMessage(
            BatchType.UNLOGGED,
            [
                (False, "INSERT INTO ks.a (k) VALUES (?)", [b"1"]),
                (True, b"\x01\x02\x03", [None, b"z"]),
            ],
            ConsistencyLevel.TWO,
            serial_consistency_level=ConsistencyLevel.SERIAL,
            timestamp=42,
        ),
        codec.Batch,
        {
            "batch_type": 1,
            "consistency": 2,
            "serial_consistency": 8,
            "timestamp": 42,
            "statements": [
                codec.BatchStatement(
                    kind=0, query="INSERT INTO ks.a (k) VALUES (?)", values=[b"1"]
                ),
                codec.BatchStatement(kind=1, query_id=b"\x01\x02\x03", values=[None, b"z"]),
            ],
        },
    ),
    (
        dp.BatchMessage(BatchType.COUNTER, [], ConsistencyLevel.ONE),
        codec.Batch,
        {"batch_type": 2, "statements": [], "batch_flags": 0},
    ),
    (
        dp.RegisterMessage(["TOPOLOGY_CHANGE", "STATUS_CHANGE", "SCHEMA_CHANGE"]),
        codec.Register,
        {"event_types": ["TOPOLOGY_CHANGE", "STATUS_CHANGE", "SCHEMA_CHANGE"]},
    ),
]


@pytest.mark.parametrize(("msg", "cls", "fields"), REQUESTS, ids=lambda x: type(x).__name__)
def test_driver_requests_decode_and_reencode_exactly(msg, cls, fields) -> None:
    raw = driver_frame(msg, stream=77)
    event = decode_one(raw, codec.Role.SERVER)
    assert type(event) is cls
    assert event.stream == 77 and event.version == 4 and event.raw == raw
    for name, want in fields.items():
        assert getattr(event, name) == want, name
    assert rebuilt(event) == raw
    client = codec.Connection(codec.Role.CLIENT)
    assert client.send(event) is event.raw  # unedited parsed event is forwarded byte-exact
    moved = dataclasses.replace(event, stream=5)
    assert client.send(moved) == raw[:2] + b"\x00\x05" + raw[4:]


# -- responses: Lockgate writes, the driver reads ------------------------------------------------
def driver_decode(raw: bytes, result_metadata=None) -> dp._MessageType:
    assert raw[0] == 0x84
    flags, stream, opcode = raw[1], int.from_bytes(raw[2:4], "big", signed=True), raw[4]
    body = raw[9:]
    assert int.from_bytes(raw[5:9], "big") == len(body)
    return dp.ProtocolHandler.decode_message(
        4, {}, stream, flags, opcode, body, None, result_metadata
    )


def roundtrip(event: codec.Event) -> tuple[bytes, codec.Event]:
    raw = codec.Connection(codec.Role.SERVER).send(event)
    back = decode_one(raw, codec.Role.CLIENT)
    assert dataclasses.replace(back, raw=b"") == event
    assert rebuilt(back) == raw
    return raw, back


LOCAL_COLUMNS = [
    codec.ColumnSpec(keyspace="system", table="local", name=name, type=typ)
    for name, typ in [
        ("key", t.simple(t.VARCHAR)),
        ("rpc_address", t.simple(t.INET)),
        ("host_id", t.simple(t.UUID)),
        ("tokens", t.set_of(t.simple(t.VARCHAR))),
        ("n", t.simple(t.INT)),
        ("big", t.simple(t.BIGINT)),
        ("ok", t.simple(t.BOOLEAN)),
        ("data", t.simple(t.BLOB)),
        ("m", t.map_of(t.simple(t.VARCHAR), t.list_of(t.simple(t.INT)))),
        ("tup", codec.CqlType(code=t.TUPLE, params=(t.simple(t.INT), t.simple(t.VARCHAR)))),
        (
            "addr",
            codec.CqlType(
                code=t.UDT,
                keyspace="system",
                name="address",
                field_names=("street", "zip"),
                params=(t.simple(t.VARCHAR), t.simple(t.INT)),
            ),
        ),
        ("c", codec.CqlType(code=t.CUSTOM, custom="org.apache.cassandra.db.marshal.BytesType")),
    ]
]


def local_row() -> list[bytes | None]:
    host = uuid.UUID("11111111-2222-3333-4444-555555555555")
    return [
        v.encode_varchar("local"),
        v.encode_inet("10.0.0.7"),
        v.encode_uuid(host),
        v.encode_set_of_varchar(["-9", "42"]),
        v.encode_int(-7),
        v.encode_bigint(2**40),
        v.encode_boolean(True),
        v.encode_blob(b"\x00\xff"),
        b"\x00\x00\x00\x01"
        + b"\x00\x00\x00\x01a"
        + b"\x00\x00\x00\x0c"
        + b"\x00\x00\x00\x01"
        + b"\x00\x00\x00\x04\x00\x00\x00\x05",
        b"\x00\x00\x00\x04\x00\x00\x00\x03" + b"\x00\x00\x00\x01z",
        b"\x00\x00\x00\x03elm" + b"\x00\x00\x00\x04\x00\x00\x00\x09",
        None,
    ]


def test_rows_with_many_types_decode_in_the_driver() -> None:
    event = codec.Rows(
        stream=3,
        metadata=codec.RowsMetadata.for_columns(LOCAL_COLUMNS),
        rows=[local_row(), [None] * len(LOCAL_COLUMNS)],
    )
    raw, back = roundtrip(event)
    msg = driver_decode(raw)
    assert msg.column_names == [c.name for c in LOCAL_COLUMNS]
    row = msg.parsed_rows[0]
    assert row[0] == "local" and row[1] == "10.0.0.7"
    assert row[2] == uuid.UUID("11111111-2222-3333-4444-555555555555")
    assert set(row[3]) == {"-9", "42"} and row[4] == -7 and row[5] == 2**40
    assert row[6] is True and row[7] == b"\x00\xff"
    assert dict(row[8]) == {"a": [5]} and tuple(row[9]) == (3, "z")
    assert (row[10].street, row[10].zip) == ("elm", 9)
    assert row[11] is None
    assert all(x is None for x in msg.parsed_rows[1])
    assert isinstance(back, codec.Rows) and back.column_index("rpc_address") == 1


def test_rows_rewrite_of_an_inet_column() -> None:
    event = codec.Rows(metadata=codec.RowsMetadata.for_columns(LOCAL_COLUMNS), rows=[local_row()])
    _, back = roundtrip(event)
    assert isinstance(back, codec.Rows)
    i = back.column_index("rpc_address")
    assert i is not None and v.decode_inet(back.rows[0][i]) == "10.0.0.7"
    new_rows = [list(r) for r in back.rows]
    new_rows[0][i] = v.encode_inet(ipaddress.ip_address("::1"))
    edited = dataclasses.replace(back, rows=new_rows)
    out = codec.Connection(codec.Role.SERVER).send(edited)
    assert out != back.raw
    assert driver_decode(out).parsed_rows[0][1] == "::1"


def test_rows_paging_state_and_no_metadata() -> None:
    meta = codec.RowsMetadata(flags=6, columns=None, columns_count=2, paging_state=b"next")
    raw, _ = roundtrip(codec.Rows(metadata=meta, rows=[[b"\x00\x00\x00\x01", None]]))
    result_md = [
        ("ks", "t", "a", dp.ResultMessage.type_codes[t.INT]),
        ("ks", "t", "b", dp.ResultMessage.type_codes[t.VARCHAR]),
    ]
    msg = driver_decode(raw, result_metadata=result_md)
    assert msg.paging_state == b"next" and msg.parsed_rows == [(1, None)]


def test_rows_without_global_table_spec() -> None:
    cols = [
        codec.ColumnSpec(keyspace="a", table="x", name="k", type=t.simple(t.INT)),
        codec.ColumnSpec(keyspace="b", table="y", name="v", type=t.simple(t.INT)),
    ]
    meta = codec.RowsMetadata.for_columns(cols)
    assert meta.flags == 0
    raw, _ = roundtrip(codec.Rows(metadata=meta, rows=[]))
    msg = driver_decode(raw)
    assert msg.column_metadata[1][:3] == ("b", "y", "v")


def test_prepared() -> None:
    bind = [codec.ColumnSpec(keyspace="ks", table="t", name="k", type=t.simple(t.INT))]
    event = codec.Prepared(
        stream=9,
        query_id=b"\x10" * 16,
        metadata=codec.PreparedMetadata(flags=1, pk_indexes=[0], columns=bind),
        result_metadata=codec.RowsMetadata.for_columns(
            [codec.ColumnSpec(keyspace="ks", table="t", name="v", type=t.simple(t.VARCHAR))]
        ),
    )
    raw, _ = roundtrip(event)
    msg = driver_decode(raw)
    assert msg.query_id == b"\x10" * 16 and msg.pk_indexes == [0]
    assert [c.name for c in msg.bind_metadata] == ["k"]
    assert [c[2] for c in msg.column_metadata] == ["v"]


def test_set_keyspace_void_and_schema_change() -> None:
    raw, _ = roundtrip(codec.SetKeyspace(stream=4, keyspace="Ks1"))
    assert driver_decode(raw).new_keyspace == "Ks1"
    raw, _ = roundtrip(codec.Void(stream=4))
    assert driver_decode(raw).kind == 1
    raw, _ = roundtrip(
        codec.SchemaChange(change_type="CREATED", target="TABLE", keyspace="ks", name="t")
    )
    ev = driver_decode(raw).schema_change_event
    assert ev["table"] == "t" and ev["keyspace"] == "ks"
    raw, _ = roundtrip(
        codec.SchemaChange(
            change_type="DROPPED",
            target="FUNCTION",
            keyspace="ks",
            name="f",
            arg_types=["int", "text"],
        )
    )
    assert driver_decode(raw).schema_change_event["function"].argument_types == ["int", "text"]


def test_errors() -> None:
    raw, _ = roundtrip(
        codec.Error(
            stream=2, code=codec.ERR_UNPREPARED, message="unknown id", unprepared_id=b"\xab\xcd"
        )
    )
    msg = driver_decode(raw)
    assert isinstance(msg, dp.PreparedQueryNotFound) and msg.info == b"\xab\xcd"
    raw, _ = roundtrip(codec.Error(code=codec.ERR_UNAUTHORIZED, message="denied by policy"))
    msg = driver_decode(raw)
    assert isinstance(msg, dp.UnauthorizedErrorMessage) and msg.message == "denied by policy"
    raw, _ = roundtrip(
        codec.Error(code=codec.ERR_ALREADY_EXISTS, message="exists", keyspace="ks", table="t")
    )
    assert driver_decode(raw).info == {"keyspace": "ks", "table": "t"}
    # Code-specific tails of other codes are kept verbatim.
    tail = b"\x00\x06" + b"\x00\x00\x00\x01" + b"\x00\x00\x00\x02" + b"\x01"
    raw, _ = roundtrip(codec.Error(code=0x1200, message="timeout", extra=tail))
    assert driver_decode(raw).info["required_responses"] == 2


def test_handshake_responses_and_flags() -> None:
    raw, _ = roundtrip(
        codec.Supported(options={"CQL_VERSION": ["3.4.6"], "PROTOCOL_VERSIONS": ["4/v4"]})
    )
    msg = driver_decode(raw)
    assert msg.cql_versions == ["3.4.6"] and msg.options == {"PROTOCOL_VERSIONS": ["4/v4"]}
    raw, _ = roundtrip(
        codec.Authenticate(authenticator="org.apache.cassandra.auth.PasswordAuthenticator")
    )
    assert driver_decode(raw).authenticator.endswith("PasswordAuthenticator")
    raw, _ = roundtrip(codec.AuthSuccess(token=b"ok"))
    assert isinstance(driver_decode(raw), dp.AuthSuccessMessage)
    raw, _ = roundtrip(codec.AuthChallenge(token=b"chal"))
    assert driver_decode(raw).challenge == b"chal"
    raw, _ = roundtrip(codec.Ready(stream=1))
    assert isinstance(driver_decode(raw), dp.ReadyMessage)
    trace = uuid.uuid4()
    raw, _ = roundtrip(
        codec.Void(
            flags=0x0E, tracing_id=trace.bytes, warnings=["w1", "w2"], custom_payload={"p": b"1"}
        )
    )
    msg = driver_decode(raw)
    assert raw[1] == 0x02 | 0x04 | 0x08
    assert msg.trace_id == trace and msg.warnings == ["w1", "w2"]
    assert msg.custom_payload == {"p": b"1"}


def test_server_events() -> None:
    raw, _ = roundtrip(
        codec.ServerEvent(
            stream=-1,
            event_type="STATUS_CHANGE",
            change_type="UP",
            address=v.encode_inet("10.1.2.3"),
            port=9042,
        )
    )
    msg = driver_decode(raw)
    assert msg.event_args == {"change_type": "UP", "address": ("10.1.2.3", 9042)}
    raw, _ = roundtrip(
        codec.ServerEvent(
            stream=-1,
            event_type="SCHEMA_CHANGE",
            change_type="CREATED",
            target="KEYSPACE",
            keyspace="k",
        )
    )
    assert driver_decode(raw).event_args["keyspace"] == "k"
