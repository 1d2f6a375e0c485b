"""The fake CQL node at the byte level: handshake rules, version refusal, broken frames.

Frames are built here with ``struct`` rather than with the server's own helpers, so a shared
mistake cannot hide.
"""

from __future__ import annotations

import asyncio
import struct
from collections.abc import AsyncIterator

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from lockgate.demo.standins.cqlserver import CqlServer, start_cql_server
from lockgate.demo.standins.cqlserver.types import parse_type


@pytest.fixture
async def server() -> AsyncIterator[CqlServer]:
    srv = await start_cql_server()
    yield srv
    await srv.close()


def s(text: str) -> bytes:
    raw = text.encode()
    return struct.pack(">H", len(raw)) + raw


def ls(text: str) -> bytes:
    raw = text.encode()
    return struct.pack(">i", len(raw)) + raw


def frame(
    opcode: int, body: bytes = b"", stream: int = 1, version: int = 4, flags: int = 0
) -> bytes:
    return struct.pack(">BBhBi", version, flags, stream, opcode, len(body)) + body


class Raw:
    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer

    @classmethod
    async def open(cls, port: int) -> Raw:
        return cls(*await asyncio.open_connection("127.0.0.1", port))

    async def send(self, data: bytes) -> None:
        self.writer.write(data)
        await self.writer.drain()

    async def recv(self) -> tuple[int, int, int, bytes]:
        head = await asyncio.wait_for(self.reader.readexactly(9), 2)
        version, _flags, stream, opcode, length = struct.unpack(">BBhBi", head)
        return version, stream, opcode, await self.reader.readexactly(length)

    async def closed_by_peer(self) -> bool:
        return await asyncio.wait_for(self.reader.read(1), 2) == b""

    async def login(self, user: str = "cassandra", pw: str = "cassandra") -> tuple[int, bytes]:
        await self.send(frame(0x01, struct.pack(">H", 1) + s("CQL_VERSION") + s("3.4.4")))
        assert (await self.recv())[2] == 0x03  # AUTHENTICATE
        token = b"\x00" + user.encode() + b"\x00" + pw.encode()
        await self.send(frame(0x0F, struct.pack(">i", len(token)) + token, stream=2))
        _, _, opcode, body = await self.recv()
        return opcode, body

    async def close(self) -> None:
        self.writer.close()


QUERIES = [
    "SELECT * FROM system.local WHERE key = ?",
    "SELECT * FROM system_schema.tables LIMIT ?",
    "CREATE KEYSPACE k WITH replication = {'class': 'SimpleStrategy'}",
    "SELECT * FROM",
]


def error_of(body: bytes) -> tuple[int, str]:
    code, n = struct.unpack(">iH", body[:6])
    return code, body[6 : 6 + n].decode()


async def test_options_and_handshake(server: CqlServer) -> None:
    c = await Raw.open(server.port)
    await c.send(frame(0x05, stream=9))
    version, stream, opcode, body = await c.recv()
    assert (version, stream, opcode) == (0x84, 9, 0x06)
    assert b"CQL_VERSION" in body and b"COMPRESSION" in body and b"4/v4" in body
    opcode, body = await c.login()
    assert opcode == 0x10  # AUTH_SUCCESS
    query = ls("SELECT cluster_name FROM system.local") + struct.pack(">HB", 1, 0)
    await c.send(frame(0x07, query, stream=300))
    _, stream, opcode, body = await c.recv()
    assert (stream, opcode) == (300, 0x08)
    assert struct.unpack(">i", body[:4])[0] == 2  # Rows
    assert b"Fake Cluster" in body
    await c.close()


@pytest.mark.parametrize("version", [3, 5, 6, 0x42])
async def test_other_versions_are_refused_like_cassandra(server: CqlServer, version: int) -> None:
    c = await Raw.open(server.port)
    await c.send(frame(0x05, version=version, stream=3))
    resp_version, stream, opcode, body = await c.recv()
    code, msg = error_of(body)
    assert (resp_version, stream, opcode, code) == (0x84, 3, 0x00, 0x000A)
    assert f"unsupported protocol version ({version})" in msg
    assert await c.closed_by_peer()


async def test_nothing_runs_before_authentication(server: CqlServer) -> None:
    c = await Raw.open(server.port)
    await c.send(frame(0x07, ls("DROP KEYSPACE system") + struct.pack(">HB", 1, 0)))
    code, msg = error_of((await c.recv())[3])
    assert code == 0x000A and "expecting STARTUP" in msg
    opcode, body = await c.login("cassandra", "bad")
    assert opcode == 0x00
    assert error_of(body) == (0x0100, "Provided username and/or password are incorrect")
    await c.send(frame(0x07, ls("SELECT * FROM system.local") + struct.pack(">HB", 1, 0)))
    code, msg = error_of((await c.recv())[3])
    assert code == 0x000A and "expecting AUTH_RESPONSE" in msg
    assert server.statements == []
    await c.close()


