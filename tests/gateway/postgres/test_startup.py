"""The client's login through the postgres listener, with real clients and a real server.

psycopg 3 (libpq) logs in over TLS verify-full against the gateway's CA with a Lockgate
token as password and reads a granted table; bad tokens are refused like bad passwords
(28P01) and audited with their reason; plaintext, unknown databases, unsupported startup
parameters and bytes pipelined behind an SSLRequest are refused; GSSENCRequest gets 'N';
a protocol 3.2 StartupMessage is negotiated down to 3.0; asyncpg connects.
"""

from __future__ import annotations

import asyncio
import ssl
import struct
from collections.abc import AsyncIterator
from pathlib import Path

import asyncpg
import psycopg
import pytest

from lockgate.gateway.postgres import codec
from tests.pgserver import PgServer

from .stack import RESOURCE, PgStack, pg_stack


@pytest.fixture
async def stack(tmp_path: Path, pg_server: PgServer) -> AsyncIterator[PgStack]:
    async with pg_stack(tmp_path, pg_server) as s:
        yield s


# -- a raw protocol client for byte-level tests ------------------------------------------------
class RawClient:
    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer
        self.messages = codec.MessageReader(1 << 20)

    @classmethod
    async def open(cls, stack: PgStack, *, tls: bool = True) -> RawClient:
        reader, writer = await asyncio.open_connection("127.0.0.1", stack.port)
        client = cls(reader, writer)
        if tls:
            writer.write(codec.ssl_request())
            assert await reader.readexactly(1) == b"S"
            ctx = ssl.create_default_context(cafile=str(stack.ca_file))
            await writer.start_tls(ctx, server_hostname="127.0.0.1")
        return client

    async def recv(self, timeout: float = 5.0) -> codec.Message | None:
        """The next message; None when the gateway closed the connection."""
        async with asyncio.timeout(timeout):
            while (msg := self.messages.next_message()) is None:
                data = await self.reader.read(65536)
                if not data:
                    return None
                self.messages.feed(data)
            return msg

    async def until(self, type_: int) -> list[codec.Message]:
        seen = []
        while (msg := await self.recv()) is not None:
            seen.append(msg)
            if msg.type == type_:
                return seen
        raise AssertionError(f"closed before {chr(type_)!r}; saw {[chr(m.type) for m in seen]}")

    async def error(self) -> dict[str, str]:
        """The fields of the ErrorResponse that ends the login."""
        msgs = await self.until(codec.ERROR_RESPONSE)
        return codec.decode_error_fields(msgs[-1].body)

    async def login(self, token: str, params: dict[str, str] | None = None) -> list[codec.Message]:
        startup = {"user": "lockgate", "database": RESOURCE, **(params or {})}
        self.writer.write(codec.startup_message(startup))
        auth = await self.recv()
        assert auth is not None and auth.type == codec.AUTHENTICATION
        assert codec.decode_authentication(auth.body).code == codec.AUTH_CLEARTEXT_PASSWORD
        self.writer.write(codec.password_message(token))
        return await self.until(codec.READY_FOR_QUERY)

    def close(self) -> None:
        self.writer.close()


async def _fetch(dsn: str, sql: str) -> list[tuple[object, ...]]:
    async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as conn:
        cur = await conn.execute(sql)
        return await cur.fetchall()


# -- real clients --------------------------------------------------------------------------------
async def test_psycopg_logs_in_with_a_token_over_tls_and_reads(stack: PgStack) -> None:
    rows = await _fetch(
        stack.dsn(stack.token("etl")), "SELECT id, item FROM sales.orders ORDER BY id"
    )
    assert rows == [(1, "apple"), (2, "pear")]
    logins = [r for r in stack.audit("allowed") if r.action == "connect"]
    assert logins and logins[-1].principal == "airflow:prod/etl/load"
    assert logins[-1].resource == RESOURCE


async def test_the_client_sees_the_servers_parameters_and_the_gateways_own_key(
    stack: PgStack,
) -> None:
    client = await RawClient.open(stack)
    try:
        greeting = await client.login(stack.token("etl"))
    finally:
        client.close()
    types = [m.type for m in greeting]
    assert types[0] == codec.AUTHENTICATION and types[-1] == codec.READY_FOR_QUERY
    params = dict(codec.decode_parameter_status(m.body) for m in greeting
                  if m.type == codec.PARAMETER_STATUS)  # fmt: skip
    assert params["server_encoding"] == "UTF8" and "server_version" in params
    (key,) = [m for m in greeting if m.type == codec.BACKEND_KEY_DATA]
    pid, secret = codec.decode_backend_key_data(key.body)
    assert pid > 0 and len(secret) == 4
    upstream_pids = stack.server.psql("SELECT pid FROM pg_stat_activity").split()
    assert str(pid) not in upstream_pids  # the gateway's own key, not the server's


