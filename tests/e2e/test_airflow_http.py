"""Real Airflow 3 DAGs with the stock HTTP provider, through Lockgate, to a real HTTP app."""

from __future__ import annotations

import contextlib
import io
import json
import sqlite3
import threading
import time
from pathlib import Path

import pytest

from lockgate.cli import main as lockgate_cli
from lockgate.demo.run import run_dags
from lockgate.demo.stack import LocalStack

pytestmark = [pytest.mark.airflow, pytest.mark.slow]


def _cli(stack: LocalStack, *argv: str) -> tuple[int, str]:
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        code = lockgate_cli(["--config", str(stack.config_path), *argv])
    return code, out.getvalue()


def _state(result: dict) -> str:
    return result["state"].split(".")[-1].lower()


def test_granted_succeeds_ungranted_fails_with_reason_and_both_are_audited(
    stack: LocalStack, airflow_home: Path
) -> None:
    results, output = run_dags(
        stack, airflow_home, ["finance_daily", "orders_load", "marketing_daily", "finance_backfill"]
    )
    by_dag = {r["dag_id"]: r for r in results}
    assert _state(by_dag["finance_daily"]) == "success", output[-3000:]
    assert _state(by_dag["orders_load"]) == "success", output[-3000:]
    assert _state(by_dag["marketing_daily"]) == "failed"
    assert _state(by_dag["finance_backfill"]) == "failed"

    # The write really reached the upstream, with the upstream's own secret.
    assert "o-1001" in stack.upstream.orders
    seen_auth = {s.authorization for s in stack.upstream.seen}
    assert seen_auth == {f"Bearer {stack.upstream_secret}"}

    # The ungranted task's log carries the reason: refused at mint time ...
    assert "AirflowSecretsBackendAccessDenied" in output
    assert "airflow:prod/marketing_daily/peek_orders" in output
    # ... and the read-only DAG's write got the gateway's 403 with principal/action/object.
    assert "403" in output and "airflow:prod/finance_backfill/overwrite_orders" in output
    assert "no rule allows" in output

    stack.gateway.audit.flush(5.0)
    for dag, decision in (("finance_daily", "allow"), ("finance_backfill", "deny")):
        run_id = by_dag[dag]["run_id"]
        code, text = _cli(stack, "audit", "search", "--dag", dag, "--run", run_id, "--json")
        assert code == 0
        rows = [json.loads(line) for line in text.splitlines() if line.strip()]
        assert rows, f"no audit records for {dag}"
        assert all(r["run_id"] == run_id for r in rows)
        assert any(r["decision"] == decision and r.get("resource") == "orders-api" for r in rows)
    code, text = _cli(stack, "audit", "search", "--dag", "marketing_daily", "--decision", "deny")
    assert code == 0 and "marketing_daily" in text
    code, text = _cli(stack, "audit", "verify")
    assert code == 0, text

    # The task-end listener revoked each finished try's tokens, and that is audited too.
    revoked = stack.gateway.audit.search(event="token_revoked", dag="finance_daily")
    assert any(r.run_id == by_dag["finance_daily"]["run_id"] for r in revoked), revoked
    revocations = stack.gateway.state.revocations.list()
    assert any(
        r.kind == "task_try" and r.target.get("dag_id") == "finance_daily" for r in revocations
    )


def test_rotation_between_and_during_runs_fails_nothing(
    stack: LocalStack, airflow_home: Path
) -> None:
    # Between runs: the upstream starts accepting a new key, Lockgate rotates, the old key
    # is withdrawn upstream; the next run uses the new key without anyone touching Airflow.
    new = "rotated-between-" + str(time.time_ns())
    stack.upstream.accepted.add(new)
    stack.set_credential(new, rotate=True)
    stack.upstream.accepted.discard(stack.upstream_secret)
    time.sleep(1.5)  # the gateway notices rotations made by another process within ~1 s
    results, output = run_dags(stack, airflow_home, ["finance_daily"])
    assert _state(results[0]) == "success", output[-3000:]

    # During a run: rotate while a task is making 60 requests. The gateway rotates first
    # (the upstream does not know the newest key yet: 401, retried with the previous
    # version inside the overlap window), then the upstream learns it and drops the old one.
    newer = "rotated-during-" + str(time.time_ns())
    seen = stack.upstream.seen
    before = len(seen)
    stack.upstream.keep_seen = before + 1000  # the demo upstream stops recording at its cap

    def rotate_midway() -> None:
        # Once the task's first request arrived (Airflow's start-up time varies a lot), so
        # the rotation lands while its requests flow, however fast the machine is.
        deadline = time.monotonic() + 120
        while len(seen) <= before and time.monotonic() < deadline:
            time.sleep(0.02)
        stack.set_credential(newer, rotate=True)
        time.sleep(2)
        stack.upstream.accepted.add(newer)
        time.sleep(1.5)
        stack.upstream.accepted.discard(new)

    rotator = threading.Thread(target=rotate_midway)
    rotator.start()
    results, output = run_dags(stack, airflow_home, ["finance_reconcile"])
    rotator.join()
    assert _state(results[0]) == "success", output[-3000:]
    during = {s.authorization for s in seen[before:]}
    assert f"Bearer {newer}" in during  # the gateway took the new key up mid-run
    stack.upstream_secret = newer


def test_gateway_restart_keeps_issued_tokens_valid(stack: LocalStack) -> None:
    import urllib.parse
    import urllib.request

    ssl_ctx = None
    if stack.ca_file:
        import ssl

        ssl_ctx = ssl.create_default_context(cafile=str(stack.ca_file))
    form = urllib.parse.urlencode(
        {
            "client_id": "prod",
            "client_secret": stack.deployment_secret,
            "resource": "orders-api",
            "dag_id": "finance_daily",
            "task_id": "read_orders",
            "run_id": "manual__restart",
            "try_number": 1,
        }
    ).encode()
    with urllib.request.urlopen(
        urllib.request.Request(stack.control_url + "/v1/token", data=form), context=ssl_ctx
    ) as resp:
        token = json.loads(resp.read())["access_token"]

    def get_orders() -> int:
        req = urllib.request.Request(
            stack.http_url + "/orders-api/orders", headers={"Authorization": f"Bearer {token}"}
        )
        with urllib.request.urlopen(req, context=ssl_ctx) as resp:
            return resp.status

    assert get_orders() == 200
    stack.restart_gateway()
    assert get_orders() == 200


def test_no_token_or_secret_in_logs_audit_or_state(stack: LocalStack, airflow_home: Path) -> None:
    """Scan every file Lockgate wrote for the upstream secret and the deployment secret."""
    stack.gateway.audit.flush(5.0)
    needles = [stack.upstream_secret.encode(), stack.deployment_secret.encode()]
    data_dir = stack.config.data_dir
    scanned = 0
    for path in data_dir.rglob("*"):
        if path.is_file():
            blob = path.read_bytes()
            scanned += 1
            for needle in needles:
                assert needle not in blob, f"secret found in {path}"
    assert scanned >= 3
    con = sqlite3.connect(data_dir / "audit.db")
    rows = " ".join(str(r) for r in con.execute("select * from audit"))
    con.close()
    assert "eyJ" not in rows  # no JWT-shaped value anywhere in the audit trail
