"""``lockgate serve --workers 2`` on shared state: every worker follows the shared database
(a revocation stored elsewhere holds in both within a second) and the supervisor's one
audit writer ships the chain to PostgreSQL."""

from __future__ import annotations

import base64
import secrets
import time
from collections.abc import Callable
from pathlib import Path

import pytest
import yaml

from lockgate.config import PostgresStateSettings, load_config
from lockgate.errors import StoreUnavailable
from lockgate.identity import TaskIdentity, TokenIssuer
from lockgate.state import State
from tests._gateway_process import (
    CREDENTIAL,
    RESOURCE,
    BearerUpstream,
    get_status,
    scaffold,
    serve,
    stop,
    wait_serving,
)


@pytest.mark.slow
def test_workers_follow_the_shared_state_and_ship_their_audit(
    tmp_path: Path,
    bearer_upstream: BearerUpstream,
    pg_state: Callable[..., PostgresStateSettings],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("LOCKGATE_MASTER_KEY", base64.b64encode(secrets.token_bytes(32)).decode())
    gw = scaffold(tmp_path / "lg", bearer_upstream)
    data = yaml.safe_load(gw.config_path.read_text())
    settings = pg_state(catch_up_interval=0.25).model_dump(mode="json", exclude_none=True)
    data["state"] = {"postgresql": {**settings, "replica_id": "w1"}}
    gw.config_path.write_text(yaml.safe_dump(data))
    config = load_config(gw.config_path)
    operator = State(config)  # another process on the same shared state (the CLI's view)
    try:
        operator.credentials.set(CREDENTIAL, bearer_upstream.secret)
        identity = TaskIdentity("prod", "finance_daily", "t", "shared-workers", 1, -1)
        token, _ = TokenIssuer(operator.keys, config.issuer_url).mint(identity, RESOURCE, 300)
        url = gw.url()
        proc = serve(gw.config_path, "--workers", "2")
        try:
            wait_serving(proc, url, token)
            time.sleep(0.5)  # both workers in the port group
            assert [get_status(url, token) for _ in range(20)] == [200] * 20
            operator.revocations.revoke_dag("prod", "finance_daily", None, "incident")
            start = time.monotonic()
            while [get_status(url, token) for _ in range(10)] != [401] * 10:  # both workers
                assert time.monotonic() - start < 1.0, "a worker still serves a revoked token"
            # the served requests reach the shared trail through the writer's shipping
            deadline = time.monotonic() + 15
            while shipped(operator, "shared-workers") < 20:
                assert time.monotonic() < deadline, "served requests not shipped"
                time.sleep(0.2)
        finally:
            assert stop(proc) == 0
    finally:
        operator.close()


def shipped(state: State, run_id: str) -> int:
    """Records of ``run_id`` in the shared trail (0 until the first shipment made the table)."""
    try:
        with state.database("audit").read() as cur:
            row = cur.execute(
                "SELECT count(*) FROM audit_records WHERE run_id = ?", (run_id,)
            ).fetchone()
    except StoreUnavailable:
        return 0
    return int(row[0]) if row else 0
