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
