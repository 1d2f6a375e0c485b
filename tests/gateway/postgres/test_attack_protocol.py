"""Attacks on the PostgreSQL engine's wire protocol handling, in raw bytes and with psycopg.

Extended-protocol tricks (a statement swapped under a bound portal, a Bind of another
statement name, Close then reuse, Describe of a refused statement), the FunctionCall
message, COPY messages outside COPY, Sync floods, oversized and dribbled startup packets,
protocol version codes, startup parameters that would change a statement's meaning, tokens
in the wrong place or for another resource, and a token that expires mid-session. The
oracle is the server's own statement log: nothing refused may appear there.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import struct
import time
from collections.abc import AsyncIterator
from pathlib import Path

import psycopg
import pytest

from lockgate.gateway.postgres import codec
from tests.pgserver import PgServer

from .attack import executed
from .stack import RESOURCE, PgStack, pg_stack
from .test_startup import RawClient

FORBIDDEN = "SELECT value FROM other.secret"


@pytest.fixture
async def stack(tmp_path: Path, pg_server: PgServer) -> AsyncIterator[PgStack]:
    async with pg_stack(tmp_path, pg_server, handshake_timeout=1.5) as s:
        yield s


async def _answers(client: RawClient, until_ready: int = 1) -> list[str]:
    """Message kinds up to the ``until_ready``-th ReadyForQuery ('E:<sqlstate>' for errors,
    'closed' when the gateway hung up)."""
    seen: list[str] = []
    while until_ready:
        msg = await client.recv()
        if msg is None:
            seen.append("closed")
            return seen
        if msg.type == codec.ERROR_RESPONSE:
            seen.append("E:" + codec.decode_error_fields(msg.body)["C"])
        else:
            seen.append(chr(msg.type))
        until_ready -= msg.type == codec.READY_FOR_QUERY
    return seen


async def _session(stack: PgStack, dag: str = "etl") -> RawClient:
    client = await RawClient.open(stack)
    await client.login(stack.token(dag))
    return client


def _parse(name: str, sql: str) -> bytes:
    return codec.encode_message(codec.Parse(name, sql, ()))


def _bind(portal: str, statement: str) -> bytes:
    return codec.encode_message(codec.Bind(portal, statement, (), (), ()))


def _execute(portal: str) -> bytes:
    return codec.encode_message(codec.Execute(portal, 0))


# -- extended protocol ---------------------------------------------------------------------------
EXTENDED_TRICKS = {
    # the unnamed statement is replaced after its portal was bound, in one pipeline
    "unnamed_statement_replaced_after_bind": [
        _parse("", "SELECT 1"),
        _bind("", ""),
        _parse("", FORBIDDEN),
        _execute(""),
    ],
    # an allowed name parsed, then a Bind of the other (refused) name
    "bind_of_another_statement_name": [
        _parse("ok", "SELECT 1"),
        _parse("bad", FORBIDDEN),
        _bind("", "bad"),
        _execute(""),
    ],
    # a portal bound, its statement closed and the name parsed again with another text
    "close_then_reuse_the_name": [
        _parse("p", "SELECT 1"),
        _bind("x", "p"),
        codec.encode_message(codec.Close("S", "p")),
        _parse("p", FORBIDDEN),
        _execute("x"),
        _bind("y", "p"),
        _execute("y"),
    ],
    # a refused Parse followed by messages that would run an allowed one before the Sync
    "messages_after_a_refused_parse": [
        _parse("bad", FORBIDDEN),
        _parse("ok", "SELECT 1"),
        _bind("", "ok"),
        _execute(""),
        _bind("", "bad"),
        _execute(""),
    ],
    "describe_of_a_refused_statement": [
        _parse("d", FORBIDDEN),
        codec.encode_message(codec.Describe("S", "d")),
    ],
}


@pytest.mark.parametrize("trick", sorted(EXTENDED_TRICKS))
async def test_extended_protocol_tricks_run_nothing_refused(stack: PgStack, trick: str) -> None:
    client = await _session(stack)
    position = stack.server.log_position()
    try:
        client.writer.write(b"".join(EXTENDED_TRICKS[trick]) + codec.sync())
        answers = await _answers(client)
        assert "E:42501" in answers, answers
        assert answers[-1] == "Z"
        client.writer.write(codec.query("SELECT 2"))  # the session goes on
        assert (await _answers(client))[-1] == "Z"
    finally:
        client.close()
    ran = executed(stack, position)
    assert not [s for s in ran if "other.secret" in s], ran
    denied = [r for r in stack.audit("denied") if r.object == "other.secret"]
    assert denied and denied[-1].principal == "airflow:prod/etl/load"


async def test_function_call_message_is_refused(stack: PgStack) -> None:
    client = await _session(stack)
    position = stack.server.log_position()
    try:
        # FunctionCall of pg_read_file(text) by OID: no SQL text the gateway could judge.
        arg = b"/etc/passwd"
        body = struct.pack("!Ihh", 2624, 0, 1) + struct.pack("!i", len(arg)) + arg
        body += struct.pack("!h", 0)
        client.writer.write(codec.encode(codec.FUNCTION_CALL, body))
        answers = await _answers(client)
        assert answers == ["E:42501", "Z"], answers
    finally:
        client.close()
    assert executed(stack, position) == []


@pytest.mark.parametrize("message", [codec.COPY_DATA, codec.COPY_DONE, codec.COPY_FAIL])
async def test_copy_messages_outside_copy_are_a_protocol_error(
    stack: PgStack, message: int
) -> None:
    client = await _session(stack)
    position = stack.server.log_position()
    try:
        body = b"9\tplanted\n" if message == codec.COPY_DATA else b""
        if message == codec.COPY_FAIL:
            body = b"x\x00"
        client.writer.write(codec.encode(message, body) + codec.query(FORBIDDEN))
        answers: list[str] = []
        while (msg := await client.recv()) is not None:
            answers.append(chr(msg.type))
        assert codec.ERROR_RESPONSE in map(ord, answers) or answers == [], answers
    finally:
        client.close()
    assert not [s for s in executed(stack, position) if "other.secret" in s]


async def test_a_refused_copy_from_stdin_takes_no_rows(stack: PgStack) -> None:
    client = await _session(stack)
    position = stack.server.log_position()
    try:
        client.writer.write(codec.query("COPY other.secret FROM STDIN"))
        assert await _answers(client) == ["E:42501", "Z"]
        # the client sends its rows anyway, then its CopyDone
        client.writer.write(
            codec.encode(codec.COPY_DATA, b"77\tplanted\n") + codec.encode(codec.COPY_DONE, b"")
        )
        await client.writer.drain()
        await asyncio.sleep(0.3)
    finally:
        client.close()
    assert executed(stack, position) == []
    assert "planted" not in stack.upstream_psql("SELECT value FROM other.secret")


async def test_a_query_inside_copy_in_is_not_run(stack: PgStack) -> None:
    client = await _session(stack)
    position = stack.server.log_position()
    try:
        client.writer.write(codec.query("COPY sales.orders FROM STDIN"))
        msg = await client.recv()
        assert msg is not None and msg.type == codec.COPY_IN_RESPONSE
        client.writer.write(codec.query(FORBIDDEN))
        client.writer.write(codec.encode(codec.COPY_DONE, b""))
        await client.writer.drain()
        while await client.recv() is not None:
            pass
    except TimeoutError:
        pass
    finally:
        client.close()
    assert not [s for s in executed(stack, position) if "other.secret" in s]


async def test_a_sync_flood_is_answered_in_order_and_the_session_goes_on(stack: PgStack) -> None:
    client = await _session(stack)
    try:
        client.writer.write(codec.sync() * 5000 + codec.query("SELECT 1"))
        answers = await _answers(client, until_ready=5001)
        assert answers.count("Z") == 5001 and "D" in answers[-4:]
    finally:
        client.close()


async def test_empty_queries_are_answered_as_the_server_does(stack: PgStack) -> None:
    client = await _session(stack)
    try:
        client.writer.write(codec.query("") + codec.query(";") + codec.query("-- nothing"))
        assert await _answers(client, until_ready=3) == ["I", "Z"] * 3
    finally:
        client.close()


# -- startup -------------------------------------------------------------------------------------
async def _startup_answer(stack: PgStack, packet: bytes, password: str | None = None) -> str:
    """'ok' for a completed login, else the SQLSTATE of the refusal ('closed' when none)."""
    client = await RawClient.open(stack)
    try:
        client.writer.write(packet)
        while (msg := await client.recv()) is not None:
            if msg.type == codec.AUTHENTICATION:
                if codec.decode_authentication(msg.body).code == codec.AUTH_CLEARTEXT_PASSWORD:
                    client.writer.write(codec.password_message(password or stack.token()))
            elif msg.type == codec.ERROR_RESPONSE:
                return codec.decode_error_fields(msg.body)["C"]
            elif msg.type == codec.READY_FOR_QUERY:
                return "ok"
        return "closed"
    finally:
        client.close()


def _startup(**params: str) -> bytes:
    return codec.startup_message({"user": "lockgate", "database": RESOURCE, **params})


@pytest.mark.parametrize(
    ("packet", "expected"),
    [
        (codec.startup_message({"user": "u", "database": RESOURCE}, (2, 0)), "0A000"),
        (codec.startup_message({"user": "u", "database": RESOURCE}, (4, 0)), "0A000"),
        (struct.pack("!ii", 8, 80877106), "0A000"),  # 1234.5682: an unknown request code
        (_startup(options="-c search_path=other"), "08P01"),
        (_startup(OPTIONS="-csearch_path=other"), "08P01"),
        (_startup(search_path="other"), "08P01"),
        (_startup(replication="database"), "0A000"),
        (_startup(client_encoding="SJIS"), "22023"),
        (_startup(client_encoding="UTF8", CLIENT_ENCODING="GBK"), "22023"),
        (_startup(role="postgres"), "08P01"),
        (_startup(session_authorization="postgres"), "08P01"),
        (_startup(default_transaction_read_only="off"), "08P01"),
        (codec.startup_message({"user": "u", "database": RESOURCE.upper()}), "3D000"),
        (codec.startup_message({"user": "u", "database": RESOURCE + " "}), "3D000"),
    ],
    ids=lambda v: v if isinstance(v, str) else None,
)
async def test_startup_packets_that_could_change_meaning_are_refused(
    stack: PgStack, packet: bytes, expected: str
) -> None:
    position = stack.server.log_position()
    records = len(stack.audit())
    assert await _startup_answer(stack, packet) == expected
    assert executed(stack, position) == []
    assert len(stack.audit()) > records, "the refusal left no audit record"


async def test_a_huge_startup_length_is_refused_before_it_is_buffered(stack: PgStack) -> None:
    client = await RawClient.open(stack)
    try:
        client.writer.write(struct.pack("!ii", 1 << 30, 196608))
        msgs: list[int] = []
        while (msg := await client.recv(timeout=3.0)) is not None:
            msgs.append(msg.type)
        assert msgs in ([], [codec.ERROR_RESPONSE])
    finally:
        client.close()


async def test_a_dribbling_startup_is_closed_at_the_handshake_timeout(stack: PgStack) -> None:
    client = await RawClient.open(stack)
    started = time.monotonic()
    try:
        packet = _startup()
        closed = False
        for byte in packet:  # one byte every 0.2 s: never silent, never done
            client.writer.write(bytes([byte]))
            try:
                await client.writer.drain()
            except ConnectionError:
                closed = True
                break
            await asyncio.sleep(0.2)
            if client.reader.at_eof():
                closed = True
                break
        elapsed = time.monotonic() - started
        assert closed or client.reader.at_eof(), "the gateway waited for the whole dribble"
        assert elapsed < 4.0
    finally:
        client.close()


async def test_a_token_for_another_resource_is_refused_and_audited(stack: PgStack) -> None:
    token = stack.token("etl", resource="not-pg")
    assert await _startup_answer(stack, _startup(), password=token) == "28P01"
    failed = stack.audit("auth_failed")
    assert failed and failed[-1].reason not in ("", None)


async def test_a_token_given_as_the_user_name_is_in_no_record_nor_log_line(
    stack: PgStack, caplog: pytest.LogCaptureFixture
) -> None:
    token = stack.token("etl")
    caplog.set_level(logging.DEBUG, logger="lockgate")
    packet = codec.startup_message({"user": token, "database": RESOURCE})
    assert await _startup_answer(stack, packet, password=token) == "ok"  # user is free
    assert await _startup_answer(stack, packet, password="not-a-token") == "28P01"
    stack.gw.audit.flush(2.0)
    for row in stack.audit():
        assert token not in str(row.to_dict()), row.event
        assert token.split(".")[2] not in str(row.to_dict()), row.event  # not even the signature
    assert token not in caplog.text
    assert token not in "".join(s.text for s in stack.server.statements())


@pytest.mark.slow
async def test_a_token_that_expires_mid_session_refuses_the_next_statement(
    stack: PgStack,
) -> None:
    token = stack.token("etl", ttl=1)
    conn = await psycopg.AsyncConnection.connect(stack.dsn(token), autocommit=True)
    try:
        await conn.execute("SELECT count(*) FROM sales.orders")
        leeway = stack.gw.config.tokens.leeway
        await asyncio.sleep(1 + leeway + 1.0)
        position = stack.server.log_position()
        with pytest.raises(psycopg.Error):
            await conn.execute("SELECT count(*) FROM sales.orders")
    finally:
        await conn.close()
    assert executed(stack, position) == []
    assert any(r.reason == "expired" for r in stack.audit("auth_failed"))


async def test_a_token_revoked_mid_session_refuses_the_next_statement(stack: PgStack) -> None:
    token = stack.token("etl")
    conn = await psycopg.AsyncConnection.connect(stack.dsn(token), autocommit=True)
    try:
        await conn.execute("SELECT count(*) FROM sales.orders")
        claims = stack.gw.verifier.verify(token, RESOURCE)
        stack.gw.state.revocations.revoke_jti(claims.jti, claims.exp, reason="task ended")
        position = stack.server.log_position()
        with pytest.raises(psycopg.Error):
            await conn.execute("SELECT item FROM sales.orders")
    finally:
        await conn.close()
    assert executed(stack, position) == []
    assert any(r.reason == "revoked" for r in stack.audit("auth_failed"))


async def test_a_flood_of_guessed_cancel_keys_cancels_nothing(stack: PgStack) -> None:
    conn = await psycopg.AsyncConnection.connect(stack.dsn(stack.token("etl")), autocommit=True)
    try:
        running = asyncio.create_task(conn.execute("SELECT pg_sleep(1.5), 'kept'"))
        await asyncio.sleep(0.2)

        async def guess(i: int) -> None:
            reader, writer = await asyncio.open_connection("127.0.0.1", stack.port)
            writer.write(codec.cancel_request(i * 7919 + 1, struct.pack("!I", i * 104729)))
            await writer.drain()
            await reader.read()  # the gateway closes it, answering nothing
            writer.close()

        await asyncio.gather(*(guess(i) for i in range(300)))
        cur = await asyncio.wait_for(running, 10)
        assert await cur.fetchall() == [("", "kept")]  # not cancelled
        cur = await conn.execute("SELECT 1")  # and the gateway still serves
        assert await cur.fetchall() == [(1,)]
    finally:
        await conn.close()


MIXED_PIPELINES = {
    # a simple Query in the middle of an extended batch (before its Sync)
    "query_inside_an_extended_batch": [
        _parse("", "SELECT 1"),
        _bind("", ""),
        _execute(""),
        codec.query(FORBIDDEN),
    ],
    # a refused Parse, then a simple Query the server would skip until the Sync
    "query_after_a_refused_parse": [_parse("bad", FORBIDDEN), codec.query(FORBIDDEN)],
    # a Flush between the refused Parse and its Execute
    "flush_between": [_parse("", FORBIDDEN), codec.flush(), _bind("", ""), _execute("")],
}


@pytest.mark.parametrize("mix", sorted(MIXED_PIPELINES))
async def test_mixed_pipelines_run_nothing_refused(stack: PgStack, mix: str) -> None:
    client = await _session(stack)
    position = stack.server.log_position()
    try:
        client.writer.write(b"".join(MIXED_PIPELINES[mix]) + codec.sync())
        await client.writer.drain()
        answers: list[str] = []
        with contextlib.suppress(TimeoutError):
            while (msg := await client.recv(timeout=1.5)) is not None:
                answers.append(chr(msg.type))
        client.writer.write(codec.query("SELECT 2"))
    finally:
        client.close()
    ran = executed(stack, position)
    assert not [s for s in ran if "other.secret" in s], (ran, answers)


async def test_one_huge_text_does_not_stall_other_sessions(stack: PgStack) -> None:
    # ~450 KB: 50000 trivial statements and a refused one at the end (so nothing runs
    # upstream and one record is written), a few seconds of classification.
    text = "SELECT 1;" * 50000 + FORBIDDEN
    attacker = await _session(stack)
    other = await psycopg.AsyncConnection.connect(stack.dsn(stack.token("etl")), autocommit=True)
    stalled = 0.0
    try:
        attacker.writer.write(codec.query(text))
        answer = asyncio.create_task(_answers(attacker))
        while not answer.done():  # another session's round trips meanwhile
            started = time.monotonic()
            await other.execute("SELECT 1")
            stalled = max(stalled, time.monotonic() - started)
            await asyncio.sleep(0.05)
        assert "E:42501" in answer.result()
    finally:
        attacker.close()
        await other.close()
    assert stalled < 1.0, f"another session waited {stalled:.1f} s"


async def test_a_close_the_server_skipped_leaves_nothing_executable(stack: PgStack) -> None:
    """The gateway forgets a statement at its Close; the server may skip that Close (an
    error earlier in the batch) and keep the statement. A later Bind/Execute of the name
    must still be judged, not run unseen."""
    client = await _session(stack)
    position = stack.server.log_position()
    try:
        client.writer.write(_parse("S", "SELECT item FROM sales.orders") + codec.sync())
        assert await _answers(client) == ["1", "Z"]
        # the Parse fails on the server (22P02), which then skips the Close
        client.writer.write(
            _parse("", "SELECT * FROM sales.orders WHERE id = 'abc'")
            + codec.encode_message(codec.Close("S", "S"))
            + codec.sync()
        )
        assert await _answers(client) == ["E:22P02", "Z"]
        stack.write_policy("rules: []\n")  # etl may do nothing now
        client.writer.write(_bind("", "S") + _execute("") + codec.sync())
        answers = await _answers(client)
    finally:
        client.close()
    assert "D" not in answers and "E:42501" in answers, answers
    assert not [s for s in executed(stack, position) if s.startswith("SELECT item")]
