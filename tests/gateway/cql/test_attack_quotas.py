"""Attempts to get more than a quota gives through the CQL engine, each a hole once:

- a BATCH of many statements on one table used to take one token of the table's rate
  quota, so a DAG held to 10 writes a second wrote thousands by batching them. Each
  statement of a batch now counts (the batch is admitted on its first token, the rest
  taken into debt that later statements wait out);
- slots kept taken: statements sent and abandoned (the client resets before any answer),
  a session whose token is revoked: every slot comes back (the gate's own count).
"""

from __future__ import annotations

import socket
import struct
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from lockgate.gateway.cql import codec
from lockgate.policy import parse_policy_texts
from lockgate.quotas.budgets import MemoryBudgets
from lockgate.quotas.gate import PolicyQuotaGate
from tests.gateway.quota_fakes import FakeGate, eventually

from .engine_stack import POLICY, RawClient, Stack, cql_context, stack_fixture
from .test_engine_statement_checks import jti_of
from .test_quotas import INSERT, etl_raw, send_together

WRITES = """\
quotas:
  - id: etl-writes
    principals: ["airflow:prod/etl/*"]
    resources: [cass]
    actions: [write]
    rate: 10/s
"""


@pytest.fixture
async def stack(tmp_path: Path) -> AsyncIterator[Stack]:
    async for s in stack_fixture(tmp_path):
        yield s


async def test_every_statement_of_a_batch_counts_against_a_rate(stack: Stack) -> None:
    policy = parse_policy_texts([("team.yaml", POLICY + WRITES)])
    cql_context(stack).quotas = PolicyQuotaGate(lambda: policy, MemoryBudgets())
    raw = await etl_raw(stack)
    batch = "BEGIN BATCH " + " ".join(INSERT.format(id=i) + ";" for i in range(40))
    raw.send(codec.Query(stream=3, query=batch + " APPLY BATCH"))
    assert isinstance(await raw.recv(), codec.Result)  # admitted on its first token
    raw.send(codec.Query(stream=4, query=INSERT.format(id=99)))
    answer = await raw.recv()  # 40 writes at 10/s: the next one waits about 3 s more
    assert isinstance(answer, codec.Error) and answer.code == codec.ERR_OVERLOADED, answer
    (rec,) = stack.audit("throttled")
    assert rec.detail["limit"] == "etl-writes" and rec.detail["retry_after"] > 2.5
    raw.close()


async def test_statements_abandoned_by_a_reset_give_their_slots_back(stack: Stack) -> None:
    gate = FakeGate()
    cql_context(stack).quotas = gate
    raw = await etl_raw(stack)
    send_together(raw, *(codec.Query(stream=10 + i, query=INSERT.format(id=i)) for i in range(8)))
    sock = raw.writer.transport.get_extra_info("socket")
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    raw.writer.transport.abort()  # gone before a single answer
    await eventually(lambda: gate.held == 0)


async def test_a_session_whose_token_is_revoked_gives_its_slots_back(stack: Stack) -> None:
    gate = FakeGate()
    cql_context(stack).quotas = gate
    token = stack.token("etl")
    raw = await RawClient.open(stack.port)
    assert isinstance(await raw.login(token), codec.AuthSuccess)
    assert gate.held == 1
    stack.gw.state.revocations.revoke_jti(jti_of(token), time.time() + 900, "test")
    raw.send(codec.Query(stream=3, query=INSERT.format(id=1)))
    answer = await raw.recv()
    assert isinstance(answer, codec.Error)
    raw.close()
    await eventually(lambda: gate.held == 0)
