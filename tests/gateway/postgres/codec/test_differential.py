# ruff: noqa: S608  (table names are generated here, not taken from input)
"""The codec against real traffic: libpq clients (psycopg 3, psql) and PostgreSQL itself.

A recording relay (:mod:`.relay`) sits between the client and the ``pg_server`` fixture.
Every captured byte of both directions is split by the codec's readers, every message is
decoded and encoded again and must give back exactly the bytes that crossed the wire, and
the decoded fields must agree with what the client saw: rows affected = ``rowcount``, the
SQLSTATE = the exception's, ``server_version`` = ``SHOW server_version``, the notification
= the one psycopg delivered, the backend pid = the connection's.
"""

from __future__ import annotations

import hashlib
import io
import os
import subprocess
import threading
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import asyncpg  # type: ignore[import-untyped]
import psycopg
import pytest

from lockgate.gateway.postgres import codec
from tests.gateway.postgres.codec.relay import Capture, RecordingRelay
from tests.pgserver import PgServer, find_pg_bin

# Each message type decodes to its own shape; the tables below pair decoder and encoder.
Decoded = Any


def _empty(type_: int) -> tuple[Callable[[bytes], Decoded], Callable[[Decoded], bytes]]:
    return (lambda body: codec.decode_empty(body, chr(type_)), lambda _: codec.encode(type_, b""))


def _raw(type_: int) -> tuple[Callable[[bytes], Decoded], Callable[[Decoded], bytes]]:
    return (lambda body: body, lambda body: codec.encode(type_, body))


def _copy_response(type_: int) -> tuple[Callable[[bytes], Decoded], Callable[[Decoded], bytes]]:
    return (codec.decode_copy_response, lambda v: codec.copy_response(type_, *v))


def _auth_encode(auth: codec.Authentication) -> bytes:
    if auth.code == codec.AUTH_SASL:
        # Through the mechanism list, so that path is checked against the server too.
        return codec.authentication_sasl(codec.sasl_mechanisms(auth.data))
    return codec.encode_authentication(auth)


# type byte -> (decode body, encode decoded value to the whole message)
FRONTEND: dict[int, tuple[Callable[[bytes], Decoded], Callable[[Decoded], bytes]]] = {
    codec.QUERY: (codec.decode_query, codec.query),
    codec.PARSE: (codec.decode_parse, codec.encode_message),
    codec.BIND: (codec.decode_bind, codec.encode_message),
    codec.EXECUTE: (codec.decode_execute, codec.encode_message),
    codec.DESCRIBE: (codec.decode_describe, codec.encode_message),
    codec.CLOSE: (codec.decode_close, codec.encode_message),
    codec.COPY_FAIL: (codec.decode_copy_fail, codec.copy_fail),
    codec.COPY_DATA: _raw(codec.COPY_DATA),
    **{t: _empty(t) for t in (codec.SYNC, codec.FLUSH, codec.TERMINATE, codec.COPY_DONE)},
}
BACKEND: dict[int, tuple[Callable[[bytes], Decoded], Callable[[Decoded], bytes]]] = {
    codec.AUTHENTICATION: (codec.decode_authentication, _auth_encode),
    codec.PARAMETER_STATUS: (
        codec.decode_parameter_status,
        lambda v: codec.parameter_status(*v),
    ),
    codec.BACKEND_KEY_DATA: (
        codec.decode_backend_key_data,
        lambda v: codec.backend_key_data(*v),
    ),
    codec.READY_FOR_QUERY: (codec.decode_ready_for_query, codec.ready_for_query),
    codec.ERROR_RESPONSE: (
        codec.decode_error_fields,
        lambda f: codec.encode_error_fields(codec.ERROR_RESPONSE, f),
    ),
    codec.NOTICE_RESPONSE: (
        codec.decode_error_fields,
        lambda f: codec.encode_error_fields(codec.NOTICE_RESPONSE, f),
    ),
    codec.COMMAND_COMPLETE: (codec.decode_command_complete, codec.command_complete),
    codec.ROW_DESCRIPTION: (codec.decode_row_description, codec.encode_row_description),
    codec.DATA_ROW: (codec.decode_data_row, codec.data_row),
    codec.PARAMETER_DESCRIPTION: (
        codec.decode_parameter_description,
        codec.parameter_description,
    ),
    codec.NOTIFICATION: (
        codec.decode_notification,
        lambda v: codec.notification(*v),
    ),
    codec.NEGOTIATE_PROTOCOL_VERSION: (
        codec.decode_negotiate_protocol_version,
        lambda v: codec.negotiate_protocol_version(*v),
    ),
    codec.FUNCTION_CALL_RESPONSE: (
        codec.decode_function_call_response,
        codec.function_call_response,
    ),
    codec.COPY_DATA: _raw(codec.COPY_DATA),
    **{
        t: _copy_response(t)
        for t in (codec.COPY_IN_RESPONSE, codec.COPY_OUT_RESPONSE, codec.COPY_BOTH_RESPONSE)
    },
    **{
        t: _empty(t)
        for t in (
            codec.EMPTY_QUERY,
            codec.PARSE_COMPLETE,
            codec.BIND_COMPLETE,
            codec.CLOSE_COMPLETE,
            codec.NO_DATA,
            codec.PORTAL_SUSPENDED,
            codec.COPY_DONE,
        )
    },
}


