"""Server messages: exact bytes, fields back, and every malformation refused."""

from __future__ import annotations

import struct

import pytest

from lockgate.gateway.postgres import codec


def _msg(raw: bytes) -> codec.Message:
    reader = codec.MessageReader(1 << 20)
    reader.feed(raw)
    msg = reader.next_message()
    assert msg is not None and reader.buffered() == 0
    return msg


def test_authentication_kinds() -> None:
    assert codec.authentication_ok() == b"R\0\0\0\x08\0\0\0\0"
    assert codec.authentication_cleartext_password() == b"R\0\0\0\x08\0\0\0\x03"
    md5 = _msg(codec.authentication_md5_password(b"salt"))
    assert codec.decode_authentication(md5.body) == codec.Authentication(5, b"salt")
    sasl = _msg(codec.authentication_sasl(["SCRAM-SHA-256-PLUS", "SCRAM-SHA-256"]))
    auth = codec.decode_authentication(sasl.body)
    assert auth.code == codec.AUTH_SASL
    assert codec.sasl_mechanisms(auth.data) == ["SCRAM-SHA-256-PLUS", "SCRAM-SHA-256"]
    cont = codec.decode_authentication(_msg(codec.authentication_sasl_continue(b"r=1")).body)
    assert cont == codec.Authentication(11, b"r=1")
    final = codec.decode_authentication(_msg(codec.authentication_sasl_final(b"v=x")).body)
    assert final == codec.Authentication(12, b"v=x")


@pytest.mark.parametrize("body", [b"\0\0", b"\0\0\0\0x", b"\0\0\0\x05abc", b"\0\0\0\x03\0"])
def test_authentication_malformed(body: bytes) -> None:
    with pytest.raises(codec.ProtocolError):
        codec.decode_authentication(body)


@pytest.mark.parametrize("data", [b"", b"SCRAM\0", b"A\0\0B\0"])
def test_sasl_mechanisms_malformed(data: bytes) -> None:
    with pytest.raises(codec.ProtocolError):
        codec.sasl_mechanisms(data)


def test_error_response_fields() -> None:
    raw = codec.error_response("42501", "permission denied", detail="d", hint="h")
    assert raw[0] == codec.ERROR_RESPONSE
    assert codec.decode_error_fields(_msg(raw).body) == {
        "S": "ERROR",
        "V": "ERROR",
        "C": "42501",
        "M": "permission denied",
        "D": "d",
        "H": "h",
    }
    notice = _msg(codec.notice_response("01000", "careful"))
    assert notice.type == codec.NOTICE_RESPONSE
    assert codec.decode_error_fields(notice.body)["S"] == "NOTICE"
    fatal = codec.error_response("08P01", "bye", severity="FATAL")
    assert codec.decode_error_fields(_msg(fatal).body)["V"] == "FATAL"


@pytest.mark.parametrize("body", [b"", b"Mno nul", b"Mx\0", b"Mx\0\0trailing"])
def test_error_fields_malformed(body: bytes) -> None:
    with pytest.raises(codec.ProtocolError):
        codec.decode_error_fields(body)


@pytest.mark.parametrize(
    ("tag", "rows"),
    [
        ("INSERT 0 5", 5),
        ("SELECT 3", 3),
        ("COPY 2", 2),
        ("UPDATE 0", 0),
        ("DELETE 7", 7),
        ("MERGE 1", 1),
        ("FETCH 10", 10),
        ("MOVE 4", 4),
        ("CREATE TABLE", None),
        ("SELECT", None),
        ("INSERT 5", None),
        ("BEGIN", None),
        ("SELECT x", None),
        ("", None),
    ],
)
def test_rows_affected(tag: str, rows: int | None) -> None:
    assert codec.rows_affected(tag) == rows
    assert codec.decode_command_complete(_msg(codec.command_complete(tag)).body) == tag


def test_ready_for_query() -> None:
    for status in "ITE":
        raw = codec.ready_for_query(status)
        assert raw == b"Z\0\0\0\x05" + status.encode()
        assert codec.decode_ready_for_query(_msg(raw).body) == status
    for bad in (b"", b"X", b"II"):
        with pytest.raises(codec.ProtocolError):
            codec.decode_ready_for_query(bad)


