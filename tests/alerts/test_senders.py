"""The three notifiers against local receivers that check what the real services check:
the webhook's HMAC signature, Slack's payload rules, PagerDuty's Events v2 schema; retries
with backoff on 5xx and 429 (Retry-After honoured), no retry on another 4xx."""

from __future__ import annotations

import json
from pathlib import Path

import aiohttp
import pytest

from lockgate.alerts import Alert
from lockgate.alerts.dispatch import ALERTS_SENT, Dispatcher
from lockgate.alerts.senders import Notifier, backoff, retry_after, sign
from lockgate.config.alerts import NotifierSettings
from lockgate.errors import ConfigError
from lockgate.metrics import REGISTRY
from tests.fakes.alert_receivers import PagerDutyReceiver, SlackReceiver, WebhookReceiver

HMAC_KEY = "k" * 40
ROUTING_KEY = "R" * 32

ALERT = Alert(
    kind="denials",
    severity="warning",
    summary="3 denials for DAG finance_daily in prod; last: write on orders-api /orders",
    subject="finance_daily",
    deployment="prod",
    dag_id="finance_daily",
    run_id="scheduled__2026-12-05T00:00:00+00:00",
    task_id="load_orders",
    resource="orders-api",
    details={"count": 3, "first": {"principal": "airflow:prod/finance_daily/load_orders"}},
    search={"dag": "finance_daily", "event": "denied"},
)


def notifier(tmp_path: Path, kind: str, url: str, **kw: object) -> Notifier:
    secret = tmp_path / f"{kind}-secret"
    secret.write_text(ROUTING_KEY if kind == "pagerduty" else url)
    fields: dict[str, object] = {"name": f"n-{kind}", "type": kind, **kw}
    if kind == "pagerduty":
        fields["routing_key_file"] = secret
        fields["events_url"] = url
    else:
        fields["url_file"] = secret
    n = Notifier(
        NotifierSettings(**fields), console_url=None, source="lockgate/test", config_dir=tmp_path
    )
    n.sleep = _no_sleep
    return n


waits: list[float] = []


async def _no_sleep(seconds: float) -> None:
    waits.append(seconds)


async def deliver(n: Notifier, alert: Alert = ALERT):  # type: ignore[no-untyped-def]
    async with aiohttp.ClientSession() as s:
        return await n.deliver(s, alert)


async def test_webhook_is_signed_and_verifies(tmp_path: Path) -> None:
    key = tmp_path / "hmac"
    key.write_text(HMAC_KEY + "\n")
    async with WebhookReceiver(HMAC_KEY.encode()) as rx:
        n = notifier(tmp_path, "webhook", rx.url, hmac_key_file=key)
        d = await deliver(n)
        assert d.outcome == "sent" and d.attempts == 1
        (body,) = rx.accepted
        assert body["kind"] == "denials" and body["dag_id"] == "finance_daily"
        assert body["run_id"].startswith("scheduled__") and body["task_id"] == "load_orders"
        assert body["key"] == "lockgate/denials/finance_daily"
        assert body["command"] == "lockgate audit search --dag finance_daily --event denied"
        assert rx.headers[0]["X-Lockgate-Signature"].startswith("sha256=")


async def test_webhook_with_the_wrong_key_is_refused_and_not_retried(tmp_path: Path) -> None:
    key = tmp_path / "hmac"
    key.write_text("not-the-receivers-key")
    async with WebhookReceiver(HMAC_KEY.encode()) as rx:
        d = await deliver(notifier(tmp_path, "webhook", rx.url, hmac_key_file=key))
        assert (d.outcome, d.status, d.attempts) == ("rejected", 401, 1)
        assert rx.refused == [(401, "bad signature")]


def test_signature_is_hmac_of_timestamp_dot_body() -> None:
    import hashlib
    import hmac

    body = b'{"a":1}'
    want = hmac.new(b"key", b"1700000000." + body, hashlib.sha256).hexdigest()
    assert sign(b"key", "1700000000", body) == f"sha256={want}"


async def test_failing_twice_then_accepting_is_retried_with_backoff(tmp_path: Path) -> None:
    waits.clear()
    async with WebhookReceiver(None, fail_first=2, fail_status=503) as rx:
        d = await deliver(notifier(tmp_path, "webhook", rx.url))
        assert (d.outcome, d.attempts) == ("sent", 3)
        assert len(rx.accepted) == 1 and len(waits) == 2
        assert 0 <= waits[0] <= 0.5 and 0 <= waits[1] <= 1.0  # full jitter under the cap


async def test_retry_after_is_honoured(tmp_path: Path) -> None:
    waits.clear()
    async with WebhookReceiver(None, fail_first=1, fail_status=429, retry_after="7") as rx:
        d = await deliver(notifier(tmp_path, "webhook", rx.url))
        assert d.outcome == "sent" and waits == [7.0]


