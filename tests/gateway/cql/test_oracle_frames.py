"""Frame-level tricks on a logged-in connection, judged by the node's execution log.

Each test sends hand-built v4 frames a driver would never send — flags on requests (custom
payload, tracing, compression never negotiated), the v5 keyspace query flag, protocol BATCH
frames with a USE or a SELECT child, a pipelined USE written one byte at a time —
and checks that the node ran nothing the audit does not show as allowed (``oracle.judge``).
"""

from __future__ import annotations

import struct
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from lockgate.demo.standins.cqlserver.client import RawCql, batch_frame, query_frame

from .engine_stack import stop_stack
from .test_oracle import Oracle

_HEADER = struct.Struct(">BBhBi")
QUERY = 0x07
ONE = struct.pack(">H", 1)
FLAG_COMPRESSION, FLAG_TRACING, FLAG_CUSTOM_PAYLOAD = 0x01, 0x02, 0x04
FORBIDDEN = "DELETE FROM ks.secrets WHERE id = 1"
GRANTED = "SELECT * FROM ks.orders"


def _string(text: str) -> bytes:
    raw = text.encode()
    return struct.pack(">H", len(raw)) + raw


def _long_string(text: str) -> bytes:
    raw = text.encode()
    return struct.pack(">i", len(raw)) + raw


def query_with(stream: int, text: str, *, flags: int = 0, prefix: bytes = b"",
               query_flags: bytes = b"\x00") -> bytes:  # fmt: skip
    """A QUERY frame with frame ``flags``, ``prefix`` before the body, raw query flags."""
    body = prefix + _long_string(text) + ONE + query_flags
    return _HEADER.pack(0x04, flags, stream, QUERY, len(body)) + body


def custom_payload(entries: dict[str, bytes]) -> bytes:
    out = struct.pack(">H", len(entries))
    for key, value in entries.items():
        raw = key.encode()
        out += struct.pack(">H", len(raw)) + raw + struct.pack(">i", len(value)) + value
    return out


@pytest.fixture
async def oracle(tmp_path: Path) -> AsyncIterator[Oracle]:
    o = await Oracle.start(tmp_path)
    try:
        yield o
    finally:
        await stop_stack(o.stack)


async def _send(client: RawCql, frame: bytes) -> int | None:
    """Send ``frame``; the error code of its answer, 0 for a result, None when closed."""
    answer = await client.request(frame)
    if answer is None:
        return None
    return answer.error_code if answer.is_error else 0


@pytest.mark.parametrize(
    "flags", [FLAG_TRACING, FLAG_CUSTOM_PAYLOAD, FLAG_TRACING | FLAG_CUSTOM_PAYLOAD]
)
async def test_request_flags_do_not_change_what_is_judged(oracle: Oracle, flags: int) -> None:
    client = await oracle.connect("oracle_flags")
    # A payload whose value is a whole QUERY body of the granted statement: a parser that
    # skipped the payload wrongly would find the granted text and judge it instead.
    decoy = _long_string(GRANTED) + ONE + b"\x00"
    prefix = custom_payload({"k": decoy}) if flags & FLAG_CUSTOM_PAYLOAD else b""
    since = oracle.mark()
    code = await _send(client, query_with(client.stream(), FORBIDDEN, flags=flags, prefix=prefix))
    assert code == 0x2100  # Unauthorized
    code = await _send(client, query_with(client.stream(), GRANTED, flags=flags, prefix=prefix))
    assert code == 0
    assert oracle.executed(since) == [("read", "ks.orders")]
    assert oracle.breaches(since, "oracle_flags") == []
    await client.close()


async def test_compressed_frame_never_negotiated_runs_nothing(oracle: Oracle) -> None:
    client = await oracle.connect("oracle_lz4")
    since = oracle.mark()
    code = await _send(client, query_with(client.stream(), GRANTED, flags=FLAG_COMPRESSION))
    assert code in (None, 0x000A)  # Protocol error, or the connection closed
    assert oracle.executed(since) == []
    assert oracle.breaches(since, "oracle_lz4") == []
    await client.close()


