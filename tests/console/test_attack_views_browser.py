"""Stored cross-site scripting, tried in Chromium: a trail whose DAG ids, run ids, task ids,
objects, reasons, rules and detail JSON are markup, ``javascript:`` URLs, quotes that would
close an attribute, bidi overrides and a token-shaped string, and a policy whose principals,
objects and description are markup. Every page of every view is loaded in the browser with
the console's own Content-Security-Policy: a script that ran, an inline handler or style the
CSP refused (a console error), an image fetched from a tag someone wrote, a link to
``javascript:``/``data:`` or an attribute built from data fails the test -- not a string
search of the HTML."""

from __future__ import annotations

import json
import socket
import time
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any, cast
from urllib.parse import urlencode

import pytest
from aiohttp import web

from lockgate.audit import AuditLog, AuditReader, AuditRecord
from lockgate.config import load_config
from lockgate.console import auth
from lockgate.console.app import VIEWS
from lockgate.console.web import ConsoleContext, OpenSession
from lockgate.demo.standins.entra.thread import LoopThread
from lockgate.identity import TaskIdentity, TokenIssuer
from lockgate.policy import PolicyStore
from lockgate.state import State
from tests.console._views import STATIC, signed_in, views_app
from tests.console.browser import VIEWPORT

if TYPE_CHECKING:
    from playwright.sync_api import Browser, ConsoleMessage

#: each payload, if it ever ran, sets window.__pwned (or fetches /console/pwned: a 404 error)
PAYLOADS = (
    "<img src=/console/pwned onerror=window.__pwned=1>",
    '"><svg onload=window.__pwned=2>',
    "' onmouseover='window.__pwned=3' x='",
    "javascript:window.__pwned=4",
    "data:text/html,<script>window.__pwned=5</script>",
    "</title></script><script>window.__pwned=6</script>",
    "etl\u202egnp.exe\u2066 \u200f",
)
JWT = "eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiJ4In0.c2lnbmF0dXJlc2lnbmF0dXJlc2ln"
POLICY = """\
rules:
  - id: etl-read
    effect: allow
    principals: ["airflow:prod/*<svg onload=window.__pwned=7>*"]
    actions: [read]
    resources: [orders-api]
    objects: ["/orders/**\\"'<img src=/console/pwned>"]
    description: "<script>window.__pwned=8</script>"
"""


def hostile_trail(st: State) -> None:
    log = AuditLog(st.config.data_dir / "audit.db")
    issuer = TokenIssuer(st.keys, st.config.issuer_url)
    now = time.time()
    try:
        for i, value in enumerate(PAYLOADS):
            _, claims = issuer.mint(TaskIdentity("prod", value, value, value, 1), "orders-api", 900)
            log.emit(AuditRecord(
                event="token_issued", ts=now - 300 + i, deployment="prod", dag_id=value,
                task_id=value, run_id=value, try_number=1, principal=claims.sub,
                resource="orders-api", decision="allow", action="mint", jti=claims.jti,
                detail={"ttl": 900, "expires_at": claims.exp, "note": value},
            ))  # fmt: skip
            for event, decision in (
                ("allowed", "allow"),
                ("denied", "deny"),
                ("admitted", "allow"),
            ):
                log.emit(AuditRecord(
                    event=event, ts=now - 200 + i, deployment="prod", dag_id=value,
                    task_id=value, run_id=value, try_number=1, principal=f"airflow:prod/{value}/t",
                    resource="orders-api", action="read", object=f"/orders/{value} {JWT}",
                    decision=decision, rule="etl-read", reason=f"{value} Bearer {JWT}",
                    status=200, latency_ms=1.0, jti=value,
                    detail={value: value, "shadow": {"decision": "deny", "rule": value}},
                ))  # fmt: skip
        assert log.flush(20)
    finally:
        log.close()


