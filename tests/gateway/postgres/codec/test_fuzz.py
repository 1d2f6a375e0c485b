"""Property-based tests of the PostgreSQL codec.

(a) decode(encode(x)) == x for every message with arbitrary field values;
(b) the readers split any concatenation of encoded messages, fed in arbitrary chunks, into
    exactly those messages;
(c) arbitrary bytes raise nothing but ProtocolError, and a drained reader never holds more
    than one message under the cap.
"""

from __future__ import annotations

import contextlib
import itertools
from collections.abc import Callable
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from lockgate.gateway.postgres import codec

FAST = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])

wire_text = st.text(st.characters(exclude_categories=["Cs"], exclude_characters="\0"))
int16 = st.integers(-(2**15), 2**15 - 1)
int32 = st.integers(-(2**31), 2**31 - 1)
uint32 = st.integers(0, 2**32 - 1)
value = st.none() | st.binary(max_size=64)
values = st.lists(value, max_size=8).map(tuple)
int16s = st.lists(int16, max_size=8).map(tuple)
kind = st.sampled_from(["S", "P"])
cancel_key = st.binary(min_size=4, max_size=256)


def _body(raw: bytes) -> bytes:
    reader = codec.MessageReader(1 << 24)
    reader.feed(raw)
    msg = reader.next_message()
    assert msg is not None and reader.buffered() == 0
    return msg.body


def _error_response_fields(body: bytes) -> tuple[str | None, ...]:
    fields = codec.decode_error_fields(body)
    return tuple(fields.get(code) for code in "CMVDH")


# (strategy of a value, encoder value -> bytes, decoder body -> value)
Case = tuple[st.SearchStrategy[Any], Callable[[Any], bytes], Callable[[bytes], Any]]
CASES: dict[str, Case] = {
    "query": (wire_text, codec.query, codec.decode_query),
    "parse": (
        st.builds(codec.Parse, wire_text, wire_text, st.lists(uint32, max_size=8).map(tuple)),
        codec.encode_message,
        codec.decode_parse,
    ),
    "bind": (
        st.builds(codec.Bind, wire_text, wire_text, int16s, values, int16s),
        codec.encode_message,
        codec.decode_bind,
    ),
    "execute": (
        st.builds(codec.Execute, wire_text, int32),
        codec.encode_message,
        codec.decode_execute,
    ),
    "describe": (
        st.builds(codec.Describe, kind, wire_text),
        codec.encode_message,
        codec.decode_describe,
    ),
    "close": (st.builds(codec.Close, kind, wire_text), codec.encode_message, codec.decode_close),
    "function_call": (
        st.builds(codec.FunctionCall, uint32, int16s, values, int16),
        codec.encode_message,
        codec.decode_function_call,
    ),
    "password": (wire_text, codec.password_message, codec.decode_password),
    "sasl_initial": (
        st.tuples(wire_text, value),
        lambda v: codec.sasl_initial_response(*v),
        codec.decode_sasl_initial_response,
    ),
    "sasl_response": (st.binary(), codec.sasl_response, codec.decode_sasl_response),
    "copy_fail": (wire_text, codec.copy_fail, codec.decode_copy_fail),
    "authentication": (
        st.builds(codec.Authentication, st.sampled_from([10, 11, 12, 99]), st.binary())
        | st.builds(codec.Authentication, st.sampled_from([0, 3]), st.just(b""))
        | st.builds(codec.Authentication, st.just(5), st.binary(min_size=4, max_size=4)),
        codec.encode_authentication,
        codec.decode_authentication,
    ),
    "sasl_mechanisms": (
        st.lists(wire_text.filter(bool), max_size=4),
        codec.authentication_sasl,
        lambda body: codec.sasl_mechanisms(codec.decode_authentication(body).data),
    ),
    "error_fields": (
        st.dictionaries(
            st.characters(exclude_categories=["Cs"], exclude_characters="\0", max_codepoint=127),
            wire_text,
        ),
        lambda f: codec.encode_error_fields(codec.ERROR_RESPONSE, f),
        codec.decode_error_fields,
    ),
    "error_response": (
        st.tuples(wire_text, wire_text, wire_text, st.none() | wire_text, st.none() | wire_text),
        lambda v: codec.error_response(v[0], v[1], severity=v[2], detail=v[3], hint=v[4]),
        _error_response_fields,
    ),
    "command_complete": (wire_text, codec.command_complete, codec.decode_command_complete),
    "ready_for_query": (
        st.sampled_from("ITE"),
        codec.ready_for_query,
        codec.decode_ready_for_query,
    ),
    "parameter_status": (
        st.tuples(wire_text, wire_text),
        lambda v: codec.parameter_status(*v),
        codec.decode_parameter_status,
    ),
    "backend_key_data": (
        st.tuples(int32, cancel_key),
        lambda v: codec.backend_key_data(*v),
        codec.decode_backend_key_data,
    ),
    "notification": (
        st.tuples(int32, wire_text, wire_text),
        lambda v: codec.notification(*v),
        codec.decode_notification,
    ),
    "data_row": (values, codec.data_row, codec.decode_data_row),
    "copy_response": (
        st.tuples(st.integers(0, 255), int16s),
        lambda v: codec.copy_response(codec.COPY_OUT_RESPONSE, *v),
        codec.decode_copy_response,
    ),
    "row_description": (
        st.lists(
            st.builds(codec.Field, wire_text, uint32, int16, uint32, int16, int32, int16),
            max_size=6,
        ).map(tuple),
        codec.encode_row_description,
        codec.decode_row_description,
    ),
    "parameter_description": (
        st.lists(uint32, max_size=8).map(tuple),
        codec.parameter_description,
        codec.decode_parameter_description,
    ),
    "negotiate_protocol_version": (
        st.tuples(st.integers(0, 0xFFFF), st.lists(wire_text, max_size=4)),
        lambda v: codec.negotiate_protocol_version(*v),
        codec.decode_negotiate_protocol_version,
    ),
    "function_call_response": (
        value,
        codec.function_call_response,
        codec.decode_function_call_response,
    ),
}


