"""The quota gate over budgets in this process: matching, scopes, tightest wins, pacing,
caps, runs."""

from __future__ import annotations

import asyncio
import inspect
import time
from collections.abc import Awaitable

import pytest

from lockgate import metrics
from lockgate.policy import PolicySet
from lockgate.quotas import (
    NO_TICKET,
    Admission,
    LimitKind,
    QuotaTicket,
    RunAdmission,
    Throttled,
)
from lockgate.quotas.budgets import MemoryBudgets
from lockgate.quotas.gate import PolicyQuotaGate
from tests.quotas.conftest import FakeClock, constant, quota_policy, task_claims

RATE = """
quotas:
  - id: etl-rate
    principals: ["airflow:prod/*"]
    resources: [orders-api]
    rate: 2/s
    burst: 2
"""


def gate_for(policy: PolicySet, clock: FakeClock) -> PolicyQuotaGate:
    return PolicyQuotaGate(constant(policy), MemoryBudgets(clock), sleep=clock.sleep)


def settle(answer: Admission | Awaitable[Admission]) -> Admission:
    if inspect.isawaitable(answer):
        return asyncio.run(_await(answer))
    return answer


async def _await(answer: Awaitable[Admission]) -> Admission:
    return await answer


def settle_run(answer: RunAdmission | Awaitable[RunAdmission]) -> RunAdmission:
    if inspect.isawaitable(answer):
        return asyncio.run(_await_run(answer))
    return answer


async def _await_run(answer: Awaitable[RunAdmission]) -> RunAdmission:
    return await answer


def admit(gate: PolicyQuotaGate, dag: str = "etl", obj: str = "/orders", action: str = "read",
          task: str = "load", resource: str = "orders-api") -> Admission:  # fmt: skip
    return settle(gate.admit(task_claims(dag, task), resource, action, obj))


def test_no_matching_quota_is_no_ticket_at_once() -> None:
    gate = gate_for(quota_policy(RATE), FakeClock())
    assert gate.admit(task_claims(), "other-api", "read", "/x") is NO_TICKET
    outsider = task_claims(deployment="dev")
    assert gate.admit(outsider, "orders-api", "read", "/x") is NO_TICKET


def test_rate_refuses_past_the_burst_and_refills() -> None:
    clock = FakeClock()
    gate = gate_for(quota_policy(RATE), clock)
    assert not isinstance(admit(gate), Throttled)
    assert not isinstance(admit(gate), Throttled)
    refused = admit(gate)
    assert refused == Throttled("etl-rate", "rate", 0.5)  # one token refills in 1/2 s
    clock.advance(0.5)
    assert not isinstance(admit(gate), Throttled)


@pytest.mark.parametrize(
    ("per", "other", "shared"),
    [
        ("dag", {"task": "other_task"}, True),
        ("dag", {"dag": "other_dag"}, False),
        ("task", {"task": "other_task"}, False),
        ("all", {"dag": "other_dag"}, True),
    ],
)
def test_per_scopes_the_budget(per: str, other: dict[str, str], shared: bool) -> None:
    policy = quota_policy(RATE.replace("burst: 2", f"burst: 1\n    per: {per}"))
    gate = gate_for(policy, FakeClock())
    assert not isinstance(admit(gate), Throttled)
    second = admit(gate, **other)
    assert isinstance(second, Throttled) is shared


def test_actions_and_objects_narrow_a_quota() -> None:
    policy = quota_policy(
        RATE.replace("burst: 2", "burst: 1\n    actions: [write]\n    objects: ['/orders/**']")
    )
    gate = gate_for(policy, FakeClock())
    for _ in range(3):
        assert admit(gate, action="read", obj="/orders/1") is NO_TICKET
        assert admit(gate, action="write", obj="/refunds/1") is NO_TICKET
    assert not isinstance(admit(gate, action="write", obj="/orders/1"), Throttled)
    assert isinstance(admit(gate, action="write", obj="/orders/2"), Throttled)


TWO = """
quotas:
  - id: loose
    principals: ["*"]
    resources: [orders-api]
    rate: 100/s
    burst: 3
    per: all
  - id: tight
    principals: ["airflow:prod/etl/*"]
    resources: [orders-api]
    rate: 1/s
    burst: 1
"""


def test_tightest_wins_and_refunds_the_others() -> None:
    clock = FakeClock()
    gate = gate_for(quota_policy(TWO), clock)
    assert not isinstance(admit(gate), Throttled)
    for _ in range(5):  # refused by tight: each refusal gives loose its token back
        assert admit(gate) == Throttled("tight", "rate", 1.0)
    # loose still holds 2 tokens: another DAG (not under tight) spends exactly them
    assert not isinstance(admit(gate, dag="other"), Throttled)
    assert not isinstance(admit(gate, dag="other"), Throttled)
    assert admit(gate, dag="other") == Throttled("loose", "rate", 0.01)


