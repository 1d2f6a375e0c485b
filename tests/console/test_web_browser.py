"""Shared page parts, in Chromium: a DAG id holding a right-to-left override is shown as
its code point (``<U+202E>``) in the audit table's text while the links built from it
filter on the exact id; every page names its own icon (no request for /favicon.ico)."""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import parse_qs, urlsplit

import pytest
from aiohttp import web

from lockgate.audit import AuditRecord
from lockgate.console import views_audit
from lockgate.demo.standins.entra.thread import LoopThread
from tests.console._views import STATIC, signed_in, trail_context, views_app, write_trail

if TYPE_CHECKING:
    from playwright.sync_api import Page, Request

#: a DAG id whose override would turn the rest of its cell (and any sentence) around
TURNED = "fin\u202eecnan"
SHOWN = "fin<U+202E>ecnan"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="module")
def audit_site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The audit explorer over a trail with that DAG id and an ordinary one; its base URL."""
    db: Path = tmp_path_factory.mktemp("shown") / "audit.db"
    now = time.time()
    write_trail(db, [
        AuditRecord(event="denied", ts=now - 60 + i, deployment="prod", dag_id=dag,
                    run_id=f"run-{i}", task_id="load", try_number=1, resource="orders-api",
                    action="read", object="/orders", decision="deny",
                    reason="no rule matches", principal=f"airflow:prod/{dag}/load")
        for i, dag in enumerate((TURNED, "plain"))
    ])  # fmt: skip

    def routes(app: web.Application) -> None:
        views_audit.add_routes(app)
        app.router.add_static("/static/", STATIC)

    root = views_app(trail_context(db), routes, signed_in("viewer"))
    port = _free_port()

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


def test_an_override_in_a_dag_id_is_shown_as_its_code_point_and_links_keep_the_id(
    page: Page, audit_site: str
) -> None:
    page.goto(audit_site + "/console/audit")
    row = page.locator("table.audit-rows tbody tr", has_text="run-0")
    cell = row.locator("td").last
    assert SHOWN in cell.inner_text()
    assert "\u202e" not in page.inner_text("main")  # no override left anywhere in the text
    link = cell.get_by_role("link")
    href = link.get_attribute("href") or ""
    assert parse_qs(urlsplit(href).query)["dag"] == [TURNED]  # the exact id, not its picture

    link.click()  # the run's timeline: found by the exact id
    page.wait_for_url("**/console/audit/run?**")
    assert SHOWN in page.locator("h1").inner_text()
    assert "No record of this run" not in page.inner_text("main")

    page.goto(audit_site + "/console/audit?" + f"dag={TURNED}")  # the filter: exact id
    assert page.locator("table.audit-rows tbody tr").count() == 1
    assert page.locator("#f-dag").input_value() == TURNED  # the form keeps the id itself


def test_every_page_names_its_icon_and_the_browser_asks_no_favicon_ico(
    page: Page, audit_site: str
) -> None:
    asked: list[str] = []

    def request(r: Request) -> None:
        asked.append(urlsplit(r.url).path)

    page.on("request", request)
    page.goto(audit_site + "/console/audit", wait_until="networkidle")
    icon = page.locator('link[rel="icon"]').get_attribute("href")
    assert icon == "/console/static/favicon.svg"
    answer = page.request.get(audit_site + icon)
    assert answer.status == 200 and answer.headers["content-type"].startswith("image/svg+xml")
    assert "/favicon.ico" not in asked
