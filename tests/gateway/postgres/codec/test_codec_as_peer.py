"""The codec's encoders on the wire, each side judged by the real peer.

As a client: a raw socket session built only from the codec's frontend encoders (md5 login,
extended protocol with named statements and portals, row-limited Execute, Flush, COPY with
CopyDone and CopyFail, FunctionCall) against the ``pg_server`` fixture, whose answers the
backend decoders read. As a server: a small server made only of the backend encoders
(cleartext login, NegotiateProtocolVersion, ParameterStatus, BackendKeyData, rows, a
notice, an ErrorResponse with detail and hint) that libpq (psycopg 3) must accept.
"""

from __future__ import annotations

import hashlib
import socket
import struct
import threading
import uuid
from collections.abc import Iterator

import psycopg
import pytest

from lockgate.gateway.postgres import codec
from tests.pgserver import PgServer


class RawClient:
    def __init__(self, host: str, port: int) -> None:
        self.sock = socket.create_connection((host, port), timeout=10)
        self.reader = codec.MessageReader(1 << 20)

    def send(self, *parts: bytes) -> None:
        self.sock.sendall(b"".join(parts))

    def receive(self) -> codec.Message:
        while (msg := self.reader.next_message()) is None:
            data = self.sock.recv(65536)
            assert data, "server closed the connection"
            self.reader.feed(data)
        return msg

    def until_ready(self) -> list[codec.Message]:
        out = []
        while (msg := self.receive()).type != codec.READY_FOR_QUERY:
            out.append(msg)
        assert codec.decode_ready_for_query(msg.body) == "I"
        return out

    def close(self) -> None:
        self.send(codec.terminate())
        self.sock.close()


def _types(messages: list[codec.Message]) -> str:
    return "".join(chr(m.type) for m in messages)


@pytest.fixture
def raw_client(pg_server: PgServer) -> Iterator[RawClient]:
    user = f"codec_raw_{uuid.uuid4().hex[:8]}"
    pg_server.create_user(user, "raw-secret", method="md5")
    client = RawClient(pg_server.host, pg_server.port)
    client.send(codec.startup_message({"user": user, "database": "postgres"}))
    auth = codec.decode_authentication(client.receive().body)
    assert auth.code == codec.AUTH_MD5_PASSWORD
    inner = hashlib.md5(b"raw-secret" + user.encode(), usedforsecurity=False).hexdigest()
    digest = hashlib.md5(inner.encode() + auth.data, usedforsecurity=False).hexdigest()
    client.send(codec.password_message("md5" + digest))
    login = client.until_ready()
    assert codec.decode_authentication(login[0].body) == codec.Authentication(codec.AUTH_OK, b"")
    params = dict(
        codec.decode_parameter_status(m.body) for m in login if m.type == codec.PARAMETER_STATUS
    )
    assert params["client_encoding"] == "UTF8"
    try:
        yield client
    finally:
        client.close()


def _int4(value: int) -> bytes:
    return struct.pack("!i", value)


def test_extended_protocol_statements_and_portals(raw_client: RawClient) -> None:
    raw_client.send(
        codec.encode_message(codec.Parse("s1", "SELECT $1::int + 1 AS n", (23,))),
        codec.encode_message(codec.Describe("S", "s1")),
        codec.encode_message(codec.Bind("p1", "s1", (1,), (_int4(41),), (1,))),
        codec.encode_message(codec.Describe("P", "p1")),
        codec.encode_message(codec.Execute("p1", 0)),
        codec.encode_message(codec.Close("P", "p1")),
        codec.encode_message(codec.Close("S", "s1")),
        codec.sync(),
    )
    got = raw_client.until_ready()
    assert _types(got) == "1tT2TDC33"
    assert codec.decode_parameter_description(got[1].body) == (23,)
    (field,) = codec.decode_row_description(got[2].body)
    assert (field.name, field.type_oid, field.format) == ("n", 23, 0)
    assert codec.decode_row_description(got[4].body)[0].format == 1
    assert codec.decode_data_row(got[5].body) == (_int4(42),)
    assert codec.decode_command_complete(got[6].body) == "SELECT 1"


