"""What the web console costs: each page's time on a trail of 100,000 records, against the
same page on an empty trail and ``/healthz``, measured in the same run.

Usage::

    make bench                                   # as part of every benchmark
    .venv/bin/python -m benchmarks.console [--records 100000] [--suggest-records 1000000]

Builds a gateway with ``lockgate init`` (no TLS) whose ``data_dir/audit.db`` holds
``--records`` records chained as the writer chains them (real hashes: the chain verifies):
30 days of runs of eight DAGs (four ``finance_*`` ones the policy allows), every task try a
``token_issued`` record and its requests -- admitted then allowed, denied, throttled,
upstream errors -- one in twenty with a shadow verdict. Then starts the real ``lockgate
serve`` on it, signs in with ``lockgate console link`` and the link's POST (as a person
does), and times every console page over HTTP: cold (the first request after start) and
warm (the median of five more). The same for an empty trail: the ratio column is the
page's warm time over its warm time on the empty trail. Then Chromium (Playwright, the
browser tests' ``/usr/bin/chromium``) loads three pages to their load event, and
``/healthz`` is timed again and again while a whole export and the unused-grants page are
served: the console shares the primary worker's event loop with the gateway, so a page
that holds the loop shows there as the gateway's own delay.

Last, least privilege on ``--suggest-records`` records (``benchmarks.policy_suggest``'s
trail): ``policy suggest`` through the console's read (``views_policy._read``, its 30 s
bound lifted to see the whole cost) and through the CLI's (``cli_policy_usage.audit_rows``),
each in a fresh process: seconds and peak RSS. ``--suggest-records 0`` skips it.
"""

from __future__ import annotations

import argparse
import hashlib
import http.client
import json
import random
import re
import resource
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.parse
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from lockgate.audit import AuditRecord, chain

#: the DAGs of the trail: (dag, tasks); the policy of ``lockgate init`` allows finance_* reads
DAGS = [("finance_daily", 6), ("finance_weekly", 4), ("finance_close", 8), ("finance_fx", 3),
        ("orders_load", 5), ("sales_report", 4), ("ml_features", 7), ("crm_sync", 3)]  # fmt: skip
RESOURCE = "orders-api"
WARM = 5
SESSION_COOKIE = "lockgate_console"
ROOT = Path(__file__).resolve().parents[1]


# -- the trail ------------------------------------------------------------------------------
def _records(n: int, now: float, seed: int = 13) -> Iterator[AuditRecord]:
    """``n`` records over the 30 days before ``now``, oldest first: runs of every DAG, each
    task try a token and its requests."""
    rnd = random.Random(seed)
    start = now - 30 * 86400
    written = 0
    step = (30 * 86400 - 60) / n  # the newest record a minute ago
    run_no = 0
    while written < n:
        dag, tasks = rnd.choice(DAGS)
        run_no += 1
        began = time.gmtime(start + written * step)
        run = f"scheduled__{time.strftime('%Y-%m-%dT%H:%M:%S', began)}_{run_no}"
        for t in range(tasks):
            task = f"task_{t}"
            tries = 2 if rnd.random() < 0.05 else 1
            for try_number in range(1, tries + 1):
                who: dict[str, Any] = {
                    "deployment": "prod", "dag_id": dag, "task_id": task, "run_id": run,
                    "try_number": try_number, "map_index": -1,
                    "principal": f"airflow:prod/{dag}/{task}", "resource": RESOURCE,
                }  # fmt: skip
                jti = f"{rnd.getrandbits(96):024x}"
                ts = start + written * step
                yield AuditRecord(event="token_issued", ts=ts, decision="allow", jti=jti,
                                  detail={"expires_at": ts + 900, "ttl": 900}, **who)  # fmt: skip
                written += 1
                for _ in range(rnd.randrange(2, 14)):
                    if written >= n:
                        return
                    ts = start + written * step
                    for rec in _request(rnd, ts, jti, dag, who):
                        yield rec
                        written += 1
                if written >= n:
                    return