@dataclass
class Session:
    """One captured connection, decoded."""

    startup: list[codec.StartupPacket]
    client: list[tuple[int, Decoded]]
    server: list[tuple[int, Decoded]]
    client_types: set[int] = field(default_factory=set)
    server_types: set[int] = field(default_factory=set)

    def server_values(self, type_: int) -> list[Decoded]:
        return [value for t, value in self.server if t == type_]

    def client_values(self, type_: int) -> list[Decoded]:
        return [value for t, value in self.client if t == type_]


def _split(reader: codec.MessageReader, stream: bytes) -> list[codec.Message]:
    reader.feed(stream)
    out = []
    while (msg := reader.next_message()) is not None:
        out.append(msg)
    assert reader.buffered() == 0, "a partial message was left over"
    return out


def _password_codec(
    auth_codes: list[int], index: int
) -> tuple[Callable[[bytes], Decoded], Callable[[Decoded], bytes]]:
    # 'p' means what the server asked for: the first answer to SASL is the initial response.
    if codec.AUTH_SASL in auth_codes:
        if index == 0:
            return (
                codec.decode_sasl_initial_response,
                lambda v: codec.sasl_initial_response(*v),
            )
        return (codec.decode_sasl_response, codec.sasl_response)
    return (codec.decode_password, codec.password_message)


def decode_capture(capture: Capture) -> Session:
    """Split, decode and re-encode every byte of one connection; exact bytes or fail."""
    client_stream, server_stream = bytes(capture.client), bytes(capture.server)
    startup_reader = codec.StartupReader()
    startup_reader.feed(client_stream)
    startup: list[codec.StartupPacket] = []
    while not isinstance(startup[-1:] and startup[-1], codec.StartupMessage | codec.CancelRequest):
        packet = startup_reader.next_packet()
        assert packet is not None, "client stream ended inside the startup phase"
        startup.append(packet)
    rest = startup_reader.rest()
    assert b"".join(codec.encode_startup_packet(p) for p in startup) + rest == client_stream

    server: list[tuple[int, Decoded]] = []
    for msg in _split(codec.MessageReader(1 << 30), server_stream):
        decode, encode = BACKEND[msg.type]
        value = decode(msg.body)
        assert encode(value) == msg.encode(), f"{chr(msg.type)} did not re-encode exactly"
        server.append((msg.type, value))
    auth_codes = [a.code for t, a in server if t == codec.AUTHENTICATION]

    client: list[tuple[int, Decoded]] = []
    passwords = 0
    for msg in _split(codec.MessageReader(1 << 30), rest):
        if msg.type == codec.PASSWORD:
            decode, encode = _password_codec(auth_codes, passwords)
            passwords += 1
        else:
            decode, encode = FRONTEND[msg.type]
        value = decode(msg.body)
        assert encode(value) == msg.encode(), f"{chr(msg.type)} did not re-encode exactly"
        client.append((msg.type, value))
    return Session(startup, client, server, {t for t, _ in client}, {t for t, _ in server})