class HostileSessions:
    """Sessions open now whose every field a client chose (a peer, a where, a DAG id)."""

    def open_sessions(self) -> list[OpenSession]:
        return [
            OpenSession(kind="cql", resource="orders-api", principal=f"airflow:prod/{v}/t",
                        deployment="prod", dag_id=v, run_id=v, task_id=v, try_number=1,
                        jti=v, opened_at=time.time() - 5, peer=v, where=v)
            for v in PAYLOADS
        ]  # fmt: skip


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="module")
def hostile_console(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """Every view over the hostile trail and policy, signed in as an admin (every action
    link shown), behind the console's security headers; its base URL."""
    tmp = tmp_path_factory.mktemp("hostile")
    (tmp / "team.yaml").write_text(POLICY)
    (tmp / "lockgate.yaml").write_text(json.dumps({  # JSON is YAML
        "data_dir": str(tmp / "data"), "policies": [str(tmp / "team.yaml")],
        "deployments": [{"name": "prod", "dags": ["*"],
                         "proof": {"type": "client_secret", "secret_sha256": "0" * 64}}],
        "resources": [{"name": "orders-api", "kind": "http",
                       "upstream": "https://orders.example.com"}],
    }))  # fmt: skip
    st = State(load_config(tmp / "lockgate.yaml"))
    hostile_trail(st)
    for value in PAYLOADS[:3]:  # blocks an operator named and explained
        st.revocations.block("prod", value, by=value, reason=value)
    cfg = st.config
    ctx = ConsoleContext(
        config=cfg, audit_reader=lambda: AuditReader(cfg.data_dir / "audit.db"),
        audit=cast(Any, None), policy=PolicyStore(lambda: [tmp / "team.yaml"], {"orders-api"}),
        revocations=st.revocations, credentials=st.credentials, database=st.database,
        live=HostileSessions(),
    )  # fmt: skip

    def every_view(app: web.Application) -> None:
        for view in VIEWS:
            view.add_routes(app)
        app.router.add_static("/static/", STATIC)

    root = views_app(ctx, every_view, signed_in("admin"))
    root.on_response_prepare.append(auth.security_headers)
    port = free_port()

    async def start() -> web.AppRunner:
        runner = web.AppRunner(root)
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", port).start()
        return runner

    loop = LoopThread()
    loop.serve(start())
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        loop.stop()
        st.close()


def pages() -> list[str]:
    """Every page of every view, plain and with the payloads as its query's values."""
    app = web.Application()
    for view in VIEWS:
        view.add_routes(app)
    plain = sorted(
        {r.resource.canonical for r in app.router.routes()
         if r.method == "GET" and r.resource is not None and "{" not in r.resource.canonical
         and not r.resource.canonical.endswith((".csv", ".json", ".yaml"))}
    )  # fmt: skip
    asked = []
    for value in PAYLOADS[:4]:
        asked += [
            "/audit?" + urlencode({"dag": value}),
            "/audit/run?" + urlencode({"dag": value, "run": value}),
            "/access/dag?" + urlencode({"deployment": "prod", "dag": value}),
            "/access/principal?" + urlencode({"p": f"airflow:prod/{value}/t"}),
            "/access/resource?" + urlencode({"name": value}),
            "/access/check?"
            + urlencode(
                {
                    "principal": f"airflow:prod/{value}/t",
                    "resource": "orders-api",
                    "action": "read",
                    "object": value,
                }
            ),
            "/live?" + urlencode({"dag": value, "done": "block_dag", "deployment": "prod"}),
            "/live/confirm?" + urlencode({"act": "revoke_run", "dag": value, "run": value}),
            "/policy/suggest?" + urlencode({"dag": value, "since": value}),
        ]
    records = [f"/audit/record/{seq}" for seq in range(1, 4 * len(PAYLOADS) + 1)]
    return [*plain, *asked, *records]


#: pages that list what the trail, the blocks and the sessions hold
SHOWN_AS_TEXT = ("/", "/audit", "/live", "/policy/shadow")
SCAN = """() => {
  const bad = [];
  if (document.contentType !== 'text/html') return bad;  // a plain-text refusal, as sent
  for (const a of document.querySelectorAll('a[href], area[href]')) {
    const href = a.getAttribute('href') || a.getAttribute('xlink:href') || '';
    // this console's own pages only: no scheme, no other host (//host is another host)
    const own = /^(\\/(?!\\/)|#|https?:\\/\\/127\\.0\\.0\\.1[:/])/;
    if (!own.test(href.trim())) bad.push('link ' + href);
  }
  for (const el of document.querySelectorAll('svg a')) {
    const href = el.getAttribute('href') || el.getAttribute('xlink:href') || '';
    if (!href.startsWith('/console/')) bad.push('svg link ' + href);
  }
  for (const el of document.querySelectorAll('*')) {
    for (const at of el.attributes) {
      if (/^on/i.test(at.name)) bad.push('handler ' + el.tagName + ' ' + at.name);
    }
    if (el.hasAttribute('style')) bad.push('style on ' + el.tagName);
  }
  for (const s of document.querySelectorAll('script')) {
    if (!s.src || !s.src.startsWith(location.origin + '/console/static/')) bad.push('script');
  }
  for (const img of document.querySelectorAll('img, iframe, object, embed')) bad.push(img.tagName);
  if (window.__pwned !== undefined) bad.push('ran ' + window.__pwned);
  return bad;
}"""


def test_no_payload_written_to_the_trail_or_the_policy_runs_on_any_page(
    browser: Browser, hostile_console: str
) -> None:
    """Its own browser context (not the ``page`` fixture): a page answered 400 on purpose is
    logged by Chromium as a failed load, which is expected here; every other console error
    (a CSP refusal, an image fetched from a payload) is collected per page."""
    context = browser.new_context(viewport=VIEWPORT)
    page = context.new_page()
    errors: list[str] = []
    dialogs: list[str] = []

    def console_message(message: ConsoleMessage) -> None:
        where = message.location.get("url", "")
        if message.type == "error" and not where.endswith("/favicon.ico"):  # the browser's
            errors.append(f"{message.text} ({where})")

    page.on("console", console_message)
    page.on("pageerror", lambda e: errors.append(f"page error: {e}"))
    page.on("dialog", lambda d: (dialogs.append(d.message), d.dismiss()))
    found: dict[str, list[str]] = {}
    try:
        for path in pages():
            errors.clear()
            answer = page.goto(hostile_console + "/console" + path)
            assert answer is not None and answer.status < 500, path
            for details in page.locator("details").all():  # the charts' tables, folded away
                details.evaluate("d => d.open = true")
            for link in page.locator("svg a").all()[:3]:  # hover: title tooltips, handlers
                link.hover(force=True)
            if path in SHOWN_AS_TEXT:  # the payloads are on the page, as text
                assert PAYLOADS[1] in page.inner_text("body"), path
            bad = page.evaluate(SCAN)
            if JWT in page.content():
                bad.append("a token-shaped string shown")
            status = answer.status
            # a refusal on purpose (a 400 naming the field) is logged as the page's failed load
            itself = f"status of {status} "
            bad += [e for e in errors if not (status >= 400 and itself in e and answer.url in e)]
            if bad:
                found[path] = bad
    finally:
        context.close()
    assert found == {} and dialogs == []