def test_parameter_status() -> None:
    raw = codec.parameter_status("server_version", "15.8")
    assert raw == b"S\0\0\0\x18server_version\x0015.8\0"
    assert codec.decode_parameter_status(_msg(raw).body) == ("server_version", "15.8")
    with pytest.raises(codec.ProtocolError):
        codec.decode_parameter_status(b"a\0")


def test_backend_key_data_3_0_and_3_2() -> None:
    raw = codec.backend_key_data(1234, b"abcd")
    assert raw == b"K\0\0\0\x0c\0\0\x04\xd2abcd"
    assert codec.decode_backend_key_data(_msg(raw).body) == (1234, b"abcd")
    key = bytes(range(32))
    assert codec.decode_backend_key_data(_msg(codec.backend_key_data(9, key)).body) == (9, key)
    for bad in (b"\0\0\0\x01abc", b"\0\0\0\x01" + bytes(257), b"\0\0"):
        with pytest.raises(codec.ProtocolError):
            codec.decode_backend_key_data(bad)


def test_notification() -> None:
    raw = codec.notification(77, "jobs", "done")
    assert codec.decode_notification(_msg(raw).body) == (77, "jobs", "done")


def test_data_row_and_row_description() -> None:
    row = (b"1", None, b"")
    raw = codec.data_row(row)
    assert raw == b"D\0\0\0\x13\0\x03\0\0\0\x011\xff\xff\xff\xff\0\0\0\0"
    assert codec.decode_data_row(_msg(raw).body) == row
    desc = _msg(codec.row_description([("id", 23), ("name", 25)]))
    assert codec.decode_row_description(desc.body) == (
        codec.Field("id", type_oid=23, type_size=4),
        codec.Field("name", type_oid=25, type_size=-1),
    )
    with pytest.raises(codec.ProtocolError):
        codec.decode_data_row(b"\0\x01\0\0\0\x05ab")


def test_copy_responses() -> None:
    for type_ in (codec.COPY_IN_RESPONSE, codec.COPY_OUT_RESPONSE, codec.COPY_BOTH_RESPONSE):
        raw = codec.copy_response(type_, 0, (0, 0))
        assert raw[0] == type_
        assert codec.decode_copy_response(_msg(raw).body) == (0, (0, 0))
    with pytest.raises(codec.ProtocolError):
        codec.decode_copy_response(b"\0\0\x02\0\0")


def test_negotiate_protocol_version() -> None:
    # On the wire the first field is the whole version (3 << 16 | minor), as servers send it.
    raw = codec.negotiate_protocol_version(0, ["_pq_.x"])
    assert raw == b"v" + struct.pack("!iii", 4 + 8 + 7, 0x30000, 1) + b"_pq_.x\0"
    assert codec.decode_negotiate_protocol_version(_msg(raw).body) == (0, ["_pq_.x"])
    two = codec.negotiate_protocol_version(2, [])
    assert codec.decode_negotiate_protocol_version(_msg(two).body) == (2, [])
    for bad in (struct.pack("!ii", 0x30000, -1), struct.pack("!ii", 0, 0)):
        with pytest.raises(codec.ProtocolError):
            codec.decode_negotiate_protocol_version(bad)


def test_empty_body_messages() -> None:
    assert codec.parse_complete() == b"1\0\0\0\x04"
    assert codec.bind_complete() == b"2\0\0\0\x04"
    assert codec.close_complete() == b"3\0\0\0\x04"
    assert codec.no_data() == b"n\0\0\0\x04"
    assert codec.empty_query_response() == b"I\0\0\0\x04"
    assert codec.portal_suspended() == b"s\0\0\0\x04"


def test_parameter_description_and_function_result() -> None:
    raw = codec.parameter_description((23, 25))
    assert codec.decode_parameter_description(_msg(raw).body) == (23, 25)
    assert (
        codec.decode_function_call_response(_msg(codec.function_call_response(None)).body) is None
    )
    assert (
        codec.decode_function_call_response(_msg(codec.function_call_response(b"x")).body) == b"x"
    )