def test_row_limited_execute_and_flush(raw_client: RawClient) -> None:
    raw_client.send(
        codec.encode_message(codec.Parse("", "SELECT generate_series(1, 5)", ())),
        codec.flush(),
    )
    assert raw_client.receive().type == codec.PARSE_COMPLETE  # flushed before any Sync
    raw_client.send(
        codec.encode_message(codec.Bind("", "", (), (), ())),
        codec.encode_message(codec.Execute("", 2)),
        codec.encode_message(codec.Execute("", 2)),
        codec.encode_message(codec.Execute("", 0)),
        codec.sync(),
    )
    got = raw_client.until_ready()
    assert _types(got) == "2DDsDDsDC"
    rows = [codec.decode_data_row(m.body) for m in got if m.type == codec.DATA_ROW]
    assert rows == [(str(i).encode(),) for i in range(1, 6)]
    assert codec.rows_affected(codec.decode_command_complete(got[-1].body)) is not None


def test_copy_done_copy_fail_and_function_call(raw_client: RawClient) -> None:
    raw_client.send(codec.query("CREATE TEMP TABLE codec_copy (x int)"))
    raw_client.until_ready()

    raw_client.send(codec.query("COPY codec_copy FROM STDIN"))
    assert raw_client.receive().type == codec.COPY_IN_RESPONSE
    raw_client.send(codec.copy_data(b"1\n2\n"), codec.copy_data(b"3\n"), codec.copy_done())
    (done,) = raw_client.until_ready()
    assert codec.rows_affected(codec.decode_command_complete(done.body)) == 3

    raw_client.send(codec.query("COPY codec_copy FROM STDIN"))
    response = raw_client.receive()
    assert codec.decode_copy_response(response.body) == (0, (0,))
    raw_client.send(codec.copy_data(b"4\n"), codec.copy_fail("stopped by the client"))
    (error,) = raw_client.until_ready()
    fields = codec.decode_error_fields(error.body)
    assert fields["C"] == "57014" and "stopped by the client" in fields["M"]

    raw_client.send(codec.query("COPY codec_copy TO STDOUT"))
    got = raw_client.until_ready()
    assert _types(got) == "HdddcC"
    assert b"".join(codec.Message(*m).body for m in got[1:4]) == b"1\n2\n3\n"

    # int4pl (OID 177) through the fast-path interface: binary arguments and result.
    call = codec.FunctionCall(177, (1,), (_int4(2), _int4(3)), 1)
    raw_client.send(codec.encode_message(call))
    (result,) = raw_client.until_ready()
    assert result.type == codec.FUNCTION_CALL_RESPONSE
    assert codec.decode_function_call_response(result.body) == _int4(5)


def test_malformed_message_gets_the_servers_protocol_violation(raw_client: RawClient) -> None:
    # A Describe with a bad subtype: the server refuses it as the codec does.
    raw_client.send(codec.encode(codec.DESCRIBE, b"X\0"), codec.sync())
    (error,) = raw_client.until_ready()
    assert codec.decode_error_fields(error.body)["C"] == "08P01"
    with pytest.raises(codec.ProtocolError):
        codec.decode_describe(b"X\0")


