"""Notifiers: one alert in, one HTTP POST out, retried with backoff until it is taken.

- ``webhook``: the alert as JSON. With an HMAC key, ``X-Lockgate-Timestamp: <unix seconds>``
  and ``X-Lockgate-Signature: sha256=<hex HMAC-SHA256 of "<timestamp>.<body>">``, which a
  receiver recomputes and compares (and rejects timestamps more than 5 minutes old), as
  Slack's and Stripe's signing work. The body's ``id`` is the alert's, the same in every
  retry: remembered for those 5 minutes, it refuses a replay and drops a retried duplicate.
- ``slack``: an incoming webhook: ``{"text": ..., "blocks": [...]}``; answered 200 ``ok``.
  The summary is plain text, a value from a request (an object path, a run id) is shown as
  code, and every mrkdwn text has ``&``, ``<`` and ``>`` escaped as Slack asks: a denied
  request naming ``<!channel>``, ``<https://evil|click>`` or ``*bold*`` can neither ping a
  channel, plant a link nor restyle the message.
- ``pagerduty``: Events API v2 (``POST /v2/enqueue``): ``routing_key``, ``event_action``
  ``trigger`` or ``resolve``, ``dedup_key`` (the alert's key: one incident per DAG and
  kind), ``payload.summary/source/severity/timestamp/custom_details``; answered 202.

Retries: on 429, 5xx, a timeout or a connection error, after ``Retry-After`` when the
receiver gives one (capped), else exponential backoff with full jitter, and a 429 without
Retry-After at least :data:`RATE_LIMITED_BACKOFF` apart (PagerDuty's limit looks back 60 s
and says no Retry-After: retries a few seconds apart would all be refused); another 4xx
means the receiver will never take this body: no retry. URLs and keys are secrets (a Slack
webhook URL is its own credential): they are read from a file or an environment variable,
never logged (log lines name the notifier only), and only ever sent over https (plain http
to this machine alone, e.g. a local relay).
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import math
import os
import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import aiohttp

from lockgate import _log
from lockgate._urls import private_channel
from lockgate.alerts.model import Alert
from lockgate.config.alerts import NotifierSettings
from lockgate.errors import ConfigError

log = _log.get("alerts")

#: Backoff: first retry after about this many seconds, doubling up to MAX_BACKOFF.
BASE_BACKOFF = 0.5
MAX_BACKOFF = 60.0
#: A receiver's Retry-After is honoured up to this many seconds.
MAX_RETRY_AFTER = 300.0
#: A 429 without Retry-After is retried no sooner: PagerDuty's Events API v2 counts events
#: per integration key over the last 60 s and advises retrying 30 s apart
#: (developer.pagerduty.com/docs/events-API-v2/rate-limits).
RATE_LIMITED_BACKOFF = 30.0
#: PagerDuty's limit on payload.summary; Slack's on a section's text.
PAGERDUTY_SUMMARY_MAX = 1024
SLACK_TEXT_MAX = 3000

SENT, FAILED, REJECTED = "sent", "failed", "rejected"
_SLACK_ICONS = {
    "critical": ":rotating_light:",
    "error": ":red_circle:",
    "warning": ":warning:",
    "info": ":information_source:",
}


@dataclass(frozen=True)
class Delivery:
    """How one alert went: ``outcome`` (sent, failed, rejected), attempts, last status."""

    outcome: str
    attempts: int
    status: int | None = None
    error: str | None = None


def read_secret(from_file: Path | None, from_env: str | None, what: str, base: Path) -> str:
    """A secret from ``from_file`` (relative to ``base``, the config's directory) or the
    environment; ConfigError naming where it was looked for (never its value)."""
    if from_file is not None:
        path = from_file if from_file.is_absolute() else base / from_file
        try:
            value = path.read_text(encoding="utf-8").strip()
        except OSError as exc:
            raise ConfigError(f"{what}: cannot read {path}: {exc.strerror}") from None
        where = str(path)
    else:
        assert from_env is not None
        value = os.environ.get(from_env, "").strip()
        where = f"${from_env}"
    if not value:
        raise ConfigError(f"{what}: {where} is empty")
    return value


def sign(key: bytes, timestamp: str, body: bytes) -> str:
    """``sha256=<hex>``: the HMAC-SHA256 of ``<timestamp>.<body>`` under ``key``."""
    mac = hmac.new(key, timestamp.encode("ascii") + b"." + body, hashlib.sha256)
    return "sha256=" + mac.hexdigest()


def retry_after(value: str | None) -> float | None:
    """Seconds a ``Retry-After`` header asks for (delta seconds or an HTTP date), capped."""
    if not value:
        return None
    try:
        seconds = float(value)
    except ValueError:
        try:
            from email.utils import parsedate_to_datetime

            seconds = parsedate_to_datetime(value).timestamp() - time.time()
        except (TypeError, ValueError):
            return None
    if math.isnan(seconds):  # "nan" parses as a float: no wait at all, so back off instead
        return None
    return min(max(seconds, 0.0), MAX_RETRY_AFTER)


def backoff(attempt: int, rand: Callable[[], float] = random.random) -> float:
    """Full jitter: uniform in [0, min(cap, base * 2**(attempt-1))]."""
    return float(rand() * min(MAX_BACKOFF, BASE_BACKOFF * 2 ** (attempt - 1)))


class Notifier:
    """One configured destination. :meth:`deliver` never raises: it answers a Delivery."""

    def __init__(
        self,
        settings: NotifierSettings,
        *,
        console_url: str | None,
        source: str,
        config_dir: Path,
    ) -> None:
        self.settings = settings
        self.name = settings.name
        self.console_url = console_url
        self.source = source  # PagerDuty's payload.source: which gateway says so
        what = f"alerts notifier {settings.name}"
        if settings.type == "pagerduty":
            self._routing_key = read_secret(
                settings.routing_key_file, settings.routing_key_env, what, config_dir
            )
            self._url = settings.events_url
        else:
            self._routing_key = ""
            self._url = read_secret(settings.url_file, settings.url_env, what, config_dir)
        try:
            private = private_channel(self._url)
        except ValueError:  # its text may be the secret: never repeated
            raise ConfigError(f"{what}: the URL is not a valid URL") from None
        if not private:  # the URL, the key or the alert would travel bare
            raise ConfigError(f"{what}: the URL must be https (plain http only to this machine)")
        self._hmac_key: bytes | None = None
        if settings.hmac_key_file is not None or settings.hmac_key_env is not None:
            key = read_secret(settings.hmac_key_file, settings.hmac_key_env, what, config_dir)
            self._hmac_key = key.encode()
        # tests shorten the waits; the jitter source too
        self.sleep: Callable[[float], object] = asyncio.sleep
        self.rand: Callable[[], float] = random.random

    def wants(self, kind: str) -> bool:
        return kind in self.settings.events

    # -- bodies ----------------------------------------------------------------------------
    def body(self, alert: Alert) -> dict[str, object]:
        kind = self.settings.type
        if kind == "slack":
            return self._slack(alert)
        if kind == "pagerduty":
            return self._pagerduty(alert)
        return self._webhook(alert)

    def _webhook(self, alert: Alert) -> dict[str, object]:
        return {
            "id": alert.id,
            "kind": alert.kind,
            "action": alert.action,
            "severity": alert.severity,
            "summary": alert.summary,
            "subject": alert.subject,
            "key": alert.key,
            "ts": alert.ts,
            "source": self.source,
            **alert.context(),
            "details": alert.facts(),
            **alert.where_to_look(self.console_url),
        }

    def _slack(self, alert: Alert) -> dict[str, object]:
        icon = ":white_check_mark:" if alert.action == "resolve" else _SLACK_ICONS[alert.severity]
        # plain text: a summary quoting a request shows its *stars* and <!channel> as typed
        head = f"{icon} Lockgate {alert.kind} ({alert.severity}): {alert.summary}"
        blocks: list[dict[str, object]] = [
            {
                "type": "section",
                "text": {"type": "plain_text", "text": head[:SLACK_TEXT_MAX], "emoji": True},
            }
        ]
        fields = [f"*{k}*\n{_slack_code(v)}" for k, v in alert.context().items()]
        fields += [f"*{_mrkdwn(k)}*\n{_slack_code(_short(v))}" for k, v in alert.facts().items()]
        if fields:  # Slack takes at most 10 fields of 2000 characters in a section
            blocks.append(
                {
                    "type": "section",
                    "fields": [{"type": "mrkdwn", "text": f[:2000]} for f in fields[:10]],
                }
            )
        look = alert.where_to_look(self.console_url)
        if "link" in look:
            blocks.append(_slack_context(f"<{_mrkdwn(look['link'])}|Audit records>"))
        elif "command" in look:
            blocks.append(_slack_context(_slack_code(look["command"])))
        return {
            "text": f"Lockgate {alert.kind}: {_mrkdwn(alert.summary)}"[:SLACK_TEXT_MAX],
            "blocks": blocks,
        }

    def _pagerduty(self, alert: Alert) -> dict[str, object]:
        event: dict[str, object] = {
            "routing_key": self._routing_key,
            "event_action": alert.action,
            "dedup_key": alert.key,
        }
        if alert.action == "resolve":
            return event
        details: dict[str, object] = {**alert.context(), **alert.facts()}
        look = alert.where_to_look(self.console_url)
        if "command" in look:
            details["audit_search"] = look["command"]
        payload: dict[str, object] = {
            "summary": alert.summary[:PAGERDUTY_SUMMARY_MAX],
            "source": self.source,
            "severity": alert.severity,
            "timestamp": datetime.fromtimestamp(alert.ts, UTC).isoformat(),
            "class": alert.kind,
            "custom_details": details,
        }
        if alert.resource:
            payload["component"] = alert.resource
        if alert.dag_id:
            payload["group"] = alert.dag_id
        event["payload"] = payload
        if "link" in look:
            event["links"] = [{"href": look["link"], "text": "Audit records"}]
        return event

    # -- sending ---------------------------------------------------------------------------
    async def deliver(self, session: aiohttp.ClientSession, alert: Alert) -> Delivery:
        """POST the alert, retrying what may pass later; the last answer decides."""
        body = json.dumps(self.body(alert), separators=(",", ":"), default=str).encode()
        attempt = 0
        status: int | None = None
        error: str | None = None
        while True:
            attempt += 1
            wait: float | None = None
            try:
                status, wait = await self._post(session, body)
                error = None
            except (aiohttp.ClientError, TimeoutError, OSError) as exc:
                status, error = None, type(exc).__name__
            if status is not None and 200 <= status < 300:
                return Delivery(SENT, attempt, status)
            retryable = status is None or status == 429 or status >= 500
            if not retryable:
                return Delivery(REJECTED, attempt, status)
            if attempt >= self.settings.max_attempts:
                return Delivery(FAILED, attempt, status, error)
            delay = wait if wait is not None else backoff(attempt, self.rand)
            if status == 429 and wait is None:
                delay = max(delay, RATE_LIMITED_BACKOFF)
            log.info(
                "alert not taken yet; retrying",
                extra={"fields": {"notifier": self.name, "kind": alert.kind, "status": status,
                                  "error": error, "attempt": attempt, "delay": round(delay, 3)}},
            )  # fmt: skip
            await _awaited(self.sleep(delay))

    async def _post(self, session: aiohttp.ClientSession, body: bytes) -> tuple[int, float | None]:
        headers = {"Content-Type": "application/json", "User-Agent": "lockgate-alerts"}
        if self._hmac_key is not None:
            ts = str(int(time.time()))
            headers["X-Lockgate-Timestamp"] = ts
            headers["X-Lockgate-Signature"] = sign(self._hmac_key, ts, body)
        timeout = aiohttp.ClientTimeout(total=self.settings.timeout)
        async with session.post(
            self._url, data=body, headers=headers, timeout=timeout, allow_redirects=False
        ) as resp:
            await resp.read()
            return resp.status, retry_after(resp.headers.get("Retry-After"))


def _short(value: object) -> str:
    text = value if isinstance(value, str) else json.dumps(value, default=str)
    return text if len(text) <= 500 else text[:500] + "…"


def _mrkdwn(text: str) -> str:
    """``text`` safe in Slack mrkdwn: the three characters Slack reads as control sequences
    (``<!channel>``, ``<@U123>``, ``<url|label>``) escaped as its docs ask."""
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def _slack_code(text: str) -> str:
    """``text`` as inline code (no bold, italics, links or mentions inside), escaped; a
    backtick or a line break in it would end the code early: a quote and a space stand in."""
    plain = text.replace("`", "'").replace("\r", " ").replace("\n", " ")
    return f"`{_mrkdwn(plain)}`"


def _slack_context(text: str) -> dict[str, object]:
    return {"type": "context", "elements": [{"type": "mrkdwn", "text": text[:SLACK_TEXT_MAX]}]}


async def _awaited(value: object) -> None:
    if asyncio.iscoroutine(value) or isinstance(value, asyncio.Future):
        await value


__all__ = [
    "FAILED",
    "REJECTED",
    "SENT",
    "Delivery",
    "Notifier",
    "backoff",
    "read_secret",
    "retry_after",
    "sign",
]