@pytest.mark.parametrize(
    ("make", "reason"),
    [
        (lambda s: "not-a-token", "malformed"),
        (lambda s: s.token("etl", resource="elsewhere"), "wrong_audience"),
        (lambda s: s.token("etl", ttl=60, age=3600), "expired"),
    ],
)
async def test_a_bad_token_is_refused_like_a_bad_password_and_audited(
    stack: PgStack, make: object, reason: str
) -> None:
    token = make(stack)  # type: ignore[operator]
    with pytest.raises(psycopg.OperationalError) as err:
        await _fetch(stack.dsn(token), "SELECT 1")
    assert 'password authentication failed for user "lockgate"' in str(err.value)
    assert token not in str(err.value)
    failed = stack.audit("auth_failed")
    assert failed and failed[-1].decision == "deny"
    assert reason in (failed[-1].reason or "")
    if reason != "malformed":  # the signature verified: the refusal names the DAG
        assert failed[-1].dag_id == "etl"


async def test_a_revoked_token_is_refused(stack: PgStack) -> None:
    token = stack.token("etl")
    await _fetch(stack.dsn(token), "SELECT 1")
    claims = stack.gw.verifier.verify(token, RESOURCE)
    stack.gw.state.revocations.revoke_jti(claims.jti, claims.exp, reason="test")
    with pytest.raises(psycopg.OperationalError, match="password authentication failed"):
        await _fetch(stack.dsn(token), "SELECT 1")
    assert stack.audit("auth_failed")[-1].reason == "revoked"


async def test_plaintext_is_refused(stack: PgStack) -> None:
    with pytest.raises(psycopg.OperationalError, match="Lockgate requires TLS"):
        await _fetch(stack.dsn(stack.token(), sslmode="disable"), "SELECT 1")
    assert stack.audit("auth_failed")[-1].reason == "plaintext_refused"


async def test_an_unknown_database_does_not_exist(stack: PgStack) -> None:
    with pytest.raises(psycopg.OperationalError, match='database "nope" does not exist'):
        await _fetch(stack.dsn(stack.token(), dbname="nope"), "SELECT 1")
    assert stack.audit("auth_failed")[-1].reason == "unknown_resource"


@pytest.mark.parametrize(
    ("params", "message"),
    [
        ({"options": "-c role=postgres"}, "command-line options"),
        ({"search_path": "other"}, "search_path"),
        ({"replication": "database"}, "replication"),
        ({"session_authorization": "postgres"}, "unsupported startup parameter"),
        ({"client_encoding": "SJIS"}, "client_encoding"),
    ],
)
async def test_startup_parameters_that_would_change_meaning_are_refused(
    stack: PgStack, params: dict[str, str], message: str
) -> None:
    client = await RawClient.open(stack)
    try:
        client.writer.write(codec.startup_message({"user": "u", "database": RESOURCE, **params}))
        fields = await client.error()
    finally:
        client.close()
    assert fields["V"] == "FATAL" and message in fields["M"]
    assert stack.audit("auth_failed")[-1].resource == RESOURCE


async def test_allowed_startup_parameters_reach_the_server(stack: PgStack) -> None:
    dsn = stack.dsn(stack.token(), application_name="nightly-load", options="")
    rows = await _fetch(dsn, "SELECT current_setting('application_name')")
    assert rows == [("nightly-load",)]


async def test_gssenc_request_is_answered_n_and_tls_follows(stack: PgStack) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", stack.port)
    try:
        writer.write(codec.gssenc_request())
        assert await reader.readexactly(1) == b"N"
        writer.write(codec.ssl_request())
        assert await reader.readexactly(1) == b"S"
    finally:
        writer.close()


async def test_bytes_pipelined_behind_an_ssl_request_are_refused(stack: PgStack) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", stack.port)
    try:
        writer.write(codec.ssl_request() + codec.startup_message({"user": "u"}))
        data = await asyncio.wait_for(reader.read(65536), 5)
        assert not data.startswith(b"S")  # no TLS on top of injected bytes
    finally:
        writer.close()
    assert stack.audit("auth_failed")[-1].reason == "protocol_error"