async def test_attempts_are_bounded(tmp_path: Path) -> None:
    async with WebhookReceiver(None, fail_first=100) as rx:
        d = await deliver(notifier(tmp_path, "webhook", rx.url, max_attempts=3))
        assert (d.outcome, d.attempts, d.status) == ("failed", 3, 503)
        assert rx.requests == 3


async def test_connection_refused_is_retried_then_failed(tmp_path: Path) -> None:
    from lockgate.demo.stack import free_port

    n = notifier(tmp_path, "webhook", f"http://127.0.0.1:{free_port()}/x", max_attempts=2)
    d = await deliver(n)
    assert (d.outcome, d.attempts, d.status) == ("failed", 2, None)
    assert d.error is not None


async def test_slack_incoming_webhook_takes_it(tmp_path: Path) -> None:
    async with SlackReceiver() as rx:
        d = await deliver(notifier(tmp_path, "slack", rx.url))
        assert d.outcome == "sent"
        (body,) = rx.accepted
        assert "finance_daily" in body["text"]
        texts = json.dumps(body["blocks"])
        assert "load_orders" in texts and "lockgate audit search --dag finance_daily" in texts


async def test_slack_receiver_refuses_what_slack_refuses() -> None:
    async with SlackReceiver() as rx, aiohttp.ClientSession() as s:
        async with s.post(rx.url, json={"blocks": [{"type": "nonsense"}]}) as r:
            assert r.status == 400
        async with s.post(rx.url, json={}) as r:
            assert (r.status, await r.text()) == (400, "no_text")


async def test_pagerduty_trigger_and_resolve_share_the_dedup_key(tmp_path: Path) -> None:
    async with PagerDutyReceiver(ROUTING_KEY) as rx:
        n = notifier(tmp_path, "pagerduty", rx.url)
        assert (await deliver(n)).outcome == "sent"
        resolved = Alert(kind="denials", severity="info", summary="ok", subject="finance_daily",
                         action="resolve")  # fmt: skip
        assert (await deliver(n, resolved)).outcome == "sent"
        trigger, resolve = rx.accepted
        assert trigger["event_action"] == "trigger" and resolve["event_action"] == "resolve"
        assert trigger["dedup_key"] == resolve["dedup_key"] == "lockgate/denials/finance_daily"
        p = trigger["payload"]
        assert p["severity"] == "warning" and p["source"] == "lockgate/test"
        assert p["group"] == "finance_daily" and p["component"] == "orders-api"
        assert p["custom_details"]["task_id"] == "load_orders"
        assert p["custom_details"]["audit_search"].startswith("lockgate audit search")
        assert rx.incidents == {"lockgate/denials/finance_daily": "resolved"}


async def test_pagerduty_429_is_retried(tmp_path: Path) -> None:
    async with PagerDutyReceiver(ROUTING_KEY, throttle_first=1) as rx:
        d = await deliver(notifier(tmp_path, "pagerduty", rx.url))
        assert (d.outcome, d.attempts) == ("sent", 2)


async def test_slack_refusals_that_will_not_pass_are_not_retried(tmp_path: Path) -> None:
    # Slack answers an archived channel 410 channel_is_archived, a removed webhook 404
    # no_service, a wrong token 403 invalid_token (api.slack.com/messaging/webhooks,
    # "Handling errors"): none passes later, so none is retried.
    for receiver in (SlackReceiver(archived=True), SlackReceiver(revoked=True)):
        async with receiver as rx:
            d = await deliver(notifier(tmp_path, "slack", rx.url))
            assert (d.outcome, d.attempts) == ("rejected", 1)
    async with SlackReceiver() as rx:
        d = await deliver(notifier(tmp_path, "slack", rx.url.rsplit("/", 1)[0] + "/wrong"))
        assert (d.outcome, d.status) == ("rejected", 403)
        assert rx.refused == [(403, "invalid_token")]


async def test_pagerduty_rate_limit_window_is_waited_out(tmp_path: Path) -> None:
    # PagerDuty refuses every event past its limit until its 60 s window has room, with no
    # Retry-After (developer.pagerduty.com/docs/events-API-v2/rate-limits): retries seconds
    # apart would all be refused and the alert lost.
    now = [0.0]
    async with PagerDutyReceiver(ROUTING_KEY, rate_limit=2, clock=lambda: now[0]) as rx:
        n = notifier(tmp_path, "pagerduty", rx.url)
        waited: list[float] = []

        def sleep(seconds: float) -> None:
            waited.append(seconds)
            now[0] += seconds

        n.sleep = sleep
        assert (await deliver(n)).outcome == "sent"
        assert (await deliver(n)).outcome == "sent"
        third = await deliver(n)
        assert (third.outcome, third.attempts) == ("sent", 3)
        assert waited and min(waited) >= 30.0 and sum(waited) >= 60.0