class CodecServer:
    """One-connection server speaking only through the codec's backend encoders."""

    def __init__(self) -> None:
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port: int = self.listener.getsockname()[1]
        self.startup: list[codec.StartupPacket] = []
        self.client: list[codec.Message] = []
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        conn, _ = self.listener.accept()
        with conn:
            packets = codec.StartupReader()
            while not isinstance(self.startup[-1:] and self.startup[-1], codec.StartupMessage):
                packet = packets.next_packet()
                if packet is None:
                    packets.feed(conn.recv(65536))
                    continue
                self.startup.append(packet)
                if isinstance(packet, codec.SSLRequest | codec.GSSENCRequest):
                    conn.sendall(b"N")
            start = self.startup[-1]
            assert isinstance(start, codec.StartupMessage)
            if start.version != (3, 0):
                conn.sendall(codec.negotiate_protocol_version(0, []))
            conn.sendall(codec.authentication_cleartext_password())
            reader = codec.MessageReader(1 << 20)
            reader.feed(packets.rest())
            for msg in self._messages(conn, reader):
                self.client.append(msg)
                if msg.type == codec.PASSWORD:
                    conn.sendall(
                        codec.authentication_ok()
                        + codec.parameter_status("server_version", "15.99")
                        + codec.parameter_status("client_encoding", "UTF8")
                        + codec.parameter_status("standard_conforming_strings", "on")
                        + codec.parameter_status("integer_datetimes", "on")
                        + codec.backend_key_data(4242, b"\x01\x02\x03\x04")
                        + codec.ready_for_query("I")
                    )
                elif msg.type == codec.QUERY:
                    conn.sendall(self._answer(codec.decode_query(msg.body)))
                elif msg.type == codec.TERMINATE:
                    return

    @staticmethod
    def _messages(conn: socket.socket, reader: codec.MessageReader) -> Iterator[codec.Message]:
        while True:
            yield from reader.messages()
            data = conn.recv(65536)
            if not data:
                return
            reader.feed(data)

    @staticmethod
    def _answer(sql: str) -> bytes:
        if sql == "denied":
            return codec.error_response(
                "42501", "access denied by policy", detail="no rule matches", hint="ask"
            ) + codec.ready_for_query("I")
        if sql == "":
            return codec.empty_query_response() + codec.ready_for_query("I")
        return (
            codec.notice_response("01000", "a notice first")
            + codec.row_description([("id", 23), ("name", 25)])
            + codec.data_row([b"1", "é".encode()])
            + codec.data_row([b"2", None])
            + codec.command_complete("SELECT 2")
            + codec.ready_for_query("I")
        )


@pytest.mark.parametrize("protocol", ["3.0", "3.2"])
def test_libpq_accepts_what_the_backend_encoders_write(protocol: str) -> None:
    if protocol == "3.2" and psycopg.pq.version() < 180000:
        pytest.skip("libpq older than 18 cannot ask for protocol 3.2")
    server = CodecServer()
    info = (
        f"host=127.0.0.1 port={server.port} user=task dbname=warehouse password=tok "
        f"sslmode=prefer gssencmode=disable connect_timeout=10"
    )
    if protocol == "3.2":
        info += " max_protocol_version=3.2"
    notices: list[str | None] = []  # a Diagnostic is only readable inside the handler
    with psycopg.connect(info, autocommit=True) as conn:
        conn.add_notice_handler(lambda diag: notices.append(diag.message_primary))
        assert conn.info.backend_pid == 4242
        assert conn.info.parameter_status("server_version") == "15.99"
        with psycopg.ClientCursor(conn) as cur:
            cur.execute("SELECT rows")
            assert cur.fetchall() == [(1, "é"), (2, None)]
            assert cur.rowcount == 2
            with pytest.raises(psycopg.errors.InsufficientPrivilege) as info_:
                cur.execute("denied")
    server.thread.join(10)
    diag = info_.value.diag
    assert (diag.message_primary, diag.message_detail, diag.message_hint) == (
        "access denied by policy",
        "no rule matches",
        "ask",
    )
    assert diag.severity_nonlocalized == "ERROR"
    assert notices == ["a notice first"]
    start = server.startup[-1]
    assert isinstance(start, codec.StartupMessage)
    assert start.version == ((3, 2) if protocol == "3.2" else (3, 0))
    assert start.params["database"] == "warehouse"
    assert codec.decode_password(server.client[0].body) == "tok"
