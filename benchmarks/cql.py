"""CQL data path: statements/s and p50/p99 through Lockgate vs direct to the same node.

    .venv/bin/python -m benchmarks.cql [--duration 5] [--window 64] [--rounds 3]

The fake Cassandra node (src/lockgate/demo/standins/cqlserver) and the gateway (``lockgate serve``)
run in
their own processes; this process is the client, the real cassandra-driver (protocol v4)
with ``execute_async`` and a fixed window of statements in flight. Two workloads, each for
``--duration`` seconds after a short warm-up, direct (the gateway's own upstream login) and
through Lockgate (resource name + token; every statement classified, decided by policy and
audited) alternating in ``--rounds`` slices, so load from elsewhere hits both sides alike:

* prepared INSERT ``INSERT INTO ks.kv (k, v) VALUES (?, ?)``
* prepared point SELECT ``SELECT id, item FROM ks.orders WHERE id = ?`` (a small table: the
  fake node scans a table to answer, and the point is the protocol path, not its scan)

A third side, ``engine alone``, is the CQL engine in its own process with identity, policy
and audit replaced by trivial collaborators (every token is the same claims, every decision
an allow, every record dropped): the gap between it and ``lockgate`` is what identity +
policy + audit cost per statement.

The node is written in Python, so it is the bottleneck of the direct path too; the ratio
lockgate/direct shows what the extra hop costs on this machine, in the same run. The
gateway's CPU time per statement (process CPU time from /proc, every thread, divided by the
statements) is the steadiest number on a busy machine; it is printed with the issue's
targets (prepared INSERT: <= 20 us/statement, >= 0.8x direct, p99 <= 2x direct).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import inspect
import json
import os
import re
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cassandra.auth import PlainTextAuthProvider
from cassandra.cluster import EXEC_PROFILE_DEFAULT, Cluster, ExecutionProfile, Session
from cassandra.policies import RoundRobinPolicy
from tests.gateway.cql.process_stack import (
    RESOURCE,
    UPSTREAM_USER,
    ProcessStack,
    start_process_stack,
)

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


# -- engine alone: the CQL engine with trivial identity, policy and audit -----------------------
@dataclass
class _Claims:
    sub: str = "airflow:prod/etl/load"
    aud: str = RESOURCE
    exp: float = 4.0e9
    iat: float = 1.0e9
    nbf: float = 1.0e9
    iss: str = "bench"
    jti: str = "bench"
    deployment: str = "prod"
    dag_id: str = "etl"
    task_id: str = "load"
    run_id: str = "run-1"
    try_number: int = 1
    map_index: int = -1


class _AnyToken:
    claims = _Claims()

    def verify(self, token: str, audience: str) -> _Claims:
        return self.claims


@dataclass(frozen=True)
class _Allow:
    allowed: bool = True
    rule: str | None = "bench"
    reason: str = "allowed by bench"

    def explain(self) -> str:
        return self.reason


class _AllowAll:
    decision = _Allow()

    @property
    def current(self) -> _AllowAll:
        return self

    def decide(self, req: Any) -> _Allow:
        return self.decision


@dataclass(frozen=True)
class _Secret:
    value: str
    version: int = 1


class _OneSecret:
    def __init__(self, value: str) -> None:
        self.secret = _Secret(value)

    async def upstream_secret(self, name: str, previous: bool = False) -> _Secret:
        return self.secret


class _NoAudit:
    def check_writable(self) -> None:
        pass

    def write_ahead(self, record: Any) -> str:
        return "bench/0"

    def durable(self) -> None:
        return None

    def emit(self, record: Any) -> None:
        pass


def engine_arguments(resources: list[Any], password: str) -> tuple[Any, ...]:
    """``CqlEngine``'s arguments with the trivial collaborators (one bundle, or each)."""
    from lockgate.gateway import engine as shapes
    from lockgate.gateway.cql.engine import CqlEngine

    collaborators = (_AnyToken(), _AllowAll(), _OneSecret(password), _NoAudit())
    bundle = getattr(shapes, "Collaborators", None)
    if bundle is None or "shared" not in inspect.signature(CqlEngine).parameters:
        return (resources, *collaborators)
    verifier, policy, broker, audit = collaborators
    shared = bundle(verifier=verifier, policy=policy, broker=broker, audit=audit,
                    sign_assertion=lambda claims, resource: "")  # fmt: skip
    return (resources, shared)