async def test_pagerduty_wrong_routing_key_is_rejected(tmp_path: Path) -> None:
    async with PagerDutyReceiver("X" * 32) as rx:
        d = await deliver(notifier(tmp_path, "pagerduty", rx.url))
        assert (d.outcome, d.status) == ("rejected", 400)


def test_secret_is_read_from_env_and_never_inline(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with pytest.raises(ValueError, match="exactly one of url_file or url_env"):
        NotifierSettings(name="s", type="slack")
    s = NotifierSettings(name="s", type="slack", url_env="SLACK_URL")
    with pytest.raises(ConfigError, match=r"\$SLACK_URL is empty"):
        Notifier(s, console_url=None, source="x", config_dir=tmp_path)
    monkeypatch.setenv("SLACK_URL", "https://hooks.slack.test/services/T/B/secret")
    n = Notifier(s, console_url=None, source="x", config_dir=tmp_path)
    assert n.body(ALERT)["text"]


def test_plain_http_off_this_machine_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="must be https"):
        notifier(tmp_path, "slack", "http://hooks.slack.example/services/T/B/secret")
    with pytest.raises(ConfigError, match="must be https"):
        notifier(tmp_path, "pagerduty", "http://events.pagerduty.example/v2/enqueue")
    assert notifier(tmp_path, "slack", "https://hooks.slack.com/services/T/B/secret")


def test_console_link_replaces_the_command() -> None:
    look = ALERT.where_to_look("https://console.example/")
    assert look == {"link": "https://console.example/audit?dag=finance_daily&event=denied"}


def test_backoff_and_retry_after_parsing() -> None:
    assert backoff(1, lambda: 1.0) == 0.5 and backoff(20, lambda: 1.0) == 60.0
    assert retry_after("2") == 2.0 and retry_after("100000") == 300.0
    assert retry_after(None) is None and retry_after("soon") is None


async def test_a_full_queue_drops_and_counts(tmp_path: Path) -> None:
    async with WebhookReceiver(None) as rx:
        n = notifier(tmp_path, "webhook", rx.url, queue_size=2, min_interval=0)
        d = Dispatcher([n])  # not started: nothing empties the queue
        before = (
            REGISTRY.get_sample_value(
                "lockgate_alerts_sent_total",
                {"notifier": "n-webhook", "kind": "denials", "outcome": "dropped"},
            )
            or 0.0
        )
        for _ in range(5):
            d.offer(ALERT)
        after = ALERTS_SENT.labels("n-webhook", "denials", "dropped")._value.get()
        assert after - before == 3
        d.start()
        await d.close(timeout=5)
        assert len(rx.accepted) == 2


async def test_min_interval_holds_back_repeats_but_not_resolves(tmp_path: Path) -> None:
    async with WebhookReceiver(None) as rx:
        n = notifier(tmp_path, "webhook", rx.url, min_interval=60)
        d = Dispatcher([n])
        d.start()
        d.offer(ALERT)
        d.offer(ALERT)
        d.offer(Alert(kind="denials", severity="info", summary="ok", subject="finance_daily",
                      action="resolve"))  # fmt: skip
        await d.close(timeout=5)
        assert [b["action"] for b in rx.accepted] == ["trigger", "resolve"]


async def test_events_filter(tmp_path: Path) -> None:
    async with WebhookReceiver(None) as rx:
        n = notifier(tmp_path, "webhook", rx.url, events=["audit_refusing"])
        d = Dispatcher([n])
        d.start()
        d.offer(ALERT)
        await d.close(timeout=5)
        assert rx.accepted == []


async def test_nothing_secret_shaped_leaves(tmp_path: Path) -> None:
    jwt = "eyJhbGciOiJFZERTQSJ9.eyJzdWIiOiJ4In0.c2lnbmF0dXJlLXRoYXQtaXMtbG9uZw"
    details = {"first": {"object": f"/orders?t={jwt}"}, "password": "hunter2"}
    leaky = Alert(kind="denials", severity="warning", summary="s", subject="d", details=details)
    async with WebhookReceiver(None) as rx, SlackReceiver() as slack:
        for n in (notifier(tmp_path, "webhook", rx.url), notifier(tmp_path, "slack", slack.url)):
            assert (await deliver(n, leaky)).outcome == "sent"
        sent = json.dumps(rx.accepted + slack.accepted)
    assert jwt not in sent and "hunter2" not in sent and "[redacted]" in sent
    assert rx.url not in sent and slack.url not in sent  # the URL is the secret of a webhook
