"""The gateway and the fake Cassandra node in their own processes, for scale tests and benchmarks.

``start_process_stack(workdir)`` writes a lockgate.yaml (cql listener, one ``kind: cql``
resource ``cass``, policy: ``etl`` DAGs read/write ``ks.*``), stores the upstream password in
the credential store, starts ``python -m lockgate.demo.standins.cqlserver`` and ``lockgate serve``
as
subprocesses, creates the schema directly on the node, and waits until the cql listener
answers. Tokens are minted in this process with the gateway's own signing keys (same data
dir), as the token service would mint them. ``stop()`` terminates both processes.

Running them apart keeps the measuring client off their event loops and lets
:meth:`ProcessStack.gateway_rss` read the gateway's memory alone.
"""

from __future__ import annotations

import contextlib
import os
import re
import resource
import secrets
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lockgate.config import load_config
from lockgate.demo.stack import REPO_ROOT
from lockgate.identity import TaskIdentity, TokenIssuer

RESOURCE = "cass"
UPSTREAM_USER = "lockgate"

CONFIG = """\
data_dir: {data}
log_level: {log_level}
listeners:
  control: {{host: 127.0.0.1, port: {control}}}
  http: {{host: 127.0.0.1, port: {http}}}
  cql: {{host: 127.0.0.1, port: {cql}{cql_tls}}}
resources:
  - name: cass
    kind: cql
    contact_points: ["127.0.0.1:{upstream}"]
    username: lockgate
    credential: cass-pw
    handshake_timeout: 20
    idle_timeout: 600
credentials:
  - {{name: cass-pw, type: static}}
policies: ["policies/*.yaml"]
audit: {{write_timeout: 2.0}}
"""

POLICY = """\
rules:
  - id: etl-read-write
    effect: allow
    principals: ["airflow:prod/etl/*"]
    actions: [read, write]
    resources: [cass]
    objects: ["ks.*"]
"""

SCHEMA = [
    "CREATE KEYSPACE ks WITH replication = {'class': 'SimpleStrategy', 'replication_factor': 1}",
    "CREATE TABLE ks.orders (id int PRIMARY KEY, item text)",
    "CREATE TABLE ks.kv (k int PRIMARY KEY, v text)",
]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def raise_fd_limit() -> int:
    """Raise this process's soft RLIMIT_NOFILE to the hard limit (children inherit it)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or soft < hard:
        target = hard if hard != resource.RLIM_INFINITY else max(soft, 65536)
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


def rss_bytes(pid: int) -> int:
    """Resident set size of ``pid`` from /proc (Linux)."""
    text = Path(f"/proc/{pid}/status").read_text()
    match = re.search(r"^VmRSS:\s+(\d+)\s+kB", text, re.MULTILINE)
    assert match, "no VmRSS in /proc status"
    return int(match.group(1)) * 1024


def wait_port(port: int, proc: subprocess.Popen[Any], timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"process exited with {proc.returncode} before listening")
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.5):
            return
        time.sleep(0.05)
    raise RuntimeError(f"nothing listening on 127.0.0.1:{port} after {timeout} s")


@dataclass
class ProcessStack:
    workdir: Path
    config_path: Path
    fake: subprocess.Popen[str]
    gateway: subprocess.Popen[bytes]
    fake_port: int
    cql_port: int
    ca_file: Path | None = None
    upstream_password: str = field(default="", repr=False)
    _issuer: Any = field(default=None, repr=False)

    def token(self, dag: str = "etl", ttl: int = 3600) -> str:
        if self._issuer is None:
            from lockgate.server import State

            config = load_config(self.config_path)
            self._issuer = TokenIssuer(State(config).keys, config.issuer_url)
        identity = TaskIdentity("prod", dag, "load", "run-1", 1)
        return str(self._issuer.mint(identity, RESOURCE, ttl)[0])

    def gateway_rss(self) -> int:
        return rss_bytes(self.gateway.pid)

    def stop(self) -> None:
        for proc in (self.gateway, self.fake):
            if proc.poll() is None:
                proc.terminate()
        for proc in (self.gateway, self.fake):
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(5)

    def __enter__(self) -> ProcessStack:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def _create_schema(port: int, statements: list[str]) -> None:
    from cassandra.auth import PlainTextAuthProvider
    from cassandra.cluster import Cluster

    cluster = Cluster(
        ["127.0.0.1"],
        port=port,
        protocol_version=4,
        auth_provider=PlainTextAuthProvider("cassandra", "cassandra"),
    )
    try:
        session = cluster.connect()
        for text in statements:
            session.execute(text)
    finally:
        cluster.shutdown()


def start_process_stack(
    workdir: Path,
    *,
    log_level: str = "warning",
    tls: bool = False,
    schema: list[str] = SCHEMA,
) -> ProcessStack:
    """Start the fake node and the gateway as subprocesses; see the module docstring."""
    from lockgate.server import State

    raise_fd_limit()
    workdir.mkdir(parents=True, exist_ok=True)
    password = secrets.token_urlsafe(18)
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT), "PYTHONUNBUFFERED": "1"}
    fake = subprocess.Popen(
        [sys.executable, "-m", "lockgate.demo.standins.cqlserver", "--port", "0",
         "--user", "cassandra:cassandra", "--user", f"{UPSTREAM_USER}:{password}"],
        cwd=REPO_ROOT, env=env, stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    gateway: subprocess.Popen[bytes] | None = None
    try:
        assert fake.stdout is not None
        line = fake.stdout.readline()
        match = re.search(r":(\d+)\s*$", line)
        if not match:
            raise RuntimeError(f"fake CQL node did not start: {line!r}")
        fake_port = int(match.group(1))
        _create_schema(fake_port, schema)

        ca_file: Path | None = None
        cql_tls = ""
        if tls:
            from lockgate.tlsgen import write_dev_tls

            paths = write_dev_tls(workdir / "tls")
            ca_file = paths["ca"]
            cql_tls = f", tls: {{cert: {paths['cert']}, key: {paths['key']}}}"
        (workdir / "policies").mkdir(exist_ok=True)
        (workdir / "policies" / "team.yaml").write_text(POLICY)
        cql_port = free_port()
        config_path = workdir / "lockgate.yaml"
        ports = {"control": free_port(), "http": free_port(), "cql": cql_port}
        text = CONFIG.format(
            data=workdir / "data", log_level=log_level, cql_tls=cql_tls, upstream=fake_port, **ports
        )
        config_path.write_text(text)
        State(load_config(config_path)).credentials.set("cass-pw", password)
        gateway = subprocess.Popen(
            [sys.executable, "-m", "lockgate", "--config", str(config_path), "serve"],
            cwd=workdir, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        wait_port(cql_port, gateway)
        return ProcessStack(
            workdir, config_path, fake, gateway, fake_port, cql_port, ca_file, password
        )
    except BaseException:
        for proc in (gateway, fake):
            if proc is not None and proc.poll() is None:
                proc.kill()
                proc.wait(5)
        raise
