"""Framing, version, flag and limit behaviour of the CQL codec connection."""

from __future__ import annotations

import dataclasses
import struct

import pytest
from cassandra import ConsistencyLevel
from cassandra import protocol as dp

from lockgate.errors import LocalProtocolError, RemoteProtocolError
from lockgate.gateway.cql import codec


def query_frame(text: str = "SELECT * FROM ks.t", stream: int = 1) -> bytes:
    return dp.ProtocolHandler.encode_message(
        dp.QueryMessage(text, ConsistencyLevel.ONE),
        stream,
        protocol_version=4,
        compressor=None,
        allow_beta_protocol_version=False,
    )


def header(
    version: int = 4, flags: int = 0, stream: int = 1, opcode: int = 7, length: int = 0
) -> bytes:
    return struct.pack(">BBhBi", version, flags, stream, opcode, length)


def drain(conn: codec.Connection) -> list[codec.Event]:
    out = []
    while (e := conn.next_event()) is not codec.NEED_DATA:
        out.append(e)
    return out


FRAMES = [
    query_frame("SELECT a FROM ks.t", 1),
    query_frame("USE ks", 2),
    query_frame("SELECT * FROM system.local WHERE key='local'", 3),
]


def test_whole_input() -> None:
    conn = codec.Connection(codec.Role.SERVER)
    conn.receive_data(b"".join(FRAMES))
    events = drain(conn)
    assert [e.raw for e in events] == FRAMES
    assert [e.stream for e in events] == [1, 2, 3]
    assert conn.buffered == 0 and conn.peer_version == 4


def test_byte_by_byte() -> None:
    conn = codec.Connection(codec.Role.SERVER)
    data = b"".join(FRAMES)
    events: list[codec.Event] = []
    boundaries = {sum(len(f) for f in FRAMES[: i + 1]) for i in range(len(FRAMES))}
    for i in range(len(data)):
        conn.receive_data(data[i : i + 1])
        got = drain(conn)
        assert bool(got) == ((i + 1) in boundaries)
        events += got
    assert [e.raw for e in events] == FRAMES


def test_trailing_partial_frame_stays_buffered() -> None:
    conn = codec.Connection(codec.Role.SERVER)
    conn.receive_data(FRAMES[0] + FRAMES[1][:12])
    assert [e.raw for e in drain(conn)] == [FRAMES[0]]
    assert conn.buffered == 12
    conn.receive_data(FRAMES[1][12:])
    assert [e.raw for e in drain(conn)] == [FRAMES[1]]


def test_eof_inside_frame_is_an_error_and_clean_eof_is_not() -> None:
    conn = codec.Connection(codec.Role.SERVER)
    conn.receive_data(FRAMES[0][:-1])
    conn.receive_data(b"")
    with pytest.raises(codec.CqlProtocolError):
        conn.next_event()
    clean = codec.Connection(codec.Role.SERVER)
    clean.receive_data(FRAMES[0])
    clean.receive_data(b"")
    assert len(drain(clean)) == 1 and clean.eof
    with pytest.raises(RuntimeError):
        clean.receive_data(b"x")


@pytest.mark.parametrize(
    ("data", "fragment"),
    [
        (header(flags=0x01, length=0), "compress"),
        (header(flags=0x40, length=0), "flags"),
        (header(flags=0x08, length=0), "flags"),  # warning flag on a request
        (header(opcode=0x08, length=0), "opcode"),  # RESULT sent to a server
        (header(opcode=0x04, length=0), "opcode"),  # CREDENTIALS (v1 only)
        (header(opcode=0x33, length=0), "opcode"),
        (header(version=0x84, length=0), "direction"),
        (header(length=-1), "exceeds"),
        (header(opcode=0x05, length=1) + b"\x00", "trailing"),
        (header(opcode=0x07, length=4) + b"\x00\x00\x00\x09", "truncated"),
        (header(opcode=0x01, length=2) + b"\x00\x02", "count"),
    ],
)
def test_bad_frames_raise_protocol_errors(data: bytes, fragment: str) -> None:
    conn = codec.Connection(codec.Role.SERVER)
    conn.receive_data(data)
    with pytest.raises(codec.CqlProtocolError) as info:
        conn.next_event()
    assert isinstance(info.value, RemoteProtocolError)
    assert fragment in str(info.value)
    assert info.value.code == codec.ERR_PROTOCOL and info.value.stream == 1
    assert conn.buffered == 0
    with pytest.raises(codec.CqlProtocolError):  # stays failed
        conn.next_event()
    reply = info.value.error_frame()
    assert reply[0] == 0x84 and reply[2:4] == b"\x00\x01" and reply[4] == codec.ERROR


