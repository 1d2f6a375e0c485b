"""A running gateway on shared state (``state: {postgresql: ...}``, a real PostgreSQL server).

- a revocation stored by another replica is enforced here within a second;
- PostgreSQL out of reach: requests are served from memory and ``/readyz`` stays ready while
  within ``max_staleness`` (saying so), then every token is refused with
  ``shared_state_stale`` (audited), mints are refused and ``/readyz`` is 503;
- PostgreSQL back: the gateway catches up by itself, no restart.
"""

from __future__ import annotations

import base64
import json
import secrets
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from lockgate.airflow._client import TokenServiceClient
from lockgate.config import PostgresStateSettings
from lockgate.demo.stack import LocalStack
from lockgate.identity import RevocationStore
from lockgate.store import PostgresDatabase
from tests.pgserver import PgServer
from tests.test_kill_switch import get  # GET of the demo resource: the status

MAX_STALENESS = 2.0
CATCH_UP = 0.25


@pytest.fixture
def settings(pg_state: Callable[..., PostgresStateSettings]) -> PostgresStateSettings:
    return pg_state(max_staleness=MAX_STALENESS, catch_up_interval=CATCH_UP, connect_timeout=1)


@pytest.fixture
def stack(
    tmp_path: Path, settings: PostgresStateSettings, monkeypatch: pytest.MonkeyPatch
) -> Iterator[LocalStack]:
    monkeypatch.setenv("LOCKGATE_MASTER_KEY", base64.b64encode(secrets.token_bytes(32)).decode())
    s = LocalStack(tmp_path / "gw", tls=False)
    config = yaml.safe_load(s.config_path.read_text())
    state = settings.model_dump(mode="json", exclude_none=True)
    config["state"] = {"postgresql": {**state, "replica_id": "r1"}}
    s.config_path.write_text(yaml.safe_dump(config))
    with s:
        yield s


@pytest.fixture
def other_replica(settings: PostgresStateSettings) -> Iterator[RevocationStore]:
    """Another replica's revocation store on the same database."""
    db = PostgresDatabase(settings, replica_id="r2")
    try:
        yield RevocationStore(db)
    finally:
        db.close()


def mint(stack: LocalStack, dag: str = "finance_daily") -> str:
    client = TokenServiceClient(stack.control_url, "prod", client_secret=stack.deployment_secret)
    coords: dict[str, str | int] = {
        "dag_id": dag,
        "task_id": "load",
        "run_id": "shared",
        "try_number": 1,
    }
    return client.mint(conn_id="orders_api", coords=coords, requested_ttl=None).token


def token_request(stack: LocalStack) -> tuple[int, dict[str, Any]]:
    """``POST /v1/token`` as the secrets backend sends it; (status, JSON answer)."""
    body = urllib.parse.urlencode(
        {"client_id": "prod", "client_secret": stack.deployment_secret, "conn_id": "orders_api",
         "dag_id": "finance_daily", "task_id": "load", "run_id": "shared", "try_number": "1"}
    ).encode()  # fmt: skip
    try:
        with urllib.request.urlopen(stack.control_url + "/v1/token", body, timeout=5) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def readyz(stack: LocalStack) -> tuple[int, dict[str, Any]]:
    try:
        with urllib.request.urlopen(stack.control_url + "/readyz", timeout=5) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def gauge(stack: LocalStack, name: str) -> float | None:
    """The value of an unlabelled gauge on /metrics (None when absent)."""
    with urllib.request.urlopen(stack.control_url + "/metrics", timeout=5) as r:
        for line in r.read().decode().splitlines():
            if line.startswith(name + " "):
                return float(line.split()[1])
    return None


def until(check: Callable[[], bool], limit: float, what: str) -> float:
    start = time.monotonic()
    while not check():
        assert time.monotonic() - start < limit, f"{what}: not within {limit} s"
        time.sleep(0.02)
    return time.monotonic() - start


def audit_reasons(stack: LocalStack) -> list[str]:
    from lockgate.audit import AuditReader

    assert stack.gateway is not None and stack.gateway.audit.flush(5.0)
    rows = AuditReader(stack.config.data_dir / "audit.db").search(limit=1000)
    return [str(getattr(r, "reason", None) or "") for r in rows]


def test_a_revocation_on_another_replica_holds_here_within_a_second(
    stack: LocalStack, other_replica: RevocationStore
) -> None:
    token = mint(stack)
    assert get(stack, token) == 200
    status, body = readyz(stack)
    assert status == 200 and body["checks"]["shared_state"] == "ok"
    assert set(body["audit_shipping"]) == {"records", "seconds", "error"}  # shown, never fatal
    other_replica.revoke_dag("prod", "finance_daily", None, "incident on replica 2")
    assert until(lambda: get(stack, token) == 401, 1.0, "revoked token refused") < 1.0
    assert "revoked" in audit_reasons(stack)


def test_unreachable_postgresql_serves_from_memory_then_refuses_then_recovers(
    stack: LocalStack, pg_server: PgServer, settings: PostgresStateSettings
) -> None:
    token = mint(stack)
    assert get(stack, token) == 200
    role = settings.dsn.split("://", 1)[1].split("@", 1)[0]
    pg_server.psql(
        f'ALTER ROLE "{role}" NOLOGIN;\n'
        f"SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = '{role}';\n"
    )
    try:
        # Within the bound: still served, still ready, and /readyz says what is going on.
        def serving_from_memory() -> bool:
            status, body = readyz(stack)
            return status == 200 and "serving from memory" in body["checks"]["shared_state"]

        until(serving_from_memory, MAX_STALENESS, "ready, serving from memory")
        assert get(stack, token) == 200
        # Past it: every token refused, mints refused, not ready.
        until(lambda: get(stack, token) == 401, MAX_STALENESS + 3, "stale token refused")
        status, body = readyz(stack)
        assert status == 503 and "past the bound of 2 s" in body["checks"]["shared_state"]
        assert any(p.startswith("shared_state: unreachable for ") for p in body["problems"])
        status, answer = token_request(stack)
        assert status == 503 and answer["error_description"].startswith(
            "shared state (PostgreSQL) unreachable for "
        )
        assert "shared_state_stale" in audit_reasons(stack)
        until(
            lambda: (gauge(stack, "lockgate_shared_state_stale_seconds") or 0.0) > MAX_STALENESS,
            3.0,
            "the staleness gauge past the bound",
        )
        assert gauge(stack, "lockgate_audit_ship_lag_records") is not None
    finally:
        pg_server.psql(f'ALTER ROLE "{role}" LOGIN')
    # Back: no restart, ready again, the same token served again, new tokens minted.
    until(lambda: readyz(stack)[0] == 200, 10.0, "ready again")
    assert readyz(stack)[1]["checks"]["shared_state"] == "ok"
    until(
        lambda: (gauge(stack, "lockgate_shared_state_stale_seconds") or 99.0) < MAX_STALENESS,
        3.0,
        "the staleness gauge back under the bound",
    )
    assert get(stack, token) == 200
    assert get(stack, mint(stack)) == 200
