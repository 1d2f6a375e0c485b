"""Attacks on the alerts: what a request or a minted token can put in front of an operator.

A denial's object path, a CQL identifier and a run id are chosen by whoever sends the
request (a deployment may mint for any DAG name its delegation allows). They must reach no
notifier as Slack control sequences, must not make a body a receiver refuses (and so drop
the alert about the attacker), and a storm of them must stay a bounded number of alerts in
bounded memory. A notifier that hangs or redirects must not hold up the others, nor learn
anything it should not.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from lockgate.alerts import Alert
from lockgate.alerts import dispatch as dispatch_mod
from lockgate.alerts.dispatch import Dispatcher
from lockgate.alerts.model import MAX_KEY
from lockgate.alerts.senders import Notifier
from lockgate.alerts.trail_rules import Grouper, denial_grouper
from lockgate.audit.record import AuditRow
from lockgate.config.alerts import NotifierSettings
from lockgate.errors import ConfigError
from tests.fakes.alert_receivers import PagerDutyReceiver, SlackReceiver, WebhookReceiver

ROUTING_KEY = "R" * 32
HMAC_KEY = "h" * 40
#: PagerDuty's Events API v2 refuses an event larger than this.
PAGERDUTY_MAX_EVENT = 512 * 1024
EVIL = "<!channel> <!here> <@U024BE7LH> <http://evil.example|click here> *bold* _it_ &amp;"


def denial(dag: str, obj: str, *, run: str = "manual__1", seq: int = 1) -> AuditRow:
    return AuditRow(
        event="denied",
        ts=time.time(),
        deployment="prod",
        dag_id=dag,
        task_id="t",
        run_id=run,
        principal=f"airflow:prod/{dag}/t",
        resource="orders-api",
        action="write",
        object=obj,
        decision="deny",
        reason="no_rule",
        status=403,
        seq=seq,
    )


def grouped(rows: list[AuditRow], grouper: Grouper | None = None) -> list[Alert]:
    g = grouper or denial_grouper(300.0, 20)
    for r in rows:
        g.add(r, 0.0)
    return g.due(0.0, everything=True)


def notifier(tmp_path: Path, kind: str, url: str, **kw: Any) -> Notifier:
    secret = tmp_path / f"{kind}-{kw.get('name', 'n')}-secret"
    secret.write_text(ROUTING_KEY if kind == "pagerduty" else url)
    fields: dict[str, Any] = {"name": f"n-{kind}", "type": kind, **kw}
    if kind == "pagerduty":
        fields.update(routing_key_file=secret, events_url=url)
    else:
        fields["url_file"] = secret
    n = Notifier(
        NotifierSettings(**fields), console_url=None, source="lockgate/t", config_dir=tmp_path
    )

    async def no_sleep(_: float) -> None:
        return None

    n.sleep = no_sleep
    return n


def mrkdwn_texts(message: dict[str, Any]) -> Iterator[str]:
    """The texts Slack reads as mrkdwn: the message's ``text`` and every mrkdwn object."""
    yield str(message["text"])

    def walk(node: object) -> Iterator[str]:
        if isinstance(node, dict):
            if node.get("type") == "mrkdwn":
                yield str(node["text"])
            for value in node.values():
                yield from walk(value)
        elif isinstance(node, list):
            for value in node:
                yield from walk(value)

    yield from walk(message["blocks"])


async def test_attack_slack_control_sequences_from_a_denial_are_escaped(tmp_path: Path) -> None:
    (alert,) = grouped([denial("finance_daily", f"/orders/{EVIL}", run=f"manual__{EVIL}")])
    async with SlackReceiver() as rx:
        d = await _deliver(notifier(tmp_path, "slack", rx.url), alert)
        assert d.outcome == "sent"
        (body,) = rx.accepted
    for text in mrkdwn_texts(body):
        # a mention, a special mention or a link starts with "<" in Slack mrkdwn
        assert "<!" not in text and "<@" not in text and "<http" not in text, text
    head = body["blocks"][0]["text"]
    assert head["type"] == "plain_text" and EVIL in head["text"]  # shown as typed, inert
    fields = [f["text"] for f in body["blocks"][1]["fields"]]
    run_field = next(f for f in fields if f.startswith("*run_id*"))
    assert run_field.endswith("`") and "&lt;!here&gt;" in run_field  # a code span


