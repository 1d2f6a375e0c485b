"""Attempts to hurt other tenants through the quota gate itself, each a hole once:

- many requests held (``max_delay``) or refused by a full cap on shared budgets: each
  used to ask the state database again (a write transaction on the SQLite file, on the
  event loop) every poll, so a DAG flooding its own cap stalled every other request of the
  worker. A cap the database just said is full is now refused locally for a moment;
- thousands of requests held at once for one budget's slot (``max_delay``), each polling
  every 50 ms, kept a worker's event loop busy for everyone (10,000 held: 4 s of CPU a
  second); at most ``MAX_HELD_PER_BUDGET`` wait now, the rest are refused at once;
- a batch (``cost``: a CQL BATCH of many statements on one table) used to cost one token:
  it is admitted on its first token and the rest are taken into debt, in memory and in
  the shared bucket every worker draws from.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

from lockgate.quotas import Throttled
from lockgate.quotas.budgets import MemoryBudgets
from lockgate.quotas.gate import MAX_HELD_PER_BUDGET, SLOT_POLL_SECONDS, PolicyQuotaGate
from lockgate.quotas.shared import SharedBudgets
from tests.quotas.conftest import FakeClock, constant, quota_policy, task_claims

CAPPED = """\
rules:
  - id: all
    effect: allow
    principals: ["airflow:prod/*"]
    actions: ["*"]
    resources: ["*"]
quotas:
  - id: one-at-a-time
    principals: ["airflow:prod/*"]
    resources: [orders-api]
    concurrency: 1
    max_delay: 0.5s
"""


async def test_requests_held_by_a_full_shared_cap_do_not_flood_the_state_database(
    tmp_path: Path,
) -> None:
    budgets = SharedBudgets(tmp_path / "quotas.db", holder="w1")
    other = SharedBudgets(tmp_path / "quotas.db", holder="w2")  # another worker holds the slot
    try:
        assert other.acquire("one-at-a-time|prod/etl", 1)
        other.flush()
        gate = PolicyQuotaGate(constant(quota_policy(CAPPED)), budgets)
        claims = task_claims()
        waiters = 200

        async def one() -> object:
            answer = gate.admit(claims, "orders-api", "read", "/x")
            return await answer if asyncio.iscoroutine(answer) else answer

        t0 = time.monotonic()
        answers = await asyncio.gather(*(one() for _ in range(waiters)))
        took = time.monotonic() - t0
        assert all(isinstance(a, Throttled) and a.limit == "one-at-a-time" for a in answers)
        polls = 0.5 / SLOT_POLL_SECONDS
        # Each poll round asks the database about once, not once per waiter.
        assert budgets.round_trips <= 3 * (polls + 1), budgets.round_trips
        assert took < 2.0, took
    finally:
        budgets.close()
        other.close()


async def test_a_slot_freed_elsewhere_is_still_seen_by_a_waiter(tmp_path: Path) -> None:
    budgets = SharedBudgets(tmp_path / "quotas.db", holder="w1")
    other = SharedBudgets(tmp_path / "quotas.db", holder="w2")
    try:
        assert other.acquire("one-at-a-time|prod/etl", 1)
        other.flush()
        gate = PolicyQuotaGate(constant(quota_policy(CAPPED)), budgets)
        answer = gate.admit(task_claims(), "orders-api", "read", "/x")
        assert asyncio.iscoroutine(answer)
        held = asyncio.ensure_future(answer)
        await asyncio.sleep(0.15)
        other.release("one-at-a-time|prod/etl")
        other.flush()
        ticket = await held
        assert not isinstance(ticket, Throttled)
        ticket.release()
    finally:
        budgets.close()
        other.close()


RATE = """\
quotas:
  - id: etl-writes
    principals: ["airflow:prod/*"]
    resources: [orders-api]
    rate: 10/s
    max_delay: 0.5s