def _request(
    rnd: random.Random, ts: float, jti: str, dag: str, who: dict[str, Any]
) -> list[AuditRecord]:
    """The records of one request: admitted + its outcome, or a refusal."""
    finance = dag.startswith("finance_") or dag == "orders_load"
    obj = f"/orders/{rnd.randrange(5000)}"
    action = "read" if rnd.random() < 0.8 else "write"
    allowed_rule = "finance-read-orders" if dag.startswith("finance_") else "orders-load-writes"
    shadow = (
        {"shadow": {"decision": "deny", "rule": None, "reason": "no_match"}}
        if rnd.random() < 0.05
        else {}
    )
    common = {"jti": jti, "action": action, "object": obj, **who}
    kind = rnd.random()
    if not finance or (action == "write" and dag != "orders_load") or kind < 0.03:
        return [AuditRecord(event="denied", ts=ts, decision="deny", reason="no_matching_rule",
                            status=403, detail=shadow, **common)]  # fmt: skip
    if kind < 0.06:
        return [AuditRecord(event="throttled", ts=ts, decision="deny", rule=allowed_rule,
                            reason="throttled", status=429,
                            detail={"limit": "orders-rate", "kind": "rate", "retry_after": 1.0},
                            **common)]  # fmt: skip
    ref = {"ref": f"{rnd.getrandbits(64):016x}"}
    outcome = "upstream_error" if kind < 0.08 else "allowed"
    status = 502 if outcome == "upstream_error" else 200
    return [
        AuditRecord(event="admitted", ts=ts, decision="allow", rule=allowed_rule,
                    detail={**ref, **shadow}, **common),
        AuditRecord(event=outcome, ts=ts + 0.02, decision="allow", rule=allowed_rule,
                    status=status, latency_ms=rnd.uniform(2, 80), bytes_in=0,
                    bytes_out=rnd.randrange(200, 20000), detail=ref, **common),
    ]  # fmt: skip