async def test_attack_megabyte_object_and_longest_dag_id_still_page(tmp_path: Path) -> None:
    dag = "d" * 250  # the longest DAG id a deployment may mint for
    huge = "/" + "x" * (1024 * 1024)
    (alert,) = grouped([denial(dag, huge, seq=1), denial(dag, huge + "y", seq=2)])
    (other,) = grouped([denial(dag[:-1] + "e", "/o")])
    assert len(alert.key) <= MAX_KEY and alert.key != other.key
    async with (
        PagerDutyReceiver(ROUTING_KEY) as pd,
        WebhookReceiver(HMAC_KEY.encode()) as hook,
        SlackReceiver() as slack,
    ):
        key_file = tmp_path / "hmac"
        key_file.write_text(HMAC_KEY)
        for n in (
            notifier(tmp_path, "pagerduty", pd.url),
            notifier(tmp_path, "webhook", hook.url, hmac_key_file=key_file),
            notifier(tmp_path, "slack", slack.url),
        ):
            d = await _deliver(n, alert)
            assert d.outcome == "sent", (n.name, d)
            assert len(json.dumps(n.body(alert))) < 64 * 1024 <= PAGERDUTY_MAX_EVENT
        assert pd.accepted[0]["dedup_key"] == alert.key


def test_attack_a_group_keeps_no_megabytes() -> None:
    g = denial_grouper(300.0, 20)
    for i in range(200):
        g.add(denial(f"dag_{i}", "/" + "x" * 100_000, seq=i), 0.0)
    kept = sum(len(grp.first.object or "") + len(grp.last.object or "") for grp in g.open.values())
    assert kept < 200 * 2 * 2000


def test_attack_denial_storm_over_many_dags_is_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    g = denial_grouper(300.0, 20)
    g.max_open = 500  # the cap, scaled down for the test
    rows = [denial(f"dag_{i % 1000}", "/o", seq=i) for i in range(10_000)]
    for r in rows:
        g.add(r, 0.0)
    assert len(g.open) == 500
    alerts = g.due(0.0, everything=True)
    assert len(alerts) == 21  # max_groups by name, one summary
    summary = alerts[-1]
    assert summary.subject == "_more" and summary.details["count"] == 10_000 - 20 * 10
    assert len(summary.details["subjects"]) <= 50  # type: ignore[arg-type]
    assert g.open == {} and g.due(0.0, everything=True) == []


