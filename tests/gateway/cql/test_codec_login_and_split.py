"""The codec's login state machines and its frame splitter, bytes and events only (no I/O).

Oracle for the frames: the cassandra-driver's own encoder/decoder (``cassandra.protocol``).
"""

from __future__ import annotations

import struct

import pytest
from cassandra import protocol as dp

from lockgate.gateway.cql import codec

OPTIONS = {"CQL_VERSION": ["3.4.4"], "PROTOCOL_VERSIONS": ["4/v4"], "COMPRESSION": []}
AUTHENTICATOR = "org.apache.cassandra.auth.PasswordAuthenticator"


def server_login() -> codec.ServerHandshake:
    return codec.ServerHandshake(supported=OPTIONS, authenticator=AUTHENTICATOR)


def decoded(frame: bytes) -> codec.Event:
    """A frame the gateway sends to a client, read back as the client reads it."""
    conn = codec.Connection(codec.Role.CLIENT)
    conn.receive_data(frame)
    event = conn.next_event()
    assert isinstance(event, codec.Event)
    return event


def driver_decoded(frame: bytes) -> object:
    """The same frame as the cassandra-driver decodes it."""
    version, flags, stream, opcode, _ = struct.unpack(">BBhBi", frame[:9])
    return dp.ProtocolHandler.decode_message(
        version & 0x7F, {}, stream, flags, opcode, frame[9:], None, None
    )


# -- server side --------------------------------------------------------------------------------
def test_server_login_in_order() -> None:
    login = server_login()
    step = login.receive(codec.Options(stream=1))
    assert isinstance(step, codec.Reply)
    supported = driver_decoded(step.data)
    assert isinstance(supported, dp.SupportedMessage)
    assert supported.cql_versions == ["3.4.4"]
    step = login.receive(codec.Startup(stream=2, options={"CQL_VERSION": "3.0.0"}))
    assert isinstance(step, codec.Reply)
    authenticate = driver_decoded(step.data)
    assert isinstance(authenticate, dp.AuthenticateMessage)
    assert authenticate.authenticator == AUTHENTICATOR
    token = codec.plain_token("cass", "the-token")
    step = login.receive(codec.AuthResponse(stream=3, token=token))
    assert step == codec.Login(3, "cass", "the-token")
    assert "the-token" not in repr(step)  # a password never reaches a log line via repr
    assert not login.done
    success = decoded(login.accept())
    assert isinstance(success, codec.AuthSuccess) and success.stream == 3
    assert login.done
    with pytest.raises(RuntimeError):
        login.receive(codec.Options(stream=4))


def test_server_login_refuses_compression_as_negotiation() -> None:
    step = server_login().receive(codec.Startup(stream=1, options={"COMPRESSION": "lz4"}))
    assert isinstance(step, codec.Refused) and step.reason is None
    error = decoded(step.data)
    assert isinstance(error, codec.Error) and error.code == codec.ERR_PROTOCOL
    assert "compression" in error.message


@pytest.mark.parametrize(
    "event",
    [
        codec.Query(stream=5, query="SELECT * FROM ks.t"),
        codec.AuthResponse(stream=5, token=codec.plain_token("cass", "t")),  # before STARTUP
        codec.Register(stream=5, event_types=["SCHEMA_CHANGE"]),
    ],
)
def test_server_login_refuses_requests_before_the_login(event: codec.Event) -> None:
    step = server_login().receive(event)
    assert isinstance(step, codec.Refused) and step.reason == "unauthenticated_request"
    error = decoded(step.data)
    assert isinstance(error, codec.Error) and error.stream == 5
    assert "before authentication" in error.message


@pytest.mark.parametrize("token", [None, b"", b"no-nul", b"\0user", b"\0\xff\0pw", b"a\0b\0c\0d"])
def test_malformed_plain_response_yields_no_credentials(token: bytes | None) -> None:
    login = server_login()
    login.receive(codec.Startup(stream=1))
    step = login.receive(codec.AuthResponse(stream=2, token=token))
    assert step == codec.Login(2, None, None)
    error = decoded(login.reject(codec.ERR_BAD_CREDENTIALS, "bad"))
    assert isinstance(error, codec.Error) and error.code == codec.ERR_BAD_CREDENTIALS
    assert error.stream == 2
    with pytest.raises(RuntimeError):
        login.accept()


def test_server_login_answers_only_a_login_it_handed_out() -> None:
    with pytest.raises(RuntimeError):
        server_login().accept()


