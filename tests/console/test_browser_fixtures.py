"""The browser fixtures themselves: Chromium drives a page, and a Content-Security-Policy
violation is seen as a console error (the console tests fail on any, so a page needing an
inline script or style cannot pass them)."""

from __future__ import annotations

import http.server
import threading
from collections.abc import Iterator

import pytest
from playwright.sync_api import Browser, Page

from tests.console.browser import VIEWPORT, Shot

CSP = "default-src 'none'; script-src 'self'; style-src 'self'"
INLINE = (
    b"<!doctype html><html lang=en><title>t</title>"
    b'<h1 style="color: red">inline</h1><script>document.title = "ran"</script></html>'
)


@pytest.fixture
def strict_site() -> Iterator[str]:
    """A page served with a strict CSP that carries an inline style and an inline script."""

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(200)
            self.send_header("Content-Type", "text/html")
            self.send_header("Content-Security-Policy", CSP)
            self.send_header("Content-Length", str(len(INLINE)))
            self.end_headers()
            self.wfile.write(INLINE)

        def log_message(self, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/"
    finally:
        server.shutdown()
        server.server_close()


def test_a_csp_violation_is_a_console_error(browser: Browser, strict_site: str) -> None:
    context = browser.new_context(viewport=VIEWPORT)
    errors: list[str] = []
    try:
        opened = context.new_page()
        opened.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
        opened.goto(strict_site)
        opened.wait_for_load_state("load")
        assert opened.title() == "t"  # the inline script did not run
    finally:
        context.close()
    assert any("Content Security Policy" in e for e in errors), errors


def test_a_page_and_its_screenshot(page: Page, shot: Shot) -> None:
    page.set_content("<!doctype html><html lang=en><title>ok</title><h1>Lockgate</h1></html>")
    path = shot("blank")
    assert path.exists() and path.stat().st_size > 0
    assert page.viewport_size == {"width": 1280, "height": 800}
