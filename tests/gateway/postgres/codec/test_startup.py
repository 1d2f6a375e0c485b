"""Startup packets: the four kinds, the server's limits, the buffered-data rule."""

from __future__ import annotations

import struct

import pytest

from lockgate.gateway.postgres import codec


def _read_all(data: bytes) -> list[codec.StartupPacket]:
    reader = codec.StartupReader()
    reader.feed(data)
    out = []
    while (packet := reader.next_packet()) is not None:
        out.append(packet)
        if isinstance(packet, codec.StartupMessage | codec.CancelRequest):
            break
    return out


def test_startup_message_bytes_and_fields() -> None:
    raw = codec.startup_message({"user": "lockgate", "database": "warehouse"})
    assert raw == (
        struct.pack("!ii", len(raw), 196608) + b"user\0lockgate\0database\0warehouse\0\0"
    )
    assert _read_all(raw) == [
        codec.StartupMessage((3, 0), {"user": "lockgate", "database": "warehouse"})
    ]


def test_protocol_3_2_version_is_reported() -> None:
    raw = codec.startup_message({"user": "u"}, version=(3, 2))
    (packet,) = _read_all(raw)
    assert isinstance(packet, codec.StartupMessage)
    assert packet.version == (3, 2)


def test_ssl_then_startup_arrive_one_at_a_time() -> None:
    reader = codec.StartupReader()
    reader.feed(codec.ssl_request())
    assert reader.next_packet() == codec.SSLRequest()
    assert reader.rest() == b""
    reader.feed(codec.startup_message({"user": "u"})[:7])
    assert reader.next_packet() is None
    reader.feed(codec.startup_message({"user": "u"})[7:] + codec.password_message("tok"))
    assert reader.next_packet() == codec.StartupMessage((3, 0), {"user": "u"})
    assert reader.rest() == codec.password_message("tok")
    with pytest.raises(RuntimeError):
        reader.next_packet()


@pytest.mark.parametrize("request_bytes", [codec.ssl_request(), codec.gssenc_request()])
def test_bytes_pipelined_behind_an_encryption_request_are_refused(request_bytes: bytes) -> None:
    # CVE-2021-23214: bytes sent in clear before the TLS handshake must not be trusted.
    reader = codec.StartupReader()
    reader.feed(request_bytes + codec.startup_message({"user": "u"}))
    assert reader.next_packet() in (codec.SSLRequest(), codec.GSSENCRequest())
    with pytest.raises(codec.ProtocolError, match="unencrypted data after SSL request"):
        reader.rest()


def test_gssenc_request() -> None:
    assert codec.gssenc_request() == struct.pack("!ii", 8, 80877104)
    assert _read_all(codec.gssenc_request()) == [codec.GSSENCRequest()]


def test_cancel_request_3_0_and_3_2_keys() -> None:
    raw = codec.cancel_request(4242, b"\x01\x02\x03\x04")
    assert raw == struct.pack("!iiii", 16, 80877102, 4242, 0x01020304)
    assert _read_all(raw) == [codec.CancelRequest(4242, b"\x01\x02\x03\x04")]
    long_key = bytes(range(32))
    assert _read_all(codec.cancel_request(7, long_key)) == [codec.CancelRequest(7, long_key)]
    for bad in (b"abc", bytes(257)):
        with pytest.raises(ValueError):
            codec.cancel_request(7, bad)
    short = struct.pack("!iii", 12, 80877102, 7)
    with pytest.raises(codec.ProtocolError):
        _read_all(short)


@pytest.mark.parametrize("length", [-1, 0, 3, 4, 7, 10001, 0x16030100])
def test_packet_lengths_outside_8_to_10000_are_refused(length: int) -> None:
    # 0x16030100 is what a direct TLS ClientHello looks like to this reader.
    reader = codec.StartupReader()
    reader.feed(struct.pack("!i", length))
    with pytest.raises(codec.ProtocolError, match="invalid length of startup packet"):
        reader.next_packet()


def test_largest_packet_is_accepted() -> None:
    value = "x" * (codec.MAX_STARTUP_PACKET - 8 - len("options\0") - 2)
    raw = codec.startup_message({"options": value})
    assert len(raw) == codec.MAX_STARTUP_PACKET
    assert _read_all(raw) == [codec.StartupMessage((3, 0), {"options": value})]


@pytest.mark.parametrize(
    "body",
    [
        b"user\0u\0",  # no terminator
        b"user\0u\0\0\0",  # bytes after the terminator
        b"user\0",  # name without value
        b"user\0u",  # unterminated value
        b"user\0a\0user\0b\0\0",  # duplicate name
        b"us\xffer\0u\0\0",  # not UTF-8
    ],
)
def test_malformed_parameter_lists(body: bytes) -> None:
    raw = struct.pack("!ii", 8 + len(body), 196608) + body
    with pytest.raises(codec.ProtocolError):
        _read_all(raw)


def test_empty_parameter_list_is_wellformed() -> None:
    raw = struct.pack("!ii", 9, 196608) + b"\0"
    assert _read_all(raw) == [codec.StartupMessage((3, 0), {})]


@pytest.mark.parametrize("version", [(2, 0), (4, 0), (1234, 5677)])
def test_other_major_versions_are_unsupported(version: tuple[int, int]) -> None:
    raw = struct.pack("!ii", 9, version[0] << 16 | version[1]) + b"\0"
    with pytest.raises(codec.UnsupportedProtocolVersion) as info:
        _read_all(raw)
    assert info.value.sqlstate == "0A000"


def test_malformed_ssl_request() -> None:
    with pytest.raises(codec.ProtocolError):
        _read_all(struct.pack("!iii", 12, 80877103, 0))


def test_encode_startup_packet_matches_helpers() -> None:
    assert codec.encode_startup_packet(codec.SSLRequest()) == codec.ssl_request()
    assert codec.encode_startup_packet(codec.CancelRequest(1, b"abcd")) == codec.cancel_request(
        1, b"abcd"
    )
