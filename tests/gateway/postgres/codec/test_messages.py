"""Typed message framing: the reader, the length rules, the cap."""

from __future__ import annotations

import struct

import pytest

from lockgate.gateway.postgres import codec


def test_encode_frames_type_length_body() -> None:
    assert codec.encode(codec.QUERY, b"SELECT 1\0") == b"Q\0\0\0\x0dSELECT 1\0"
    assert codec.sync() == b"S\0\0\0\x04"
    assert codec.Message(codec.SYNC, b"").encode() == codec.sync()


def test_reader_splits_messages_fed_byte_by_byte() -> None:
    stream = codec.query("SELECT 1") + codec.sync() + codec.terminate()
    reader = codec.MessageReader(1024)
    got = []
    for i in range(len(stream)):
        reader.feed(stream[i : i + 1])
        while (msg := reader.next_message()) is not None:
            got.append(msg)
    assert got == [
        codec.Message(codec.QUERY, b"SELECT 1\0"),
        codec.Message(codec.SYNC, b""),
        codec.Message(codec.TERMINATE, b""),
    ]
    assert reader.buffered() == 0


def test_reader_keeps_partial_tail() -> None:
    reader = codec.MessageReader(1024)
    reader.feed(codec.sync() + codec.query("x")[:3])
    assert reader.next_message() == codec.Message(codec.SYNC, b"")
    assert reader.next_message() is None
    assert reader.buffered() == 3
    assert reader.rest() == codec.query("x")[:3]
    assert reader.buffered() == 0


@pytest.mark.parametrize("length", [-5, 0, 3])
def test_length_below_four_is_a_protocol_error_and_sticks(length: int) -> None:
    reader = codec.MessageReader(1024)
    reader.feed(struct.pack("!Bi", ord("Q"), length))
    with pytest.raises(codec.ProtocolError, match="invalid message length"):
        reader.next_message()
    reader.feed(codec.sync())
    with pytest.raises(codec.ProtocolError):
        reader.next_message()


def test_cap_is_checked_from_the_header_alone() -> None:
    reader = codec.MessageReader(100)
    reader.feed(struct.pack("!Bi", ord("Q"), 101))  # no body yet
    with pytest.raises(codec.MessageTooLarge) as info:
        reader.next_message()
    assert info.value.sqlstate == "08P01"
    assert isinstance(info.value, codec.ProtocolError)


def test_message_exactly_at_the_cap_is_read() -> None:
    body = b"x" * 95 + b"\0"
    reader = codec.MessageReader(100)
    reader.feed(codec.encode(codec.QUERY, body))
    assert reader.next_message() == codec.Message(codec.QUERY, body)


def test_direction_type_sets() -> None:
    assert codec.QUERY in codec.FRONTEND_TYPES and codec.QUERY not in codec.BACKEND_TYPES
    assert codec.COPY_DATA in codec.FRONTEND_TYPES and codec.COPY_DATA in codec.BACKEND_TYPES
    assert codec.CLOSE == codec.COMMAND_COMPLETE == ord("C")
    assert codec.READY_FOR_QUERY in codec.BACKEND_TYPES


def test_large_stream_compacts_buffer() -> None:
    reader = codec.MessageReader(1 << 16)
    one = codec.query("SELECT 1")
    for _ in range(2000):
        reader.feed(one)
        assert reader.next_message() is not None
    assert reader.buffered() == 0


def test_messages_returns_every_whole_message_then_the_error() -> None:
    reader = codec.MessageReader(64)
    reader.feed(codec.sync() + codec.flush() + struct.pack("!Bi", ord("Q"), 65) + b"x")
    assert reader.messages() == [
        codec.Message(codec.SYNC, b""),
        codec.Message(codec.FLUSH, b""),
    ]
    with pytest.raises(codec.MessageTooLarge):
        reader.messages()
    with pytest.raises(codec.MessageTooLarge):
        reader.next_message()


def test_messages_keeps_partial_tail() -> None:
    reader = codec.MessageReader(64)
    raw = codec.query("SELECT 1")
    reader.feed(raw + raw[:4])
    assert reader.messages() == [codec.Message(codec.QUERY, b"SELECT 1\0")]
    assert reader.messages() == []
    reader.feed(raw[4:])
    assert reader.messages() == [codec.Message(codec.QUERY, b"SELECT 1\0")]
    assert reader.buffered() == 0


def test_frames_are_one_block_and_where_each_message_lies_in_it() -> None:
    reader = codec.MessageReader(64)
    query, sync = codec.query("SELECT 1"), codec.sync()
    reader.feed(query + sync + query[:3])
    block, frames = reader.frames()
    assert block == query + sync
    assert frames == [
        (codec.QUERY, 0, len(query)),
        (codec.SYNC, len(query), len(query) + len(sync)),
    ]
    assert reader.frames() == (b"", []) and reader.buffered() == 3
    reader.feed(query[3:])
    assert reader.frames() == (query, [(codec.QUERY, 0, len(query))])
    assert reader.buffered() == 0


def test_frames_hand_over_the_whole_messages_before_a_bad_header() -> None:
    reader = codec.MessageReader(64)
    reader.feed(codec.sync() + struct.pack("!Bi", ord("Q"), 65) + b"x")
    assert reader.frames() == (codec.sync(), [(codec.SYNC, 0, 5)])
    with pytest.raises(codec.MessageTooLarge):
        reader.frames()
    with pytest.raises(codec.MessageTooLarge):
        reader.frames()


def test_repr_never_shows_a_body() -> None:
    msg = codec.Message(codec.PASSWORD, b"eyJ.secret-token\0")
    assert "secret" not in repr(msg)
    assert repr(msg) == "Message('p', 17 bytes)"
    cancel = codec.CancelRequest(7, b"k3y!")
    assert "k3y" not in repr(cancel)