def test_frame_cap_is_checked_from_the_header() -> None:
    conn = codec.Connection(codec.Role.SERVER, max_frame_bytes=1024)
    conn.receive_data(header(length=2**31 - 1))
    with pytest.raises(codec.CqlProtocolError, match="exceeds"):
        conn.next_event()
    ok = codec.Connection(codec.Role.SERVER, max_frame_bytes=len(FRAMES[0]) - 9)
    ok.receive_data(FRAMES[0])
    assert len(drain(ok)) == 1
    small = codec.Connection(codec.Role.SERVER, max_frame_bytes=len(FRAMES[0]) - 10)
    small.receive_data(FRAMES[0][:9])
    with pytest.raises(codec.CqlProtocolError):
        small.next_event()


@pytest.mark.parametrize("version", [5, 3, 0x41, 0x42, 0x7F])
def test_other_versions_raise_unsupported_with_the_client_stream(version: int) -> None:
    conn = codec.Connection(codec.Role.SERVER)
    conn.receive_data(header(version=version, opcode=0x05, stream=0x1234)[:4])
    with pytest.raises(codec.UnsupportedProtocolVersion) as info:
        conn.next_event()
    exc = info.value
    assert exc.version == version and exc.stream == 0x1234
    assert "unsupported protocol version" in str(exc).lower()
    frame = exc.error_frame()
    msg = dp.ProtocolHandler.decode_message(
        4, {}, 0x1234, frame[1], frame[4], frame[9:], None, None
    )
    assert isinstance(msg, dp.ProtocolException)
    assert "unsupported protocol version" in msg.message
    assert frame[0] == 0x80 | codec.reply_version(version)
    assert frame[2:4] == b"\x12\x34"


def test_v2_header_stream_is_one_byte() -> None:
    conn = codec.Connection(codec.Role.SERVER)
    conn.receive_data(bytes([2, 0, 7, 5]))
    with pytest.raises(codec.UnsupportedProtocolVersion) as info:
        conn.next_event()
    assert info.value.stream == 7 and info.value.version == 2


def test_version_change_mid_connection() -> None:
    conn = codec.Connection(codec.Role.SERVER)
    conn.receive_data(FRAMES[0] + b"\x05" + FRAMES[0][1:])
    assert len([conn.next_event()]) == 1
    with pytest.raises(codec.CqlProtocolError, match="version"):
        conn.next_event()


def test_send_role_checks_and_edits() -> None:
    server = codec.Connection(codec.Role.SERVER)
    with pytest.raises(LocalProtocolError):
        server.send(codec.Query(query="x"))
    with pytest.raises(LocalProtocolError):
        server.send(codec.Void(flags=codec.FLAG_COMPRESSION))
    with pytest.raises(LocalProtocolError):
        codec.Connection(codec.Role.CLIENT).send(codec.Prepare(query="x", keyspace="v5only"))
    server.receive_data(FRAMES[0])
    event = server.next_event()
    assert isinstance(event, codec.Query)
    client = codec.Connection(codec.Role.CLIENT)
    assert client.send(event) is event.raw
    edited = dataclasses.replace(event, query="SELECT b FROM ks.t")
    out = client.send(edited)
    assert out != event.raw and b"SELECT b FROM ks.t" in out
    # An event built by hand with a stale raw is re-encoded, never trusted.
    forged = codec.Query(query="SELECT 1 FROM ks.t", raw=FRAMES[1])
    assert client.send(forged) != FRAMES[1]


def test_denial_reply_on_the_request_stream() -> None:
    server = codec.Connection(codec.Role.SERVER)
    server.receive_data(query_frame("DROP TABLE ks.t", stream=42))
    event = server.next_event()
    reply = server.send(
        codec.Error(stream=event.stream, code=codec.ERR_UNAUTHORIZED, message="denied")
    )
    client = codec.Connection(codec.Role.CLIENT)
    client.receive_data(reply)
    err = client.next_event()
    assert isinstance(err, codec.Error) and err.code == 0x2100 and err.stream == 42


def test_value_helpers() -> None:
    v = codec.values
    assert v.decode_inet(v.encode_inet("127.0.0.1")) == "127.0.0.1"
    assert len(v.encode_inet("::1")) == 16
    assert v.decode_int(v.encode_int(-3)) == -3
    assert v.decode_bigint(v.encode_bigint(2**62)) == 2**62
    assert v.decode_boolean(v.encode_boolean(False)) is False
    assert v.decode_varchar(v.encode_varchar("é")) == "é"
    assert v.decode_set_of_varchar(v.encode_set_of_varchar(["a", "bc"])) == ["a", "bc"]
    for bad, fn in [
        (b"\x00" * 5, v.decode_inet),
        (b"\x00", v.decode_int),
        (b"\x00" * 3, v.decode_set_of_varchar),
        (b"\x00" * 15, v.decode_uuid),
    ]:
        with pytest.raises(ValueError):
            fn(bad)