async def test_attack_dispatcher_remembers_a_bounded_number_of_keys(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(dispatch_mod, "MAX_REMEMBERED", 1000)
    n = notifier(tmp_path, "webhook", "http://127.0.0.1:9/", queue_size=10, min_interval=60)
    dispatcher = Dispatcher([n])  # not started: offers queue (and drop) only
    for i in range(20_000):
        dispatcher.offer(Alert("denials", "warning", "s", subject=f"dag_{i}"))
    assert len(dispatcher._last_sent) <= 1000


async def test_attack_a_hanging_or_redirecting_notifier_holds_up_no_other(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="lockgate")
    hits: dict[str, int] = {"elsewhere": 0}

    async def hang(request: web.Request) -> web.StreamResponse:
        await asyncio.sleep(3)  # far past the notifier's timeout
        return web.Response()

    async def slow_read(request: web.Request) -> web.StreamResponse:
        resp = web.StreamResponse(status=200)
        await resp.prepare(request)
        for _ in range(6):  # a body trickled out, not finished within the timeout
            await resp.write(b".")
            await asyncio.sleep(0.5)
        return resp

    async def redirect(request: web.Request) -> web.StreamResponse:
        raise web.HTTPTemporaryRedirect(f"{elsewhere_url}/steal")

    async def steal(request: web.Request) -> web.StreamResponse:
        hits["elsewhere"] += 1
        return web.Response()

    app = web.Application()
    app.router.add_post("/secret-path-hang", hang)
    app.router.add_post("/secret-path-slow", slow_read)
    app.router.add_post("/secret-path-redirect", redirect)
    app.router.add_post("/steal", steal)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    base = f"http://127.0.0.1:{port}"
    elsewhere_url = base.replace("127.0.0.1", "localhost")
    try:
        async with SlackReceiver() as good:
            bad = [
                notifier(tmp_path, "webhook", f"{base}/secret-path-{what}", name=f"n-{what}",
                         timeout=0.5, max_attempts=2)
                for what in ("hang", "slow", "redirect")
            ]  # fmt: skip
            dispatcher = Dispatcher([*bad, notifier(tmp_path, "slack", good.url)])
            dispatcher.start()
            started = time.monotonic()
            dispatcher.offer(Alert("denials", "warning", "s", subject="finance_daily"))
            await good.wait_for(1, timeout=5)
            assert time.monotonic() - started < 1.0  # the good one was not held up
            assert await dispatcher.drain(5.0)  # the bad ones gave up in bounded time
            await dispatcher.close()
    finally:
        await runner.cleanup()
    assert hits["elsewhere"] == 0  # a redirect is not followed: the body goes nowhere else
    logged = "\n".join(r.getMessage() + json.dumps(getattr(r, "fields", {}), default=str)
                       for r in caplog.records)  # fmt: skip
    assert "secret-path" not in logged and str(port) not in logged


async def _deliver(n: Notifier, alert: Alert):  # type: ignore[no-untyped-def]
    async with aiohttp.ClientSession() as s:
        return await n.deliver(s, alert)


@pytest.mark.parametrize(
    "url", ["https://[::1/services/SECRET", "http://evil.example/services/SECRET"]
)
def test_attack_a_malformed_or_plain_url_leaves_the_notifier_out_unnamed(
    tmp_path: Path, url: str
) -> None:
    secret = tmp_path / "url"
    secret.write_text(url)
    settings = NotifierSettings(name="n", type="slack", url_file=secret)
    with pytest.raises(ConfigError) as raised:  # build_notifiers logs it and goes on
        Notifier(settings, console_url=None, source="s", config_dir=tmp_path)
    assert "SECRET" not in str(raised.value) and "services" not in str(raised.value)


def test_attack_a_running_gateway_relays_crafted_denials_inert(tmp_path: Path) -> None:
    """A deployment mints for the longest DAG id and a run id full of Slack controls, and
    sends a crafted path: the real gateway denies it, and the alerts that reach Slack and
    PagerDuty are escaped, capped and taken."""
    import urllib.error
    import urllib.request

    import yaml

    from lockgate.demo.stack import LocalStack
    from lockgate.identity import TaskIdentity
    from tests.fakes.alert_receivers import serving_in_thread

    slack, pd = SlackReceiver(), PagerDutyReceiver(ROUTING_KEY)
    dag, run = "d" * 250, "manual__<!here>|<http://evil.example|click>"
    with serving_in_thread(slack, pd):
        stack = LocalStack(tmp_path / "gw", tls=False)
        (tmp_path / "slack-url").write_text(slack.url)
        (tmp_path / "pd-key").write_text(ROUTING_KEY)
        config = yaml.safe_load(stack.config_path.read_text())
        config["alerts"] = {
            "notifiers": [
                {"name": "chat", "type": "slack", "url_file": str(tmp_path / "slack-url")},
                {"name": "pager", "type": "pagerduty", "events_url": pd.url,
                 "routing_key_file": str(tmp_path / "pd-key")},
            ],
            "poll_interval": 0.1,
            "denials": {"window": 1.0},
        }  # fmt: skip
        stack.config_path.write_text(yaml.safe_dump(config))
        with stack:
            assert stack.gateway is not None
            token = stack.gateway.issuer.mint(
                TaskIdentity("prod", dag, "t", run, 1, -1), "orders-api", 300
            )[0]
            path = "/orders-api/<!channel>/%3C!everyone%3E/*bold*" + "x" * 6000
            req = urllib.request.Request(stack.http_url + path.replace("<", "%3C").replace(
                ">", "%3E"), data=b"{}", method="POST",
                headers={"Authorization": f"Bearer {token}"})  # fmt: skip
            with pytest.raises(urllib.error.HTTPError) as refused:
                urllib.request.urlopen(req, timeout=10)
            assert refused.value.code == 403
            deadline = time.monotonic() + 15
            while (not slack.accepted or not pd.accepted) and time.monotonic() < deadline:
                time.sleep(0.05)
    (message,) = slack.accepted
    (event,) = pd.accepted
    for text in mrkdwn_texts(message):
        assert "<!" not in text and "<http" not in text, text
    assert len(event["dedup_key"]) <= MAX_KEY and event["payload"]["group"] == dag
    assert token not in json.dumps(message) and token not in json.dumps(event)


async def test_attack_a_lost_lease_loses_no_gathered_denials(tmp_path: Path) -> None:
    """The sender stalls, another replica takes the lease and resumes at the stored cursor:
    what the first one gathered is sent by it at once, and by nobody twice."""
    from lockgate.alerts import Alerts
    from lockgate.state import State
    from tests.alerts.test_service import denial as service_denial
    from tests.alerts.test_service import make_config, write

    async with WebhookReceiver(None) as rx:
        config = make_config(tmp_path / "gw", rx.url, denials={"window": 60})
        state = State(config)
        first, second = Alerts(config, state), Alerts(config, state)
        try:
            await first.start()
            await write(state, *[service_denial("finance_daily", "r1", "t")] * 5)
            deadline = time.monotonic() + 10
            while not first._groups[0].open and time.monotonic() < deadline:
                await asyncio.sleep(0.02)
            assert first._groups[0].open  # gathered, its 60 s window open
            await second.start()
            assert second._lease is not None
            with state.database("alerts").transaction() as cur:  # first stalled: lease lost
                cur.execute(
                    "UPDATE alerts_lease SET holder = ?, expires_at = ?",
                    (second._lease.holder, time.time() + 30),
                )
            (alert,) = await rx.wait_for(1, timeout=5)
            assert alert["dag_id"] == "finance_daily" and alert["details"]["count"] == 5
            await asyncio.sleep(0.5)
        finally:
            await second.close()
            await first.close()
            state.close()
        assert len(rx.accepted) == 1


def test_attack_a_trickling_storm_is_max_groups_alerts_and_a_summary_per_window() -> None:
    """1,000 DAGs refused one after another, not at once: each group's window ends at its
    own time, yet a window of flushes names at most max_groups DAGs."""
    g = denial_grouper(10.0, 20)
    sent: list[Alert] = []
    now = 0.0
    for i in range(1000):  # a new DAG every 20 ms, a round every 20 ms
        g.add(denial(f"dag_{i}", "/o", seq=i), now)
        sent += g.due(now)
        now += 0.02
    while now < 60:
        sent += g.due(now)
        now += 0.5
    sent += g.due(now, everything=True)
    named = [a for a in sent if a.subject != "_more"]
    summaries = [a for a in sent if a.subject == "_more"]
    windows = int((1000 * 0.02 + 10) // 10) + 1  # the storm spans this many windows
    assert len(named) <= 20 * windows and len(summaries) <= windows
    assert len(named) + sum(a.details["count"] for a in summaries) == 1000  # type: ignore[misc]


def test_attack_alerts_test_and_config_check_print_no_secret(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], caplog: pytest.LogCaptureFixture
) -> None:
    """Unreachable, malformed and redirected notifiers: the outcome is printed and logged,
    never a URL path, a routing key or an HMAC key."""
    import socket

    import yaml

    from lockgate.cli import main

    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        closed = s.getsockname()[1]
    (tmp_path / "down-url").write_text(f"http://127.0.0.1:{closed}/hooks/SECRET-PATH-1")
    (tmp_path / "bad-url").write_text("https://[::1/services/SECRET-PATH-2")
    (tmp_path / "hmac").write_text("SECRET-HMAC-3")
    (tmp_path / "pd-key").write_text("SECRET-ROUTING-KEY-4-xxxxxxxxxxx")
    config = {
        "data_dir": str(tmp_path / "data"),
        "alerts": {"notifiers": [
            {"name": "down", "type": "webhook", "url_file": "down-url", "hmac_key_file": "hmac",
             "max_attempts": 2, "timeout": 1},
            {"name": "bad", "type": "slack", "url_file": "bad-url"},
            {"name": "pager", "type": "pagerduty", "routing_key_file": "pd-key",
             "events_url": f"http://127.0.0.1:{closed}/v2/enqueue", "max_attempts": 1},
        ]},
    }  # fmt: skip
    path = tmp_path / "lockgate.yaml"
    path.write_text(yaml.safe_dump(config))
    caplog.set_level(logging.DEBUG)
    assert main(["-c", str(path), "alerts", "test"]) == 1
    with contextlib.suppress(SystemExit):
        main(["-c", str(path), "config", "check"])
    out = capsys.readouterr()
    printed = out.out + out.err
    assert "down: failed" in printed and "bad: not usable" in printed
    logged = "\n".join(
        f"{r.getMessage()} {getattr(r, 'fields', '')} {r.exc_text or ''}" for r in caplog.records
    )
    for secret in ("SECRET-PATH-1", "SECRET-PATH-2", "SECRET-HMAC-3", "SECRET-ROUTING-KEY-4"):
        assert secret not in printed and secret not in logged, secret


def test_attack_a_token_in_a_logged_refresh_failure_is_withheld_from_the_alert() -> None:
    from lockgate.alerts.service import _FailureLog

    jwt = "eyJhbGciOiJFZERTQSJ9.eyJzdWIiOiJ4In0.c2lnbmF0dXJl"
    failures = _FailureLog()
    logger = logging.getLogger("lockgate.credentials.attack")
    logger.addHandler(failures)
    try:
        logger.warning("token refresh failed: the endpoint said %s", f"bad assertion {jwt}",
                       extra={"fields": {"credential": "c1", "error": f"bad {jwt}"}})  # fmt: skip
    finally:
        logger.removeHandler(failures)
    (alert,) = failures.drain()
    assert jwt not in alert.summary and "[redacted]" in alert.summary
    keyed = Alert("rotation_failure", "error", "s", subject=f"cred {jwt}")
    assert jwt not in keyed.key and jwt not in keyed.subject
    assert jwt not in json.dumps(alert.facts())


async def test_attack_a_storm_in_the_trail_is_a_handful_of_alerts(tmp_path: Path) -> None:
    """10,000 denials over 1,000 DAG ids committed to a real trail: max_groups DAGs named,
    the rest in summaries, every denial counted once."""
    from lockgate.alerts import Alerts
    from lockgate.state import State
    from tests.alerts.test_service import denial as service_denial
    from tests.alerts.test_service import make_config, write

    async with WebhookReceiver(None) as rx:
        config = make_config(tmp_path / "gw", rx.url, denials={"window": 1.0, "max_groups": 20})
        state = State(config)
        alerts = Alerts(config, state)
        try:
            await alerts.start()
            storm = [service_denial(f"dag_{i % 1000}", "r", "t") for i in range(10_000)]
            await write(state, *storm)
            deadline = time.monotonic() + 20
            while time.monotonic() < deadline:
                if sum(int(b["details"]["count"]) for b in rx.accepted) >= 10_000:
                    break
                await asyncio.sleep(0.1)
            await asyncio.sleep(0.3)
        finally:
            await alerts.close()
            state.close()
    named = [b for b in rx.accepted if b["subject"] != "_more"]
    summaries = [b for b in rx.accepted if b["subject"] == "_more"]
    assert len(named) <= 20 * 2 and 1 <= len(summaries) <= 3, (len(named), len(summaries))
    assert sum(int(b["details"]["count"]) for b in rx.accepted) == 10_000
    assert all(len(json.dumps(b)) < 16_384 for b in rx.accepted)


async def test_attack_a_replayed_or_retried_webhook_carries_the_same_id(tmp_path: Path) -> None:
    """The signature bounds a replay to 5 minutes; the id lets a receiver refuse it then
    (and drop a retried duplicate): every attempt of one alert carries the same id, two
    alerts never share one, and the id is signed with the rest of the body."""
    key = tmp_path / "hmac"
    key.write_text(HMAC_KEY)
    async with WebhookReceiver(HMAC_KEY.encode(), fail_first=2) as rx:
        n = notifier(tmp_path, "webhook", rx.url, hmac_key_file=key)
        first = Alert("denials", "warning", "s", subject="finance_daily")
        second = Alert("denials", "warning", "s", subject="finance_daily")
        assert (await _deliver(n, first)).attempts == 3
        assert (await _deliver(n, second)).outcome == "sent"
    ids = [b["id"] for b in rx.accepted]
    assert ids == [first.id, second.id] and first.id != second.id
    assert n.body(first)["id"] == n.body(first)["id"] == first.id  # each retry: the same


def test_attack_a_receiver_asking_for_no_wait_is_backed_off_from() -> None:
    from lockgate.alerts.senders import retry_after

    assert retry_after("nan") is None and retry_after("NaN") is None  # backoff applies
    assert retry_after("inf") == retry_after("1e999") == 300.0
    assert retry_after("-inf") == 0.0
