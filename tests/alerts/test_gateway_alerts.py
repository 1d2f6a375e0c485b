"""A running gateway refusing a DAG's writes: one grouped alert reaches a Slack-style and a
signed webhook receiver, naming the DAG, run and task and the audit search command that
lists the refusals; the token never appears in it."""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from lockgate.audit import AuditRecord
from lockgate.demo.stack import LocalStack
from lockgate.identity import TaskIdentity
from tests.fakes.alert_receivers import Receiver, SlackReceiver, WebhookReceiver, serving_in_thread

RUN = "scheduled__2026-12-05T00:00:00+00:00"


@pytest.fixture
def receivers() -> Iterator[tuple[WebhookReceiver, SlackReceiver]]:
    hook, slack = WebhookReceiver(b"k" * 32), SlackReceiver()
    with serving_in_thread(hook, slack):
        yield hook, slack


def post(url: str, token: str) -> int:
    req = urllib.request.Request(url, data=b"{}", method="POST",
                                 headers={"Authorization": f"Bearer {token}"})  # fmt: skip
    try:
        with urllib.request.urlopen(req, timeout=10) as r:
            return int(r.status)
    except urllib.error.HTTPError as exc:
        return int(exc.code)


def wait(receiver: Receiver, n: int, timeout: float = 15.0) -> list[dict[str, object]]:
    deadline = time.monotonic() + timeout
    while len(receiver.accepted) < n and time.monotonic() < deadline:
        time.sleep(0.05)
    return receiver.accepted


def stack_alerting(
    tmp_path: Path, hook: WebhookReceiver, slack: SlackReceiver, hook_events: list[str]
) -> LocalStack:
    """A local stack (not started) whose alerts go to ``hook`` (signed) and ``slack``."""
    stack = LocalStack(tmp_path / "gw", tls=False)
    (tmp_path / "hook-url").write_text(hook.url)
    (tmp_path / "hook-key").write_text("k" * 32)
    (tmp_path / "slack-url").write_text(slack.url)
    config = yaml.safe_load(stack.config_path.read_text())
    config["alerts"] = {
        "notifiers": [
            {"name": "ops", "type": "webhook", "url_file": str(tmp_path / "hook-url"),
             "hmac_key_file": str(tmp_path / "hook-key"), "events": hook_events},
            {"name": "chat", "type": "slack", "url_file": str(tmp_path / "slack-url")},
        ],
        "poll_interval": 0.1,
        "check_interval": 0.2,
        "denials": {"window": 2.0},
    }  # fmt: skip
    stack.config_path.write_text(yaml.safe_dump(config))
    return stack


def test_denied_writes_raise_one_grouped_alert(
    tmp_path: Path, receivers: tuple[WebhookReceiver, SlackReceiver]
) -> None:
    hook, slack = receivers
    with stack_alerting(tmp_path, hook, slack, ["denials"]) as stack:
        ident = TaskIdentity("prod", "finance_daily", "load_orders", RUN, 1, -1)
        assert stack.gateway is not None
        token = stack.gateway.issuer.mint(ident, "orders-api", 300)[0]
        url = stack.http_url + "/orders-api/orders"
        assert [post(url, token) for _ in range(6)] == [403] * 6
        (alert,) = wait(hook, 1)
        (message,) = wait(slack, 1)
        time.sleep(1.0)  # nothing more to say
        assert len(hook.accepted) == 1 and len(slack.accepted) == 1
    assert alert["kind"] == "denials" and alert["dag_id"] == "finance_daily"
    assert (alert["run_id"], alert["task_id"], alert["deployment"]) == (RUN, "load_orders", "prod")
    details = alert["details"]
    assert isinstance(details, dict) and details["count"] == 6
    assert details["last"]["action"] == "write" and details["last"]["object"] == "/orders"
    assert alert["command"] == (
        f"lockgate audit search --dag finance_daily --run {RUN} --event denied"
    )
    assert "finance_daily" in str(message["text"])
    for body in (alert, message):
        assert token not in json.dumps(body) and token[:20] not in json.dumps(body)


def test_audit_refusing_is_raised_and_resolved(
    tmp_path: Path, receivers: tuple[WebhookReceiver, SlackReceiver]
) -> None:
    hook, slack = receivers
    with stack_alerting(tmp_path, hook, slack, ["audit_refusing"]) as stack:
        assert stack.gateway is not None
        audit = stack.gateway.audit
        # every commit fails, as on a full disk, until told otherwise
        audit.inject_fault("error", "OSError: [Errno 28] No space left on device")
        try:
            audit.emit(AuditRecord(event="policy_reloaded"))
            (raised,) = wait(hook, 1)
        finally:
            audit.inject_fault("clear")
        raised_and_resolved = wait(hook, 2)
    assert (raised["kind"], raised["severity"], raised["action"]) == (
        "audit_refusing", "critical", "trigger")  # fmt: skip
    assert raised_and_resolved[1]["action"] == "resolve"
    assert raised_and_resolved[1]["key"] == raised["key"]
