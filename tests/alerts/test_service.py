"""The alerts following a real audit trail (SQLite state): a denial storm becomes one alert
per DAG per window carrying the DAG, run and task and the audit search command; a restart
resumes at the stored cursor without alerting again; two gateways on one state send once;
credential and rotation failures; the audit sink refusing, raised then resolved."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest

from lockgate.alerts import Alerts
from lockgate.audit import AuditRecord
from lockgate.config import LockgateConfig, parse_config
from lockgate.errors import AuditUnavailable
from lockgate.state import State
from tests.fakes.alert_receivers import WebhookReceiver

WINDOW = 0.6


def make_config(data_dir: Path, url: str, **alerts: Any) -> LockgateConfig:
    url_file = data_dir.parent / "hook-url"
    url_file.write_text(url)
    return parse_config(
        {
            "data_dir": str(data_dir),
            "alerts": {
                "notifiers": [
                    {
                        "name": "hook",
                        "type": "webhook",
                        "url_file": str(url_file),
                        "min_interval": 0,
                    }
                ],
                "poll_interval": 0.05,
                "check_interval": 0.05,
                "denials": {"window": WINDOW},
                **alerts,
            },
        }
    )


@pytest.fixture
async def receiver() -> AsyncIterator[WebhookReceiver]:
    async with WebhookReceiver(None) as rx:
        yield rx


@pytest.fixture
def state_of(tmp_path: Path) -> Iterator[Any]:
    opened: list[State] = []

    def open_(config: LockgateConfig) -> State:
        st = State(config)
        opened.append(st)
        return st

    yield open_
    for st in opened:
        st.close()


def denial(dag: str, run: str, task: str, obj: str = "/orders") -> AuditRecord:
    return AuditRecord(
        event="denied", deployment="prod", dag_id=dag, run_id=run, task_id=task,
        principal=f"airflow:prod/{dag}/{task}", resource="orders-api", action="write",
        object=obj, decision="deny", reason="no_rule",
    )  # fmt: skip


async def write(state: State, *records: AuditRecord) -> None:
    """Commit ``records`` at once (one batch: a storm, not a trickle)."""
    log = state.audit_log()
    try:
        for r in records:
            log.emit(r)
        assert log.flush(10)
    finally:
        log.close()


async def settle(seconds: float = WINDOW + 0.4) -> None:
    await asyncio.sleep(seconds)


async def test_a_denial_storm_is_one_alert_per_dag(
    tmp_path: Path, receiver: WebhookReceiver, state_of: Any
) -> None:
    config = make_config(tmp_path / "gw", receiver.url)
    state = state_of(config)
    await write(state, denial("old_dag", "r0", "t0"))  # before the start: never alerted on
    alerts = Alerts(config, state)
    await alerts.start()
    try:
        storm = [denial("finance_daily", f"run{i % 2}", "load_orders") for i in range(40)]
        await write(state, *storm, denial("hr_sync", "run9", "export", obj="/people"))
        bodies = await receiver.wait_for(2)
        await settle()
    finally:
        await alerts.close()
    assert len(receiver.accepted) == 2
    by_dag = {b["dag_id"]: b for b in bodies}
    assert set(by_dag) == {"finance_daily", "hr_sync"}
    fin = by_dag["finance_daily"]
    assert fin["details"]["count"] == 40 and fin["details"]["run_ids"] == ["run0", "run1"]
    assert fin["task_id"] == "load_orders" and "run_id" not in fin  # two runs: listed
    assert fin["details"]["first"]["principal"] == "airflow:prod/finance_daily/load_orders"
    assert fin["command"] == "lockgate audit search --dag finance_daily --event denied"
    hr = by_dag["hr_sync"]
    assert (hr["run_id"], hr["task_id"], hr["deployment"]) == ("run9", "export", "prod")
    assert hr["command"] == "lockgate audit search --dag hr_sync --run run9 --event denied"
    assert hr["severity"] == "warning" and hr["details"]["last"]["object"] == "/people"


async def test_restart_resumes_without_alerting_again(
    tmp_path: Path, receiver: WebhookReceiver, state_of: Any
) -> None:
    config = make_config(tmp_path / "gw", receiver.url)
    state = state_of(config)
    first = Alerts(config, state)
    await first.start()
    await write(state, denial("d1", "r1", "t1"))
    await receiver.wait_for(1)
    await first.close()
    await write(state, denial("d2", "r2", "t2"))  # while stopped: still news
    second = Alerts(config, state_of(config))
    await second.start()
    try:
        await receiver.wait_for(2)
        await settle()
    finally:
        await second.close()
    assert [b["dag_id"] for b in receiver.accepted] == ["d1", "d2"]


async def test_two_gateways_on_one_state_send_once(
    tmp_path: Path, receiver: WebhookReceiver, state_of: Any
) -> None:
    config = make_config(tmp_path / "gw", receiver.url)
    state = state_of(config)
    a, b = Alerts(config, state), Alerts(config, state_of(config))
    await a.start()
    await b.start()
    try:
        await settle(0.2)
        assert [a.leading, b.leading].count(True) == 1
        await write(state, *[denial("d1", "r1", "t1") for _ in range(5)])
        await receiver.wait_for(1)
        await settle()
    finally:
        await a.close()
        await b.close()
    assert len(receiver.accepted) == 1 and receiver.accepted[0]["details"]["count"] == 5


async def test_credential_and_rotation_failures(
    tmp_path: Path, receiver: WebhookReceiver, state_of: Any
) -> None:
    config = make_config(tmp_path / "gw", receiver.url)
    state = state_of(config)
    alerts = Alerts(config, state)
    await alerts.start()
    try:
        await write(
            state,
            AuditRecord(event="upstream_error", dag_id="d", run_id="r", task_id="t",
                        resource="orders-api", action="read", decision="error",
                        reason="credential_unavailable"),
            AuditRecord(event="upstream_error", resource="orders-pg", action="connect",
                        decision="error", reason="upstream_unavailable",
                        detail={"error": "FATAL 28P01 password authentication failed"}),
            AuditRecord(event="upstream_error", resource="orders-pg", action="connect",
                        decision="error", reason="upstream_unavailable",
                        detail={"error": "connection refused"}),  # not a credential's fault
        )  # fmt: skip
        logging.getLogger("lockgate.credentials").warning(
            "oauth2 client credentials token refresh failed; using the cached token until it "
            "expires",
            extra={
                "fields": {"credential": "dbx-m2m", "version": 3, "error": "401 invalid_client"}
            },
        )
        bodies = await receiver.wait_for(3)
        await settle()
    finally:
        await alerts.close()
    kinds = sorted((b["kind"], b["subject"]) for b in bodies)
    assert kinds == [("credential_failure", "orders-api"), ("credential_failure", "orders-pg"),
                     ("rotation_failure", "dbx-m2m")]  # fmt: skip
    pg = next(b for b in bodies if b["subject"] == "orders-pg")
    assert pg["details"]["count"] == 1 and pg["severity"] == "error"
    rot = next(b for b in bodies if b["kind"] == "rotation_failure")
    assert rot["details"]["credential_name"] == "dbx-m2m"


class FlakyAudit:
    def __init__(self) -> None:
        self.broken = False

    def check_writable(self) -> None:
        if self.broken:
            raise AuditUnavailable("audit write pending for more than 2s")


async def test_audit_refusing_is_raised_then_resolved(
    tmp_path: Path, receiver: WebhookReceiver, state_of: Any
) -> None:
    config = make_config(tmp_path / "gw", receiver.url)
    audit = FlakyAudit()
    alerts = Alerts(config, state_of(config), audit=audit)
    await alerts.start()
    try:
        audit.broken = True
        await receiver.wait_for(1)
        await settle(0.3)  # still broken: not alerted again
        audit.broken = False
        await receiver.wait_for(2)
    finally:
        await alerts.close()
    trigger, resolve = receiver.accepted
    assert (trigger["kind"], trigger["severity"], trigger["action"]) == (
        "audit_refusing", "critical", "trigger")  # fmt: skip
    assert "more than 2s" in trigger["summary"]
    assert resolve["action"] == "resolve" and resolve["key"] == trigger["key"]


async def test_no_notifier_no_work(tmp_path: Path, state_of: Any) -> None:
    config = parse_config({"data_dir": str(tmp_path / "gw")})
    alerts = Alerts(config, state_of(config))
    await alerts.start()
    assert alerts.dispatcher is None
    await alerts.close()


async def test_follower_skips_what_no_rule_takes(tmp_path: Path, state_of: Any) -> None:
    from lockgate.alerts.trail import TrailFollower, open_alerts_db

    config = parse_config({"data_dir": str(tmp_path / "gw")})
    state = state_of(config)
    follower = TrailFollower(open_alerts_db(state.database("alerts")),
                             config.data_dir / "audit.db", shared_trail=None)  # fmt: skip
    follower.load(time.time())
    busy = [AuditRecord(event="allowed", dag_id="d", status=200) for _ in range(1500)]
    await write(state, *busy[:700], denial("d", "r", "t"), *busy[700:],
                AuditRecord(event="allowed", resource="api", status=401))  # fmt: skip
    rows = follower.read(time.time(), limit=1000)
    assert [(r.event, r.status) for r in rows] == [("denied", None), ("allowed", 401)]
    assert follower.cursor == {"local": 1502} and follower.read(time.time()) == []