async def test_protocol_3_2_is_negotiated_down_to_3_0(stack: PgStack) -> None:
    client = await RawClient.open(stack)
    try:
        startup = {"user": "u", "database": RESOURCE, "_pq_.test_option": "on"}
        client.writer.write(codec.startup_message(startup, version=(3, 2)))
        first = await client.recv()
        assert first is not None and first.type == codec.NEGOTIATE_PROTOCOL_VERSION
        minor, unrecognized = codec.decode_negotiate_protocol_version(first.body)
        assert (minor, unrecognized) == (0, ["_pq_.test_option"])
        auth = await client.recv()
        assert auth is not None and auth.type == codec.AUTHENTICATION
        client.writer.write(codec.password_message(stack.token()))
        assert (await client.until(codec.READY_FOR_QUERY))[-1].body == b"I"
    finally:
        client.close()


async def test_a_silent_client_is_closed_after_the_handshake_timeout(
    tmp_path: Path, pg_server: PgServer
) -> None:
    async with pg_stack(tmp_path, pg_server, handshake_timeout=0.5) as s:
        reader, writer = await asyncio.open_connection("127.0.0.1", s.port)
        try:
            writer.write(struct.pack("!i", 100))  # half a length, then nothing
            data = await asyncio.wait_for(reader.read(65536), 5)
            assert data.startswith(b"E")  # FATAL, then closed
            assert await asyncio.wait_for(reader.read(65536), 5) == b""
        finally:
            writer.close()
        assert s.audit("auth_failed")[-1].reason == "handshake_timeout"


async def test_asyncpg_connects_and_reads(stack: PgStack) -> None:
    ctx = ssl.create_default_context(cafile=str(stack.ca_file))
    conn = await asyncpg.connect(
        host="127.0.0.1", port=stack.port, user="lockgate", database=RESOURCE,
        password=stack.token("etl"), ssl=ctx,
    )  # fmt: skip
    try:
        rows = await conn.fetch("SELECT id, amount FROM sales.orders WHERE id = $1", 2)
        assert [tuple(r) for r in rows] == [(2, 5)]
    finally:
        await conn.close()


async def test_direct_tls_is_closed_and_audited(stack: PgStack) -> None:
    with pytest.raises(psycopg.OperationalError):
        await _fetch(stack.dsn(stack.token(), sslnegotiation="direct"), "SELECT 1")
    assert stack.audit("auth_failed")[-1].reason == "direct_tls_unsupported"


async def test_plaintext_works_only_where_the_listener_allows_it(
    tmp_path: Path, pg_server: PgServer
) -> None:
    async with pg_stack(tmp_path, pg_server, allow_plaintext=True) as s:
        rows = await _fetch(
            s.dsn(s.token(), sslmode="disable"), "SELECT count(*) FROM sales.orders"
        )
        assert rows == [(2,)]
        login = [r for r in s.audit("allowed") if r.action == "connect"][-1]
        assert login.detail["tls"] is False


async def test_a_client_that_leaves_at_the_password_prompt_is_no_refusal(stack: PgStack) -> None:
    before = len(stack.audit("auth_failed"))
    client = await RawClient.open(stack)
    client.writer.write(codec.startup_message({"user": "u", "database": RESOURCE}))
    auth = await client.recv()
    assert auth is not None and auth.type == codec.AUTHENTICATION
    client.close()  # as psql does before it prompts for the password
    await asyncio.sleep(0.2)
    assert len(stack.audit("auth_failed")) == before


async def test_database_defaults_cannot_change_how_the_server_lexes(stack: PgStack) -> None:
    stack.upstream_psql(
        f'ALTER DATABASE "{stack.database}" SET standard_conforming_strings = off;'
        f"ALTER DATABASE \"{stack.database}\" SET client_encoding = 'SJIS';"
    )
    rows = await _fetch(
        stack.dsn(stack.token()),
        "SELECT current_setting('standard_conforming_strings'), current_setting('client_encoding')",
    )
    assert rows == [("on", "UTF8")]


def test_a_server_that_reports_other_lexing_settings_is_refused() -> None:
    from lockgate.gateway.postgres.session_login import lexing_mismatch

    assert lexing_mismatch({"standard_conforming_strings": "on", "client_encoding": "UTF8"}) is None
    assert lexing_mismatch({"standard_conforming_strings": "off"}) == (
        "standard_conforming_strings=off"
    )
    assert lexing_mismatch({"client_encoding": "SJIS"}) == "client_encoding=SJIS"
