"""A real ``lockgate serve`` process for tests, in front of a bearer-checking upstream.

- :class:`BearerUpstream`: a threaded keep-alive HTTP/1.1 server on 127.0.0.1 that answers
  a GET carrying ``Authorization: Bearer <its secret>`` with 200 and logs its path (on
  receipt, before answering: the oracle of what reached the upstream), anything else 401.
- :func:`scaffold`: ``lockgate init`` files on free ports pointing at that upstream, the
  upstream credential stored, and a :class:`Scaffold` that mints tokens for it.
- :func:`serve` starts ``python -m lockgate serve`` (extra arguments such as ``--workers``
  appended), :func:`stop` ends it with SIGTERM, :func:`wait_serving` waits until a request
  through it is answered 200, :func:`get_status` makes one request on a fresh connection.
"""

from __future__ import annotations

import http.server
import secrets
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from lockgate.config import LockgateConfig, load_config
from lockgate.demo.stack import free_port
from lockgate.identity import TaskIdentity, TokenIssuer
from lockgate.scaffold import write_init
from lockgate.server import State

RESOURCE = "orders-api"  # what `lockgate init` names the upstream
CREDENTIAL = "orders-api-key"


class BearerUpstream:
    """The upstream: 200 ``{"ok":true}`` for its own bearer secret, 401 otherwise."""

    def __init__(self) -> None:
        self.secret = secrets.token_urlsafe(16)
        self.received: list[str] = []  # paths of the authorised requests, in arrival order
        lock = threading.Lock()
        secret, received = self.secret, self.received

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_GET(self) -> None:
                ok = self.headers.get("Authorization") == f"Bearer {secret}"
                if ok:
                    with lock:  # logged on receipt, before any answer
                        received.append(self.path)
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

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@dataclass
class Scaffold:
    """The files of a gateway made by ``lockgate init`` (no TLS) and its durable state."""

    config_path: Path
    config: LockgateConfig
    state: State
    http_port: int
    control_port: int
    deployment_secret: str

    def url(self, path: str = "/orders") -> str:
        return f"http://127.0.0.1:{self.http_port}/{RESOURCE}{path}"

    def mint(
        self, dag_id: str, run_id: str = "r", *, task_id: str = "t", ttl: int = 300
    ) -> tuple[str, str]:
        """A token of deployment ``prod`` for the upstream: (token, jti)."""
        identity = TaskIdentity("prod", dag_id, task_id, run_id, 1, -1)
        issuer = TokenIssuer(self.state.keys, self.config.issuer_url)
        token, claims = issuer.mint(identity, RESOURCE, ttl)
        return token, claims.jti


def scaffold(directory: Path, upstream: BearerUpstream) -> Scaffold:
    """``lockgate init`` into ``directory`` on free ports, the upstream's secret stored."""
    http_port, control_port = free_port(), free_port()
    written = write_init(
        directory,
        tls=False,
        control_port=control_port,
        http_port=http_port,
        upstream=upstream.url,
    )
    config = load_config(written["config"])
    state = State(config)
    state.credentials.set(CREDENTIAL, upstream.secret)
    return Scaffold(
        Path(written["config"]),
        config,
        state,
        http_port,
        control_port,
        written["deployment_secret"].read_text().strip(),
    )


def serve(config_path: Path, *args: str, own_group: bool = False) -> subprocess.Popen[bytes]:
    """``lockgate serve`` on ``config_path``; ``own_group`` puts it in a process group of its
    own, so ``os.killpg`` takes its children (an audit writer process) with it."""
    return subprocess.Popen(
        [sys.executable, "-m", "lockgate", "--config", str(config_path), "serve", *args],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=own_group,
    )


def stop(proc: subprocess.Popen[bytes], timeout: float = 30) -> int:
    """SIGTERM (a clean stop that drains the audit trail); the exit code."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
    return proc.wait(timeout)


def get_status(url: str, token: str) -> int:
    """One GET on a fresh connection: the status, 0 when nothing answered."""
    req = urllib.request.Request(url, headers={"Authorization": f"Bearer {token}"})
    try:
        with urllib.request.urlopen(req, timeout=5) as r:
            return int(r.status)
    except urllib.error.HTTPError as exc:
        return int(exc.code)
    except OSError:
        return 0


def wait_serving(
    proc: subprocess.Popen[bytes], url: str | Callable[[], str], token: str, timeout: float = 30
) -> None:
    """Until a request through the gateway is answered 200; fails if it exits or times out.
    ``url`` may be a function giving a fresh URL per attempt (when the upstream's log of
    paths is an oracle, each request needs its own path)."""

    def next_url() -> str:
        return url() if callable(url) else url

    deadline = time.monotonic() + timeout
    while get_status(next_url(), token) != 200:
        assert proc.poll() is None, "gateway exited during start-up"
        assert time.monotonic() < deadline, "gateway did not start"
        time.sleep(0.1)
