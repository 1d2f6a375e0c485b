"""How close a rate quota shared by several worker processes holds to its configured rate.

Usage::

    .venv/bin/python -m benchmarks.quotas [--rate 200] [--seconds 60] [--processes 2]
                                          [--postgres]

Each process is a ``serve --workers`` worker in miniature: the real quota gate over the
real shared budgets (one ``quotas.db`` SQLite file, as every worker of one gateway opens),
with 16 clients in flight, each asking again as soon as it is admitted or, refused, after
the wait the refusal names (a flood far above the rate). Once every process is ready, they
start together and count what was admitted for ``--seconds``; the achieved rate is
(admitted - burst) / seconds, the burst being the default (a second of the rate). A second
run paces instead of refusing (``max_delay: 1s``, clients waiting their turn). Target:
within 5% of the configured rate. The lease (rate/20 tokens per round trip) is what keeps
the database out of the per-request path: round trips per 1000 admitted are printed too.
With ``--postgres`` the processes are replicas on one shared PostgreSQL database (a private
server from tests/pgserver) instead of workers on one SQLite file.
"""

from __future__ import annotations

import argparse
import asyncio
import inspect
import multiprocessing
import os
import sys
import tempfile
import time
from pathlib import Path

from lockgate.config import PostgresStateSettings
from lockgate.identity import Claims
from lockgate.policy import parse_policy_texts
from lockgate.quotas import Throttled
from lockgate.quotas.gate import PolicyQuotaGate
from lockgate.quotas.shared import SharedBudgets
from lockgate.store import PostgresDatabase

TARGET = 0.05  # achieved within 5% of configured
CLIENTS = 16

POLICY = """
quotas:
  - id: bench-rate
    principals: ["airflow:prod/*"]
    resources: [orders-api]
    rate: {rate}
    max_delay: {max_delay}
"""

CLAIMS = Claims(
    iss="lockgate", sub="airflow:prod/bench/load", aud="orders-api", exp=2_000_000_000,
    iat=1_000_000_000, nbf=1_000_000_000, jti="j", deployment="prod", dag_id="bench",
    task_id="load", run_id="manual__1", try_number=1, map_index=-1,
)  # fmt: skip


async def _flood(gate: PolicyQuotaGate, start: float, end: float) -> int:
    admitted = 0

    async def client() -> None:
        nonlocal admitted
        while time.time() < end:
            answer = gate.admit(CLAIMS, "orders-api", "write", "/orders")
            if inspect.isawaitable(answer):
                answer = await answer
            if isinstance(answer, Throttled):
                await asyncio.sleep(answer.retry_after)  # as told (Retry-After, in ms)
                continue
            if start <= time.time() < end:
                admitted += 1
            answer.release()
            await asyncio.sleep(0)  # let the other clients ask

    await asyncio.gather(*(client() for _ in range(CLIENTS)))
    return admitted


def _open(where: str | dict[str, object]) -> SharedBudgets:
    """A worker's budgets: the SQLite file ``where``, or a replica's on PostgreSQL."""
    if isinstance(where, str):
        return SharedBudgets(Path(where))
    settings = PostgresStateSettings.model_validate(where)
    return SharedBudgets(PostgresDatabase(settings, replica_id=f"bench-{os.getpid()}"))


def _worker(
    where: str | dict[str, object],
    policy_text: str,
    seconds: float,
    queue: multiprocessing.Queue[tuple[int, int]],
    ready: multiprocessing.Queue[None],
    go: multiprocessing.Queue[float],
) -> None:
    budgets = _open(where)
    policy = parse_policy_texts([("bench.yaml", policy_text)])
    gate = PolicyQuotaGate(lambda: policy, budgets)
    ready.put(None)
    start = go.get()  # one start for every process, once all are ready
    time.sleep(max(0.0, start - time.time()))
    admitted = asyncio.run(_flood(gate, start, start + seconds))
    queue.put((admitted, budgets.round_trips))
    budgets.close()
    budgets.db.close()


def measure(
    rate: float, seconds: float, processes: int, max_delay: float, postgres: bool = False
) -> tuple[float, int]:
    """(achieved rate, round trips per admitted request x 1000) over ``seconds``."""
    with tempfile.TemporaryDirectory() as tmp:
        server = None
        where: str | dict[str, object] = str(Path(tmp) / "quotas.db")
        if postgres:
            from tests.pgserver import start_pg_server
            from tests.pgserver.state import shared_state_settings

            server = start_pg_server(Path(tmp) / "pg")
            where = shared_state_settings(server, Path(tmp) / "state").model_dump(mode="json")
        first = _open(where)  # the schema, as the gateway's start
        first.close()
        first.db.close()
        policy_text = POLICY.format(rate=rate, max_delay=f"{max_delay}s")
        ctx = multiprocessing.get_context("spawn")
        queue: multiprocessing.Queue[tuple[int, int]] = ctx.Queue()
        ready: multiprocessing.Queue[None] = ctx.Queue()
        go: multiprocessing.Queue[float] = ctx.Queue()
        procs = [
            ctx.Process(target=_worker, args=(where, policy_text, seconds, queue, ready, go))
            for _ in range(processes)
        ]
        for p in procs:
            p.start()
        for _ in procs:
            ready.get(timeout=120)
        start = time.time() + 0.5
        for _ in procs:
            go.put(start)
        results = [queue.get(timeout=seconds + 60) for _ in procs]
        for p in procs:
            p.join(30)
        if server is not None:
            server.stop()
    admitted = sum(a for a, _ in results)
    trips = sum(t for _, t in results)
    burst = max(1.0, rate)  # the default burst: what a full bucket gives at the start
    achieved = (admitted - burst) / seconds
    return achieved, round(1000 * trips / max(1, admitted))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rate", type=float, default=200.0)
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument("--processes", type=int, default=2)
    parser.add_argument("--postgres", action="store_true", help="replicas on one PostgreSQL")
    args = parser.parse_args(argv)
    sharing = "replicas on one PostgreSQL" if args.postgres else "processes on one SQLite file"
    missed = 0
    for label, max_delay in (("refusing", 0.0), ("pacing (max_delay 1s)", 1.0)):
        achieved, trips = measure(args.rate, args.seconds, args.processes, max_delay, args.postgres)
        error = achieved / args.rate - 1
        verdict = "PASS" if abs(error) <= TARGET else "MISS"
        missed += verdict == "MISS"
        print(
            f"{verdict} rate quota, {label}: configured {args.rate:g}/s, achieved "
            f"{achieved:.1f}/s over {args.seconds:g} s, {args.processes} {sharing} "
            f"({error:+.1%}; target within {TARGET:.0%}); "
            f"{trips} database round trips per 1000 admitted",
            flush=True,
        )
    return 1 if missed else 0


if __name__ == "__main__":
    sys.exit(main())