@pytest.fixture
def relay(pg_server: PgServer) -> Iterator[RecordingRelay]:
    with RecordingRelay(pg_server.host, pg_server.port) as running:
        yield running


def _conninfo(pg_server: PgServer, relay: RecordingRelay, **extra: str) -> str:
    params = {
        "host": "127.0.0.1",
        "port": str(relay.port),
        "user": pg_server.superuser,
        "password": pg_server.superpassword,
        "dbname": "postgres",
        "sslmode": "prefer",  # the relay answers 'N'
        "gssencmode": "disable",
        "application_name": "codec-differential",
        **extra,
    }
    return " ".join(f"{k}='{v}'" for k, v in params.items())


def _check_login(session: Session, pg_server: PgServer) -> None:
    assert isinstance(session.startup[0], codec.SSLRequest)
    start = session.startup[-1]
    assert isinstance(start, codec.StartupMessage)
    assert start.params["user"] == pg_server.superuser
    assert start.params["database"] == "postgres"
    auths = session.server_values(codec.AUTHENTICATION)
    first = auths[0]
    assert isinstance(first, codec.Authentication) and first.code == codec.AUTH_SASL
    assert "SCRAM-SHA-256" in codec.sasl_mechanisms(first.data)
    assert [a.code for a in auths] == [10, 11, 12, 0]
    initial = session.client_values(codec.PASSWORD)[0]
    assert initial[0] == "SCRAM-SHA-256"
    assert initial[1].startswith(b"n,,n=")


