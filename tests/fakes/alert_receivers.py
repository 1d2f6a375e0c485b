"""Local receivers of alerts, written from the services' public docs, checking what they check.

- :class:`WebhookReceiver`: a consumer of signed webhooks. It recomputes
  ``sha256=HMAC-SHA256(key, "<X-Lockgate-Timestamp>.<raw body>")``, compares in constant
  time and refuses (401) a wrong or missing signature or a timestamp more than 5 minutes off,
  as a careful consumer of Slack's or Stripe's signed requests does.
- :class:`SlackReceiver`: an incoming webhook (api.slack.com/messaging/webhooks): a JSON
  body with ``text`` (or ``blocks``) is answered ``200 ok`` (text/html); anything else
  ``400 invalid_payload`` (``no_text`` when neither text nor blocks is given). A URL whose
  token is wrong is ``403 invalid_token``, one Slack does not know (a removed webhook,
  ``revoked``) ``404 no_service``, a post to an archived channel (``archived``) ``410
  channel_is_archived`` (api.slack.com/messaging/webhooks "Handling errors"; the 2016
  changelog "Improving error conditions for Incoming Webhooks").
- :class:`PagerDutyReceiver`: Events API v2 (developer.pagerduty.com, "Send an Alert
  Event"): ``POST /v2/enqueue`` with ``routing_key`` (32 characters), ``event_action``
  (trigger, acknowledge, resolve), ``dedup_key`` (at most 255 characters; required unless
  trigger), and for a trigger ``payload.summary`` (at most 1024), ``payload.source``,
  ``payload.severity`` (critical, error, warning, info), optional ``timestamp`` (ISO 8601),
  ``component``, ``group``, ``class``, ``custom_details`` (an object) and ``links``
  (``href``, ``text``). Valid: ``202 {"status": "success", "message": "Event processed",
  "dedup_key": ...}``; invalid: ``400 {"status": "invalid event", "message": "Event object
  is invalid", "errors": [...]}``; throttled: ``429``. ``rate_limit``: PagerDuty's limit
  of events per integration key over a 60-second window looking back from now (about 120;
  developer.pagerduty.com "Events API Rate Limits"): past it every event is 429 until the
  window has room, however soon it is retried (no Retry-After is given).

Each binds 127.0.0.1 on a free port, runs in the test's event loop and stops when its
``async with`` block ends. ``fail_first`` answers the first N requests with ``fail_status``
(and ``Retry-After`` when given) before behaving: a receiver that fails twice then accepts.
Shares no code with :mod:`lockgate.alerts`.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import json
import threading
import time
from collections.abc import Callable, Iterator
from datetime import datetime
from typing import Any, Self

from aiohttp import web

SIGNATURE_TOLERANCE = 300  # seconds a signed timestamp may be off


class Receiver:
    path = "/"

    def __init__(
        self, *, fail_first: int = 0, fail_status: int = 503, retry_after: str | None = None
    ) -> None:
        self.fail_first = fail_first
        self.fail_status = fail_status
        self.retry_after = retry_after
        self.requests = 0
        self.accepted: list[dict[str, Any]] = []  # bodies taken, in order
        self.refused: list[tuple[int, str]] = []  # (status, why)
        self._runner: web.AppRunner | None = None
        self.url = ""
        self._arrived = asyncio.Event()

    async def __aenter__(self) -> Self:
        app = web.Application()
        app.router.add_post(self.path, self._handle)
        app.router.add_post("/{elsewhere:.*}", self._elsewhere)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        self.url = f"http://127.0.0.1:{port}{self.path}"
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

    async def wait_for(self, n: int, timeout: float = 10.0) -> list[dict[str, Any]]:
        """The accepted bodies once there are at least ``n`` (AssertionError on timeout)."""
        deadline = time.monotonic() + timeout
        while len(self.accepted) < n:
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError(
                    f"{type(self).__name__}: {len(self.accepted)} accepted of {n} "
                    f"(refused: {self.refused})"
                )
            self._arrived.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._arrived.wait(), min(left, 0.2))
        return self.accepted

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        self.requests += 1
        raw = await request.read()
        if self.requests <= self.fail_first:
            headers = {"Retry-After": self.retry_after} if self.retry_after else {}
            self.refused.append((self.fail_status, "failing on purpose"))
            return web.Response(status=self.fail_status, text="try later", headers=headers)
        resp = self.answer(request, raw)
        if 200 <= resp.status < 300:
            self.accepted.append(json.loads(raw))
        else:
            self.refused.append((resp.status, str(getattr(resp, "text", ""))))
        self._arrived.set()
        return resp

    def answer(self, request: web.Request, raw: bytes) -> web.Response:
        raise NotImplementedError

    async def _elsewhere(self, request: web.Request) -> web.Response:
        """A POST to another path than the receiver's."""
        self.requests += 1
        self.refused.append((404, "not the receiver's path"))
        return web.Response(status=404, text="not found")