def write_trail(data_dir: Path, records: int, now: float) -> dict[str, Any]:
    """Chain ``records`` records into ``data_dir/audit.db``; what the pages are asked about
    (a run, a record, a DAG)."""
    data_dir.mkdir(parents=True, exist_ok=True)
    conn = chain.connect(data_dir / "audit.db")
    batch: list[AuditRecord] = []
    last_run: tuple[str, str] | None = None
    try:
        for rec in _records(records, now):
            batch.append(rec)
            if rec.dag_id == "finance_daily":
                last_run = ("finance_daily", str(rec.run_id))
            if len(batch) == 20_000:
                chain.append(conn, batch)
                batch = []
        if batch:
            chain.append(conn, batch)
    finally:
        conn.close()
    dag, run = last_run or ("finance_daily", "none")
    return {"dag": dag, "run": run, "seq": max(1, records // 2)}


# -- the gateway ----------------------------------------------------------------------------
def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Served:
    proc: subprocess.Popen[bytes]
    config: Path
    port: int
    cookie: str = ""

    def get(self, path: str) -> tuple[int, int, float]:
        """GET ``path`` with the session cookie: (status, bytes, seconds to the last byte)."""
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=300)
        headers = {"Cookie": f"{SESSION_COOKIE}={self.cookie}"} if self.cookie else {}
        start = time.perf_counter()
        try:
            conn.request("GET", path, headers=headers)
            answer = conn.getresponse()
            size = 0
            while chunk := answer.read(1 << 16):
                size += len(chunk)
            return answer.status, size, time.perf_counter() - start
        finally:
            conn.close()

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(15)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(5)


def _lockgate(config: Path, *args: str) -> list[str]:
    return [sys.executable, "-m", "lockgate", "--config", str(config), *args]


def serve(directory: Path, records: int, now: float) -> tuple[Served, dict[str, Any]]:
    """``lockgate serve`` over a trail of ``records`` records, signed in."""
    from lockgate.scaffold import write_init

    port = _free_port()
    written = write_init(directory, tls=False, control_port=port, http_port=_free_port())
    config = written["config"]
    data_dir = Path(yaml.safe_load(config.read_text())["data_dir"])
    if not data_dir.is_absolute():
        data_dir = directory / data_dir
    asked = write_trail(data_dir, records, now) if records else {}
    log = (directory / "serve.out").open("wb")
    proc = subprocess.Popen(_lockgate(config, "serve"), stdout=log, stderr=subprocess.STDOUT)
    served = Served(proc, config, port)
    deadline = time.monotonic() + 60
    while True:
        try:
            if served.get("/healthz")[0] == 200:
                break
        except OSError:
            pass
        if proc.poll() is not None or time.monotonic() > deadline:
            served.stop()
            raise RuntimeError("lockgate serve did not start:\n" + _tail(directory / "serve.out"))
        time.sleep(0.1)
    served.cookie = sign_in(served)
    return served, asked


def _tail(path: Path) -> str:
    return path.read_text(errors="replace")[-3000:]


def sign_in(served: Served) -> str:
    """A one-time link from ``lockgate console link``, opened and POSTed: the session id."""
    made = subprocess.run(_lockgate(served.config, "console", "link"), capture_output=True,
                          check=True, text=True)  # fmt: skip
    url = urllib.parse.urlsplit(made.stdout.strip().splitlines()[-1])
    token = urllib.parse.parse_qs(url.query)["token"][0]
    origin = f"http://127.0.0.1:{served.port}"
    conn = http.client.HTTPConnection("127.0.0.1", served.port, timeout=30)
    try:
        conn.request("GET", f"{url.path}?{url.query}")
        conn.getresponse().read()
        body = urllib.parse.urlencode({"token": token})
        conn.request("POST", url.path, body=body, headers={
            "Content-Type": "application/x-www-form-urlencoded", "Origin": origin,
            "Referer": f"{origin}{url.path}"})  # fmt: skip
        answer = conn.getresponse()
        answer.read()
        found = re.search(rf"{SESSION_COOKIE}=([^;]+)", answer.getheader("Set-Cookie") or "")
        if answer.status != 200 or not found:
            raise RuntimeError(f"sign-in by link failed: {answer.status}")
        return found.group(1)
    finally:
        conn.close()


# -- the pages ------------------------------------------------------------------------------
def pages(asked: dict[str, Any]) -> list[tuple[str, str]]:
    """(label, path) of every page measured; the empty trail is asked the same questions."""
    dag = asked.get("dag", "finance_daily")
    run = urllib.parse.quote(asked.get("run", "none"))
    seq = asked.get("seq", 1)
    return [
        ("/healthz", "/healthz"),
        ("overview 24h", "/console/?window=24h"),
        ("overview 30d", "/console/?window=30d"),
        ("audit", "/console/audit"),
        ("audit dag+deny", f"/console/audit?dag={dag}&decision=deny"),
        ("audit/run", f"/console/audit/run?dag={dag}&run={run}"),
        ("audit/record/N", f"/console/audit/record/{seq}"),
        ("export.csv (all)", "/console/audit/export.csv"),
        ("access/dag", f"/console/access/dag?deployment=prod&dag={dag}"),
        ("access/resource", f"/console/access/resource?name={RESOURCE}"),
        ("live", "/console/live"),
        ("credentials", "/console/credentials"),
        ("policy", "/console/policy"),
        ("policy/unused", "/console/policy/unused?since=30d"),
        ("policy/suggest", f"/console/policy/suggest?dag={dag}&since=30d"),
    ]


#: pages during which /healthz is timed (the gateway's loop is the console's)
STALLS = [("export.csv (all)", "/console/audit/export.csv"),
          ("policy/unused", "/console/policy/unused?since=30d")]  # fmt: skip


@dataclass
class Timing:
    status: int
    size: int
    cold: float
    warm: float


def time_pages(served: Served, asked: dict[str, Any]) -> dict[str, Timing]:
    out: dict[str, Timing] = {}
    for label, path in pages(asked):
        status, size, cold = served.get(path)
        warm = statistics.median(served.get(path)[2] for _ in range(WARM))
        out[label] = Timing(status, size, cold, warm)
    return out


def healthz_during(served: Served, path: str) -> tuple[float, float, float]:
    """What a page costs the gateway beside it: ``/healthz`` asked again and again on
    the same event loop while ``path`` is served; (median, max, the page's seconds)."""
    took: list[float] = []
    page: list[float] = []
    worker = threading.Thread(target=lambda: page.append(served.get(path)[2]))
    worker.start()
    while worker.is_alive():
        took.append(served.get("/healthz")[2])
        time.sleep(0.01)
    worker.join()
    return statistics.median(took or [0.0]), max(took or [0.0]), page[0]


def browser_loads(served: Served, paths: list[str]) -> dict[str, float] | str:
    """Seconds from navigation to the load event in Chromium (median of 3 after one)."""
    chromium = shutil.which("chromium") or "/usr/bin/chromium"
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        return "Playwright not installed"
    if not Path(chromium).exists():
        return "no chromium"
    out: dict[str, float] = {}
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=chromium, args=["--no-sandbox",
                                     "--disable-gpu", "--disable-dev-shm-usage"])  # fmt: skip
        try:
            context = browser.new_context()
            base = f"http://127.0.0.1:{served.port}"
            context.add_cookies([{"name": SESSION_COOKIE, "value": served.cookie,
                                  "url": f"{base}/console/"}])  # fmt: skip
            page = context.new_page()
            for path in paths:
                times = []
                for _ in range(4):
                    start = time.perf_counter()
                    page.goto(base + path, wait_until="load", timeout=120_000)
                    times.append(time.perf_counter() - start)
                out[path] = statistics.median(times[1:])
        finally:
            browser.close()
    return out