def test_psycopg_session_simple_extended_pipeline_copy_notify_errors(
    pg_server: PgServer, relay: RecordingRelay
) -> None:
    table = f"codec_diff_{uuid.uuid4().hex[:8]}"
    rowcounts: list[tuple[str, int]] = []
    sqlstates: list[tuple[str, str]] = []
    notified: list[psycopg.Notify] = []
    with psycopg.connect(_conninfo(pg_server, relay), autocommit=True) as conn:
        conn.add_notify_handler(notified.append)
        backend_pid = conn.info.backend_pid
        # simple query protocol (client-side binding)
        with psycopg.ClientCursor(conn) as cur:
            cur.execute(f"CREATE TABLE {table} (id int PRIMARY KEY, name text, blob bytea)")
            cur.execute(
                f"INSERT INTO {table} SELECT g, 'n' || g, NULL FROM generate_series(1, 5) g"
            )
            rowcounts.append(("INSERT", cur.rowcount))
            cur.execute("SHOW server_version")
            row = cur.fetchone()
            assert row is not None
            server_version = row[0]
            cur.execute("")  # EmptyQueryResponse
            cur.execute("DROP TABLE IF EXISTS codec_diff_absent")  # NoticeResponse
        cur2 = conn.cursor()
        # extended protocol, named prepared statements, binary parameters
        cur2.execute(f"UPDATE {table} SET name = %s WHERE id <= %s", ("é", 3), prepare=True)
        rowcounts.append(("UPDATE", cur2.rowcount))
        cur2.execute(f"UPDATE {table} SET blob = %b WHERE id = %s", (b"\0\xff", 4), prepare=True)
        rowcounts.append(("UPDATE", cur2.rowcount))
        cur2.execute(f"SELECT id, name, blob FROM {table} WHERE id > %s", (1,), binary=True)
        rowcounts.append(("SELECT", cur2.rowcount))
        # pipeline mode
        with conn.pipeline():
            cur2.execute(f"DELETE FROM {table} WHERE id = %s", (5,))
            cur2.execute(f"INSERT INTO {table} (id, name) VALUES (%s, %s)", (10, None))
            cur2.execute(f"SELECT count(*) FROM {table}")
        rowcounts.append(("SELECT", cur2.rowcount))
        # COPY both ways
        with cur2.copy(f"COPY {table} (id, name) FROM STDIN") as copy:
            for i in range(20, 23):
                copy.write_row((i, f"c{i}"))
        rowcounts.append(("COPY", cur2.rowcount))
        out = bytearray()
        with cur2.copy(f"COPY (SELECT id FROM {table} ORDER BY id) TO STDOUT") as copy:
            for chunk in copy:
                out += chunk
        rowcounts.append(("COPY", cur2.rowcount))
        # notifications
        cur2.execute("LISTEN codec_diff")
        cur2.execute("SELECT pg_notify('codec_diff', 'payload é')")
        # errors, extended and simple
        failing: list[tuple[str, tuple[int, ...] | None]] = [
            ("SELECT 1/0", None),
            ("SELECT 1/%s", (0,)),
            (f"INSERT INTO {table} (id) VALUES (%s)", (1,)),
            ("SELEC 1", None),
        ]
        for bad, params in failing:
            with pytest.raises(psycopg.Error) as info:
                cur2.execute(bad, params)
            assert info.value.sqlstate is not None
            sqlstates.append((info.value.sqlstate, info.value.diag.message_primary or ""))
        with pytest.raises(psycopg.Error) as info, psycopg.ClientCursor(conn) as ccur:
            ccur.execute("SELECT * FROM no_such_table_codec")
        assert info.value.sqlstate is not None
        sqlstates.append((info.value.sqlstate, info.value.diag.message_primary or ""))
        # evicting a prepared statement closes it on the server
        conn.prepared_max = 1
        cur2.execute("SELECT %s::int", (1,), prepare=True)
        cur2.execute("SELECT %s::text", ("a",), prepare=True)
        cur2.execute(f"DROP TABLE {table}")
        cur2.close()

    (session,) = [decode_capture(c) for c in relay.wait(1)]
    _check_login(session, pg_server)
    assert dict(session.server_values(codec.PARAMETER_STATUS))["server_version"] == server_version
    assert session.server_values(codec.BACKEND_KEY_DATA)[0][0] == backend_pid

    # rows affected, in order, as the client counted them
    tags = [str(tag) for tag in session.server_values(codec.COMMAND_COMPLETE)]
    counted = iter((tag.split(" ")[0], codec.rows_affected(tag)) for tag in tags)
    for expected in rowcounts:
        assert any(got == expected for got in counted), f"{expected} not among {tags}"
    assert out.decode().split() == ["1", "2", "3", "4", "10", "20", "21", "22"]

    errors = session.server_values(codec.ERROR_RESPONSE)
    assert [(e["C"], e["M"]) for e in errors] == sqlstates
    assert all(e["V"] == "ERROR" for e in errors)

    (note,) = session.server_values(codec.NOTIFICATION)
    assert note == (notified[0].pid, notified[0].channel, notified[0].payload)
    assert note == (backend_pid, "codec_diff", "payload é")

    # what each protocol path produced on the wire
    assert {codec.QUERY, codec.PARSE, codec.BIND, codec.DESCRIBE, codec.EXECUTE, codec.SYNC} <= (
        session.client_types
    )
    assert {codec.COPY_DATA, codec.COPY_DONE, codec.CLOSE, codec.TERMINATE} <= (
        session.client_types
    )
    assert {codec.CLOSE_COMPLETE, codec.NO_DATA, codec.NOTICE_RESPONSE} <= session.server_types
    assert {codec.EMPTY_QUERY, codec.COPY_IN_RESPONSE, codec.COPY_OUT_RESPONSE} <= (
        session.server_types
    )
    assert {codec.PARSE_COMPLETE, codec.BIND_COMPLETE, codec.ROW_DESCRIPTION} <= (
        session.server_types
    )
    parses = session.client_values(codec.PARSE)
    assert any(p.name and "UPDATE" in p.query for p in parses)
    binds = session.client_values(codec.BIND)
    assert any(b"\0\xff" in b.params for b in binds)
    statuses = session.server_values(codec.READY_FOR_QUERY)
    assert statuses and set(statuses) == {"I"}


