"""Driving the console in a real browser: Debian's Chromium under Playwright, in front of a
real ``lockgate serve``.

- :func:`browser` (module scope): headless Chromium launched from
  ``$CHROMIUM`` or ``chromium`` on the PATH (Playwright's own browser download is never
  used). Without Playwright or Chromium the tests skip, naming what is missing -- unless
  ``CI`` is set, where they fail (CI cannot pass by skipping the console's tests), as the
  PostgreSQL fixtures do.
- :func:`page`: a fresh browser context (1280x800, no shared cookies) per test. Every
  console message of type error and every uncaught page error is collected; the test fails
  on any at teardown (a Content-Security-Policy violation is logged as a console error, so a
  page that needs an inline script or style fails here).
- :func:`shot`: ``shot("step")`` saves a full-page screenshot of :func:`page` to
  ``<artifacts>/console/<test>/<nn>-<step>.png``, artifacts being ``$LOCKGATE_ARTIFACTS`` or
  ``./test-artifacts``; with ``LOCKGATE_DOCS_SCREENSHOTS=1`` :func:`docs_shot` also writes the
  docs' pictures under ``docs/console/``.
- :func:`axe_violations`: axe-core (``tests/node``) run on a page in a context of its own
  that bypasses the CSP (axe is injected as a script; the console itself is never checked
  with its CSP off), with the signed-in cookies copied over.

Playwright's sync API runs an event loop of its own: use these fixtures from plain (sync)
tests, in modules without asyncio tests.
"""

from __future__ import annotations

import os
import re
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

if TYPE_CHECKING:
    from playwright.sync_api import Browser, ConsoleMessage, Page, ViewportSize

REPO = Path(__file__).resolve().parents[2]
AXE_SCRIPT = REPO / "tests" / "node" / "node_modules" / "axe-core" / "axe.min.js"
DOCS_DIR = REPO / "docs" / "console"
VIEWPORT: ViewportSize = {"width": 1280, "height": 800}
CHROMIUM_ARGS = [
    "--no-sandbox",  # root in a container: Chromium's sandbox needs user namespaces
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-dev-shm-usage",
]


def missing(reason: str) -> None:
    """Skip, naming what is missing; under CI fail instead."""
    if os.environ.get("CI"):
        pytest.fail(f"CI: {reason}")
    pytest.skip(reason)


def chromium_executable() -> str | None:
    """``$CHROMIUM`` when it names an executable, else ``chromium`` on the PATH."""
    named = os.environ.get("CHROMIUM")
    if named and os.access(named, os.X_OK):
        return named
    return shutil.which("chromium")


def artifacts_dir() -> Path:
    return Path(os.environ.get("LOCKGATE_ARTIFACTS") or "test-artifacts") / "console"


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    """Headless Debian Chromium under Playwright, one per test module: Playwright's sync
    API holds an event loop of its own while it runs, and an asyncio test run after it in
    the same process (pytest-asyncio) could not start its loop."""
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        missing("the playwright Python package is not installed (pip install -e '.[test]')")
        raise  # unreachable: missing() skips or fails
    executable = chromium_executable()
    if executable is None:
        missing("Chromium is not installed (tests/setup-system.sh installs Debian's chromium)")
        raise AssertionError("unreachable")
    driver = sync_playwright().start()
    try:
        launched = driver.chromium.launch(
            executable_path=executable, args=CHROMIUM_ARGS, headless=True
        )
        try:
            yield launched
        finally:
            launched.close()
    finally:
        driver.stop()


def _test_dir(node: pytest.Item) -> Path:
    name = re.sub(r"[^A-Za-z0-9_.-]+", "_", node.name)
    return artifacts_dir() / name


#: set by ``tests/console/conftest.py`` when a test's call phase passed
CALL_PASSED = pytest.StashKey[bool]()


@pytest.fixture
def page(browser: Browser, request: pytest.FixtureRequest) -> Iterator[Page]:
    """A page in a fresh context; a test that passed fails on any console error or page
    error seen meanwhile (a test that failed already says what went wrong first, and leaves
    ``failed.png``, the page as it was, among its artifacts)."""
    context = browser.new_context(viewport=VIEWPORT)
    context.set_default_timeout(15_000)
    opened = context.new_page()
    errors: list[str] = []

    def console_message(message: ConsoleMessage) -> None:
        where = message.location.get("url", "")
        # the browser's own favicon request is not the page's
        if message.type == "error" and not where.endswith("/favicon.ico"):
            errors.append(f"{message.text} ({where})")

    opened.on("console", console_message)
    opened.on("pageerror", lambda error: errors.append(f"page error: {error}"))
    try:
        yield opened
        if request.node.stash.get(CALL_PASSED, None) is False and not opened.is_closed():
            failed = _test_dir(request.node) / "failed.png"
            failed.parent.mkdir(parents=True, exist_ok=True)
            opened.screenshot(path=str(failed), full_page=True)
    finally:
        context.close()
    if request.node.stash.get(CALL_PASSED, False):
        assert not errors, "the browser reported errors:\n" + "\n".join(errors)


class Shot:
    """``shot("step")`` saves a full-page screenshot of the test's page (or of ``of``) as
    ``<nn>-<step>.png`` in the test's artifacts directory."""

    def __init__(self, page: Page, directory: Path) -> None:
        self.page = page
        self.directory = directory
        self.taken = 0

    def __call__(self, step: str, of: Page | None = None) -> Path:
        self.taken += 1
        path = self.directory / f"{self.taken:02d}-{step}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        (of or self.page).screenshot(path=str(path), full_page=True)
        return path


@pytest.fixture
def shot(page: Page, request: pytest.FixtureRequest) -> Shot:
    """Screenshots of ``page`` saved as the test's artifacts (see :class:`Shot`)."""
    directory = _test_dir(request.node)
    shutil.rmtree(directory, ignore_errors=True)
    return Shot(page, directory)


def docs_shot(page: Page, name: str) -> None:
    """Save the docs' picture ``docs/console/<name>.png`` (viewport, 1280x800) when
    ``LOCKGATE_DOCS_SCREENSHOTS=1``; otherwise nothing."""
    if os.environ.get("LOCKGATE_DOCS_SCREENSHOTS") != "1":
        return
    DOCS_DIR.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(DOCS_DIR / f"{name}.png"))


def axe_violations(browser: Browser, signed_in: Page, url: str) -> list[dict[str, Any]]:
    """axe-core's serious and critical violations on ``url``, seen with ``signed_in``'s
    cookies in a context that bypasses the CSP (only so axe can be injected)."""
    if not AXE_SCRIPT.exists():
        missing(f"axe-core is not installed ({AXE_SCRIPT}; npm install --prefix tests/node)")
    context = browser.new_context(
        viewport=VIEWPORT,
        bypass_csp=True,
        storage_state=signed_in.context.storage_state(),
    )
    try:
        checked = context.new_page()
        checked.goto(url)
        checked.add_script_tag(path=str(AXE_SCRIPT))
        result: dict[str, Any] = checked.evaluate(
            "async () => await axe.run(document, {resultTypes: ['violations']})"
        )
    finally:
        context.close()
    return [v for v in result["violations"] if v.get("impact") in ("serious", "critical")]


def describe_violations(violations: list[dict[str, Any]]) -> str:
    """One line per violation: its rule, impact and the first offending elements."""
    lines = []
    for v in violations:
        targets = [str(node.get("target")) for node in v.get("nodes", [])[:3]]
        lines.append(f"{v['id']} ({v['impact']}): {v['help']} at {', '.join(targets)}")
    return "\n".join(lines)
