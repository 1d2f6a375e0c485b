"""Several real ``lockgate serve`` replicas sharing one PostgreSQL database, on loopback.

:func:`build_cluster` writes one ``lockgate init`` scaffold (policies, the deployment's
secret) and, per replica, a ``lockgate.yaml`` of its own: its own ``data_dir`` (local audit
journal and chain), its own free ports, its own ``state.postgresql.replica_id``, the same
shared database and the same ``master_key_file``. Replica ``i`` is ``cluster.replicas[i]``,
named ``r1``, ``r2``, ...

- :class:`RotatingUpstream`: the upstream HTTP service. It accepts any of the bearer
  secrets it currently holds (old and new during a rotation's overlap, like a real service
  with two keys) and logs every authorised request's path and secret on receipt, before it
  answers: the oracle of what the upstream served.
- :class:`Cluster`: start, ``kill -9`` and stop replicas (each in its own process group, so
  its audit writer goes with it; a finaliser and ``atexit`` stop whatever is left), run the
  ``lockgate`` CLI against a replica's configuration, mint and revoke through the control
  listeners, and open :class:`Client` keep-alive connections to a replica's HTTP listener.

Nothing here needs pytest: ``benchmarks/ha.py`` builds the same cluster.
"""

from __future__ import annotations

import atexit
import base64
import contextlib
import http.client
import http.server
import json
import os
import secrets
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from lockgate.config import PostgresStateSettings, load_config
from lockgate.demo.stack import free_port
from lockgate.scaffold import write_init
from lockgate.state import State

RESOURCE = "orders-api"  # what `lockgate init` names the HTTP upstream
CREDENTIAL = "orders-api-key"
CONN_ID = "orders_api"
DAG = "finance_daily"  # the init policy lets finance_* read /orders/**
PG_RESOURCE = "orders-pg"
PG_CREDENTIAL = "orders-pg-password"
PG_CONN_ID = "orders_pg"
ISSUER = "https://lockgate.ha.test"
START_TIMEOUT = 60.0
STOP_TIMEOUT = 30.0
# Variables a replica must not inherit from the test process: each replica's own config
# names its master key file and replica id.
_SCRUBBED_ENV = ("LOCKGATE_MASTER_KEY", "LOCKGATE_REPLICA_ID", "LOCKGATE_CONFIG")


class _QuietServer(http.server.ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request: object, client_address: object) -> None:
        pass  # a replica killed mid-request resets its connection: expected, not news


class RotatingUpstream:
    """200 ``{"ok":true}`` for a GET bearing any accepted secret, 401 otherwise."""

    def __init__(self, *accepted: str) -> None:
        self._lock = threading.Lock()
        self._accepted: tuple[str, ...] = accepted
        #: (path, secret) of each authorised request, in arrival order, logged on receipt.
        self.received: list[tuple[str, str]] = []
        self.refused = 0
        self._stopped = False
        upstream = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_GET(self) -> None:
                auth = self.headers.get("Authorization", "")
                secret = auth.removeprefix("Bearer ")
                with upstream._lock:  # logged on receipt, before any answer
                    ok = auth.startswith("Bearer ") and secret in upstream._accepted
                    if ok:
                        upstream.received.append((self.path, secret))
                    else:
                        upstream.refused += 1
                body = b'{"ok":true}' if ok else b""
                self.send_response(200 if ok else 401)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: object) -> None:
                pass

        self.server = _QuietServer(("127.0.0.1", 0), Handler)
        self.port = int(self.server.server_address[1])
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def accept(self, *accepted: str) -> None:
        """From now on only these secrets are accepted."""
        with self._lock:
            self._accepted = accepted

    def newest(self) -> str:
        """The secret accepted last (what the gateway should use)."""
        with self._lock:
            return self._accepted[-1]

    def secret_of(self, path: str) -> str | None:
        """The secret the request for ``path`` carried (None: not served)."""
        with self._lock:
            for p, s in reversed(self.received):
                if p == path:
                    return s
        return None

    def served_paths(self) -> set[str]:
        with self._lock:
            return {p for p, _ in self.received}

    def stop(self) -> None:
        if not self._stopped:
            self._stopped = True
            self.server.shutdown()
            self.server.server_close()


