"""What the operations scenarios (tests/test_operations_integration.py) run against: a
local OTLP/HTTP collector, an upstream that can be slow, a credential held in a Vault
stand-in, the quota and alert settings the scenarios share, and small waits."""

from __future__ import annotations

import contextlib
import http.server
import os
import secrets
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import yaml
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

from lockgate.demo.standins.entra.thread import LoopThread
from lockgate.demo.standins.vault import FakeVault
from lockgate.demo.standins.vault import start as start_vault
from tests._gateway_process import (
    CREDENTIAL,
    BearerUpstream,
)
from tests.fakes.alert_receivers import WebhookReceiver
from tests.test_workers import Samples, _children, _cmdline

THROTTLED_DAG = "finance_paced"  # under a 2/s quota
DENIED_DAG = "marketing_daily"  # no rule: every request denied


class OtlpCollector:
    """``POST /v1/traces`` (OTLP/HTTP protobuf) on 127.0.0.1: keeps each span's attributes."""

    def __init__(self) -> None:
        self.spans: list[dict[str, str]] = []
        lock, spans = threading.Lock(), self.spans

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                message = ExportTraceServiceRequest()
                message.ParseFromString(self.rfile.read(int(self.headers["Content-Length"])))
                with lock:
                    for resource_spans in message.resource_spans:
                        for scope in resource_spans.scope_spans:
                            for span in scope.spans:
                                spans.append({a.key: a.value.string_value for a in span.attributes})
                self.send_response(200)
                self.send_header("Content-Type", "application/x-protobuf")
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args: object) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.port = int(self.server.server_address[1])
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def runs(self) -> list[str]:
        return [s.get("lockgate.run_id", "") for s in list(self.spans)]

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def until(check: Callable[[], bool], limit: float, what: str) -> None:
    deadline = time.monotonic() + limit
    while not check():
        assert time.monotonic() < deadline, f"{what}: not within {limit} s"
        time.sleep(0.1)


def workers_of(proc: subprocess.Popen[bytes]) -> list[int]:
    return [k for k in _children(proc.pid) if b"spawn_main" in _cmdline(k)]


def kill_worker(proc: subprocess.Popen[bytes], pid: int) -> None:
    """kill -9 one worker; until the supervisor has two again."""
    os.kill(pid, signal.SIGKILL)
    until(lambda: pid not in (now := workers_of(proc)) and len(now) == 2, 15, "worker replaced")


def total(samples: Samples, name: str, **match: str) -> float:
    return sum(
        v
        for labels, v in samples.get(name, [])
        if all(labels.get(k) == want for k, want in match.items())
    )


def operations_config(
    config_path: Path, secrets_dir: Path, webhook: WebhookReceiver, hmac_key: bytes
) -> None:
    """Denial alerts (1 s window) to ``webhook`` signed with ``hmac_key``, secrets in files
    as a deployment mounts them; a 2/s quota (burst 2) on each DAG named ``finance_paced``."""
    secrets_dir.mkdir(mode=0o700, exist_ok=True)
    (secrets_dir / "url").write_text(webhook.url)
    (secrets_dir / "hmac").write_bytes(hmac_key)
    for f in secrets_dir.iterdir():
        f.chmod(0o600)
    data = yaml.safe_load(config_path.read_text())
    data["alerts"] = {
        "notifiers": [
            {
                "name": "ops",
                "type": "webhook",
                "url_file": str(secrets_dir / "url"),
                "hmac_key_file": str(secrets_dir / "hmac"),
                "events": ["denials"],
            }
        ],
        "denials": {"window": 1},
        "poll_interval": 0.2,
    }
    config_path.write_text(yaml.safe_dump(data))
    policy = config_path.parent / "policies" / "orders.yaml"
    rules = yaml.safe_load(policy.read_text())
    rules["quotas"] = [
        {
            "id": "finance-pace",
            "principals": [f"airflow:prod/{THROTTLED_DAG}/*"],
            "resources": ["orders-api"],
            "rate": 2,
            "burst": 2,
        }
    ]
    policy.write_text(yaml.safe_dump(rules))


def config_check(config_path: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "lockgate", "--config", str(config_path), "config", "check"],
        capture_output=True,
        text=True,
        timeout=30,
    )


@contextlib.contextmanager
def held_in_vault(config_path: Path, secret: str, workdir: Path) -> Iterator[FakeVault]:
    """The upstream credential read from a Vault KV v2 stand-in (AppRole login)."""
    loop = LoopThread()
    vault = FakeVault(policies={"orders": [("secret/data/orders/*", {"read"})]})
    loop.serve(start_vault(vault))
    try:
        role_id, secret_id = vault.add_approle("gateway", policies=["orders"])
        (workdir / "secret-id").write_text(secret_id)
        (workdir / "secret-id").chmod(0o600)
        vault.put("orders/api", {"value": secret})
        data = yaml.safe_load(config_path.read_text())
        data["credentials"] = [
            {"name": CREDENTIAL, "type": "vault_kv", "address": vault.base_url,
             "path": "orders/api", "ttl": 2,
             "auth": {"method": "approle", "role_id": role_id,
                      "secret_id_file": str(workdir / "secret-id")}}
        ]  # fmt: skip
        config_path.write_text(yaml.safe_dump(data))
        yield vault
    finally:
        loop.stop()


def delivered(receiver: WebhookReceiver, n: int, timeout: float = 15.0) -> None:
    """Until ``receiver`` accepted ``n`` alerts (it runs on a thread's loop)."""
    until(lambda: len(receiver.accepted) >= n, timeout, f"{n} alert(s) delivered")


def denial_counts(receiver: WebhookReceiver, dag: str) -> list[tuple[str, int]]:
    """(sender, count) of each denials alert on ``dag``."""
    return [
        (str(a["source"]), int(a["details"]["count"]))
        for a in list(receiver.accepted)
        if a.get("kind") == "denials" and a.get("dag_id") == dag
    ]


class SlowUpstream(BearerUpstream):
    """The bearer-checking upstream, taking ``delay`` seconds over a path holding "slow"."""

    def __init__(self, delay: float) -> None:
        self.secret = secrets.token_urlsafe(16)
        self.received = []
        secret = self.secret

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_GET(self) -> None:
                ok = self.headers.get("Authorization") == f"Bearer {secret}"
                if ok and "slow" in self.path:
                    time.sleep(delay)
                body = b'{"ok":true}' if ok else b""
                self.send_response(200 if ok else 401)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: object) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.port = int(self.server.server_address[1])
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
