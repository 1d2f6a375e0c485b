"""Property-based fuzzing of the CQL codec: random and mutated frames, whole and byte-wise.

Invariant (from h11's fuzz target): whatever bytes arrive, ``next_event`` returns events or
NEED_DATA or raises CqlProtocolError, never anything else, never hangs, and while waiting
for data never holds more than one frame cap + header.
"""

from __future__ import annotations

import dataclasses
import struct

from cassandra import ConsistencyLevel
from cassandra import protocol as dp
from cassandra.query import BatchType
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from lockgate.gateway.cql import codec
from lockgate.gateway.cql.codec import types as t

CAP = 4096


def _driver(msg: object, stream: int = 3) -> bytes:
    return dp.ProtocolHandler.encode_message(msg, stream, 4, None, False)


def _corpus() -> list[tuple[codec.Role, bytes]]:
    q = dp.QueryMessage(
        "SELECT * FROM ks.t WHERE k=?",
        ConsistencyLevel.ONE,
        fetch_size=10,
        paging_state=b"ps",
        timestamp=7,
    )
    q.query_params = [b"abc", None]
    q.custom_payload = {"x": b"y"}
    requests = [
        dp.StartupMessage("3.4.6", {"DRIVER_NAME": "d"}),
        dp.OptionsMessage(),
        dp.AuthResponseMessage(b"\x00u\x00p"),
        q,
        dp.PrepareMessage("SELECT 1 FROM ks.t"),
        dp.ExecuteMessage(b"id", [b"1"], ConsistencyLevel.ONE),
        dp.BatchMessage(
            BatchType.LOGGED,
            [(False, "INSERT INTO a (k) VALUES (1)", [b"1"]), (True, b"id", [])],
            ConsistencyLevel.ONE,
            timestamp=1,
        ),
        dp.RegisterMessage(["STATUS_CHANGE"]),
    ]
    cols = [
        codec.ColumnSpec(keyspace="ks", table="t", name="a", type=t.simple(t.INET)),
        codec.ColumnSpec(
            keyspace="ks",
            table="t",
            name="b",
            type=t.map_of(t.simple(t.VARCHAR), t.list_of(t.simple(t.INT))),
        ),
        codec.ColumnSpec(
            keyspace="ks",
            table="t",
            name="c",
            type=codec.CqlType(
                code=t.UDT,
                keyspace="ks",
                name="u",
                field_names=("f",),
                params=(codec.CqlType(code=t.TUPLE, params=(t.simple(t.INT),)),),
            ),
        ),
    ]
    responses = [
        codec.Rows(
            metadata=codec.RowsMetadata.for_columns(cols, paging_state=b"p"),
            rows=[[b"\x7f\x00\x00\x01", None, b""], [None, None, None]],
        ),
        codec.Prepared(
            query_id=b"q",
            metadata=codec.PreparedMetadata(flags=1, pk_indexes=[0], columns=cols[:1]),
            result_metadata=codec.RowsMetadata.for_columns(cols),
        ),
        codec.Error(code=codec.ERR_UNPREPARED, message="m", unprepared_id=b"q"),
        codec.Error(code=codec.ERR_ALREADY_EXISTS, message="m", keyspace="k", table="t"),
        codec.Supported(options={"CQL_VERSION": ["3.4.6"]}),
        codec.SchemaChange(
            change_type="CREATED", target="FUNCTION", keyspace="k", name="f", arg_types=["int"]
        ),
        codec.ServerEvent(
            stream=-1,
            event_type="TOPOLOGY_CHANGE",
            change_type="NEW_NODE",
            address=b"\x01\x02\x03\x04",
            port=9042,
        ),
        codec.Void(tracing_id=b"\x01" * 16, warnings=["w"], custom_payload={"a": None}),
        codec.SetKeyspace(keyspace="ks"),
        codec.AuthSuccess(token=None),
    ]
    return [(codec.Role.SERVER, _driver(m)) for m in requests] + [
        (codec.Role.CLIENT, codec.encode_frame(r)) for r in responses
    ]


CORPUS = _corpus()


def run(role: codec.Role, data: bytes, chunk: int) -> list[codec.Event]:
    conn = codec.Connection(role, max_frame_bytes=CAP)
    events: list[codec.Event] = []
    try:
        for i in range(0, len(data), chunk):
            conn.receive_data(data[i : i + chunk])
            while True:
                e = conn.next_event()
                if e is codec.NEED_DATA:
                    assert conn.buffered <= CAP + codec.HEADER_SIZE
                    break
                assert isinstance(e, codec.Event)
                events.append(e)
        conn.receive_data(b"")
        while conn.next_event() is not codec.NEED_DATA:
            pass
    except codec.CqlProtocolError as exc:
        assert conn.buffered == 0
        assert isinstance(exc.error_frame(), bytes)
    return events


