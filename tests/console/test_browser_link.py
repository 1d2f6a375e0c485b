"""The embedded default's way in, in a real browser: ``lockgate serve`` without an OIDC
provider prints a one-time admin link; it signs one person in, once."""

from __future__ import annotations

import re
from collections.abc import Iterator

import pytest
from playwright.sync_api import Browser, Page, expect

from tests._gateway_process import BearerUpstream
from tests.console.browser import VIEWPORT, Shot
from tests.console.browser_gateway import ConsoleGateway, start_gateway


@pytest.fixture(scope="module")
def link_gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ConsoleGateway]:
    upstream = BearerUpstream()
    gateway = start_gateway(tmp_path_factory.mktemp("console-link"), upstream, console={})
    try:
        yield gateway
    finally:
        gateway.stop()
        upstream.stop()


def signed_in(page: Page) -> bool:
    return page.get_by_role("navigation", name="Sections").count() == 1


def test_the_printed_link_signs_in_once(
    link_gateway: ConsoleGateway, page: Page, shot: Shot, browser: Browser
) -> None:
    link = link_gateway.printed_link()
    assert link.startswith(link_gateway.console_url + "/")
    page.goto(link)
    shot("link-confirmation")
    assert not signed_in(page), "opening the link (a prefetch, a scanner) must not sign in"
    page.get_by_role("button").first.click()
    expect(page.get_by_role("navigation", name="Sections")).to_be_visible()
    expect(page.locator(".who")).to_contain_text("admin")
    shot("signed-in")

    # a second browser (no cookies) with the same link: refused
    other = browser.new_context(viewport=VIEWPORT)
    try:
        second = other.new_page()
        second.goto(link)
        buttons = second.get_by_role("button")
        if buttons.count():
            buttons.first.click()
            second.wait_for_load_state("load")
        shot("second-use-refused", of=second)
        assert not signed_in(second), "a used link signed someone in again"
        assert not second.url.rstrip("/").endswith("/console")
    finally:
        other.close()


def test_the_console_asks_for_sign_in(link_gateway: ConsoleGateway, page: Page) -> None:
    """A page asked for without a session sends the browser to the sign-in page, which
    says how to get a link when no OIDC provider is configured."""
    page.goto(link_gateway.console_url + "/audit")
    expect(page).to_have_url(re.compile(r"/console/login\?next=/console/audit$"))
    assert not signed_in(page)
    expect(page.locator("main")).to_contain_text("lockgate console link")