@dataclass
class Replica:
    """One replica's files and ports; ``proc`` while it runs."""

    name: str
    directory: Path
    config_path: Path
    http_port: int
    control_port: int
    postgres_port: int | None
    proc: subprocess.Popen[bytes] | None = None
    starts: int = 0

    @property
    def data_dir(self) -> Path:
        return self.directory / "data"

    @property
    def control_url(self) -> str:
        return f"http://127.0.0.1:{self.control_port}"

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.http_port}/{RESOURCE}{path}"

    @property
    def log_path(self) -> Path:
        return self.directory / f"serve-{self.starts}.log"


@dataclass
class PgResource:
    """A ``kind: postgres`` resource behind every replica's postgres listener: a database
    and upstream login of its own on the test PostgreSQL server."""

    host: str
    port: int
    database: str
    login: str
    password: str = field(repr=False)
    ca_file: Path


def _ident(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def replica_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in _SCRUBBED_ENV}
    # the repository's tests/ and benchmarks/ importable by the children too
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [os.getcwd(), env.get("PYTHONPATH")]))
    return env


def write_master_key(path: Path) -> Path:
    """A fresh master key file (base64 of 32 random bytes, 0600)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write(base64.b64encode(secrets.token_bytes(32)).decode() + "\n")
    return path


@dataclass
class Cluster:
    """Replicas on one shared database. Stop with :meth:`close` (also run at exit)."""

    base: Path
    settings: PostgresStateSettings
    upstream: RotatingUpstream
    deployment_secret: str
    master_key_file: Path
    replicas: list[Replica]
    pg_resource: PgResource | None = None
    template: dict[str, Any] = field(default_factory=dict, repr=False)  # init's lockgate.yaml
    policies: list[str] = field(default_factory=list)

    def add_replica(self, master_key_file: Path | None = None) -> int:
        """Files for one more replica (``master_key_file``: another key than the others');
        its index. Not started."""
        n = len(self.replicas) + 1
        state = self.settings.model_dump(mode="json", exclude_none=True)
        self.replicas.append(
            _write_replica(self.base / f"r{n}", f"r{n}", self.template, self.policies, state,
                           master_key_file or self.master_key_file, self.pg_resource)
        )  # fmt: skip
        return n - 1

    # -- life cycle --------------------------------------------------------------------------
    def start(self, i: int) -> Replica:
        """Start replica ``i`` (in a process group of its own); does not wait."""
        r = self.replicas[i]
        assert r.proc is None or r.proc.poll() is not None, f"{r.name} already runs"
        r.starts += 1
        with r.log_path.open("wb") as log:
            r.proc = subprocess.Popen(
                [sys.executable, "-m", "lockgate", "--config", str(r.config_path), "serve"],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=replica_env(),
                start_new_session=True,
            )
        return r

    def wait_ready(self, i: int, timeout: float = START_TIMEOUT) -> None:
        """Until replica ``i``'s ``/readyz`` answers 200; fails if it exits or times out."""
        r = self.replicas[i]
        deadline = time.monotonic() + timeout
        while True:
            assert r.proc is not None
            if r.proc.poll() is not None:
                raise AssertionError(f"{r.name} exited during start-up:\n{self.log_tail(i)}")
            if ready_status(r)[0] == 200:
                return
            if time.monotonic() > deadline:
                raise AssertionError(f"{r.name} not ready in {timeout} s:\n{self.log_tail(i)}")
            time.sleep(0.1)

    def start_all(self) -> None:
        for i in range(len(self.replicas)):
            self.start(i)
            # one at a time: the first creates the schema and the first signing key
            self.wait_ready(i)

    def kill(self, i: int) -> None:
        """``kill -9`` of the replica's whole process group (its audit writer too)."""
        r = self.replicas[i]
        assert r.proc is not None
        with contextlib.suppress(ProcessLookupError):
            os.killpg(r.proc.pid, signal.SIGKILL)
        r.proc.wait(STOP_TIMEOUT)

    def stop(self, i: int) -> int | None:
        """SIGTERM (a clean stop), a kill if that hangs; the exit code."""
        r = self.replicas[i]
        if r.proc is None:
            return None
        if r.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(r.proc.pid, signal.SIGTERM)
            try:
                r.proc.wait(STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(r.proc.pid, signal.SIGKILL)
                r.proc.wait(STOP_TIMEOUT)
        return r.proc.returncode

    def close(self) -> None:
        """Stop every replica and the upstream (again: nothing)."""
        for i in range(len(self.replicas)):
            self.stop(i)
        self.upstream.stop()

    def log_tail(self, i: int, chars: int = 3000) -> str:
        with contextlib.suppress(OSError):
            return self.replicas[i].log_path.read_text(errors="replace")[-chars:]
        return ""

    # -- the CLI and the state ---------------------------------------------------------------
    def cli(
        self, i: int, *args: str, timeout: float = 120.0, check: bool = True
    ) -> subprocess.CompletedProcess[str]:
        """``lockgate --config <replica i> ARGS`` in a process of its own."""
        done = subprocess.run(
            [sys.executable, "-m", "lockgate", "--config", str(self.replicas[i].config_path),
             *args],
            capture_output=True, text=True, timeout=timeout, env=replica_env(), check=False,
        )  # fmt: skip
        if check and done.returncode != 0:
            raise AssertionError(
                f"lockgate {' '.join(args)} on {self.replicas[i].name} exited "
                f"{done.returncode}: {done.stderr.strip()[-2000:]}"
            )
        return done

    def state(self, i: int) -> State:
        """Replica ``i``'s state opened in this process (close it after use)."""
        return State(load_config(self.replicas[i].config_path))

    # -- the control plane -------------------------------------------------------------------
    def _post(self, i: int, path: str, fields: dict[str, str]) -> tuple[int, dict[str, Any]]:
        body = urllib.parse.urlencode(
            {"client_id": "prod", "client_secret": self.deployment_secret, **fields}
        ).encode()
        url = self.replicas[i].control_url + path
        try:
            with urllib.request.urlopen(url, body, timeout=10) as resp:
                return int(resp.status), json.loads(resp.read() or b"{}")
        except urllib.error.HTTPError as exc:
            return int(exc.code), json.loads(exc.read() or b"{}")

    def mint(
        self, i: int, run_id: str = "ha", *, conn_id: str = CONN_ID, task_id: str = "load"
    ) -> tuple[str, str]:
        """A token minted by replica ``i``'s token service: (token, jti)."""
        status, body = self._post(
            i, "/v1/token",
            {"conn_id": conn_id, "dag_id": DAG, "task_id": task_id, "run_id": run_id,
             "try_number": "1"},
        )  # fmt: skip
        assert status == 200, f"mint on {self.replicas[i].name}: {status} {body}"
        return str(body["access_token"]), str(body["jti"])

    def revoke_jti(self, i: int, jti: str) -> None:
        """``POST /v1/revoke`` of one token on replica ``i``."""
        status, body = self._post(i, "/v1/revoke", {"jti": jti})
        assert status == 200, f"revoke on {self.replicas[i].name}: {status} {body}"


def ready_status(r: Replica) -> tuple[int, dict[str, Any]]:
    """Replica ``r``'s ``/readyz``: (status, JSON body); (0, {}) when nothing answered."""
    try:
        with urllib.request.urlopen(r.control_url + "/readyz", timeout=5) as resp:
            return int(resp.status), json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        return int(exc.code), json.loads(exc.read() or b"{}")
    except (OSError, ValueError):
        return 0, {}


class Client:
    """A keep-alive HTTP/1.1 connection to one replica's HTTP listener (reconnects after an
    error). :meth:`get` gives the status, 0 when the request failed without an answer."""

    def __init__(self, replica: Replica, timeout: float = 10.0) -> None:
        self.replica = replica
        self.timeout = timeout
        self._conn: http.client.HTTPConnection | None = None

    def get(self, path: str, token: str) -> int:
        if self._conn is None:
            self._conn = http.client.HTTPConnection(
                "127.0.0.1", self.replica.http_port, timeout=self.timeout
            )
        try:
            self._conn.request(
                "GET", f"/{RESOURCE}{path}", headers={"Authorization": f"Bearer {token}"}
            )
            resp = self._conn.getresponse()
            resp.read()
            if resp.will_close:
                self.close()
            return int(resp.status)
        except (OSError, http.client.HTTPException):
            self.close()
            return 0

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None


def add_pg_resource(server: Any, suffix: str) -> PgResource:
    """A database and login of their own on ``server`` (a tests.pgserver PgServer) with one
    table ``sales.orders`` the login may read."""
    login, database = f"lg_ha_{suffix}", f"lg_ha_db_{suffix}"
    password = secrets.token_urlsafe(18)
    server.create_user(login, password)
    server.psql(f"CREATE DATABASE {_ident(database)};")
    server.psql(
        "CREATE SCHEMA sales;\n"
        "CREATE TABLE sales.orders (id int PRIMARY KEY, item text NOT NULL);\n"
        "INSERT INTO sales.orders VALUES (1, 'apple'), (2, 'pear');\n"
        f"GRANT USAGE ON SCHEMA sales TO {_ident(login)};\n"
        f"GRANT SELECT ON ALL TABLES IN SCHEMA sales TO {_ident(login)};\n",
        dbname=database,
    )
    return PgResource(server.host, server.port, database, login, password, server.ca_file)


PG_POLICY = """\
rules:
  - id: finance-read-sales
    effect: allow
    principals: ["airflow:prod/finance_*/*"]
    actions: [read]
    resources: [orders-pg]
    objects: ["sales.*"]
"""


def build_cluster(
    base: Path,
    settings: PostgresStateSettings,
    *,
    replicas: int = 3,
    pg_resource: PgResource | None = None,
) -> Cluster:
    """The files of ``replicas`` replicas on the shared database ``settings`` names, the
    upstream credential stored once (through replica 1's state). Nothing is started."""
    upstream = RotatingUpstream(secrets.token_urlsafe(16))
    base.mkdir(parents=True, exist_ok=True)
    scaffold_dir = base / "scaffold"
    written = write_init(
        scaffold_dir, tls=False, control_port=free_port(), http_port=free_port(),
        upstream=upstream.url,
    )  # fmt: skip
    template = yaml.safe_load(Path(written["config"]).read_text())
    policies = [str(scaffold_dir / "policies" / "*.yaml")]
    if pg_resource is not None:
        (scaffold_dir / "policies" / "pg.yaml").write_text(PG_POLICY)
    cluster = Cluster(
        base, settings, upstream, written["deployment_secret"].read_text().strip(),
        write_master_key(base / "master.key"), [], pg_resource, template, policies,
    )  # fmt: skip
    for _ in range(replicas):
        cluster.add_replica()
    first = cluster.state(0)
    try:
        first.credentials.set(CREDENTIAL, upstream.newest())
        if pg_resource is not None:
            first.credentials.set(PG_CREDENTIAL, pg_resource.password)
    finally:
        first.close()
    atexit.register(cluster.close)
    return cluster


def _write_replica(
    directory: Path,
    name: str,
    template: dict[str, Any],
    policies: list[str],
    state: dict[str, Any],
    key_file: Path,
    pg_resource: PgResource | None,
) -> Replica:
    directory.mkdir(parents=True, exist_ok=True)
    config = json.loads(json.dumps(template))  # a deep copy
    http_port, control_port = free_port(), free_port()
    config["data_dir"] = str(directory / "data")
    config["listeners"]["control"]["port"] = control_port
    config["listeners"]["http"]["port"] = http_port
    config["policies"] = policies
    config["issuer"] = ISSUER  # one issuer for every replica, as behind a load balancer
    config["master_key_file"] = str(key_file)
    config["state"] = {"postgresql": {**state, "replica_id": name}}
    postgres_port = None
    if pg_resource is not None:
        postgres_port = free_port()
        config["listeners"]["postgres"] = {
            "host": "127.0.0.1", "port": postgres_port, "allow_plaintext": True,
        }  # fmt: skip
        config["resources"].append(
            {"name": PG_RESOURCE, "kind": "postgres", "host": pg_resource.host,
             "port": pg_resource.port, "database": pg_resource.database,
             "username": pg_resource.login, "credential": PG_CREDENTIAL,
             "tls": "verify-full", "ca_file": str(pg_resource.ca_file), "conn_id": PG_CONN_ID}
        )  # fmt: skip
        config["credentials"].append({"name": PG_CREDENTIAL, "type": "static"})
    config_path = directory / "lockgate.yaml"
    config_path.write_text(yaml.safe_dump(config, sort_keys=False))
    return Replica(name, directory, config_path, http_port, control_port, postgres_port)
