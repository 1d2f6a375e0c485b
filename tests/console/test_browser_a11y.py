"""Accessibility basics of every console page, in Debian's Chromium: one h1, landmarks,
every form control named, tables captioned with scoped headers, the keyboard path from the
top (skip link, then the sections), focus visible, and no serious or critical axe-core
violation (axe injected in a context of its own that bypasses the CSP)."""

from __future__ import annotations

import re
from typing import Any

import pytest
from playwright.sync_api import Browser, Page, expect

from tests.console.browser import Shot, axe_violations, describe_violations, docs_shot
from tests.console.browser_gateway import OPERATOR, Console, sign_in

PAGES = {
    "home": "/",
    "audit": "/audit",
    "access": "/access",
    "live": "/live",
    "credentials": "/credentials",
    "policy": "/policy",
    "suggest": "/policy/suggest?dag=finance_daily",
    "unused": "/policy/unused",
    "shadow": "/policy/shadow",
    "access-resource": "/access/resource?name=orders-api",
    "access-check": "/access/check",
    "audit-denials": "/audit?decision=deny",
}

# Every visible form control without an accessible name, and every data table without a
# caption/aria-label or with a header cell lacking scope.
UNNAMED = """() => {
  const named = (el) => (el.labels && el.labels.length > 0) || el.getAttribute('aria-label')
    || el.getAttribute('aria-labelledby') || el.getAttribute('title')
    || (el.tagName === 'BUTTON' && el.textContent.trim());
  const controls = [...document.querySelectorAll(
    'input:not([type=hidden]), select, textarea, button')];
  const bad = controls.filter((el) => !named(el)).map((el) => el.outerHTML.slice(0, 120));
  for (const table of document.querySelectorAll('table')) {
    if (!table.querySelector('caption') && !table.getAttribute('aria-label')
        && !table.getAttribute('aria-labelledby')) bad.push('table without caption');
    for (const th of table.querySelectorAll('th'))
      if (!th.getAttribute('scope')) bad.push('th without scope: ' + th.textContent.trim());
  }
  return bad;
}"""

FOCUS = """() => {
  const el = document.activeElement;
  const style = getComputedStyle(el);
  return {tag: el.tagName, text: (el.textContent || '').trim(), id: el.id,
          inNav: !!el.closest('nav'),
          visible: (style.outlineStyle !== 'none' && parseFloat(style.outlineWidth) > 0)
                   || style.boxShadow !== 'none'};
}"""


@pytest.fixture(scope="module")
def operator_cookies(browser: Browser, console_site: Console) -> list[Any]:
    """Olivia's (operator) console cookies, signed in once for the module."""
    context = browser.new_context()
    try:
        signing_in = context.new_page()
        sign_in(signing_in, console_site, OPERATOR)
        return list(context.cookies())
    finally:
        context.close()


@pytest.mark.parametrize("name", list(PAGES))
def test_page_basics(
    name: str,
    console_site: Console,
    page: Page,
    shot: Shot,
    browser: Browser,
    operator_cookies: list[Any],
) -> None:
    page.context.add_cookies(operator_cookies)
    url = console_site.url + PAGES[name]
    answer = page.goto(url)
    assert answer is not None and answer.status == 200, (url, answer and answer.status)
    shot(name)
    if name in ("credentials",):
        docs_shot(page, name)
    expect(page.get_by_role("heading", level=1)).to_have_count(1)
    expect(page.get_by_role("main")).to_have_count(1)
    expect(page.get_by_role("navigation", name="Sections")).to_have_count(1)
    expect(page.get_by_role("banner")).to_have_count(1)
    assert page.evaluate(UNNAMED) == []
    violations = axe_violations(browser, page, url)
    assert not violations, describe_violations(violations)


def test_keyboard_from_the_top(
    console_site: Console, page: Page, shot: Shot, operator_cookies: list[Any]
) -> None:
    page.context.add_cookies(operator_cookies)
    page.goto(console_site.url + "/")
    page.keyboard.press("Tab")
    focused = page.evaluate(FOCUS)
    assert re.search("skip", focused["text"], re.I), focused
    assert focused["visible"], "the focused skip link shows no focus ring"
    shot("skip-link-focused")
    # then the header: the home link, then the sections
    for _ in range(3):
        page.keyboard.press("Tab")
        focused = page.evaluate(FOCUS)
        assert focused["tag"] == "A" and focused["visible"], focused
        if focused["inNav"]:
            break
    assert focused["inNav"], "Tab from the top does not reach the sections"
    shot("nav-focused")
    # the skip link takes the keyboard to the content
    page.goto(console_site.url + "/")
    page.keyboard.press("Tab")
    page.keyboard.press("Enter")
    assert page.evaluate(FOCUS)["id"] == "main"
