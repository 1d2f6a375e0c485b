"""A prepared statement judged once on a connection is still verified, decided and audited on
every EXECUTE: what a session keeps (its plan, targets, records' detail) never outlives a
policy reload, a revocation, a registry entry that turned ambiguous or a reloaded view
catalog.

Oracle: the node's statement log (what ran) and the audit trail (one admitted and one outcome
record per statement that ran; a refusal record for each that did not).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from pathlib import Path

import jwt
import pytest
from cassandra import InvalidRequest, Unauthorized

from .engine_stack import POLICY, RESOURCE, Stack, connect, stack_fixture
from .test_prepared_registry import registry

INSERT = "INSERT INTO orders (id, item) VALUES (?, ?)"

# the stack's policy, and a deny on writes to ks.orders
DENY_ORDERS = (
    POLICY
    + """\
  - id: no-orders-writes
    effect: deny
    principals: ["*"]
    actions: [write]
    resources: [cass]
    objects: ["ks.orders"]
"""
)


@pytest.fixture
async def stack(tmp_path: Path) -> AsyncIterator[Stack]:
    async for s in stack_fixture(tmp_path):
        yield s


def _ran(stack: Stack, since: int) -> list[str]:
    return [text for _, text in stack.fake.statements[since:] if "orders" in text]


async def test_every_execute_is_recorded_ahead_and_after(stack: Stack) -> None:
    session = await asyncio.to_thread(connect, stack.port, stack.token("etl"), "ks")
    try:
        insert = await asyncio.to_thread(session.prepare, INSERT)
        for i in range(5):
            await asyncio.to_thread(session.execute, insert, (i, f"x{i}"))
    finally:
        await asyncio.to_thread(session.cluster.shutdown)
    admitted = [r for r in stack.audit("admitted") if r.object == "ks.orders"]
    allowed = [r for r in stack.audit("allowed") if r.object == "ks.orders"]
    executes = [r for r in allowed if r.detail.get("op") == "execute"]
    assert len(executes) == 5
    refs = {r.detail["ref"] for r in executes}
    assert len(refs) == 5  # each outcome names its own admitted record
    assert sum(r.detail.get("op") == "execute" for r in admitted) == 5


async def test_policy_reload_applies_to_a_statement_already_judged(
    stack: Stack, tmp_path: Path
) -> None:
    session = await asyncio.to_thread(connect, stack.port, stack.token("etl"), "ks")
    try:
        insert = await asyncio.to_thread(session.prepare, INSERT)
        await asyncio.to_thread(session.execute, insert, (1, "a"))
        await asyncio.to_thread(session.execute, insert, (2, "b"))
        (tmp_path / "policies" / "team.yaml").write_text(DENY_ORDERS)
        assert stack.gw.policy.reload_if_changed(), stack.gw.policy.last_error
        seen = len(stack.fake.statements)
        with pytest.raises(Unauthorized, match="no-orders-writes"):
            await asyncio.to_thread(session.execute, insert, (3, "c"))
    finally:
        await asyncio.to_thread(session.cluster.shutdown)
    assert _ran(stack, seen) == []
    denied = [r for r in stack.audit("denied") if r.rule == "no-orders-writes"]
    assert len(denied) == 1 and denied[0].decision == "deny"


async def test_revocation_applies_to_a_statement_already_judged(stack: Stack) -> None:
    token = stack.token("etl")
    session = await asyncio.to_thread(connect, stack.port, token, "ks")
    try:
        insert = await asyncio.to_thread(session.prepare, INSERT)
        await asyncio.to_thread(session.execute, insert, (1, "a"))
        await asyncio.to_thread(session.execute, insert, (2, "b"))
        jti = str(jwt.decode(token, options={"verify_signature": False})["jti"])
        stack.gw.state.revocations.revoke_jti(jti, time.time() + 900, "test")
        seen = len(stack.fake.statements)
        with pytest.raises(Unauthorized, match="revoked"):
            await asyncio.to_thread(session.execute, insert, (3, "c"))
    finally:
        await asyncio.to_thread(session.cluster.shutdown)
    assert _ran(stack, seen) == []
    assert any(r.reason == "revoked" for r in stack.audit("auth_failed"))


async def test_an_id_turned_ambiguous_is_refused_on_a_connection_that_judged_it(
    stack: Stack,
) -> None:
    session = await asyncio.to_thread(connect, stack.port, stack.token("etl"), "ks")
    try:
        insert = await asyncio.to_thread(session.prepare, INSERT)
        await asyncio.to_thread(session.execute, insert, (1, "a"))
        assert not registry(stack).remember(RESOURCE, insert.query_id, INSERT, "other")
        seen = len(stack.fake.statements)
        with pytest.raises(InvalidRequest, match="more than one statement"):
            await asyncio.to_thread(session.execute, insert, (2, "b"))
    finally:
        await asyncio.to_thread(session.cluster.shutdown)
    assert _ran(stack, seen) == []