async def test_v5_keyspace_query_flag_is_refused(oracle: Oracle) -> None:
    client = await oracle.connect("oracle_ksflag")
    since = oracle.mark()
    # flags 0x80 then <string keyspace>: in v5 this runs "orders" in keyspace other.
    frame = query_with(client.stream(), "SELECT * FROM orders", query_flags=b"\x80\x00\x05other")
    code = await _send(client, frame)
    assert code in (None, 0x000A)
    assert oracle.executed(since) == []
    assert oracle.breaches(since, "oracle_ksflag") == []
    await client.close()


@pytest.mark.parametrize(
    "children",
    [
        ["USE other", "INSERT INTO items (id, v) VALUES (1, 'x')"],
        ["INSERT INTO items (id, v) VALUES (1, 'x')", "SELECT * FROM ks.secrets"],
        [
            "INSERT INTO items (id, v) VALUES (1, 'x')",
            "INSERT INTO ks.secrets (id, v) VALUES (1, 'x')",
        ],
        ["BEGIN BATCH DELETE FROM ks.secrets WHERE id = 1 APPLY BATCH"],
    ],
)
async def test_protocol_batch_children_are_each_judged(oracle: Oracle, children: list[str]) -> None:
    client = await oracle.connect("oracle_pbatch")
    since = oracle.mark()
    code = await _send(client, batch_frame(client.stream(), list(children)))
    assert code is not None and code != 0
    assert oracle.executed(since) == []
    assert oracle.breaches(since, "oracle_pbatch") == []
    await client.close()


async def test_use_then_select_written_one_byte_at_a_time(oracle: Oracle) -> None:
    client = await oracle.connect("oracle_bytes")
    since = oracle.mark()
    use, select = client.stream(), client.stream()
    data = query_frame(use, "USE other") + query_frame(select, "SELECT * FROM orders")
    for i in range(len(data)):
        client.writer.write(data[i : i + 1])
        await client.writer.drain()
    answers = await client.answers(2)
    assert answers[use].result_kind == 3  # SetKeyspace
    assert answers[select].error_code == 0x2100  # other.orders is not granted
    assert oracle.executed(since) == [("use", "other")]
    assert oracle.breaches(since, "oracle_bytes") == []
    await client.close()


async def test_a_second_login_on_a_connection_is_refused_and_audited(oracle: Oracle) -> None:
    client = await oracle.connect("oracle_relogin")
    since = oracle.mark()
    startup = struct.pack(">H", 1) + _string("CQL_VERSION") + _string("3.0.0")
    token = oracle.stack.token("admin_dag").encode()
    auth = b"\x00cass\x00" + token
    for opcode, body in ((0x01, startup), (0x0F, struct.pack(">i", len(auth)) + auth)):
        frame = _HEADER.pack(0x04, 0, client.stream(), opcode, len(body)) + body
        assert await _send(client, frame) == 0x000A  # Protocol error
    # the connection keeps its first identity
    assert await _send(client, query_with(client.stream(), FORBIDDEN)) == 0x2100
    assert oracle.executed(since) == []
    assert oracle.breaches(since, "oracle_relogin") == []
    refused = [r for r in oracle.audit("oracle_relogin") if r.reason == "unexpected_request"]
    assert len(refused) == 2 and all(r.decision == "deny" for r in refused)
    assert token.decode() not in repr(refused)


@pytest.mark.parametrize(
    "text", ["SELECT * FROM system.local", "SELECT * FROM ks.orders", "USE other"]
)
async def test_a_negative_stream_id_is_refused(oracle: Oracle, text: str) -> None:
    """Negative stream ids are the server's (native_protocol_v4.spec §2.3): an answer on one
    cannot be told from an EVENT, so its outcome, its topology rewrite and a USE's keyspace
    would be lost. The gateway refuses such a request, audited, and runs nothing."""
    client = await oracle.connect("oracle_negstream")
    since = oracle.mark()
    assert await _send(client, query_with(-7, text)) == 0x000A  # Protocol error
    # the connection stays usable, and the granted read still runs on a positive stream
    assert await _send(client, query_with(client.stream(), GRANTED)) == 0
    assert oracle.executed(since) == [("read", "ks.orders")]
    assert oracle.breaches(since, "oracle_negstream") == []
    refused = [r for r in oracle.audit("oracle_negstream") if r.reason == "negative_stream"]
    assert len(refused) == 1 and refused[0].decision == "deny"
    await client.close()
