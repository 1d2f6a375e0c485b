"""The overview's charts in Debian's Chromium, under the console's own Content Security
Policy: drawn without a CSP complaint, the bars skipped by the keyboard (the table carries
their links), the table opened from the keyboard, a bar clicked into the audit explorer's
denials of that DAG and window, and no serious axe-core violation.

The overview and the audit explorer are served over a real audit trail in-process
(:func:`tests.console._views.views_app`, signed in as a viewer); the sign-in itself is the
browser tests' of the whole console (tests/console/test_browser_*.py)."""

from __future__ import annotations

import re
import time
from collections.abc import Iterator

import pytest
from aiohttp import web
from playwright.sync_api import Browser, Page, expect

from lockgate.console import auth, views_audit, views_overview
from lockgate.demo.standins.entra.thread import LoopThread
from tests.console._views import STATIC, signed_in, views_app, write_trail
from tests.console.browser import Shot, axe_violations, describe_violations
from tests.console.test_views_overview import console, request

DAG = "finance_daily"


def _routes(app: web.Application) -> None:
    views_overview.add_routes(app)
    views_audit.add_routes(app)
    app.router.add_static("/static/", STATIC, follow_symlinks=False)


async def _csp(request: web.Request, response: web.StreamResponse) -> None:
    response.headers["Content-Security-Policy"] = auth.CSP  # the console's own policy


async def _start(root: web.Application) -> web.AppRunner:
    root.on_response_prepare.append(_csp)
    runner = web.AppRunner(root)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    return runner


@pytest.fixture(scope="module")
def overview_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The overview over a trail of two DAGs, finance_daily denied five times an hour ago."""
    db = tmp_path_factory.mktemp("overview") / "audit.db"
    trail = [request("allowed", DAG, ago=3600 + i) for i in range(20)]
    trail += [request("denied", DAG, ago=3700) for _ in range(5)]  # one bar holds them all
    trail += [request("allowed", "marketing_hourly", ago=600 + i) for i in range(8)]
    write_trail(db, trail)
    loop = LoopThread()
    runner = loop.serve(_start(views_app(console(db), _routes, signed_in("viewer"))))
    port = runner.addresses[0][1]
    try:
        yield f"http://127.0.0.1:{port}/console/"
    finally:
        loop.stop()


def test_the_charts_draw_under_the_csp_and_a_bar_opens_its_denials(
    overview_url: str, page: Page, shot: Shot
) -> None:
    page.goto(overview_url)
    chart = page.locator("#chart-all svg")
    expect(chart).to_be_visible()
    box = chart.bounding_box()
    assert box is not None and box["width"] > 600 and box["height"] > 150
    expect(page.locator("#chart-all [role=img]")).to_have_attribute(
        "aria-label", re.compile(r"33 requests: 5 denied, 0 throttled, 0 upstream errors")
    )
    denied = page.locator("#chart-all svg rect.seg-denied")
    expect(denied).to_have_count(1)
    red = denied.evaluate("e => getComputedStyle(e).fill")
    assert red == "rgb(192, 57, 43)"  # charts.css applied: no inline style needed
    shot("overview")

    # the keyboard goes from the window selector past the bars to the table's disclosure
    page.get_by_role("link", name="Last 7 days").focus()
    for _ in range(12):
        page.keyboard.press("Tab")
        focused = page.evaluate("document.activeElement.closest('svg') !== null")
        assert not focused, "a bar took the keyboard's focus"
        if page.evaluate("document.activeElement.tagName") == "SUMMARY":
            break
    else:
        pytest.fail("Tab never reached a chart's 'Show as table'")
    page.keyboard.press("Enter")
    table = page.locator("details[open] table").first
    expect(table).to_be_visible()
    shot("table")

    page.locator("#chart-dag-0 a.bar").first.click()
    expect(page).to_have_url(re.compile(r"/console/audit\?dag=finance_daily&since=.*decision=deny"))
    rows = page.locator("table.data tbody tr")
    expect(rows).to_have_count(5)
    expect(rows.first).to_contain_text("deny")
    shot("audit")


def test_the_overview_has_no_serious_accessibility_violation(
    overview_url: str, browser: Browser, page: Page
) -> None:
    page.goto(overview_url + "?window=7d")
    found = axe_violations(browser, page, page.url)
    assert not found, describe_violations(found)


def test_the_overview_loads_quickly_enough_to_be_the_home_page(
    overview_url: str, page: Page
) -> None:
    started = time.perf_counter()
    page.goto(overview_url + "?window=30d")
    expect(page.get_by_role("heading", level=1, name="Overview")).to_be_visible()
    assert time.perf_counter() - started < 5.0