@st.composite
def _case_value(draw: st.DrawFn) -> tuple[str, Any]:
    name = draw(st.sampled_from(sorted(CASES)))
    return name, draw(CASES[name][0])


@FAST
@given(_case_value())
def test_round_trip_every_message(case: tuple[str, Any]) -> None:
    name, original = case
    _, encode, decode = CASES[name]
    assert decode(_body(encode(original))) == original


startup_params = st.dictionaries(wire_text.filter(bool), wire_text, max_size=6)
startup_packets = st.one_of(
    st.just(codec.SSLRequest()),
    st.just(codec.GSSENCRequest()),
    st.builds(codec.CancelRequest, int32, cancel_key),
    st.builds(codec.StartupMessage, st.tuples(st.just(3), st.integers(0, 0xFFFF)), startup_params),
).filter(lambda p: len(codec.encode_startup_packet(p)) <= codec.MAX_STARTUP_PACKET)


@FAST
@given(startup_packets)
def test_round_trip_startup_packets(packet: codec.StartupPacket) -> None:
    reader = codec.StartupReader()
    reader.feed(codec.encode_startup_packet(packet))
    assert reader.next_packet() == packet
    assert reader.rest() == b""


def _chunks(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({c % (len(data) + 1) for c in cuts} | {0, len(data)})
    return [data[a:b] for a, b in itertools.pairwise(points)]


encoded_messages = st.lists(_case_value().map(lambda case: CASES[case[0]][1](case[1])), max_size=12)


@FAST
@given(encoded_messages, st.lists(st.integers(0, 10_000), max_size=20), st.booleans())
def test_reader_splits_any_chunking(raws: list[bytes], cuts: list[int], batch: bool) -> None:
    stream = b"".join(raws)
    reader = codec.MessageReader(1 << 24)
    got: list[bytes] = []
    for chunk in _chunks(stream, cuts):
        reader.feed(chunk)
        if batch:
            got.extend(msg.encode() for msg in reader.messages())
        while (msg := reader.next_message()) is not None:
            got.append(msg.encode())
    assert got == raws
    assert reader.buffered() == 0


@FAST
@given(
    st.lists(st.sampled_from([codec.SSLRequest(), codec.GSSENCRequest()]), max_size=3),
    startup_packets.filter(lambda p: isinstance(p, codec.StartupMessage | codec.CancelRequest)),
    encoded_messages,
    st.lists(st.integers(0, 10_000), max_size=20),
)
def test_startup_reader_splits_any_chunking(
    requests: list[codec.StartupPacket],
    final: codec.StartupPacket,
    after: list[bytes],
    cuts: list[int],
) -> None:
    packets = [*requests, final]
    stream = b"".join(codec.encode_startup_packet(p) for p in packets) + b"".join(after)
    reader = codec.StartupReader()
    got: list[codec.StartupPacket] = []
    for chunk in _chunks(stream, cuts):
        reader.feed(chunk)
        while got[-1:] != [final] and (packet := reader.next_packet()) is not None:
            got.append(packet)
    assert got == packets
    assert reader.rest() == b"".join(after)


CAP = 512
DECODERS: list[Callable[[bytes], object]] = [case[2] for case in CASES.values()] + [
    lambda body: codec.rows_affected(codec.decode_command_complete(body)),
    lambda body: codec.decode_empty(body, "Sync"),
]


@FAST
@given(st.binary(max_size=2048), st.lists(st.integers(0, 4096), max_size=16), st.booleans())
def test_arbitrary_bytes_only_raise_protocol_error(
    data: bytes, cuts: list[int], batch: bool
) -> None:
    reader = codec.MessageReader(CAP)
    try:
        for chunk in _chunks(data, cuts):
            reader.feed(chunk)
            batched = reader.messages() if batch else []
            while (msg := reader.next_message()) is not None:
                batched.append(msg)
            assert all(len(msg.body) <= CAP - 4 for msg in batched)
            # Drained: what is left is one partial message under the cap.
            assert reader.buffered() <= CAP
    except codec.ProtocolError:
        pass


@FAST
@given(st.binary(max_size=512))
def test_arbitrary_bodies_only_raise_protocol_error(body: bytes) -> None:
    for decode in DECODERS:
        with contextlib.suppress(codec.ProtocolError):
            decode(body)


@FAST
@given(st.binary(max_size=12_000), st.lists(st.integers(0, 12_000), max_size=16))
def test_arbitrary_startup_bytes_only_raise_protocol_error(data: bytes, cuts: list[int]) -> None:
    reader = codec.StartupReader()
    try:
        for chunk in _chunks(data, cuts):
            reader.feed(chunk)
            while (packet := reader.next_packet()) is not None:
                if isinstance(packet, codec.StartupMessage | codec.CancelRequest):
                    reader.rest()
                    return
            assert reader.buffered() < codec.MAX_STARTUP_PACKET
    except codec.ProtocolError:
        pass


@FAST
@given(
    _case_value().map(lambda case: CASES[case[0]][1](case[1])),
    st.integers(0, 2**16),
    st.integers(0, 255),
)
def test_mutated_messages_only_raise_protocol_error(raw: bytes, pos: int, byte: int) -> None:
    # One flipped byte inside a valid message: still only ProtocolError from any decoder.
    body = bytearray(_body(raw))
    if body:
        body[pos % len(body)] = byte
    for decode in DECODERS:
        with contextlib.suppress(codec.ProtocolError):
            decode(bytes(body))


@FAST
@given(startup_packets, st.integers(0, 2**16), st.integers(0, 255))
def test_mutated_startup_packets_decode_or_raise_protocol_error(
    packet: codec.StartupPacket, pos: int, byte: int
) -> None:
    raw = bytearray(codec.encode_startup_packet(packet))
    raw[pos % len(raw)] = byte
    reader = codec.StartupReader()
    reader.feed(bytes(raw))
    try:
        got = reader.next_packet()
    except codec.ProtocolError:
        return
    if got is not None:
        # Whatever decoded re-encodes to the very bytes it came from.
        consumed = len(raw) - reader.buffered()
        assert codec.encode_startup_packet(got) == bytes(raw[:consumed])


@FAST
@given(st.binary(max_size=64), st.binary(max_size=64))
def test_string_fields_with_any_bytes(first: bytes, second: bytes) -> None:
    # Raw bytes where text belongs: either valid UTF-8 that round-trips, or ProtocolError.
    body = first.replace(b"\0", b"") + b"\0" + second.replace(b"\0", b"") + b"\0"
    try:
        name, value = codec.decode_parameter_status(body)
    except codec.ProtocolError:
        return
    assert codec.parameter_status(name, value)[5:] == body
