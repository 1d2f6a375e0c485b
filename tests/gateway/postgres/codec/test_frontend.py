"""Client messages: exact bytes, fields back, and every malformation refused."""

from __future__ import annotations

import struct

import pytest

from lockgate.gateway.postgres import codec


def _body(raw: bytes) -> bytes:
    reader = codec.MessageReader(1 << 20)
    reader.feed(raw)
    msg = reader.next_message()
    assert msg is not None and reader.buffered() == 0
    return msg.body


def test_query() -> None:
    raw = codec.query("SELECT 'é'")
    assert raw[0] == codec.QUERY
    assert codec.decode_query(_body(raw)) == "SELECT 'é'"


@pytest.mark.parametrize("body", [b"", b"SELECT 1", b"SELECT 1\0; DROP\0", b"\xff\0"])
def test_query_malformed(body: bytes) -> None:
    with pytest.raises(codec.ProtocolError):
        codec.decode_query(body)


def test_query_refuses_nul_in_text() -> None:
    with pytest.raises(ValueError):
        codec.query("a\0b")


def test_parse_bytes_and_fields() -> None:
    msg = codec.Parse("s1", "SELECT $1::int", (23, 0xFFFFFFFF))
    raw = codec.encode_message(msg)
    assert raw == (
        b"P" + struct.pack("!i", 4 + 3 + 15 + 2 + 8) + b"s1\0SELECT $1::int\0"
        b"\0\x02\0\0\0\x17\xff\xff\xff\xff"
    )
    assert codec.decode_parse(_body(raw)) == msg


def test_bind_with_null_formats_and_results() -> None:
    msg = codec.Bind("p", "s1", (0, 1), (b"42", None, b""), (1,))
    raw = codec.encode_message(msg)
    assert raw[0] == codec.BIND
    assert codec.decode_bind(_body(raw)) == msg


@pytest.mark.parametrize(
    "body",
    [
        b"p\0s\0\0\0\0\x01\xff\xff\xff\xfe\0\0",  # length -2
        b"p\0s\0\0\0\0\x01\0\0\0\x05ab\0\0",  # value longer than the body
        b"p\0s\0\0\0\0\0\0\0\0",  # trailing byte
        b"p\0s\0\0\0\0\0",  # no result-format count
        b"p\0s\0\0\x01\0",  # truncated format list
    ],
)
def test_bind_malformed(body: bytes) -> None:
    with pytest.raises(codec.ProtocolError):
        codec.decode_bind(body)


def test_execute() -> None:
    msg = codec.Execute("", 0)
    raw = codec.encode_message(msg)
    assert raw == b"E\0\0\0\x09\0\0\0\0\0"
    assert codec.decode_execute(_body(raw)) == msg
    assert codec.decode_execute(b"c\0\xff\xff\xff\xff") == codec.Execute("c", -1)
    with pytest.raises(codec.ProtocolError):
        codec.decode_execute(b"c\0\0\0")


@pytest.mark.parametrize("kind", ["S", "P"])
def test_describe_and_close(kind: str) -> None:
    d = codec.Describe(kind, "n")
    c = codec.Close(kind, "")
    assert codec.encode_message(d) == b"D\0\0\0\x07" + kind.encode() + b"n\0"
    assert codec.decode_describe(_body(codec.encode_message(d))) == d
    assert codec.encode_message(c)[0] == codec.CLOSE
    assert codec.decode_close(_body(codec.encode_message(c))) == c


def test_describe_bad_subtype() -> None:
    with pytest.raises(codec.ProtocolError, match="subtype"):
        codec.decode_describe(b"X\0")
    with pytest.raises(codec.ProtocolError):
        codec.decode_close(b"")
    with pytest.raises(ValueError):
        codec.encode_message(codec.Describe("X", ""))


def test_password_message() -> None:
    raw = codec.password_message("eyJ.token")
    assert raw == b"p\0\0\0\x0eeyJ.token\0"
    assert codec.decode_password(_body(raw)) == "eyJ.token"
    with pytest.raises(codec.ProtocolError):
        codec.decode_password(b"no-nul")


def test_sasl_initial_and_continue() -> None:
    raw = codec.sasl_initial_response("SCRAM-SHA-256", b"n,,n=,r=abc")
    assert (
        raw == b"p" + struct.pack("!i", 4 + 14 + 4 + 11) + b"SCRAM-SHA-256\0\0\0\0\x0bn,,n=,r=abc"
    )
    assert codec.decode_sasl_initial_response(_body(raw)) == ("SCRAM-SHA-256", b"n,,n=,r=abc")
    assert codec.decode_sasl_initial_response(_body(codec.sasl_initial_response("X", None))) == (
        "X",
        None,
    )
    assert codec.decode_sasl_response(_body(codec.sasl_response(b"c=biws"))) == b"c=biws"


def test_simple_messages() -> None:
    assert codec.flush() == b"H\0\0\0\x04"
    assert codec.terminate() == b"X\0\0\0\x04"
    assert codec.copy_done() == b"c\0\0\0\x04"
    assert codec.copy_data(b"1\t2\n") == b"d\0\0\0\x081\t2\n"
    assert codec.decode_copy_fail(_body(codec.copy_fail("bye"))) == "bye"
    codec.decode_empty(b"", "Sync")
    with pytest.raises(codec.ProtocolError):
        codec.decode_empty(b"x", "Sync")


def test_function_call() -> None:
    msg = codec.FunctionCall(1598, (1,), (b"\0\0\0\x01", None), 1)
    assert codec.decode_function_call(_body(codec.encode_message(msg))) == msg