def test_max_delay_paces_instead_of_refusing() -> None:
    clock = FakeClock()
    policy = quota_policy(RATE.replace("burst: 2", "burst: 1\n    max_delay: 1s"))
    gate = gate_for(policy, clock)
    assert admit(gate) is NO_TICKET  # the burst token: at once, no cap to hold
    start = clock.now
    first = gate.admit(task_claims(), "orders-api", "read", "/o")
    second = gate.admit(task_claims(), "orders-api", "read", "/o")
    assert inspect.isawaitable(first) and inspect.isawaitable(second)
    third = gate.admit(task_claims(), "orders-api", "read", "/o")  # 1.5 s away: refused
    assert third == Throttled("etl-rate", "rate", 0.5)
    assert settle(first) is NO_TICKET and settle(second) is NO_TICKET
    assert clock.slept == [0.5, 1.0]  # each held until its token is due
    assert clock.now == start + 1.5


CAPS = """
quotas:
  - id: etl-cap
    principals: ["airflow:prod/*"]
    resources: [orders-api, orders-pg]
    concurrency: 2
    sessions: 1
"""


def test_concurrency_cap_holds_until_released() -> None:
    gate = gate_for(quota_policy(CAPS), FakeClock())
    a, b = admit(gate), admit(gate)
    assert not isinstance(a, Throttled) and not isinstance(b, Throttled)
    assert admit(gate) == Throttled("etl-cap", "concurrency", 1.0)
    a.release()
    a.release()  # idempotent: gives back one slot only
    c = admit(gate)
    assert not isinstance(c, Throttled)
    assert admit(gate) == Throttled("etl-cap", "concurrency", 1.0)


def test_sessions_cap_is_apart_from_requests() -> None:
    gate = gate_for(quota_policy(CAPS), FakeClock())
    session = settle(gate.open_session(task_claims(), "orders-pg"))
    assert session is not NO_TICKET and not isinstance(session, Throttled)
    assert settle(gate.open_session(task_claims(), "orders-pg")) == Throttled(
        "etl-cap", "sessions", 1.0
    )
    assert not isinstance(admit(gate, resource="orders-pg"), Throttled)  # requests: own cap
    session.release()
    assert not isinstance(settle(gate.open_session(task_claims(), "orders-pg")), Throttled)


def test_a_refused_cap_gives_back_the_rate_token() -> None:
    policy = quota_policy(
        RATE + "  - id: one-at-a-time\n    principals: ['*']\n    resources: ['*']\n"
        "    concurrency: 1\n"
    )
    gate = gate_for(policy, FakeClock())
    held = admit(gate)
    assert not isinstance(held, Throttled)
    assert admit(gate) == Throttled("one-at-a-time", "concurrency", 1.0)
    held.release()
    assert not isinstance(admit(gate), Throttled)  # the refused one's token came back


RUNS = """
quotas:
  - id: jobs
    principals: ["airflow:prod/*"]
    resources: [dbx]
    runs: 1
    run_max_age: 1h
"""


def test_runs_count_until_finished_or_too_old() -> None:
    clock = FakeClock()
    gate = gate_for(quota_policy(RUNS), clock)
    claims = task_claims()
    slot = settle_run(gate.start_run(claims, "dbx", "job:1"))
    assert not isinstance(slot, Throttled)
    assert settle_run(gate.start_run(claims, "dbx", "job:1")) == Throttled("jobs", "runs", 1.0)
    slot.started("run-7")
    slot.release()  # after started: the run still counts
    assert isinstance(settle_run(gate.start_run(claims, "dbx", "job:1")), Throttled)
    gate.run_finished("dbx", "run-7")
    again = settle_run(gate.start_run(claims, "dbx", "job:1"))
    assert not isinstance(again, Throttled)
    again.started("run-8")
    clock.advance(3600)  # past run_max_age: run-8 no longer counts
    assert not isinstance(settle_run(gate.start_run(claims, "dbx", "job:1")), Throttled)


def test_a_failed_run_start_frees_its_reservation() -> None:
    gate = gate_for(quota_policy(RUNS), FakeClock())
    slot = settle_run(gate.start_run(task_claims(), "dbx", "job:1"))
    assert not isinstance(slot, Throttled)
    slot.release()
    assert not isinstance(settle_run(gate.start_run(task_claims(), "dbx", "job:1")), Throttled)


def test_a_reload_rematches() -> None:
    clock = FakeClock()
    current = [quota_policy(RATE.replace("burst: 2", "burst: 1"))]
    gate = PolicyQuotaGate(lambda: current[0], MemoryBudgets(clock), sleep=clock.sleep)
    admit(gate)
    assert isinstance(admit(gate), Throttled)
    current[0] = quota_policy(RATE.replace("orders-api", "other-api"))
    assert admit(gate) is NO_TICKET


WAITING_CAP = """
quotas:
  - id: one-slot
    principals: ["airflow:prod/*"]
    resources: [orders-api, orders-pg]
    concurrency: 1
    sessions: 1
    max_delay: 1s
"""


