"""``lockgate alerts test``: a test alert through each notifier, the outcome printed."""

from __future__ import annotations

import argparse
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from lockgate._cli_state import add_global_options
from lockgate.cli_alerts import add_alerts_commands
from lockgate.errors import LockgateError
from tests.fakes.alert_receivers import PagerDutyReceiver, WebhookReceiver, serving_in_thread

ROUTING_KEY = "0123456789abcdef0123456789abcdef"


@pytest.fixture
def receivers() -> Iterator[tuple[WebhookReceiver, PagerDutyReceiver]]:
    """Both receivers on a loop of their own (the command runs its own loop)."""
    hook, pd = WebhookReceiver(b"hmac-key"), PagerDutyReceiver(ROUTING_KEY)
    with serving_in_thread(hook, pd):
        yield hook, pd


def run(config: Path, *argv: str) -> int:
    parser = argparse.ArgumentParser()
    add_global_options(parser, top_level=True)
    add_alerts_commands(parser.add_subparsers(dest="cmd", required=True))
    args = parser.parse_args(["-c", str(config), "alerts", "test", *argv])
    return int(args.fn(args))


def write_config(tmp_path: Path, hook: WebhookReceiver, pd: PagerDutyReceiver) -> Path:
    (tmp_path / "hook-url").write_text(hook.url)
    (tmp_path / "hook-hmac").write_text("hmac-key")
    (tmp_path / "pd-key").write_text(ROUTING_KEY)
    config = {
        "data_dir": str(tmp_path / "data"),
        "alerts": {
            "notifiers": [
                {"name": "ops-hook", "type": "webhook", "url_file": "hook-url",
                 "hmac_key_file": "hook-hmac", "events": ["audit_refusing"]},
                {"name": "pager", "type": "pagerduty", "routing_key_file": "pd-key",
                 "events_url": pd.url},
            ]
        },
    }  # fmt: skip
    path = tmp_path / "lockgate.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def test_alerts_test_sends_through_each_notifier(
    tmp_path: Path,
    receivers: tuple[WebhookReceiver, PagerDutyReceiver],
    capsys: pytest.CaptureFixture[str],
) -> None:
    hook, pd = receivers
    config = write_config(tmp_path, hook, pd)
    assert run(config) == 0
    out = capsys.readouterr().out
    assert "ops-hook: sent (1 attempt, HTTP 200)" in out
    assert "pager: sent (1 attempt, HTTP 202)" in out
    assert hook.accepted[0]["kind"] == "test"  # past the notifier's event filter
    assert [e["event_action"] for e in pd.accepted] == ["trigger", "resolve"]
    assert set(pd.incidents.values()) == {"resolved"}
    assert run(config, "--notifier", "ops-hook") == 0
    assert len(hook.accepted) == 2 and len(pd.accepted) == 2


def test_alerts_test_reports_a_refusal(
    tmp_path: Path,
    receivers: tuple[WebhookReceiver, PagerDutyReceiver],
    capsys: pytest.CaptureFixture[str],
) -> None:
    hook, pd = receivers
    config = write_config(tmp_path, hook, pd)
    (tmp_path / "hook-hmac").write_text("another key")
    assert run(config, "--notifier", "ops-hook") == 1
    assert "ops-hook: rejected (1 attempt, HTTP 401)" in capsys.readouterr().out
    with pytest.raises(LockgateError, match="no notifier named 'nope'"):
        run(config, "--notifier", "nope")
