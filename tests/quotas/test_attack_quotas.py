"""Attempts to hurt other tenants through the quota gate itself, each a hole once:

- many requests held (``max_delay``) or refused by a full cap on shared budgets: each
  used to ask the state database again (a write transaction on the SQLite file, on the
  event loop) every poll, so a DAG flooding its own cap stalled every other request of the
  worker. A cap the database just said is full is now refused locally for a moment.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

from lockgate.quotas import Throttled
from lockgate.quotas.gate import SLOT_POLL_SECONDS, PolicyQuotaGate
from lockgate.quotas.shared import SharedBudgets
from tests.quotas.conftest import constant, quota_policy, task_claims

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
