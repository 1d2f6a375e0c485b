"""The credentials and least-privilege pages in Debian's Chromium, served with the console's
Content Security Policy: no serious or critical axe-core violation, every control named,
no CSP violation (the ``page`` fixture fails on any console error), and a screenshot each.

The pages are served as :mod:`tests.console._views` serves them (signed in without the
sign-in flow, which the browser tests of the whole console cover), with the static files
and a CSP as strict as the console's."""

from __future__ import annotations

from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest
from aiohttp import web

from lockgate.config import load_config
from lockgate.console import views_credentials, views_policy
from lockgate.demo.standins.entra.thread import LoopThread
from tests.console.browser import Shot, axe_violations, describe_violations

from ._views import STATIC, views_app
from .test_views_credentials import context_of as credentials_context
from .test_views_credentials import credentials_state
from .test_views_policy import context_of as policy_context
from .test_views_policy import trail_config

CSP = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; form-action 'self'"
PAGES = {
    "credentials": "/console/credentials",
    "policy": "/console/policy",
    "policy-suggest": "/console/policy/suggest?dag=finance",
    "policy-suggest-pick": "/console/policy/suggest",
    "policy-unused": "/console/policy/unused",
    "policy-shadow": "/console/policy/shadow",
}
UNNAMED = """() => [...document.querySelectorAll('input:not([type=hidden]), select, button')]
  .filter((el) => !(el.labels && el.labels.length) && !el.getAttribute('aria-label')
                  && !(el.tagName === 'BUTTON' && el.textContent.trim()))
  .map((el) => el.outerHTML.slice(0, 120))"""


def _routes(app: web.Application) -> None:
    views_credentials.add_routes(app)
    views_policy.add_routes(app)
    app.router.add_static("/static/", STATIC)

    async def strict(_: web.Request, response: web.StreamResponse) -> None:
        response.headers["Content-Security-Policy"] = CSP

    app.on_response_prepare.append(strict)


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """Both views over one console: the credentials of one directory, the trail and
    policies of another."""
    tmp = tmp_path_factory.mktemp("pages")
    with pytest.MonkeyPatch.context() as env:
        env.delenv("LOCKGATE_MASTER_KEY", raising=False)
        (tmp / "creds").mkdir()
        (tmp / "trail").mkdir()
        st = credentials_state(tmp / "creds")
    ctx = credentials_context(st)
    # the trail is written with asyncio.run: not on the thread Playwright's loop runs on
    with ThreadPoolExecutor(1) as aside:
        trail_path = aside.submit(trail_config, tmp / "trail").result()
    trail = policy_context(load_config(trail_path))
    ctx.audit_reader, ctx.policy = trail.audit_reader, trail.policy
    loop = LoopThread()

    async def start() -> web.AppRunner:
        runner = web.AppRunner(views_app(ctx, _routes))
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", 0).start()
        return runner

    runner = loop.call(start())
    try:
        yield f"http://127.0.0.1:{runner.addresses[0][1]}"
    finally:
        loop.call(runner.cleanup())
        loop.stop()
        st.close()


@pytest.mark.parametrize("name", list(PAGES))
def test_page_is_accessible_under_the_csp(
    name: str, site: str, page: Any, shot: Shot, browser: Any
) -> None:
    answer = page.goto(site + PAGES[name])
    assert answer is not None and answer.status == 200
    assert answer.headers["content-security-policy"] == CSP
    shot(name)
    assert page.locator("h1").count() == 1
    assert page.evaluate(UNNAMED) == []
    violations = axe_violations(browser, page, site + PAGES[name])
    assert not violations, describe_violations(violations)


def test_the_policy_file_scrolls_from_the_keyboard(site: str, page: Any) -> None:
    page.goto(site + PAGES["policy-suggest"])
    page.locator("pre.file").focus()
    assert page.evaluate("() => document.activeElement.tagName") == "PRE"
    outline = page.evaluate("() => getComputedStyle(document.activeElement).outlineStyle")
    assert outline != "none"
