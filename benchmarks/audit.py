"""What the audit trail costs per allowed request, before and after the write-ahead journal.

Usage::

    .venv/bin/python -m benchmarks.audit [--requests 20000]

The gateway benchmarks (``http_proxy``, ``cql``) measure the whole data path, where the
audit's share drowns in the noise of a shared machine. This one isolates it, in one run:

* ``emit only``: what every allowed request cost before the journal: one outcome record,
  queued and committed (CPU of the gateway process, writer thread included);
* ``write_ahead + emit``: what it costs now: the ``admitted`` record sanitised, serialised
  and written to the journal with one ``write()``, queued; then the outcome record;
* the same for ``RemoteAuditLog`` (writer process; the gateway process's CPU only);
* ``fsync``: ``durability: fsync`` from an event loop with 8 and 64 requests in flight,
  each awaiting its line's group-committed ``fdatasync`` before "forwarding": requests/s
  and the wait's p50/p99.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

from lockgate.audit import AuditLog, AuditRecord, RemoteAuditLog


def _record(event: str, i: int, **kw: Any) -> AuditRecord:
    return AuditRecord(
        event=event, deployment="prod", dag_id="finance_daily", task_id="read_orders",
        run_id="bench", try_number=1, map_index=-1,
        principal="airflow:prod/finance_daily/read_orders", resource="orders-api",
        action="read", object=f"/orders/{i}", decision="allow", rule="finance-read-orders",
        reason="allowed by finance-read-orders", jti="f1e2d3c4b5a6", **kw,
    )  # fmt: skip


def cpu_per_request(remote: bool, ahead: bool, n: int) -> float:
    """µs of this process's CPU per allowed request, until everything is committed."""
    with tempfile.TemporaryDirectory() as d:
        db = Path(d) / "audit.db"
        log: AuditLog | RemoteAuditLog = RemoteAuditLog(db) if remote else AuditLog(db)
        try:
            cpu = time.process_time()
            for i in range(n):
                ref = log.write_ahead(_record("admitted", i)) if ahead else None
                log.emit(_record("allowed", i, status=200, latency_ms=0.4, detail={"ref": ref}))
                if i % 1000 == 999:
                    log.flush(60)  # bounded queue, as under steady load
            log.flush(60)
            return (time.process_time() - cpu) / n * 1e6
        finally:
            log.close()


async def _fsync_load(log: AuditLog, inflight: int, seconds: float) -> tuple[int, list[float]]:
    waits: list[float] = []
    end = time.monotonic() + seconds
    counter = iter(range(10**9))

    async def one() -> None:
        while time.monotonic() < end:
            i = next(counter)
            t0 = time.perf_counter()
            ref = log.write_ahead(_record("admitted", i))
            wait = log.durable()
            if wait is not None:
                await wait
            waits.append(time.perf_counter() - t0)
            log.emit(_record("allowed", i, status=200, detail={"ref": ref}))
            await asyncio.sleep(0)  # the "upstream" answers at once

    await asyncio.gather(*(one() for _ in range(inflight)))
    return len(waits), waits


def fsync_figures(inflight: int, seconds: float) -> dict[str, float]:
    with tempfile.TemporaryDirectory() as d:
        log = AuditLog(Path(d) / "audit.db", fsync=True)
        try:
            n, waits = asyncio.run(_fsync_load(log, inflight, seconds))
            log.flush(60)
        finally:
            log.close()
    q = statistics.quantiles(waits, n=100)
    return {"requests_per_s": n / seconds, "p50_ms": q[49] * 1e3, "p99_ms": q[98] * 1e3}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.audit")
    p.add_argument("--requests", type=int, default=20_000)
    p.add_argument("--seconds", type=float, default=3.0, help="per fsync measurement")
    a = p.parse_args(argv)
    out: dict[str, Any] = {}
    for remote in (False, True):
        name = "remote (writer process)" if remote else "thread writer"
        before = cpu_per_request(remote, False, a.requests)
        after = cpu_per_request(remote, True, a.requests)
        out[name] = {"emit_only_us": round(before, 1), "write_ahead_emit_us": round(after, 1)}
        print(
            f"{name:>24}: emit only {before:6.1f} us/request, write_ahead + emit "
            f"{after:6.1f} us/request ({after / before:.2f}x)"
        )
    for inflight in (8, 64):
        f = fsync_figures(inflight, a.seconds)
        out[f"fsync@{inflight}"] = {k: round(v, 3) for k, v in f.items()}
        print(
            f"{'fsync, ' + str(inflight) + ' in flight':>24}: {f['requests_per_s']:8.0f} req/s, "
            f"wait for durable p50 {f['p50_ms']:.3f} ms p99 {f['p99_ms']:.3f} ms"
        )
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
