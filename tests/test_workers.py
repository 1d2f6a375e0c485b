"""``lockgate serve --workers 2``: two processes on one http port, one audit chain."""

from __future__ import annotations

import http.server
import json
import os
import secrets
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from lockgate.audit import AuditReader
from lockgate.config import load_config
from lockgate.identity import TaskIdentity, TokenIssuer
from lockgate.scaffold import write_init
from lockgate.server import State


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _children(pid: int) -> list[int]:
    out = subprocess.run(["ps", "-o", "pid=", "--ppid", str(pid)], capture_output=True, text=True)
    return [int(x) for x in out.stdout.split()]


@pytest.fixture
def upstream() -> Iterator[tuple[int, str]]:
    secret = secrets.token_urlsafe(16)

    class Handler(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_GET(self) -> None:
            ok = self.headers.get("Authorization") == f"Bearer {secret}"
            body = b'{"ok":true}' if ok else b""
            self.send_response(200 if ok else 401)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            pass

    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    try:
        yield srv.server_address[1], secret
    finally:
        srv.shutdown()
        srv.server_close()


def _get(url: str, token: str) -> int:
    req = urllib.request.Request(url, headers={"Authorization": f"Bearer {token}"})
    try:
        with urllib.request.urlopen(req, timeout=5) as r:
            return int(r.status)
    except urllib.error.HTTPError as exc:
        return int(exc.code)
    except OSError:
        return 0


def test_two_workers_share_port_and_audit_chain(tmp_path: Path, upstream: tuple[int, str]) -> None:
    up_port, secret = upstream
    http_port = _free_port()
    written = write_init(
        tmp_path / "lg",
        tls=False,
        control_port=_free_port(),
        http_port=http_port,
        upstream=f"http://127.0.0.1:{up_port}",
    )
    config = load_config(written["config"])
    state = State(config)
    state.credentials.set("orders-api-key", secret)
    ident = TaskIdentity("prod", "finance_daily", "read_orders", "workers", 1, -1)
    token, _ = TokenIssuer(state.keys, config.issuer_url).mint(ident, "orders-api", 300)
    url = f"http://127.0.0.1:{http_port}/orders-api/orders"
    proc = subprocess.Popen(
        [sys.executable, "-m", "lockgate", "--config", str(written["config"]), "serve",
         "--workers", "2"],
        stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 30
        while _get(url, token) != 200:
            assert proc.poll() is None and time.monotonic() < deadline, "gateway did not start"
            time.sleep(0.1)
        time.sleep(0.5)  # let the second worker join the port group too
        kids = _children(proc.pid)
        assert len(kids) == 4  # writer, 2 workers, multiprocessing's resource tracker
        n = 60
        assert [_get(url, token) for _ in range(n)] == [200] * n  # a new connection each
        # only worker 0 serves the control plane
        ctl = f"http://127.0.0.1:{config.listeners.control.port}/readyz"
        with urllib.request.urlopen(ctl, timeout=5) as r:
            assert json.loads(r.read())["ready"] is True
        # a dead worker is replaced; the other keeps answering on the port meanwhile
        workers = [k for k in kids if b"lockgate.audit.writer" not in _cmdline(k)]
        # records a worker has not handed to the writer yet die with it on SIGKILL; give
        # them time to be committed so the count below is exact
        time.sleep(0.5)
        os.kill(workers[-1], signal.SIGKILL)
        time.sleep(0.5)  # connections queued at the dying worker are reset: that is SO_REUSEPORT
        assert [_get(url, token) for _ in range(20)] == [200] * 20
        deadline = time.monotonic() + 15
        while len(_children(proc.pid)) < 4:
            assert time.monotonic() < deadline, "worker not restarted"
            time.sleep(0.1)
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(30)
    assert proc.returncode == 0
    reader = AuditReader(config.data_dir / "audit.db")
    # one record per served request of both workers, in one chain (the engine may record a
    # request whose client hung up after the answer as upstream_error/client_closed)
    rows = reader.search(run="workers", limit=10_000)
    assert len(rows) >= n + 20 + 1
    assert reader.verify().ok


def _cmdline(pid: int) -> bytes:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return b""