def test_protocol_3_2_request_meets_negotiate_protocol_version(
    pg_server: PgServer, relay: RecordingRelay
) -> None:
    # libpq 18 asks for 3.2; a PostgreSQL 15 server answers NegotiateProtocolVersion(0).
    if psycopg.pq.version() < 180000:
        pytest.skip("libpq older than 18 cannot ask for protocol 3.2")
    info = _conninfo(pg_server, relay, max_protocol_version="3.2")
    with psycopg.connect(info, autocommit=True) as conn:
        conn.execute("SELECT 1")
    (session,) = [decode_capture(c) for c in relay.wait(1)]
    start = session.startup[-1]
    assert isinstance(start, codec.StartupMessage) and start.version == (3, 2)
    server_version = int(pg_server.psql("SHOW server_version_num").strip())
    if server_version < 180000:
        assert session.server_values(codec.NEGOTIATE_PROTOCOL_VERSION) == [(0, [])]
        assert len(session.server_values(codec.BACKEND_KEY_DATA)[0][1]) == 4


def test_psql_session_and_failed_login(pg_server: PgServer, relay: RecordingRelay) -> None:
    psql = str(find_pg_bin() / "psql")
    env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
    sql = "SELECT 1 AS one; SELECT 1/0"
    done = subprocess.run(
        [psql, "-X", "-A", "-t", "-c", sql, _conninfo(pg_server, relay)],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
        check=False,
    )
    assert done.returncode == 1
    bad = _conninfo(pg_server, relay, password="wrong")
    failed = subprocess.run(
        [psql, "-X", "-c", "SELECT 1", bad],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
        check=False,
    )
    assert failed.returncode == 2
    ok, refused = (decode_capture(c) for c in relay.wait(2))

    _check_login(ok, pg_server)
    (query,) = ok.client_values(codec.QUERY)
    assert query == sql
    assert ok.server_values(codec.COMMAND_COMPLETE) == ["SELECT 1"]
    assert ok.server_values(codec.DATA_ROW) == [(b"1",)]
    (error,) = ok.server_values(codec.ERROR_RESPONSE)
    assert error["C"] == "22012"
    assert error["M"] in done.stderr

    (fatal,) = refused.server_values(codec.ERROR_RESPONSE)
    assert fatal["V"] == "FATAL" and fatal["C"] == "28P01"
    assert fatal["M"] in failed.stderr


async def test_asyncpg_session_portals_and_statement_descriptions(
    pg_server: PgServer, relay: RecordingRelay
) -> None:
    # asyncpg is its own protocol implementation (not libpq): Describe of statements,
    # ParameterDescription, Execute with a row limit and PortalSuspended.
    conn = await asyncpg.connect(
        host="127.0.0.1",
        port=relay.port,
        user=pg_server.superuser,
        password=pg_server.superpassword,
        database="postgres",
        ssl="prefer",
    )
    try:
        stmt = await conn.prepare("SELECT $1::int + 1 AS n")
        assert await stmt.fetchval(41) == 42
        stmt_name = stmt.get_name()
        async with conn.transaction():
            seen = [r["g"] async for r in conn.cursor("SELECT generate_series(1, 7) g", prefetch=3)]
        assert seen == list(range(1, 8))
        with pytest.raises(asyncpg.PostgresError) as info:
            await conn.fetch("SELECT $1::int / 0", 1)
        sqlstate = info.value.sqlstate
        status = await conn.execute("CREATE TEMP TABLE codec_diff_tmp AS SELECT 1 AS x")
        pid = conn.get_server_pid()
    finally:
        await conn.close()

    (session,) = [decode_capture(c) for c in relay.wait(1)]
    _check_login(session, pg_server)
    assert session.server_values(codec.BACKEND_KEY_DATA)[0][0] == pid
    assert codec.Describe("S", stmt_name) in session.client_values(codec.DESCRIBE)
    assert (23,) in session.server_values(codec.PARAMETER_DESCRIPTION)
    limited = [e for e in session.client_values(codec.EXECUTE) if e.max_rows == 3]
    assert len(limited) >= 2
    assert codec.PORTAL_SUSPENDED in session.server_types
    assert [e["C"] for e in session.server_values(codec.ERROR_RESPONSE)] == [sqlstate]
    assert status in session.server_values(codec.COMMAND_COMPLETE)
    assert codec.rows_affected(status) == 1