def waiting_gate(text: str, clock: FakeClock, then: list[QuotaTicket]) -> PolicyQuotaGate:
    """A gate whose third sleep releases the tickets in ``then`` (another request ends)."""

    async def sleep(seconds: float) -> None:
        await clock.sleep(seconds)
        if len(clock.slept) == 3:
            for ticket in then:
                ticket.release()

    return PolicyQuotaGate(constant(quota_policy(text)), MemoryBudgets(clock), sleep=sleep)


def wait_count(resource: str, limit: str) -> float:
    value = metrics.REGISTRY.get_sample_value(
        "lockgate_quota_wait_seconds_count", {"resource": resource, "limit": limit}
    )
    return value or 0.0


@pytest.mark.parametrize("session", [False, True])
def test_a_cap_with_max_delay_holds_a_request_until_a_slot_frees(session: bool) -> None:
    clock = FakeClock()
    ends: list[QuotaTicket] = []
    gate = waiting_gate(WAITING_CAP, clock, ends)
    claims, resource = task_claims(), "orders-pg" if session else "orders-api"

    def ask() -> Admission | Awaitable[Admission]:
        if session:
            return gate.open_session(claims, resource)
        return gate.admit(claims, resource, "read", "/o")

    first = settle(ask())
    assert not isinstance(first, Throttled)
    ends.append(first)
    before = wait_count(resource, "one-slot")
    waiting = ask()
    assert inspect.isawaitable(waiting)
    second = settle(waiting)
    assert not isinstance(second, Throttled)  # the slot freed while it waited
    assert clock.slept == [0.05, 0.05, 0.05]
    assert wait_count(resource, "one-slot") == before + 1
    third = settle(ask())  # nothing frees: refused once max_delay has passed
    kind: LimitKind = "sessions" if session else "concurrency"
    assert third == Throttled("one-slot", kind, 1.0)
    assert sum(clock.slept[3:]) == pytest.approx(1.0)


def test_a_slot_wait_that_fails_gives_the_rate_token_back() -> None:
    clock = FakeClock()
    text = RATE.replace("burst: 2", "burst: 1\n    per: all") + WAITING_CAP.replace("quotas:\n", "")
    gate = waiting_gate(text, clock, [])
    held = settle(gate.admit(task_claims(), "orders-api", "read", "/o"))
    assert not isinstance(held, Throttled)
    clock.advance(1.0)  # the rate has its token again
    refused = settle(gate.admit(task_claims(), "orders-api", "read", "/o"))
    assert refused == Throttled("one-slot", "concurrency", 1.0)
    held.release()
    assert not isinstance(settle(gate.admit(task_claims(dag="x"), "orders-api", "read", "/o")),
                          Throttled)  # fmt: skip  # the refused one's token came back


def test_a_paced_request_is_measured() -> None:
    clock = FakeClock()
    gate = gate_for(quota_policy(RATE.replace("burst: 2", "burst: 1\n    max_delay: 1s")), clock)
    before = wait_count("orders-api", "etl-rate")
    admit(gate)
    admit(gate)  # waited 0.5 s for its token
    assert wait_count("orders-api", "etl-rate") == before + 1


class SlowBudgets(MemoryBudgets):
    """Budgets the gate must ask from a worker thread, slow to answer (a remote database)."""

    blocking = True

    def acquire(self, key: str, cap: int) -> bool:
        time.sleep(0.05)
        return super().acquire(key, cap)


async def test_a_request_gone_while_its_slot_is_taken_gives_it_back() -> None:
    gate = PolicyQuotaGate(constant(quota_policy(CAPS)), SlowBudgets())
    asking = asyncio.ensure_future(gate.admit(task_claims(), "orders-api", "read", "/o"))  # type: ignore[arg-type]
    await asyncio.sleep(0.01)  # the slot is being taken in the worker thread
    asking.cancel()
    with pytest.raises(asyncio.CancelledError):
        await asking
    await asyncio.sleep(0.1)  # it lands, and is given back
    held = [await gate.admit(task_claims(), "orders-api", "read", "/o") for _ in range(2)]  # type: ignore[misc]
    assert not any(isinstance(h, Throttled) for h in held)  # both slots of the cap are free


async def test_a_paced_request_gone_while_it_waits_gives_its_token_back() -> None:
    clock = FakeClock()
    policy = quota_policy(RATE.replace("burst: 2", "burst: 1\n    max_delay: 1s"))
    budgets = MemoryBudgets(clock)
    gate = PolicyQuotaGate(constant(policy), budgets)  # real sleeps
    assert gate.admit(task_claims(), "orders-api", "read", "/o") is NO_TICKET
    waiting = gate.admit(task_claims(), "orders-api", "read", "/o")
    assert inspect.isawaitable(waiting)
    task = asyncio.ensure_future(waiting)
    await asyncio.sleep(0.01)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    clock.advance(0.5)  # a token refilled (2/s): the bucket is back at 0 without the refund
    assert budgets.take("etl-rate|prod/etl", 2.0, 1.0, 0.0).granted  # the refunded one
    clock.advance(0.5)
    assert gate.admit(task_claims(), "orders-api", "read", "/o") is NO_TICKET
