"""Budgets shared through one SQLite file: caps across holders, leased rates, a killed
worker's slots, runs, and memory while the file cannot answer."""

from __future__ import annotations

import multiprocessing
import os
import signal
import time
from pathlib import Path
from typing import Any

import pytest

from lockgate.errors import StoreUnavailable
from lockgate.quotas.budgets import MemoryBudgets, OpenedOnFirstUse
from lockgate.quotas.shared import FULL_CAP_SECONDS, LEASE_SECONDS, STALE_SECONDS, SharedBudgets
from lockgate.store import SqliteDatabase
from tests.quotas.conftest import FakeClock


def budgets(path: Path, clock: FakeClock, holder: str) -> SharedBudgets:
    return SharedBudgets(path, clock=clock, holder=holder, background=False)


def test_a_cap_holds_across_holders_and_frees_on_release(tmp_path: Path) -> None:
    clock = FakeClock()
    a, b = budgets(tmp_path / "q.db", clock, "a"), budgets(tmp_path / "q.db", clock, "b")
    assert a.acquire("k", 2) and a.acquire("k", 2)
    assert not b.acquire("k", 2)
    a.release("k")
    assert not b.acquire("k", 2)  # released locally, not yet written
    a.flush()
    assert not b.acquire("k", 2)  # b was just told the cap is full: it does not ask yet
    clock.advance(FULL_CAP_SECONDS)
    assert b.acquire("k", 2)
    assert not a.acquire("k", 2)  # a gave its slot back: it holds one, b one
    a.close()
    b.close()


def no_database() -> None:
    raise AssertionError("the database was asked")


