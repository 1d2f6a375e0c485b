"""The browser fixtures (:mod:`tests.console.browser`) for the console's tests."""

from tests.console.browser import browser, page, shot

__all__ = ["browser", "page", "shot"]