"""


async def _admit(gate: PolicyQuotaGate, cost: int = 1) -> object:
    answer = gate.admit(task_claims(), "orders-api", "write", "/o", cost=cost)
    return await answer if asyncio.iscoroutine(answer) else answer


async def test_a_batch_spends_one_token_per_statement_in_memory() -> None:
    clock = FakeClock()
    gate = PolicyQuotaGate(constant(quota_policy(RATE)), MemoryBudgets(clock), sleep=clock.sleep)
    assert not isinstance(await _admit(gate, cost=40), Throttled)  # on its first token
    refused = await _admit(gate)
    assert isinstance(refused, Throttled) and refused.limit == "etl-writes"
    assert 2.5 <= refused.retry_after <= 3.1, refused  # 31 tokens of debt at 10/s, less 0.5 s
    clock.advance(3.1)
    assert not isinstance(await _admit(gate), Throttled)  # the debt is paid off


async def test_a_throttled_batch_costs_nothing() -> None:
    clock = FakeClock()
    gate = PolicyQuotaGate(constant(quota_policy(RATE)), MemoryBudgets(clock), sleep=clock.sleep)
    assert not isinstance(await _admit(gate, cost=20), Throttled)
    assert isinstance(await _admit(gate, cost=1000), Throttled)  # refused: nothing billed
    clock.advance(1.6)  # 20 tokens taken from 10: 1.1 s to the next one, 0.5 s held
    assert not isinstance(await _admit(gate), Throttled)


async def test_a_batch_in_one_worker_is_debt_for_every_worker(tmp_path: Path) -> None:
    first = SharedBudgets(tmp_path / "quotas.db", holder="w1", background=False)
    second = SharedBudgets(tmp_path / "quotas.db", holder="w2", background=False)
    try:
        gates = [PolicyQuotaGate(constant(quota_policy(RATE)), b) for b in (first, second)]
        assert not isinstance(await _admit(gates[0], cost=100), Throttled)
        refused = await _admit(gates[1])
        assert isinstance(refused, Throttled) and refused.retry_after > 5.0, refused
    finally:
        first.close()
        second.close()


class CountingBudgets(MemoryBudgets):
    def __init__(self) -> None:
        super().__init__()
        self.acquired = 0

    def acquire(self, key: str, cap: int) -> bool:
        self.acquired += 1
        return super().acquire(key, cap)


async def test_requests_held_for_one_budget_are_bounded() -> None:
    budgets = CountingBudgets()
    gate = PolicyQuotaGate(constant(quota_policy(CAPPED)), budgets)
    claims = task_claims()
    first = gate.admit(claims, "orders-api", "read", "/x")
    assert not isinstance(first, Throttled) and not asyncio.iscoroutine(first)
    crowd = 4 * MAX_HELD_PER_BUDGET

    async def one() -> object:
        answer = gate.admit(claims, "orders-api", "read", "/x")
        return await answer if asyncio.iscoroutine(answer) else answer

    t0 = time.monotonic()
    answers = await asyncio.gather(*(one() for _ in range(crowd)))
    assert all(isinstance(a, Throttled) and a.limit == "one-at-a-time" for a in answers)
    assert time.monotonic() - t0 >= 0.5  # the ones held waited their max_delay
    polls = round(0.5 / SLOT_POLL_SECONDS)
    assert budgets.acquired <= 1 + crowd + MAX_HELD_PER_BUDGET * (polls + 1), budgets.acquired
    first.release()
    again = await one()  # nothing is left counted as waiting
    assert not isinstance(again, Throttled)


async def test_a_policy_reload_does_not_refill_a_budget(tmp_path: Path) -> None:
    budgets = SharedBudgets(tmp_path / "quotas.db", holder="w1", background=False)
    try:
        current = [quota_policy(RATE)]
        gate = PolicyQuotaGate(lambda: current[0], budgets)
        assert not isinstance(await _admit(gate, cost=30), Throttled)  # drained, in debt
        current[0] = quota_policy(RATE + "    # edited\n")  # a reload: a new policy set
        refused = await _admit(gate)
        assert isinstance(refused, Throttled) and refused.retry_after > 1.0
    finally:
        budgets.close()