def test_a_slot_still_held_is_reused_without_a_round_trip(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    clock = FakeClock()
    a = budgets(tmp_path / "q.db", clock, "a")
    assert a.acquire("k", 1)
    a.release("k")
    monkeypatch.setattr(a.db, "transaction", no_database)
    assert a.acquire("k", 1)  # the slot a still held


def test_a_holder_not_heard_from_holds_nothing(tmp_path: Path) -> None:
    clock = FakeClock()
    a, b = budgets(tmp_path / "q.db", clock, "a"), budgets(tmp_path / "q.db", clock, "b")
    assert a.acquire("k", 1)
    assert not b.acquire("k", 1)
    clock.advance(STALE_SECONDS / 2)
    a.flush()  # a's heartbeat
    clock.advance(STALE_SECONDS / 2 + 1)
    assert not b.acquire("k", 1)
    clock.advance(STALE_SECONDS / 2)  # a silent for more than STALE_SECONDS: crashed
    assert b.acquire("k", 1)


def test_a_rate_is_one_budget_across_holders(tmp_path: Path) -> None:
    clock = FakeClock()
    a, b = budgets(tmp_path / "q.db", clock, "a"), budgets(tmp_path / "q.db", clock, "b")
    granted = [x.take("r", 100.0, 10.0, 0.0).granted for _ in range(10) for x in (a, b)]
    assert sum(granted) == 10  # the burst, once, whoever asks
    refused = b.take("r", 100.0, 10.0, 0.0)
    assert not refused.granted and 0 < refused.wait <= LEASE_SECONDS


def test_a_lease_spares_round_trips_and_gives_back_what_is_left(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    clock = FakeClock()
    a, b = budgets(tmp_path / "q.db", clock, "a"), budgets(tmp_path / "q.db", clock, "b")
    assert a.take("r", 200.0, 20.0, 0.0).granted  # leases 10 (rate/20), spends one
    monkeypatch.setattr(a.db, "transaction", no_database)
    assert all(a.take("r", 200.0, 20.0, 0.0).granted for _ in range(9))  # from the lease
    assert sum(b.take("r", 200.0, 20.0, 0.0).granted for _ in range(20)) == 10


def test_a_refused_take_is_refunded_into_the_budget(tmp_path: Path) -> None:
    clock = FakeClock()
    a, b = budgets(tmp_path / "q.db", clock, "a"), budgets(tmp_path / "q.db", clock, "b")
    assert a.take("r", 1.0, 1.0, 0.0).granted
    a.refund("r", 1.0, 1.0)
    clock.advance(LEASE_SECONDS)  # the lease ended: the token goes back with the next take
    assert a.take("r", 1.0, 1.0, 0.0).granted
    assert not b.take("r", 1.0, 1.0, 0.0).granted


def test_pacing_orders_waiters_across_holders(tmp_path: Path) -> None:
    clock = FakeClock()
    a, b = budgets(tmp_path / "q.db", clock, "a"), budgets(tmp_path / "q.db", clock, "b")
    # 2/s, burst 1, max_delay 2 s: a debt of at most 4 tokens
    answers = [x.take("p", 2.0, 1.0, 4.0) for x in (a, b, a, b, a)]
    assert [(x.granted, x.wait) for x in answers] == [(True, w) for w in (0, 0.5, 1, 1.5, 2)]
    refused = b.take("p", 2.0, 1.0, 4.0)  # would wait 2.5 s: refused, told when to retry
    assert not refused.granted and refused.wait == 0.5


def test_runs_count_across_holders_until_finished(tmp_path: Path) -> None:
    clock = FakeClock()
    a, b = budgets(tmp_path / "q.db", clock, "a"), budgets(tmp_path / "q.db", clock, "b")
    assert a.reserve_run("j", 1)
    assert not b.reserve_run("j", 1)
    a.run_started("j", "dbx", "run-1", 3600)
    a.flush()
    a.close()  # the run outlives the worker that started it
    assert not b.reserve_run("j", 1)
    b.run_finished("dbx", "run-1")  # another worker saw it end
    b.flush()
    assert b.reserve_run("j", 1)
    b.run_started("j", "dbx", "run-2", 60)
    b.flush()
    c = budgets(tmp_path / "q.db", clock, "c")
    assert not c.reserve_run("j", 1)
    clock.advance(61)
    assert c.reserve_run("j", 1)  # run-2 is past its max age


def test_state_out_of_reach_counts_in_memory_logged_once(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    clock = FakeClock()
    a = budgets(tmp_path / "q.db", clock, "a")

    def down() -> None:
        raise StoreUnavailable("q.db: disk gone")

    monkeypatch.setattr(a.db, "transaction", down)
    answers = [a.take("r", 1.0, 2.0, 0.0).granted for _ in range(3)]
    assert answers == [True, True, False]  # the full rate, in this process
    assert a.acquire("k", 1) and not a.acquire("k", 1)
    a.release("k")
    assert a.acquire("k", 1)
    assert sum("memory" in r.message for r in caplog.records) == 1


def test_budgets_open_on_first_use_and_retry(tmp_path: Path) -> None:
    clock = FakeClock()
    tries: list[int] = []

    def open_budgets(memory: MemoryBudgets) -> SharedBudgets:
        tries.append(1)
        if len(tries) == 1:
            raise StoreUnavailable("not yet")
        return SharedBudgets(tmp_path / "q.db", clock=clock, memory=memory, background=False)

    lazy = OpenedOnFirstUse(open_budgets, blocking=False, clock=clock)
    assert not tries and not (tmp_path / "q.db").exists()
    assert lazy.acquire("k", 1)  # memory: the open failed
    assert not lazy.acquire("k", 1)
    clock.advance(5)
    lazy.release("k")  # given back where it was taken
    assert lazy.acquire("k", 1) and len(tries) == 2 and (tmp_path / "q.db").exists()
    lazy.close()


# -- real processes ----------------------------------------------------------------------------
def _hold_and_wait(path: str, ready: multiprocessing.Event) -> None:  # type: ignore[valid-type]
    shared = SharedBudgets(Path(path))
    assert shared.acquire("k", 2) and shared.acquire("k", 2)
    ready.set()  # type: ignore[attr-defined]
    time.sleep(60)  # killed long before


def test_a_killed_workers_slots_free_themselves(tmp_path: Path) -> None:
    path = tmp_path / "quotas.db"
    SharedBudgets(path, background=False).close()  # schema first, as the gateway's start does
    ctx = multiprocessing.get_context("spawn")
    ready = ctx.Event()
    proc = ctx.Process(target=_hold_and_wait, args=(str(path), ready))
    proc.start()
    try:
        assert ready.wait(30)
        later = FakeClock(time.time())
        other = SharedBudgets(path, clock=later, holder="other", background=False)
        assert not other.acquire("k", 2)
        assert proc.pid is not None
        os.kill(proc.pid, signal.SIGKILL)
        proc.join(10)
        later.advance(STALE_SECONDS + 1)  # what a real wait of 15 s would show
        assert other.acquire("k", 2) and other.acquire("k", 2)
        other.close()
    finally:
        if proc.is_alive():
            proc.kill()
            proc.join()


def _take_for(
    path: str,
    seconds: float,
    queue: multiprocessing.Queue[int],
    ready: multiprocessing.Queue[None],
    go: multiprocessing.Queue[float],
) -> None:
    shared = SharedBudgets(Path(path))
    ready.put(None)
    start = go.get()
    time.sleep(max(0.0, start - time.time()))
    granted = 0
    while time.time() < start + seconds:
        answer = shared.take("r", 50.0, 5.0, 0.0)
        if answer.granted:
            granted += 1
        else:
            time.sleep(min(answer.wait, 0.005))
    shared.close()
    queue.put(granted)


@pytest.mark.slow
def test_two_processes_share_one_rate(tmp_path: Path) -> None:
    path = tmp_path / "quotas.db"
    SharedBudgets(path, background=False).close()
    ctx = multiprocessing.get_context("spawn")
    queue: multiprocessing.Queue[int] = ctx.Queue()
    ready: multiprocessing.Queue[None] = ctx.Queue()
    go: multiprocessing.Queue[float] = ctx.Queue()
    procs = [
        ctx.Process(target=_take_for, args=(str(path), 3.0, queue, ready, go)) for _ in range(2)
    ]
    for p in procs:
        p.start()
    for _ in procs:
        ready.get(timeout=60)
    for _ in procs:
        go.put(time.time() + 0.2)  # one start, once both are ready
    for p in procs:
        p.join(60)
        assert p.exitcode == 0
    total = sum(queue.get(timeout=5) for _ in procs)
    expected = 5 + 50 * 3.0  # the burst, then 50/s (one process alone would take them all)
    assert expected * 0.9 <= total <= expected * 1.02, (total, expected)


def test_the_sqlite_file_is_the_quotas_domain(tmp_path: Path) -> None:
    db = SqliteDatabase(tmp_path / "quotas.db")
    SharedBudgets(db, background=False).close()
    with db.read() as cur:
        row = cur.execute("SELECT version FROM lockgate_schema WHERE domain = ?", ("quotas",))
        assert row.fetchone() == (1,)
    db.close()


def test_a_run_started_is_no_slot_to_reuse(tmp_path: Path) -> None:
    clock = FakeClock()
    a, b = budgets(tmp_path / "q.db", clock, "a"), budgets(tmp_path / "q.db", clock, "b")
    assert a.reserve_run("j", 2)
    a.run_started("j", "dbx", "run-1", 3600)
    assert a.reserve_run("j", 2)  # the second of two
    assert not a.reserve_run("j", 2)  # run-1 counts before it is even written
    a.flush()
    assert not a.reserve_run("j", 2) and not b.reserve_run("j", 2)
    a.release("j")  # the second start failed
    a.flush()
    clock.advance(FULL_CAP_SECONDS)  # (b was just told the cap is full)
    assert b.reserve_run("j", 2)


def test_threads_of_one_process_lease_one_at_a_time(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """On PostgreSQL the gate asks from worker threads: two finding the lease spent at once
    must not both lease (the second lease would replace the first, its tokens lost)."""
    from concurrent.futures import ThreadPoolExecutor

    clock = FakeClock()  # frozen: the burst is all there is
    shared = budgets(tmp_path / "q.db", clock, "a")
    lease_db = shared._lease_db

    def slow_lease(*args: Any) -> tuple[bool, float]:
        time.sleep(0.002)  # a network round trip: the other threads catch up meanwhile
        return lease_db(*args)

    monkeypatch.setattr(shared, "_lease_db", slow_lease)

    def takes(_: int) -> int:
        return sum(shared.take("r", 100.0, 100.0, 0.0).granted for _ in range(50))

    with ThreadPoolExecutor(8) as pool:
        granted = sum(pool.map(takes, range(8)))
    assert granted == 100  # every token of the burst, none twice
    # leases of 5, then one lease in debt whose tokens never come due (the clock stands)
    assert shared.round_trips == 100 / 5 + 1


def test_rows_of_the_past_are_purged(tmp_path: Path) -> None:
    clock = FakeClock()
    a = budgets(tmp_path / "q.db", clock, "a")
    assert a.take("r", 1.0, 5.0, 0.0).granted
    assert a.reserve_run("j", 1)
    a.run_started("j", "dbx", "run-1", 3600)
    a.flush()
    clock.advance(86401)
    a.flush()
    with a.db.read() as cur:
        assert cur.execute("SELECT COUNT(*) FROM quota_runs").fetchone() == (0,)
        assert cur.execute("SELECT COUNT(*) FROM quota_buckets").fetchone() == (0,)
