"""CQL data path: statements/s and p50/p99 through Lockgate vs direct to the same node.

    .venv/bin/python -m benchmarks.cql [--duration 5] [--window 64] [--rounds 3]

The fake Cassandra node (tests/fakes/cqlserver) and the gateway (``lockgate serve``) run in
their own processes; this process is the client, the real cassandra-driver (protocol v4)
with ``execute_async`` and a fixed window of statements in flight. Two workloads, each for
``--duration`` seconds after a short warm-up, direct (the gateway's own upstream login) and
through Lockgate (resource name + token; every statement classified, decided by policy and
audited) alternating in ``--rounds`` slices, so load from elsewhere hits both sides alike:

* prepared INSERT ``INSERT INTO ks.kv (k, v) VALUES (?, ?)``
* prepared point SELECT ``SELECT id, item FROM ks.orders WHERE id = ?`` (a small table: the
  fake node scans a table to answer, and the point is the protocol path, not its scan)

The node is written in Python, so it is the bottleneck of the direct path too; the ratio
lockgate/direct shows what the extra hop costs on this machine, in the same run. The
gateway's CPU time per statement (from /proc) is the steadiest number on a busy machine.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cassandra.auth import PlainTextAuthProvider
from cassandra.cluster import EXEC_PROFILE_DEFAULT, Cluster, ExecutionProfile, Session
from cassandra.policies import RoundRobinPolicy
from tests.gateway.cql.process_stack import RESOURCE, UPSTREAM_USER, start_process_stack

KEYS = 10_000
#: The fake node answers a point SELECT by scanning its table, so reads go to a small table
#: (seeded with READ_KEYS rows) to measure the protocol path, not the fake's scan.
READ_KEYS = 50


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of ``pid`` so far (Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


@dataclass
class Result:
    statements: int
    seconds: float
    errors: int
    latencies_ms: list[float]
    gateway_cpu: float = 0.0  # seconds of gateway CPU spent during the measurement

    def merge(self, other: Result) -> Result:
        return Result(
            self.statements + other.statements,
            self.seconds + other.seconds,
            self.errors + other.errors,
            self.latencies_ms + other.latencies_ms,
            self.gateway_cpu + other.gateway_cpu,
        )

    @property
    def cpu_us_per_statement(self) -> float:
        return self.gateway_cpu / self.statements * 1e6 if self.statements else 0.0

    @property
    def rate(self) -> float:
        return self.statements / self.seconds if self.seconds else 0.0

    def pct(self, q: float) -> float:
        if not self.latencies_ms:
            return float("nan")
        data = sorted(self.latencies_ms)
        return data[min(len(data) - 1, int(q * len(data)))]

    def summary(self) -> dict[str, Any]:
        return {
            "statements_per_s": round(self.rate, 1),
            "p50_ms": round(self.pct(0.50), 3),
            "p99_ms": round(self.pct(0.99), 3),
            "errors": self.errors,
            "n": self.statements,
        }


def connect(port: int, user: str, password: str) -> Session:
    profile = ExecutionProfile(load_balancing_policy=RoundRobinPolicy(), request_timeout=30)
    cluster = Cluster(
        ["127.0.0.1"],
        port=port,
        protocol_version=4,
        auth_provider=PlainTextAuthProvider(user, password),
        execution_profiles={EXEC_PROFILE_DEFAULT: profile},
        connect_timeout=10,
    )
    return cluster.connect("ks")


def drive(
    session: Session,
    statement: Any,
    params: Callable[[int], tuple[Any, ...]],
    duration: float,
    window: int,
) -> Result:
    """Keep ``window`` statements in flight for ``duration`` seconds; collect latencies."""
    slots = threading.Semaphore(window)
    lock = threading.Lock()
    latencies: list[float] = []
    errors = [0]

    def done(_: Any, t0: float) -> None:
        dt = (time.perf_counter() - t0) * 1000.0
        with lock:
            latencies.append(dt)
        slots.release()

    def failed(exc: BaseException, t0: float) -> None:
        with lock:
            errors[0] += 1
        slots.release()

    start = time.perf_counter()
    until = start + duration
    i = 0
    while time.perf_counter() < until:
        slots.acquire()
        t0 = time.perf_counter()
        future = session.execute_async(statement, params(i))
        future.add_callbacks(done, failed, callback_args=(t0,), errback_args=(t0,))
        i += 1
    for _ in range(window):  # drain: every slot back means nothing is in flight
        slots.acquire()
    elapsed = time.perf_counter() - start
    return Result(len(latencies), elapsed, errors[0], latencies)


Params = Callable[[int], tuple[Any, ...]]
WORKLOADS: list[tuple[str, str, Params]] = [
    ("prepared INSERT", "INSERT INTO ks.kv (k, v) VALUES (?, ?)", lambda i: (i % KEYS, f"v{i}")),
    ("point SELECT", "SELECT id, item FROM ks.orders WHERE id = ?", lambda i: (i % READ_KEYS,)),
]


def compare(
    direct: Session, via: Session, gateway_pid: int, a: argparse.Namespace
) -> dict[str, tuple[Result, Result]]:
    """Per workload: direct and through Lockgate, alternating in ``a.rounds`` slices so that
    load from elsewhere on the machine hits both sides alike."""
    out: dict[str, tuple[Result, Result]] = {}
    for name, text, params in WORKLOADS:
        d_stmt, v_stmt = direct.prepare(text), via.prepare(text)
        drive(direct, d_stmt, params, a.warmup, a.window)
        drive(via, v_stmt, params, a.warmup, a.window)
        d_total = v_total = Result(0, 0.0, 0, [])
        for _ in range(a.rounds):
            d_total = d_total.merge(drive(direct, d_stmt, params, a.duration / a.rounds, a.window))
            cpu0 = cpu_seconds(gateway_pid)
            v = drive(via, v_stmt, params, a.duration / a.rounds, a.window)
            v.gateway_cpu = cpu_seconds(gateway_pid) - cpu0
            v_total = v_total.merge(v)
        out[name] = (d_total, v_total)
    return out


def _fmt(label: str, r: Result) -> str:
    return (
        f"  {label:8} {r.rate:9.0f} stmt/s  p50 {r.pct(0.5):7.2f} ms  p99 {r.pct(0.99):7.2f} ms"
        + (f"  errors {r.errors}" if r.errors else "")
    )


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.cql")
    p.add_argument("--duration", type=float, default=5.0, help="seconds per measurement")
    p.add_argument("--warmup", type=float, default=1.0)
    p.add_argument("--window", type=int, default=64, help="statements in flight")
    p.add_argument("--rounds", type=int, default=3, help="direct/lockgate alternations")
    a = p.parse_args(argv)
    with tempfile.TemporaryDirectory() as d, start_process_stack(Path(d) / "stack") as stack:
        direct_session = connect(stack.fake_port, UPSTREAM_USER, stack.upstream_password)
        seed = direct_session.prepare("INSERT INTO ks.orders (id, item) VALUES (?, ?)")
        for k in range(READ_KEYS):
            direct_session.execute(seed, (k, f"item-{k}"))
        gw_session = connect(stack.cql_port, RESOURCE, stack.token("etl"))
        try:
            results = compare(direct_session, gw_session, stack.gateway.pid, a)
        finally:
            direct_session.cluster.shutdown()
            gw_session.cluster.shutdown()
    print(
        f"cassandra-driver, protocol v4, {a.window} in flight, {a.duration:g}s per workload "
        f"after {a.warmup:g}s warm-up; node and gateway in their own processes"
    )
    summary: dict[str, Any] = {}
    errors = 0
    for name, (d, v) in results.items():
        ratio = v.rate / d.rate if d.rate else 0.0
        added = v.pct(0.5) - d.pct(0.5)
        print(f"{name}:")
        print(_fmt("direct", d))
        print(_fmt("lockgate", v))
        print(
            f"  lockgate/direct: {ratio:.2f}x   added p50: {added:.2f} ms   "
            f"gateway CPU: {v.cpu_us_per_statement:.0f} us/statement"
        )
        summary[name] = {
            "direct": d.summary(),
            "lockgate": v.summary(),
            "ratio": round(ratio, 3),
            "gateway_cpu_us_per_statement": round(v.cpu_us_per_statement, 1),
        }
        errors += d.errors + v.errors
    print(json.dumps(summary))
    if errors:
        print(f"errors seen: {errors}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