async def test_compression_is_refused_by_name(server: CqlServer) -> None:
    c = await Raw.open(server.port)
    opts = struct.pack(">H", 2) + s("CQL_VERSION") + s("3.4.4") + s("COMPRESSION") + s("lz4")
    await c.send(frame(0x01, opts))
    code, msg = error_of((await c.recv())[3])
    assert code == 0x000A and "lz4" in msg
    await c.close()


async def test_unknown_prepared_id_is_unprepared_with_the_id(server: CqlServer) -> None:
    c = await Raw.open(server.port)
    assert (await c.login())[0] == 0x10
    qid = bytes(range(16))
    await c.send(frame(0x0A, struct.pack(">H", 16) + qid + struct.pack(">HB", 1, 0)))
    body = (await c.recv())[3]
    code, msg = error_of(body)
    assert code == 0x2500 and qid.hex() in msg
    assert body[6 + len(msg.encode()) :] == struct.pack(">H", 16) + qid
    await c.close()


@pytest.mark.parametrize(
    "garbage",
    [
        frame(0x07, b"\x00\x00\x00\xff" + b"abc"),  # long string longer than the body
        frame(0x0F, b"\x00\x00"),  # truncated [bytes]
        struct.pack(">BBhBi", 4, 0, 1, 0x07, 300 * 1024 * 1024),  # over 256 MiB
        struct.pack(">BBhBi", 4, 0, 1, 0x07, -5),  # negative length
        frame(0x05, version=0x84),  # a response frame sent by a client
    ],
)
async def test_malformed_frames_close_only_that_connection(
    server: CqlServer, garbage: bytes
) -> None:
    good = await Raw.open(server.port)
    assert (await good.login())[0] == 0x10
    bad = await Raw.open(server.port)
    assert (await bad.login())[0] == 0x10  # so the body is parsed, not refused unread
    await bad.send(garbage)
    assert await bad.closed_by_peer()
    await good.send(frame(0x05, stream=5))
    assert (await good.recv())[2] == 0x06
    assert server.connections == 1
    await good.close()
    await bad.close()


def test_type_round_trips() -> None:
    cases = {
        "int": -5, "bigint": 2**62, "text": "ü", "boolean": False, "varint": -(2**70),
        "list<int>": [1, -2], "set<text>": {"a"}, "map<text, bigint>": {"x": 1},
        "frozen<map<text, frozen<list<int>>>>": {"k": [1]}, "smallint": -3, "tinyint": 7,
    }  # fmt: skip
    for text, value in cases.items():
        t = parse_type(text)
        assert t.deserialize(t.serialize(value)) == value, text
    assert str(parse_type("map<varchar,frozen<list<int>>>")) == "map<text, frozen<list<int>>>"


@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    opcode=st.sampled_from([0x05, 0x07, 0x09, 0x0A, 0x0B, 0x0D]),
    body=st.one_of(
        st.binary(max_size=64),
        # A well-formed query text followed by arbitrary parameters reaches deeper code.
        st.builds(lambda q, tail: ls(q) + tail, st.sampled_from(QUERIES), st.binary(max_size=24)),
    ),
)
async def test_random_bodies_get_an_answer_or_a_close(
    server: CqlServer, opcode: int, body: bytes
) -> None:
    c = await Raw.open(server.port)
    assert (await c.login())[0] == 0x10
    await c.send(frame(opcode, body, stream=7))
    try:
        _, stream, resp, answer = await c.recv()
        assert stream == 7 and resp in (0x00, 0x02, 0x06, 0x08)
        if resp == 0x00:
            assert error_of(answer)[0] != 0x0000, error_of(answer)  # no crash inside the fake
    except asyncio.IncompleteReadError:
        pass  # undecodable body: that connection is closed
    await c.close()
    await c.writer.wait_closed()


async def test_query_with_bound_values_and_paging_state(server: CqlServer) -> None:
    c = await Raw.open(server.port)
    assert (await c.login())[0] == 0x10
    value = struct.pack(">i", 5) + b"local"
    params = struct.pack(">HBH", 1, 0x01 | 0x04, 1) + value + struct.pack(">i", 10)
    await c.send(frame(0x07, ls("SELECT key FROM system.local WHERE key = ?") + params))
    body = (await c.recv())[3]
    kind, flags, ncols = struct.unpack(">iii", body[:12])
    assert (kind, flags & 0x02, ncols) == (2, 0, 1)  # Rows, no more pages, one column
    assert body.endswith(struct.pack(">ii", 1, 5) + b"local")
    await c.send(
        frame(0x07, ls("SELECT key FROM system.local WHERE key = ?") + struct.pack(">HB", 1, 0))
    )
    code, msg = error_of((await c.recv())[3])
    assert code == 0x2200 and "markers" in msg
    await c.close()