# -- least privilege on a million records ---------------------------------------------------
def measure_suggest(config: Path, path: str) -> dict[str, Any]:
    """In this (fresh) process: ``policy suggest --dag finance`` over the whole trail through
    the console's read or the CLI's; seconds and peak RSS (MiB)."""
    from lockgate.audit import AuditReader
    from lockgate.cli_policy_usage import audit_rows
    from lockgate.config import load_config
    from lockgate.console import views_policy
    from lockgate.policy.suggest import Suggestion, suggest

    cfg = load_config(config)
    start = time.perf_counter()
    if path == "console":
        bound, views_policy.READ_SECONDS = views_policy.READ_SECONDS, float("inf")

        class Ctx:  # what _read uses of ConsoleContext
            @staticmethod
            def audit_reader() -> AuditReader:
                return AuditReader(cfg.data_dir / "audit.db")

        def use(rows: Iterator[Mapping[str, Any]]) -> Suggestion:
            return suggest(rows, "finance")

        try:  # the whole cost, not the page's bound
            found, _ = views_policy._read(Ctx(), "finance", 0.0, use)  # type: ignore[arg-type]
        finally:
            views_policy.READ_SECONDS = bound
    else:
        found = suggest(audit_rows(cfg, dag="finance", since=0.0), "finance")
    text = found.policy_yaml()
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return {"seconds": round(time.perf_counter() - start, 1), "rows": found.evidence.rows,
            "rules": len(found.rules), "yaml": hashlib.sha256(text.encode()).hexdigest()[:12],
            "peak_rss_mib": round(peak)}  # fmt: skip


def suggest_paths(records: int) -> None:
    from benchmarks import policy_suggest

    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        config = policy_suggest.build(Path(tmp), records)
        print(f"\npolicy suggest on {records:,} records (built in "
              f"{time.perf_counter() - start:.0f} s), each path in a fresh process:")  # fmt: skip
        for path in ("cli", "console"):
            child = [sys.executable, "-m", "benchmarks.console", "--measure", str(config), path]
            done = subprocess.run(child, capture_output=True, check=True, cwd=ROOT)
            print(f"  {path:8} {json.loads(done.stdout)}", flush=True)


# -- the run --------------------------------------------------------------------------------
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--records", type=int, default=100_000)
    parser.add_argument("--suggest-records", type=int, default=1_000_000)
    parser.add_argument("--no-browser", action="store_true")
    parser.add_argument("--measure", nargs=2, metavar=("CONFIG", "PATH"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.measure:
        print(json.dumps(measure_suggest(Path(args.measure[0]), args.measure[1])))
        return 0
    now = time.time()
    results: dict[str, dict[str, Timing]] = {}
    loads: dict[str, dict[str, float] | str] = {}
    asked: dict[str, Any] = {}
    stalls: dict[str, tuple[float, float, float]] = {}
    for size in (0, args.records):
        with tempfile.TemporaryDirectory() as tmp:
            start = time.perf_counter()
            served, made = serve(Path(tmp), size, now)
            asked = made or asked
            built = time.perf_counter() - start
            try:
                print(f"console on {size:,} records (built and started in {built:.0f} s)",
                      flush=True)  # fmt: skip
                results[str(size)] = time_pages(served, asked or made)
                if size:
                    stalls = {label: healthz_during(served, path) for label, path in STALLS}
                if not args.no_browser:
                    loads[str(size)] = browser_loads(served, [p for _, p in pages(asked)[1:4]])
            finally:
                served.stop()
    print(report(results, loads, args.records))
    for label, (median, worst, seconds) in stalls.items():
        print(f"/healthz while {label} is served ({seconds:.1f} s): median "
              f"{median * 1000:.1f} ms, max {worst * 1000:.0f} ms")  # fmt: skip
    if args.suggest_records:
        suggest_paths(args.suggest_records)
    return 0


def report(
    results: dict[str, dict[str, Timing]], loads: dict[str, dict[str, float] | str], n: int
) -> str:
    empty, full = results["0"], results[str(n)]
    health = full["/healthz"].warm
    lines = [f"{'page':18} {'status':>6} {'KB':>8} {'cold s':>8} {'warm s':>8} "
             f"{'empty s':>8} {'x empty':>8} {'x healthz':>9}"]  # fmt: skip
    for label, t in full.items():
        base = empty[label].warm
        flag = "  SLOW" if t.warm > 1.0 else ""
        lines.append(f"{label:18} {t.status:>6} {t.size / 1024:>8.0f} {t.cold:>8.3f} "
                     f"{t.warm:>8.3f} {base:>8.3f} {t.warm / base:>8.1f} "
                     f"{t.warm / health:>9.0f}{flag}")  # fmt: skip
    for size, got in loads.items():
        if isinstance(got, str):
            lines.append(f"browser ({size} records): {got}")
            continue
        said = ", ".join(f"{path} {s:.3f} s" for path, s in got.items())
        lines.append(f"Chromium to load event ({int(size):,} records): {said}")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