def test_md5_login(pg_server: PgServer, relay: RecordingRelay) -> None:
    user = f"codec_md5_{uuid.uuid4().hex[:8]}"
    pg_server.create_user(user, "md5-secret", method="md5")
    info = _conninfo(pg_server, relay, user=user, password="md5-secret")
    with psycopg.connect(info, autocommit=True) as conn:
        conn.execute("SELECT 1")
    (session,) = [decode_capture(c) for c in relay.wait(1)]
    (auth, ok) = session.server_values(codec.AUTHENTICATION)
    assert auth.code == codec.AUTH_MD5_PASSWORD and len(auth.data) == 4
    assert ok == codec.Authentication(codec.AUTH_OK, b"")
    (answer,) = session.client_values(codec.PASSWORD)
    inner = hashlib.md5(b"md5-secret" + user.encode(), usedforsecurity=False).hexdigest()
    expected = hashlib.md5(inner.encode() + auth.data, usedforsecurity=False).hexdigest()
    assert answer == "md5" + expected


def test_cancel_request_carries_the_sessions_backend_key(
    pg_server: PgServer, relay: RecordingRelay
) -> None:
    with psycopg.connect(_conninfo(pg_server, relay), autocommit=True) as conn:
        timer = threading.Timer(0.5, conn.cancel_safe)
        timer.start()
        with pytest.raises(psycopg.errors.QueryCanceled) as info:
            conn.execute("SELECT pg_sleep(20)")
        timer.join()
        assert info.value.sqlstate == "57014"
    session, cancel = (decode_capture(c) for c in relay.wait(2))
    (key,) = session.server_values(codec.BACKEND_KEY_DATA)
    request = cancel.startup[-1]
    assert isinstance(request, codec.CancelRequest)
    assert (request.pid, request.secret) == key
    assert cancel.client == [] and cancel.server == []
    assert [e["C"] for e in session.server_values(codec.ERROR_RESPONSE)] == ["57014"]


def test_psycopg2_session(pg_server: PgServer, relay: RecordingRelay) -> None:
    # psycopg2 bundles its own libpq and speaks only the simple query protocol.
    import psycopg2  # type: ignore[import-untyped]
    import psycopg2.errors  # type: ignore[import-untyped]

    table = f"codec_diff2_{uuid.uuid4().hex[:8]}"
    conn = psycopg2.connect(_conninfo(pg_server, relay))
    conn.autocommit = True
    counts: list[tuple[str, int]] = []
    try:
        cur = conn.cursor()
        cur.execute(f"CREATE TEMP TABLE {table} (id int, v text)")
        cur.execute(f"INSERT INTO {table} VALUES (%s, %s), (%s, %s)", (1, "a", 2, None))
        counts.append(("INSERT", cur.rowcount))
        out = io.StringIO()
        cur.copy_expert(f"COPY {table} TO STDOUT", out)
        counts.append(("COPY", cur.rowcount))
        cur.copy_expert(f"COPY {table} FROM STDIN", io.StringIO("3\tc\n4\td\n5\te\n"))
        counts.append(("COPY", cur.rowcount))
        cur.execute(f"DELETE FROM {table} WHERE id > %s", (1,))
        counts.append(("DELETE", cur.rowcount))
        with pytest.raises(psycopg2.errors.UndefinedColumn) as info:
            cur.execute(f"SELECT nope FROM {table}")
        pgcode = info.value.pgcode
        pid = conn.get_backend_pid()
    finally:
        conn.close()
    (session,) = [decode_capture(c) for c in relay.wait(1)]
    _check_login(session, pg_server)
    assert session.server_values(codec.BACKEND_KEY_DATA)[0][0] == pid
    tags = [str(tag) for tag in session.server_values(codec.COMMAND_COMPLETE)]
    assert [(t.split(" ")[0], codec.rows_affected(t)) for t in tags[1:]] == counts
    assert out.getvalue() == "1\ta\n2\t\\N\n"
    assert [e["C"] for e in session.server_values(codec.ERROR_RESPONSE)] == [pgcode]
    assert session.client_types <= {codec.QUERY, codec.PASSWORD, codec.COPY_DATA} | {
        codec.COPY_DONE,
        codec.TERMINATE,
    }