def check(role: codec.Role, data: bytes) -> None:
    whole = run(role, data, max(len(data), 1))
    bytewise = run(role, data, 1)
    assert [e.raw for e in whole] == [e.raw for e in bytewise]
    for e in whole:
        # Everything we accept re-encodes from its fields to the very same bytes.
        assert codec.encode_frame(dataclasses.replace(e, raw=b"")) == e.raw


FUZZ = settings(max_examples=300, deadline=2000, suppress_health_check=[HealthCheck.too_slow])


@FUZZ
@given(st.sampled_from([codec.Role.SERVER, codec.Role.CLIENT]), st.binary(max_size=300))
def test_random_bytes(role: codec.Role, data: bytes) -> None:
    check(role, data)


@FUZZ
@given(
    st.binary(min_size=5, max_size=200),
    st.sampled_from([4, 0x84]),
    st.integers(0, 0x1F),
    st.sampled_from(list(range(0x11))),
)
def test_random_bodies_behind_valid_headers(
    body: bytes, vbyte: int, flags: int, opcode: int
) -> None:
    role = codec.Role.SERVER if vbyte == 4 else codec.Role.CLIENT
    check(role, struct.pack(">BBhBi", vbyte, flags, 0, opcode, len(body)) + body)


@st.composite
def mutated(draw: st.DrawFn) -> tuple[codec.Role, bytes]:
    role, frame = draw(st.sampled_from(CORPUS))
    data = bytearray(frame)
    for _ in range(draw(st.integers(1, 4))):
        op = draw(st.sampled_from(["flip", "int", "short", "truncate", "extend", "length"]))
        pos = draw(st.integers(0, max(len(data) - 1, 0)))
        if op == "flip" and data:
            data[pos] ^= 1 << draw(st.integers(0, 7))
        elif op == "int" and len(data) >= pos + 4:
            data[pos : pos + 4] = struct.pack(
                ">i",
                draw(
                    st.sampled_from(
                        [
                            -2,
                            -1,
                            0,
                            1,
                            0x7FFF,
                            0x7FFFFFFF,
                            -0x80000000,
                            draw(st.integers(-(2**31), 2**31 - 1)),
                        ]
                    )
                ),
            )
        elif op == "short" and len(data) >= pos + 2:
            data[pos : pos + 2] = struct.pack(">H", draw(st.sampled_from([0, 1, 0xFFFF, 0x8000])))
        elif op == "truncate":
            del data[pos:]
        elif op == "extend":
            data += draw(st.binary(min_size=1, max_size=20))
        elif op == "length" and len(data) >= 9:
            data[5:9] = struct.pack(">i", draw(st.integers(-(2**31), 2**31 - 1)))
    # Mutations of one frame followed by a valid frame: the tail must not be misread.
    return role, bytes(data) + frame


@FUZZ
@given(mutated())
def test_mutated_frames(case: tuple[codec.Role, bytes]) -> None:
    check(*case)


def test_corpus_is_valid_and_pipelines() -> None:
    for role, frame in CORPUS:
        events = run(role, frame * 3, 7)
        assert len(events) == 3 and all(e.raw == frame for e in events)


@given(st.integers(CAP + 1, 2**31 - 1), st.integers(0, 64 * 1024))
@settings(max_examples=50, deadline=2000)
def test_huge_length_never_buffers_past_the_cap(length: int, extra: int) -> None:
    conn = codec.Connection(codec.Role.SERVER, max_frame_bytes=CAP)
    conn.receive_data(struct.pack(">BBhBi", 4, 0, 1, 7, length))
    try:
        conn.next_event()
        raise AssertionError("oversized frame accepted")
    except codec.CqlProtocolError as exc:
        assert "exceeds" in str(exc)
    conn.receive_data(b"\x00" * extra)  # ignored after the failure
    assert conn.buffered == 0


def test_deep_type_nesting_is_refused_not_a_recursion_error() -> None:
    nested = b"\x00\x20" * 5000 + b"\x00\x09"  # list<list<...<int>>>
    body = (
        struct.pack(">iii", 2, 0, 1)
        + b"\x00\x01k\x00\x01t\x00\x01c"
        + nested
        + struct.pack(">i", 0)
    )
    conn = codec.Connection(codec.Role.CLIENT)
    conn.receive_data(struct.pack(">BBhBi", 0x84, 0, 1, 8, len(body)) + body)
    try:
        conn.next_event()
        raise AssertionError("accepted")
    except codec.CqlProtocolError as exc:
        assert "deep" in str(exc)


def test_forged_row_count_does_not_spin() -> None:
    body = struct.pack(">iii", 2, codec.RowsMetadata().flags | 0x4, 0) + struct.pack(
        ">i", 2**31 - 1
    )
    conn = codec.Connection(codec.Role.CLIENT)
    conn.receive_data(struct.pack(">BBhBi", 0x84, 0, 1, 8, len(body)) + body)
    try:
        conn.next_event()
        raise AssertionError("accepted")
    except codec.CqlProtocolError as exc:
        assert "row count" in str(exc)
