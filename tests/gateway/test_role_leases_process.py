"""A replica killed with ``kill -9`` leaves no dynamic database role behind: two real
``lockgate serve`` processes share one PostgreSQL state database; the first issues a role on
a real PostgreSQL upstream and is killed, the second drops the role within the lease grace
(the upstream's ``pg_roles`` is the oracle)."""

from __future__ import annotations

import base64
import hashlib
import json
import os
import signal
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from lockgate.config import PostgresStateSettings, load_config
from lockgate.demo.stack import free_port
from lockgate.server import State
from lockgate.store import PostgresDatabase
from tests._gateway_process import serve, stop
from tests.gateway.postgres.test_dynamic_roles_e2e import POLICY
from tests.gateway.role_route import DEPLOYMENT_SECRET, task_coords
from tests.pgserver import PgServer

from .postgres.test_dynamic_roles import (
    DATABASE,
    GATEWAY_PASSWORD,
    GATEWAY_USER,
    live_roles,
    prepare,
)

pytestmark = pytest.mark.slow

GRACE = 1.0
CONFIG = """\
data_dir: {data}
listeners:
  control: {{host: 127.0.0.1, port: {control}}}
  http: {{host: 127.0.0.1, port: {http}}}
  postgres: {{host: 127.0.0.1, port: {pg}, allow_plaintext: true}}
deployments:
  - name: prod
    proof: {{type: client_secret, secret_sha256: {sha}}}
    dags: ["etl"]
resources:
  - name: shop
    kind: postgres
    host: 127.0.0.1
    port: {port}
    database: {database}
    username: {user}
    credential: shop-pw
    ca_file: {ca}
    connect_timeout: 2
    dynamic_roles: true
credentials:
  - {{name: shop-pw, type: static}}
policies: ["{policies}/*.yaml"]
state:
  postgresql:
    dsn: "{dsn}"
    password_file: {password_file}
    replica_id: {replica}
    catch_up_interval: 0.5
    lease_grace: {grace}
"""


def _write_config(
    directory: Path, replica: str, upstream: PgServer, settings: PostgresStateSettings
) -> tuple[Path, int]:
    directory.mkdir()
    (directory / "policies").mkdir()
    (directory / "policies" / "shop.yaml").write_text(POLICY)
    control = free_port()
    path = directory / "lockgate.yaml"
    path.write_text(
        CONFIG.format(
            data=directory / "data", control=control, http=free_port(), pg=free_port(),
            sha=hashlib.sha256(DEPLOYMENT_SECRET.encode()).hexdigest(), port=upstream.port,
            database=DATABASE, user=GATEWAY_USER, ca=upstream.ca_file,
            policies=directory / "policies", dsn=settings.dsn,
            password_file=settings.password_file, replica=replica, grace=GRACE,
        )
    )  # fmt: skip
    return path, control


def _post_role(control: int) -> tuple[int, dict[str, object]]:
    body = {"client_id": "prod", "client_secret": DEPLOYMENT_SECRET, **task_coords("shop")}
    req = urllib.request.Request(
        f"http://127.0.0.1:{control}/v1/db-role",
        data=urllib.parse.urlencode(body).encode(),
        method="POST",
    )
    try:
        with urllib.request.urlopen(req, timeout=10) as resp:
            return int(resp.status), json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        return int(exc.code), json.loads(exc.read() or b"{}")
    except OSError:
        return 0, {}


def _wait_ready(proc: subprocess.Popen[bytes], control: int, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while True:
        assert proc.poll() is None, "gateway exited during start-up"
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{control}/healthz", timeout=2):
                return
        except (urllib.error.HTTPError, OSError):
            pass
        assert time.monotonic() < deadline, "gateway did not start"
        time.sleep(0.1)


@pytest.fixture
def processes() -> Iterator[list[subprocess.Popen[bytes]]]:
    started: list[subprocess.Popen[bytes]] = []
    yield started
    for proc in started:
        if proc.poll() is None:
            stop(proc)


def test_a_killed_replicas_role_is_dropped_by_another(
    pg_server: PgServer,
    pg_state: Callable[..., PostgresStateSettings],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    processes: list[subprocess.Popen[bytes]],
) -> None:
    prepare(pg_server)
    monkeypatch.setenv("LOCKGATE_MASTER_KEY", base64.b64encode(b"k" * 32).decode())
    settings = pg_state()
    config_1, control_1 = _write_config(tmp_path / "replica-1", "replica-1", pg_server, settings)
    config_2, control_2 = _write_config(tmp_path / "replica-2", "replica-2", pg_server, settings)
    state = State(load_config(config_1))
    state.credentials.set("shop-pw", GATEWAY_PASSWORD)  # shared: replica 2 reads it too
    state.close()

    doomed = serve(config_1, own_group=True)
    processes.append(doomed)
    _wait_ready(doomed, control_1)
    status, role = _post_role(control_1)
    assert status == 200, role
    name = str(role["username"])
    assert name in live_roles(pg_server)
    os.killpg(doomed.pid, signal.SIGKILL)  # no stop, no drop: the role is left behind
    doomed.wait(10)
    assert name in live_roles(pg_server)

    survivor = serve(config_2)
    processes.append(survivor)
    _wait_ready(survivor, control_2)
    started = time.monotonic()
    while name in live_roles(pg_server):
        assert time.monotonic() - started < GRACE + 15, "the killed replica's role is still live"
        time.sleep(0.2)
    print(f"orphan dropped {time.monotonic() - started:.2f} s after the survivor served")
    db = PostgresDatabase(settings, replica_id="oracle")
    try:
        deadline = time.monotonic() + 5
        while True:
            with db.read() as cur:
                left = cur.execute("SELECT role FROM role_leases").fetchall()
            if not left or time.monotonic() > deadline:
                break
            time.sleep(0.1)
        assert left == []
    finally:
        db.close()
    assert stop(survivor) == 0
