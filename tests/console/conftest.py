"""The browser fixtures (:mod:`tests.console.browser`) and the console they drive
(:mod:`tests.console.browser_gateway`) for the console's tests."""

from __future__ import annotations

from collections.abc import Generator

import pytest

from tests.console.browser import CALL_PASSED, browser, page, shot
from tests.console.browser_gateway import console_site

__all__ = ["browser", "console_site", "page", "shot"]


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    """Note whether the test itself passed, for the page fixture's check of browser errors."""
    report = yield
    if report.when == "call":
        item.stash[CALL_PASSED] = report.passed
    return report