@contextlib.contextmanager
def serving_in_thread(*receivers: Receiver) -> Iterator[None]:
    """Run ``receivers`` on an event loop of their own thread, for code under test that runs
    its own loop (a CLI command, a gateway in a background thread)."""
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    try:
        for r in receivers:
            asyncio.run_coroutine_threadsafe(r.__aenter__(), loop).result(5)
        yield
    finally:
        for r in receivers:
            asyncio.run_coroutine_threadsafe(r.__aexit__(), loop).result(5)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(5)
        loop.close()


class WebhookReceiver(Receiver):
    """A signed-webhook consumer; ``key`` None accepts unsigned bodies."""

    path = "/hooks/lockgate"

    def __init__(self, key: bytes | None, **kw: Any) -> None:
        super().__init__(**kw)
        self.key = key
        self.headers: list[dict[str, str]] = []

    def answer(self, request: web.Request, raw: bytes) -> web.Response:
        self.headers.append(dict(request.headers))
        if request.content_type != "application/json":
            return web.Response(status=415, text="expected application/json")
        if self.key is not None:
            ts = request.headers.get("X-Lockgate-Timestamp", "")
            given = request.headers.get("X-Lockgate-Signature", "")
            if not ts.isdigit() or abs(time.time() - int(ts)) > SIGNATURE_TOLERANCE:
                return web.Response(status=401, text="stale or missing timestamp")
            expected = (
                "sha256=" + hmac.new(self.key, ts.encode() + b"." + raw, hashlib.sha256).hexdigest()
            )
            if not hmac.compare_digest(expected, given):
                return web.Response(status=401, text="bad signature")
        try:
            json.loads(raw)
        except ValueError:
            return web.Response(status=400, text="not JSON")
        return web.Response(status=200, text="ok")


class SlackReceiver(Receiver):
    path = "/services/T000/B000/XXXX"

    def __init__(self, *, archived: bool = False, revoked: bool = False, **kw: Any) -> None:
        super().__init__(**kw)
        self.archived = archived  # the channel was archived: 410 channel_is_archived
        self.revoked = revoked  # the webhook was removed: 404 no_service

    async def _elsewhere(self, request: web.Request) -> web.Response:
        self.requests += 1
        same_hook = request.path.rsplit("/", 1)[0] == self.path.rsplit("/", 1)[0]
        status, text = (403, "invalid_token") if same_hook else (404, "no_service")
        self.refused.append((status, text))
        return web.Response(status=status, text=text, content_type="text/html")

    def answer(self, request: web.Request, raw: bytes) -> web.Response:
        if self.revoked:
            return web.Response(status=404, text="no_service", content_type="text/html")
        if self.archived:
            return web.Response(status=410, text="channel_is_archived", content_type="text/html")
        try:
            body = json.loads(raw)
        except ValueError:
            return web.Response(status=400, text="invalid_payload")
        if not isinstance(body, dict):
            return web.Response(status=400, text="invalid_payload")
        text, blocks = body.get("text"), body.get("blocks")
        if text is None and blocks is None:
            return web.Response(status=400, text="no_text")
        if text is not None and (not isinstance(text, str) or not text):
            return web.Response(status=400, text="invalid_payload")
        if blocks is not None and not _valid_blocks(blocks):
            return web.Response(status=400, text="invalid_blocks")
        return web.Response(status=200, text="ok", content_type="text/html")


def _valid_blocks(blocks: object) -> bool:
    if not isinstance(blocks, list) or len(blocks) > 50:
        return False
    for b in blocks:
        if not isinstance(b, dict) or b.get("type") not in {"section", "context", "divider",
                                                             "header", "actions"}:  # fmt: skip
            return False
        if b["type"] == "section":
            text, fields = b.get("text"), b.get("fields")
            if text is None and fields is None:
                return False
            if text is not None and len(text.get("text", "")) > 3000:
                return False
            if fields is not None and len(fields) > 10:
                return False
            if fields is not None and any(len(f.get("text", "")) > 2000 for f in fields):
                return False
    return True