# -- client side --------------------------------------------------------------------------------
def test_client_login_with_plain() -> None:
    login = codec.ClientHandshake("lockgate", "pw")
    node = codec.Connection(codec.Role.SERVER)  # what the node reads
    node.receive_data(login.start())
    startup = node.next_event()
    assert isinstance(startup, codec.Startup)
    assert startup.options == {"CQL_VERSION": codec.handshake.CQL_VERSION}
    reply = login.receive(codec.Authenticate(authenticator=AUTHENTICATOR))
    assert reply is not None
    node.receive_data(reply)
    auth = node.next_event()
    assert isinstance(auth, codec.AuthResponse) and auth.token == b"\0lockgate\0pw"
    assert login.receive(codec.AuthSuccess()) is None and login.done


def test_client_login_accepts_a_node_without_authenticator() -> None:
    login = codec.ClientHandshake("lockgate", "pw")
    login.start()
    assert login.receive(codec.Ready()) is None and login.done


@pytest.mark.parametrize(
    ("answers", "reason"),
    [
        ([codec.Error(code=0x0100, message="bad")], "unexpected answer to STARTUP: error 0x0100"),
        ([codec.Authenticate(), codec.AuthChallenge(token=b"x")], "only SASL PLAIN"),
        (
            [codec.Authenticate(), codec.Error(code=0x0100, message="no")],
            "login as 'lockgate' refused: error 0x0100 no",
        ),
    ],
)
def test_client_login_refusals_name_no_secret(answers: list[codec.Event], reason: str) -> None:
    login = codec.ClientHandshake("lockgate", "s3cret")
    login.start()
    with pytest.raises(codec.LoginRefused) as refused:
        for answer in answers:
            login.receive(answer)
    assert reason in str(refused.value) and "s3cret" not in str(refused.value)


# -- splitting ----------------------------------------------------------------------------------
ANSWERS = [
    codec.encode_frame(codec.Void(stream=1)),
    codec.encode_frame(codec.SetKeyspace(stream=2, keyspace="ks")),
    codec.encode_frame(codec.Error(stream=3, code=codec.ERR_INVALID, message="no")),
    codec.encode_frame(codec.Void(stream=4, warnings=["w"])),
]


def test_split_at_every_byte_offset_keeps_frames_whole() -> None:
    data = b"".join(ANSWERS)
    for cut in range(len(data) + 1):
        conn = codec.Connection(codec.Role.CLIENT)
        frames: list[codec.Frame] = []
        for part in (data[:cut], data[cut:]):
            if part:
                conn.receive_data(part)
            while (frame := conn.next_frame()) is not codec.NEED_DATA:
                assert isinstance(frame, codec.Frame)
                frames.append(frame)
        assert [f.raw for f in frames] == ANSWERS
        assert [f.stream for f in frames] == [1, 2, 3, 4]
        assert conn.buffered == 0


def test_result_kind_only_for_a_plain_result() -> None:
    conn = codec.Connection(codec.Role.CLIENT)
    conn.receive_data(b"".join(ANSWERS))
    frames = [conn.next_frame() for _ in ANSWERS]
    kinds = [f.result_kind for f in frames if isinstance(f, codec.Frame)]
    # the last Void carries warnings before its kind: it must be decoded to be known
    assert kinds == [codec.RESULT_VOID, codec.RESULT_SET_KEYSPACE, None, None]
    last = frames[-1]
    assert isinstance(last, codec.Frame)
    assert isinstance(conn.decode(last), codec.Void)


def test_a_frame_that_does_not_decode_leaves_the_split_going() -> None:
    broken = struct.pack(">BBhBi", 0x84, 0, 7, codec.RESULT, 4) + struct.pack(">i", 99)
    unknown_opcode = struct.pack(">BBhBi", 0x84, 0, 8, 0x42, 0)
    conn = codec.Connection(codec.Role.CLIENT)
    conn.receive_data(broken + unknown_opcode + ANSWERS[0])
    for _ in range(2):
        frame = conn.next_frame()
        assert isinstance(frame, codec.Frame)
        with pytest.raises(codec.CqlProtocolError):
            conn.decode(frame)
    frame = conn.next_frame()
    assert isinstance(frame, codec.Frame) and isinstance(conn.decode(frame), codec.Void)


@pytest.mark.parametrize(
    "head",
    [
        struct.pack(">BBhBi", 0x04, 0, 1, codec.RESULT, 0),  # a request's direction
        struct.pack(">BBhBi", 0x84, 0, 1, codec.RESULT, -1),
        struct.pack(">BBhBi", 0x84, 0, 1, codec.RESULT, 1 << 20),  # past max_frame_bytes
    ],
)
def test_a_header_that_cannot_be_split_fails_the_connection(head: bytes) -> None:
    conn = codec.Connection(codec.Role.CLIENT, max_frame_bytes=1024)
    conn.receive_data(ANSWERS[0] + head)
    assert isinstance(conn.next_frame(), codec.Frame)  # what came before still splits
    with pytest.raises(codec.CqlProtocolError):
        conn.next_frame()
    with pytest.raises(codec.CqlProtocolError):
        conn.next_frame()  # failed for good
