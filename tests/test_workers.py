"""``lockgate serve --workers 2``: two processes on one http port, one audit chain."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
import urllib.request
from pathlib import Path

import yaml
from prometheus_client.parser import text_string_to_metric_families

from lockgate.audit import AuditReader
from tests._gateway_process import BearerUpstream, get_status, scaffold, serve, stop, wait_serving


def _children(pid: int) -> list[int]:
    out = subprocess.run(["ps", "-o", "pid=", "--ppid", str(pid)], capture_output=True, text=True)
    return [int(x) for x in out.stdout.split()]


def test_two_workers_share_port_and_audit_chain(
    tmp_path: Path, bearer_upstream: BearerUpstream
) -> None:
    gw = scaffold(tmp_path / "lg", bearer_upstream)
    token, _ = gw.mint("finance_daily", "workers", task_id="read_orders")
    url = gw.url()
    proc = serve(gw.config_path, "--workers", "2")
    try:
        wait_serving(proc, url, token)
        time.sleep(0.5)  # let the second worker join the port group too
        kids = _children(proc.pid)
        assert len(kids) == 4  # writer, 2 workers, multiprocessing's resource tracker
        n = 60
        assert [get_status(url, token) for _ in range(n)] == [200] * n  # a new connection each
        # only worker 0 serves the control plane
        ctl = f"http://127.0.0.1:{gw.control_port}/readyz"
        with urllib.request.urlopen(ctl, timeout=5) as r:
            assert json.loads(r.read())["ready"] is True
        # a dead worker is replaced; the other keeps answering on the port meanwhile
        workers = [k for k in kids if b"lockgate.audit.writer" not in _cmdline(k)]
        # records a worker has not handed to the writer yet die with it on SIGKILL; give
        # them time to be committed so the count below is exact
        time.sleep(0.5)
        os.kill(workers[-1], signal.SIGKILL)
        time.sleep(0.5)  # connections queued at the dying worker are reset: that is SO_REUSEPORT
        assert [get_status(url, token) for _ in range(20)] == [200] * 20
        deadline = time.monotonic() + 15
        while len(_children(proc.pid)) < 4:
            assert time.monotonic() < deadline, "worker not restarted"
            time.sleep(0.1)
    finally:
        returncode = stop(proc)
    assert returncode == 0
    reader = AuditReader(gw.config.data_dir / "audit.db")
    # one record per served request of both workers, in one chain (the engine may record a
    # request whose client hung up after the answer as upstream_error/client_closed)
    rows = reader.search(run="workers", limit=10_000)
    assert len(rows) >= n + 20 + 1
    assert reader.verify().ok


def test_sighup_reloads_the_catalog_in_every_worker(
    tmp_path: Path, bearer_upstream: BearerUpstream
) -> None:
    gw = scaffold(tmp_path / "lg", bearer_upstream)
    token, _ = gw.mint("finance_daily", "reload")
    url = gw.url()
    original = gw.config_path.read_text()
    data = yaml.safe_load(original)
    proc = serve(gw.config_path, "--workers", "2")

    def every_answer_becomes(status: int) -> None:
        deadline = time.monotonic() + 15
        while [get_status(url, token) for _ in range(20)] != [status] * 20:  # both workers
            assert time.monotonic() < deadline, f"not every worker answers {status}"
            time.sleep(0.2)

    try:
        wait_serving(proc, url, token)
        time.sleep(0.5)  # both workers in the port group
        gw.config_path.write_text(yaml.safe_dump({**data, "resources": []}))
        proc.send_signal(signal.SIGHUP)
        every_answer_becomes(404)
        gw.config_path.write_text(original)
        proc.send_signal(signal.SIGHUP)
        every_answer_becomes(200)
    finally:
        assert stop(proc) == 0


def _cmdline(pid: int) -> bytes:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return b""


Samples = dict[str, list[tuple[dict[str, str], float]]]


def _scrape(control_port: int) -> Samples:
    """/metrics of worker 0: each sample name's (labels, value)s ({} while it restarts)."""
    try:
        url = f"http://127.0.0.1:{control_port}/metrics"
        with urllib.request.urlopen(url, timeout=5) as r:
            text = r.read().decode()
    except OSError:
        return {}
    samples: Samples = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            samples.setdefault(s.name, []).append((s.labels, s.value))
    return samples


def _requests_of(samples: Samples, dag: str) -> float:
    counts = samples.get("lockgate_requests_total", [])
    return sum(v for labels, v in counts if labels["dag"] == dag)


def _workers_sampled(samples: Samples) -> set[str]:
    return {labels["worker"] for labels, _ in samples.get("process_resident_memory_bytes", [])}


def test_metrics_count_the_requests_of_every_worker(
    tmp_path: Path, bearer_upstream: BearerUpstream
) -> None:
    gw = scaffold(tmp_path / "lg", bearer_upstream)
    warmup, _ = gw.mint("finance_daily", "warmup")
    token, _ = gw.mint("finance_metrics", "counted")
    url = gw.url()
    metrics_dir = gw.config.data_dir / "metrics"
    proc = serve(gw.config_path, "--workers", "2")
    try:
        wait_serving(proc, url, warmup)
        assert metrics_dir.is_dir() and metrics_dir.stat().st_mode & 0o777 == 0o700
        deadline = time.monotonic() + 15  # both workers in the port group and sampled
        while _workers_sampled(_scrape(gw.control_port)) != {"0", "1"}:
            assert time.monotonic() < deadline, "a worker's process metrics are missing"
            time.sleep(0.2)
        n = 40  # a new connection each: SO_REUSEPORT spreads them over both workers
        assert [get_status(url, token) for _ in range(n)] == [200] * n
        deadline = time.monotonic() + 5  # a request is counted as its answer goes out
        while (counted := _requests_of(_scrape(gw.control_port), "finance_metrics")) < n:
            assert time.monotonic() < deadline, f"/metrics counts {counted} of {n} requests"
            time.sleep(0.1)
        assert counted == n
        # a dead worker's counts stay; its gauges go when the supervisor replaces it
        workers = [k for k in _children(proc.pid) if b"spawn_main" in _cmdline(k)]
        assert len(workers) == 2
        os.kill(workers[-1], signal.SIGKILL)
        deadline = time.monotonic() + 15
        while len([k for k in _children(proc.pid) if b"spawn_main" in _cmdline(k)]) < 2:
            assert time.monotonic() < deadline, "worker not restarted"
            time.sleep(0.1)
        assert not list(metrics_dir.glob(f"gauge_*_{workers[-1]}.db"))
        assert not list(metrics_dir.glob(f"counter_{workers[-1]}.db"))  # merged into:
        assert (metrics_dir / "counter_retired.db").exists()
        deadline = time.monotonic() + 15
        while _workers_sampled(samples := _scrape(gw.control_port)) != {"0", "1"}:
            assert time.monotonic() < deadline, "the new worker's process metrics are missing"
            time.sleep(0.2)
        assert _requests_of(samples, "finance_metrics") == n
        # one series per worker, not one per process that ever ran
        assert len(samples["process_resident_memory_bytes"]) == 2
    finally:
        assert stop(proc) == 0
    assert not metrics_dir.exists()
