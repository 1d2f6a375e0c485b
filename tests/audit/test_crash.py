"""Never served unaudited: SIGKILL the real gateway under load, again and again, then compare.

The oracle is the upstream itself: it logs the path of every request it received (each
client request has its own path, so its own audit object). The gateway runs as
``lockgate serve`` in its own process group, with the audit writer thread or the writer
process and durability process or fsync (alternating), under several concurrent keep-alive
clients; at a random moment the whole group (gateway and writer) gets SIGKILL. After the
last cycle the gateway starts once more (replaying the journals) and stops cleanly. Then
every path the upstream received must have exactly one allowed record in a chain that
verifies: none missing, none twice.
"""

from __future__ import annotations

import http.client
import os
import random
import secrets
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from lockgate.audit import AuditReader
from lockgate.config import load_config
from lockgate.identity import TaskIdentity, TokenIssuer
from lockgate.scaffold import write_init
from lockgate.server import State
from tests._gateway_process import BearerUpstream

pytestmark = pytest.mark.slow

CYCLES = 20
CLIENTS = 6


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Load:
    """``CLIENTS`` threads, each a keep-alive connection sending GETs to fresh paths."""

    def __init__(self, port: int, token: str) -> None:
        self.port = port
        self.token = token
        self.stop = threading.Event()
        self.answered = 0
        self.threads = [threading.Thread(target=self._run, daemon=True) for _ in range(CLIENTS)]

    def __enter__(self) -> Load:
        for t in self.threads:
            t.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        for t in self.threads:
            t.join(10)

    def _run(self) -> None:
        conn: http.client.HTTPConnection | None = None
        headers = {"Authorization": f"Bearer {self.token}"}
        while not self.stop.is_set():
            try:
                if conn is None:
                    conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=2)
                conn.request("GET", f"/orders-api/orders/{secrets.token_hex(8)}", headers=headers)
                resp = conn.getresponse()
                resp.read()
                if resp.status == 200:
                    self.answered += 1
            except (OSError, http.client.HTTPException):
                if conn is not None:
                    conn.close()
                conn = None
                time.sleep(0.01)


def _serve(config: Path) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-m", "lockgate", "--config", str(config), "serve"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,  # its own process group: the kill takes the writer too
    )


def _wait_ready(proc: subprocess.Popen[bytes], port: int, token: str) -> None:
    deadline = time.monotonic() + 30
    while True:
        assert proc.poll() is None, "gateway exited during start-up"
        assert time.monotonic() < deadline, "gateway did not start"
        try:
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
            path = f"/orders-api/orders/ready-{secrets.token_hex(8)}"  # every path unique
            conn.request("GET", path, headers={"Authorization": f"Bearer {token}"})
            if conn.getresponse().status == 200:
                conn.close()
                return
            conn.close()
        except OSError:
            pass
        time.sleep(0.05)


def _set_audit(config: Path, writer: str, durability: str) -> None:
    text = config.read_text()
    head, sep, _ = text.partition("\naudit:")
    if not sep:
        head = text.rstrip("\n")
    config.write_text(
        f"{head}\naudit: {{writer: {writer}, durability: {durability}, write_timeout: 2.0}}\n"
    )


def test_sigkill_under_load_loses_no_served_request(
    tmp_path: Path, bearer_upstream: BearerUpstream
) -> None:
    up, secret = bearer_upstream, bearer_upstream.secret
    http_port = _free_port()
    written = write_init(
        tmp_path / "lg",
        tls=False,
        control_port=_free_port(),
        http_port=http_port,
        upstream=f"http://127.0.0.1:{up.port}",
    )
    config_path = Path(written["config"])
    config = load_config(config_path)
    state = State(config)
    state.credentials.set("orders-api-key", secret)
    ident = TaskIdentity("prod", "finance_daily", "read_orders", "crash", 1, -1)
    token, _ = TokenIssuer(state.keys, config.issuer_url).mint(ident, "orders-api", 900)
    rng = random.Random(int.from_bytes(os.urandom(4), "big"))
    answered = 0
    for cycle in range(CYCLES):
        # every writer with every durability: thread, process; process, process; thread,
        # fsync; process, fsync (the kill is of the process, so fsync must hold as well)
        _set_audit(
            config_path,
            "thread" if cycle % 2 == 0 else "process",
            "process" if cycle % 4 < 2 else "fsync",
        )
        proc = _serve(config_path)
        try:
            _wait_ready(proc, http_port, token)
            with Load(http_port, token) as load:
                time.sleep(rng.uniform(0.2, 0.8))
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(10)
            answered += load.answered
        finally:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(10)
    # one more start replays what the last kill left; a clean stop commits the rest
    _set_audit(config_path, "thread", "process")
    proc = _serve(config_path)
    try:
        _wait_ready(proc, http_port, token)
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(30)
    assert proc.returncode == 0

    received = list(up.received)
    assert answered > CYCLES * 20, "too little load to mean anything"
    reader = AuditReader(config.data_dir / "audit.db")
    rows = reader.search(run="crash", decision="allow", limit=10_000_000)
    written_ahead = [r.object for r in rows if r.event == "admitted"] or [r.object for r in rows]
    missing = set(received) - set(written_ahead)
    assert not missing, f"{len(missing)} of {len(received)} served requests have no audit record"
    assert len(written_ahead) == len(set(written_ahead)), "a record was chained twice"
    assert reader.verify().ok
    journals = config.data_dir / "audit-journal"
    assert not journals.exists() or not list(journals.iterdir()), "journals left behind"
