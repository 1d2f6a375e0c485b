"""Attacks on the CQL login now that it is a codec state machine (``ServerHandshake``).

Frames a driver would never send around the login: statements pipelined behind the
AUTH_RESPONSE (before AUTH_SUCCESS came back), behind a refused one, an AUTH_RESPONSE
before STARTUP, OPTIONS in the middle of the login, a protocol version changed after it.
Oracles: the node's execution log (``oracle.judge``: nothing ran that the audit does not
show allowed for the same principal, action and object) and the audit's refusals.
"""

from __future__ import annotations

import struct
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from lockgate.demo.standins.cqlserver.client import RawCql

from .engine_stack import stop_stack
from .test_oracle import Oracle
from .test_oracle_frames import FORBIDDEN, GRANTED, _string, query_with

_HEADER = struct.Struct(">BBhBi")
STARTUP, OPTIONS, AUTH_RESPONSE = 0x01, 0x05, 0x0F
AUTHENTICATE, SUPPORTED, AUTH_SUCCESS, ERROR = 0x03, 0x06, 0x10, 0x00
UNAUTHORIZED, PROTOCOL_ERROR, BAD_CREDENTIALS = 0x2100, 0x000A, 0x0100


@pytest.fixture
async def oracle(tmp_path: Path) -> AsyncIterator[Oracle]:
    o = await Oracle.start(tmp_path)
    try:
        yield o
    finally:
        await stop_stack(o.stack)


def frame(opcode: int, stream: int, body: bytes = b"", version: int = 0x04) -> bytes:
    return _HEADER.pack(version, 0, stream, opcode, len(body)) + body


def startup(stream: int) -> bytes:
    return frame(STARTUP, stream, struct.pack(">H", 1) + _string("CQL_VERSION") + _string("3.0.0"))


def auth_response(stream: int, token: str, user: str = "cass") -> bytes:
    plain = b"\x00" + user.encode() + b"\x00" + token.encode()
    return frame(AUTH_RESPONSE, stream, struct.pack(">i", len(plain)) + plain)


async def _open_as(oracle: Oracle, dag: str) -> tuple[RawCql, int]:
    """A raw connection, and the node's session count before it (to map its principal).
    A login first reads the view catalog (as the gateway) unless it is fresh: made fresh
    here, so what the node runs on the new connection is the client's alone."""
    warm = await oracle.connect("warmup", keyspace=None)
    await warm.close()
    return await RawCql.open(oracle.stack.port), oracle.stack.fake.sessions


def _map(oracle: Oracle, before: int, dag: str) -> None:
    for connection in range(before + 1, oracle.stack.fake.sessions + 1):
        oracle.principal_of[connection] = f"airflow:prod/{dag}/load"


async def test_statements_pipelined_behind_the_login_are_judged_as_the_token(
    oracle: Oracle,
) -> None:
    client, before = await _open_as(oracle, "oracle_pipe")
    since = oracle.mark()
    token = oracle.stack.token("oracle_pipe")
    await client.send(
        startup(1),
        auth_response(2, token),
        query_with(3, FORBIDDEN),
        query_with(4, GRANTED),
    )
    answers = await client.answers(4)
    _map(oracle, before, "oracle_pipe")
    assert answers[1].opcode == AUTHENTICATE and answers[2].opcode == AUTH_SUCCESS
    assert answers[3].error_code == UNAUTHORIZED
    assert answers[4].opcode != ERROR, answers[4]
    assert oracle.executed(since) == [("read", "ks.orders")]
    assert oracle.breaches(since, "oracle_pipe") == []
    await client.close()


@pytest.mark.parametrize("token", ["not-a-token", ""])
async def test_statements_pipelined_behind_a_refused_login_never_run(
    oracle: Oracle, token: str
) -> None:
    client, before = await _open_as(oracle, "oracle_bad")
    since = oracle.mark()
    await client.send(startup(1), auth_response(2, token), query_with(3, GRANTED))
    answers = await client.answers(3, timeout=2.0)
    assert answers[2].error_code == BAD_CREDENTIALS
    assert 3 not in answers  # the connection closed; the statement was never answered
    assert oracle.executed(since) == []
    assert oracle.stack.fake.sessions == before  # no upstream connection was even opened
    refused = [r for r in oracle.stack.audit("auth_failed") if r.decision == "deny"]
    assert refused and all(token not in str(r.to_dict()) for r in refused if token)
    await client.close()


async def test_an_auth_response_before_startup_is_refused_and_audited(oracle: Oracle) -> None:
    client, before = await _open_as(oracle, "oracle_early")
    since = oracle.mark()
    token = oracle.stack.token("oracle_early")
    await client.send(auth_response(1, token), query_with(2, GRANTED))
    answer = await client.answer()
    assert answer is not None and answer.error_code == PROTOCOL_ERROR, answer
    assert await client.answer(timeout=2.0) is None  # closed
    assert oracle.executed(since) == [] and oracle.stack.fake.sessions == before
    refused = [
        r for r in oracle.stack.audit("auth_failed") if r.reason == "unauthenticated_request"
    ]
    assert len(refused) == 1 and token not in str(refused[0].to_dict())
    await client.close()


async def test_options_and_a_second_startup_inside_the_login_change_nothing(
    oracle: Oracle,
) -> None:
    client, before = await _open_as(oracle, "oracle_mid")
    since = oracle.mark()
    token = oracle.stack.token("oracle_mid")
    await client.send(startup(1), frame(OPTIONS, 2), startup(3), auth_response(4, token))
    answers = await client.answers(4)
    _map(oracle, before, "oracle_mid")
    assert [answers[s].opcode for s in (1, 2, 3, 4)] == [
        AUTHENTICATE,
        SUPPORTED,
        AUTHENTICATE,
        AUTH_SUCCESS,
    ]
    assert await _code(client, query_with(5, FORBIDDEN)) == UNAUTHORIZED
    assert await _code(client, query_with(6, GRANTED)) == 0
    assert oracle.executed(since) == [("read", "ks.orders")]
    assert oracle.breaches(since, "oracle_mid") == []
    await client.close()


@pytest.mark.parametrize("version", [0x03, 0x05, 0x45])
async def test_a_version_changed_after_the_login_runs_nothing(oracle: Oracle, version: int) -> None:
    client = await oracle.connect("oracle_ver")
    since = oracle.mark()
    body = query_with(0, GRANTED)[_HEADER.size :]
    await client.send(_HEADER.pack(version, 0, 7, 0x07, len(body)) + body)
    answer = await client.answer()
    assert answer is not None and answer.error_code == PROTOCOL_ERROR, answer
    assert await client.answer(timeout=2.0) is None  # closed
    assert oracle.executed(since) == []
    await client.close()


async def _code(client: RawCql, data: bytes) -> int | None:
    answer = await client.request(data)
    if answer is None:
        return None
    return answer.error_code if answer.is_error else 0


@pytest.mark.parametrize("text", [FORBIDDEN, GRANTED])
async def test_the_beta_flag_on_a_v4_frame_changes_nothing_judged(
    oracle: Oracle, text: str
) -> None:
    """USE_BETA (0x10) means something only with a beta protocol version; on v4 the node
    runs the frame as usual, so the gateway must judge it as usual too."""
    client = await oracle.connect("oracle_beta")
    since = oracle.mark()
    code = await _code(client, query_with(client.stream(), text, flags=0x10))
    assert code == (UNAUTHORIZED if text == FORBIDDEN else 0)
    assert oracle.executed(since) == ([] if text == FORBIDDEN else [("read", "ks.orders")])
    assert oracle.breaches(since, "oracle_beta") == []
    await client.close()
