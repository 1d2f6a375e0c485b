"""Two instances of one mapped task through the CQL engine (the real driver, gateway, token
issuer and policy files): a ``map_index`` condition lets one read and refuses the other."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from cassandra import Unauthorized

from lockgate.identity import TaskIdentity, TokenIssuer

from .engine_stack import RESOURCE, Stack, connect, stack_fixture

PRINCIPAL = "airflow:prod/fan/load"
POLICY = f"""\
rules:
  - id: fan-first-two
    effect: allow
    principals: ["{PRINCIPAL}"]
    actions: [read]
    resources: [cass]
    objects: ["ks.*"]
    conditions: {{map_index: "0-1"}}
"""


@pytest.fixture
async def stack(tmp_path: Path) -> AsyncIterator[Stack]:
    async for s in stack_fixture(tmp_path):
        (tmp_path / "policies" / "fan.yaml").write_text(POLICY)
        s.gw.policy.reload_if_changed()
        assert s.gw.policy.current.rule("fan-first-two") is not None, s.gw.policy.last_error
        yield s


def token(stack: Stack, map_index: int) -> str:
    issuer = TokenIssuer(stack.gw.state.keys, stack.gw.config.issuer_url)
    identity = TaskIdentity("prod", "fan", "load", "run-1", 1, map_index)
    return issuer.mint(identity, RESOURCE, 900)[0]


def read_as(stack: Stack, map_index: int) -> list[object]:
    session = connect(stack.port, token(stack, map_index), "ks")
    try:
        return list(session.execute("SELECT id, item FROM ks.orders WHERE id = 1"))
    finally:
        session.cluster.shutdown()


async def test_two_map_indexes_one_allowed_one_denied(stack: Stack) -> None:
    assert await asyncio.to_thread(read_as, stack, 1) == []
    with pytest.raises(Unauthorized) as info:
        await asyncio.to_thread(read_as, stack, 2)
    assert "map_index 0-1 does not hold (map_index 2)" in str(info.value)

    admitted = [r for r in stack.audit("admitted") if r.object == "ks.orders"]
    denied = [r for r in stack.audit("denied") if r.object == "ks.orders"]
    assert [(r.principal, r.map_index, r.rule) for r in admitted] == [
        (PRINCIPAL, 1, "fan-first-two")
    ]
    assert admitted[0].reason == "allowed by rule fan-first-two (fan.yaml): map_index 1 in 0-1"
    assert [(r.principal, r.map_index) for r in denied] == [(PRINCIPAL, 2)]