async def _serve_engine_alone(upstream_port: int, password: str) -> None:
    from lockgate.config import CqlResource
    from lockgate.gateway.cql.engine import CqlEngine

    resource = CqlResource(
        name=RESOURCE, kind="cql", contact_points=[f"127.0.0.1:{upstream_port}"],
        username=UPSTREAM_USER, credential="bench", handshake_timeout=20, idle_timeout=600,
    )  # fmt: skip
    engine = CqlEngine(*engine_arguments([resource], password))
    await engine.start("127.0.0.1", 0)
    print(f"engine alone listening on 127.0.0.1:{engine.port}", flush=True)
    await asyncio.Event().wait()


_PASSWORD_VARIABLE = "LOCKGATE_BENCH_UPSTREAM_PASSWORD"


@contextlib.contextmanager
def engine_alone(stack: ProcessStack) -> Iterator[tuple[int, int]]:
    """The engine alone in its own process, in front of the stack's node: (pid, port)."""
    root = str(Path(__file__).resolve().parent.parent)
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(filter(None, [root, os.getenv("PYTHONPATH")])),
    }
    env[_PASSWORD_VARIABLE] = stack.upstream_password  # not argv: it may start with "-"
    proc = subprocess.Popen(
        [sys.executable, "-m", "benchmarks.cql", "--serve-engine-alone", str(stack.fake_port)],
        env=env, stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert proc.stdout is not None
        match = re.search(r":(\d+)\s*$", proc.stdout.readline())
        if not match:
            raise RuntimeError("the engine alone did not start")
        yield proc.pid, int(match.group(1))
    finally:
        proc.terminate()
        proc.wait(10)


# -- measuring ---------------------------------------------------------------------------------
def measure(
    sessions: dict[str, Session], pids: dict[str, int], a: argparse.Namespace
) -> dict[str, dict[str, Result]]:
    """Per workload and side: the sides take turns in ``a.rounds`` slices so that load from
    elsewhere on the machine hits each alike; the CPU of a side's process is measured
    around its own slices only."""
    out: dict[str, dict[str, Result]] = {}
    for name, text, params in WORKLOADS:
        prepared = {side: sessions[side].prepare(text) for side in sessions}
        for side, session in sessions.items():
            drive(session, prepared[side], params, a.warmup, a.window)
        totals = {side: Result(0, 0.0, 0, []) for side in sessions}
        for _ in range(a.rounds):
            for side, session in sessions.items():
                pid = pids.get(side)
                cpu0 = cpu_seconds(pid) if pid else 0.0
                r = drive(session, prepared[side], params, a.duration / a.rounds, a.window)
                r.gateway_cpu = cpu_seconds(pid) - cpu0 if pid else 0.0
                totals[side] = totals[side].merge(r)
        out[name] = totals
    return out


def _fmt(label: str, r: Result) -> str:
    cpu = f"  CPU {r.cpu_us_per_statement:5.1f} us/stmt" if r.gateway_cpu else ""
    return (
        f"  {label:12} {r.rate:9.0f} stmt/s  p50 {r.pct(0.5):7.2f} ms  "
        f"p99 {r.pct(0.99):7.2f} ms{cpu}" + (f"  errors {r.errors}" if r.errors else "")
    )


#: The issue's targets for the prepared INSERT: gateway CPU, rate vs direct, p99 vs direct.
TARGET_CPU_US = 20.0
TARGET_RATIO = 0.8
TARGET_P99_RATIO = 2.0


def _verdict(ok: bool) -> str:
    return "met" if ok else "MISSED"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.cql")
    p.add_argument("--duration", type=float, default=5.0, help="seconds per measurement")
    p.add_argument("--warmup", type=float, default=1.0)
    p.add_argument("--window", type=int, default=64, help="statements in flight")
    p.add_argument("--rounds", type=int, default=3, help="alternations of the sides")
    p.add_argument("--no-engine-alone", action="store_true", help="skip the engine-alone side")
    p.add_argument("--serve-engine-alone", metavar="UPSTREAM_PORT", help=argparse.SUPPRESS)
    a = p.parse_args(argv)
    if a.serve_engine_alone:
        password = os.environ[_PASSWORD_VARIABLE]
        with contextlib.suppress(KeyboardInterrupt):
            asyncio.run(_serve_engine_alone(int(a.serve_engine_alone), password))
        return 0
    with contextlib.ExitStack() as stack_cm:
        d = stack_cm.enter_context(tempfile.TemporaryDirectory())
        stack = stack_cm.enter_context(start_process_stack(Path(d) / "stack"))
        direct_session = connect(stack.fake_port, UPSTREAM_USER, stack.upstream_password)
        seed = direct_session.prepare("INSERT INTO ks.orders (id, item) VALUES (?, ?)")
        for k in range(READ_KEYS):
            direct_session.execute(seed, (k, f"item-{k}"))
        sessions = {
            "direct": direct_session,
            "lockgate": connect(stack.cql_port, RESOURCE, stack.token("etl")),
        }
        pids = {"lockgate": stack.gateway.pid}
        if not a.no_engine_alone:
            alone_pid, alone_port = stack_cm.enter_context(engine_alone(stack))
            sessions["engine alone"] = connect(alone_port, RESOURCE, "any")
            pids["engine alone"] = alone_pid
        try:
            results = measure(sessions, pids, a)
        finally:
            for session in sessions.values():
                session.cluster.shutdown()
    print(
        f"cassandra-driver, protocol v4, {a.window} in flight, {a.duration:g}s per workload "
        f"after {a.warmup:g}s warm-up; node, gateway and engine alone in their own processes"
    )
    summary: dict[str, Any] = {}
    errors = 0
    for name, sides in results.items():
        d, v = sides["direct"], sides["lockgate"]
        ratio = v.rate / d.rate if d.rate else 0.0
        p99_ratio = v.pct(0.99) / d.pct(0.99) if d.latencies_ms else float("nan")
        print(f"{name}:")
        for side, r in sides.items():
            print(_fmt(side, r))
        print(
            f"  lockgate/direct: {ratio:.2f}x   p99 lockgate/direct: {p99_ratio:.2f}x   "
            f"added p50: {v.pct(0.5) - d.pct(0.5):.2f} ms"
        )
        alone = sides.get("engine alone")
        if alone is not None:
            print(
                f"  engine alone/direct: {alone.rate / d.rate if d.rate else 0.0:.2f}x   "
                f"identity + policy + audit: "
                f"{v.cpu_us_per_statement - alone.cpu_us_per_statement:.1f} us/statement"
            )
        if name == "prepared INSERT":
            print(
                f"  targets: CPU <= {TARGET_CPU_US:g} us "
                f"{_verdict(v.cpu_us_per_statement <= TARGET_CPU_US)}, "
                f">= {TARGET_RATIO}x direct {_verdict(ratio >= TARGET_RATIO)}, "
                f"p99 <= {TARGET_P99_RATIO:g}x direct {_verdict(p99_ratio <= TARGET_P99_RATIO)}"
            )
        summary[name] = {
            **{side: r.summary() for side, r in sides.items()},
            "ratio": round(ratio, 3),
            "p99_ratio": round(p99_ratio, 3),
            "gateway_cpu_us_per_statement": round(v.cpu_us_per_statement, 1),
        }
        if alone is not None:
            summary[name]["engine_alone_cpu_us_per_statement"] = round(
                alone.cpu_us_per_statement, 1
            )
        errors += sum(r.errors for r in sides.values())
    print(json.dumps(summary))
    if errors:
        print(f"errors seen: {errors}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