class PagerDutyReceiver(Receiver):
    path = "/v2/enqueue"

    def __init__(
        self,
        routing_key: str,
        *,
        throttle_first: int = 0,
        rate_limit: int | None = None,
        clock: Callable[[], float] = time.monotonic,
        **kw: Any,
    ) -> None:
        super().__init__(**kw)
        self.routing_key = routing_key
        self.throttle_first = throttle_first
        self.rate_limit = rate_limit
        self.clock = clock
        self._taken: list[float] = []  # when events were taken, for the 60 s window
        self.incidents: dict[str, str] = {}  # dedup_key -> "triggered" | "resolved"

    def answer(self, request: web.Request, raw: bytes) -> web.Response:
        now = self.clock()
        self._taken = [t for t in self._taken if now - t < 60.0]
        over_limit = self.rate_limit is not None and len(self._taken) >= self.rate_limit
        if self.throttle_first > 0 or over_limit:
            self.throttle_first = max(0, self.throttle_first - 1)
            return web.json_response(
                {"status": "throttle event", "message": "Requests for this service are "
                 "arriving too quickly.  Please retry later."}, status=429)  # fmt: skip
        try:
            event = json.loads(raw)
        except ValueError:
            return _invalid(["Event object is not valid JSON"])
        errors = _event_errors(event, self.routing_key)
        if errors:
            return _invalid(errors)
        key = event.get("dedup_key") or f"generated-{len(self.accepted)}"
        action = event["event_action"]
        self.incidents[key] = "resolved" if action == "resolve" else "triggered"
        self._taken.append(now)
        return web.json_response(
            {"status": "success", "message": "Event processed", "dedup_key": key}, status=202
        )


def _invalid(errors: list[str]) -> web.Response:
    return web.json_response(
        {"status": "invalid event", "message": "Event object is invalid", "errors": errors},
        status=400,
    )


def _event_errors(event: object, routing_key: str) -> list[str]:
    if not isinstance(event, dict):
        return ["Event object must be a JSON object"]
    errors = []
    rk = event.get("routing_key")
    if not isinstance(rk, str) or len(rk) != 32:
        errors.append("'routing_key' must be a 32 character string")
    elif rk != routing_key:
        errors.append("Invalid routing key")
    action = event.get("event_action")
    if action not in {"trigger", "acknowledge", "resolve"}:
        errors.append("'event_action' is invalid (must be trigger, acknowledge or resolve)")
    dedup = event.get("dedup_key")
    if dedup is not None and (not isinstance(dedup, str) or len(dedup) > 255):
        errors.append("'dedup_key' must be a string of at most 255 characters")
    if action in {"acknowledge", "resolve"} and not dedup:
        errors.append("'dedup_key' is required for acknowledge and resolve")
    if action == "trigger":
        errors += _payload_errors(event.get("payload"))
    links = event.get("links")
    bad_link = not isinstance(links, list) or any(
        not isinstance(x, dict) or "href" not in x for x in links
    )
    if links is not None and bad_link:
        errors.append("'links' must be a list of objects with href")
    return errors


def _payload_errors(payload: object) -> list[str]:
    if not isinstance(payload, dict):
        return ["'payload' is required for trigger events"]
    errors = []
    summary = payload.get("summary")
    if not isinstance(summary, str) or not summary or len(summary) > 1024:
        errors.append("'payload.summary' must be a non-empty string of at most 1024 characters")
    if not isinstance(payload.get("source"), str) or not payload["source"]:
        errors.append("'payload.source' is required")
    if payload.get("severity") not in {"critical", "error", "warning", "info"}:
        errors.append("'payload.severity' must be critical, error, warning or info")
    ts = payload.get("timestamp")
    if ts is not None:
        try:
            datetime.fromisoformat(str(ts))
        except ValueError:
            errors.append("'payload.timestamp' must be ISO 8601")
    details = payload.get("custom_details")
    if details is not None and not isinstance(details, dict):
        errors.append("'payload.custom_details' must be an object")
    return errors


__all__ = [
    "PagerDutyReceiver",
    "Receiver",
    "SlackReceiver",
    "WebhookReceiver",
    "serving_in_thread",
]
