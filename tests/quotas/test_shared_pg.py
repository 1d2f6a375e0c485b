"""Budgets of two replicas on one PostgreSQL database: one rate, one cap, runs; memory
while the server is down."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from lockgate.quotas import NO_TICKET, Throttled
from lockgate.quotas.gate import PolicyQuotaGate
from lockgate.quotas.shared import DOMAIN, FULL_CAP_SECONDS, SharedBudgets
from tests.pgserver.fixtures import PgServerFactory, SharedStateFactory
from tests.pgserver.state import replica_states, shared_state_settings
from tests.quotas.conftest import constant, quota_policy, task_claims


@pytest.fixture
def two_replicas(
    pg_state: SharedStateFactory, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[tuple[SharedBudgets, SharedBudgets]]:
    with replica_states(pg_state(), tmp_path, monkeypatch) as states:
        first, second = (
            SharedBudgets(s.database(DOMAIN), holder=s.replica_id, background=False) for s in states
        )
        yield first, second
        first.close()
        second.close()


def test_two_replicas_draw_from_one_rate(two_replicas: tuple[SharedBudgets, SharedBudgets]) -> None:
    first, second = two_replicas
    assert first.blocking and second.blocking  # the gate keeps them off the event loop

    def takes(budgets: SharedBudgets) -> int:
        return sum(budgets.take("r", 0.01, 30.0, 0.0).granted for _ in range(25))

    with ThreadPoolExecutor(4) as pool:
        granted = list(pool.map(takes, [first, second, first, second]))
    assert sum(granted) == 30  # 100 asked at once on two replicas: one burst


def test_two_replicas_hold_one_cap(two_replicas: tuple[SharedBudgets, SharedBudgets]) -> None:
    first, second = two_replicas
    assert first.acquire("c", 3) and first.acquire("c", 3)
    assert second.acquire("c", 3)
    assert not second.acquire("c", 3) and not first.acquire("c", 3)
    first.release("c")
    first.flush()
    time.sleep(FULL_CAP_SECONDS)  # (second was just told the cap is full)
    assert second.acquire("c", 3)
    assert second.reserve_run("j", 1)
    second.run_started("j", "adf", "run-1", 3600)
    second.flush()
    assert not first.reserve_run("j", 1)
    first.run_finished("adf", "run-1")
    first.flush()
    assert first.reserve_run("j", 1)


RATE = """
quotas:
  - id: etl-rate
    principals: ["airflow:prod/*"]
    resources: [orders-api]
    rate: 1/s
    burst: 2
    concurrency: 1
"""


async def test_the_gate_answers_off_the_loop_on_postgresql(
    two_replicas: tuple[SharedBudgets, SharedBudgets],
) -> None:
    first, second = two_replicas
    gates = [PolicyQuotaGate(constant(quota_policy(RATE)), b) for b in (first, second)]
    answer = gates[0].admit(task_claims(), "orders-api", "read", "/o")
    assert asyncio.iscoroutine(answer)
    ticket = await answer
    assert not isinstance(ticket, Throttled) and ticket is not NO_TICKET
    refused = await gates[1].admit(task_claims(), "orders-api", "read", "/o")  # type: ignore[misc]
    assert refused == Throttled("etl-rate", "concurrency", 1.0)
    ticket.release()
    first.flush()
    await asyncio.sleep(FULL_CAP_SECONDS)  # (the second replica was just told the cap is full)
    again = await gates[1].admit(task_claims(), "orders-api", "read", "/o")  # type: ignore[misc]
    assert not isinstance(again, Throttled)  # the second token of the burst, the freed slot
    again.release()
    last = await gates[0].admit(task_claims(), "orders-api", "read", "/o")  # type: ignore[misc]
    assert isinstance(last, Throttled) and (last.limit, last.kind) == ("etl-rate", "rate")
    assert 0.5 < last.retry_after <= 1.0  # until the next token, at 1/s


@pytest.mark.slow
def test_postgresql_down_falls_back_to_memory(
    pg_server_factory: PgServerFactory, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    server = pg_server_factory()
    settings = shared_state_settings(server, tmp_path / "pg")
    with replica_states(settings, tmp_path, monkeypatch, replicas=("r1",)) as (state,):
        budgets = SharedBudgets(state.database(DOMAIN), holder="r1", background=False)
        assert budgets.acquire("c", 1)
        server.stop()
        # Down: this process's memory, the full cap (a brake, not an access decision)
        other = [budgets.acquire("d", 1), budgets.acquire("d", 1)]
        assert other == [True, False]
        assert [budgets.take("r", 0.001, 2.0, 0.0).granted for _ in range(3)] == [
            True, True, False,
        ]  # fmt: skip
        budgets.release("d")
        assert budgets.acquire("d", 1)
        budgets.close()  # never hangs on a server that is gone
