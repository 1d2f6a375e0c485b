"""The console's overview page over a real audit trail (records written by AuditLog): totals,
the charts, the DAGs and resources denied most, the newest denials, the window selector,
the live sessions count, escaping of what pipelines named themselves, and viewers' access."""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Callable
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

from lockgate.audit import AuditQuery, AuditReader, AuditRecord, HistogramBucket
from lockgate.console import views_audit, views_overview
from lockgate.console.web import CSRF_HEADER, ConsoleContext, OpenSession
from lockgate.errors import StoreUnavailable
from tests.console._views import (
    CSRF_TOKEN,
    page_server,
    serving,
    signed_in,
    trail_context,
    write_trail,
)

NOW = time.time()


def request(
    event: str, dag: str | None, *, ago: float = 60.0, resource: str = "orders-api", **kw: Any
) -> AuditRecord:
    decision = {"allowed": "allow", "upstream_error": "allow", "admitted": "allow"}.get(event)
    return AuditRecord(
        event=event,
        ts=NOW - ago,
        deployment="prod",
        dag_id=dag,
        task_id="load",
        run_id="run-1",
        try_number=1,
        principal=f"airflow:prod/{dag}/load",
        resource=resource,
        action="read",
        object="/orders/1",
        decision=decision or ("deny" if event in ("denied", "throttled") else None),
        reason="no rule matches" if event == "denied" else None,
        **kw,
    )


class Live:
    def __init__(self, kinds: list[str] | None) -> None:
        self.kinds = kinds  # None: the shared registry is down

    def open_sessions(self) -> list[OpenSession]:
        if self.kinds is None:
            raise StoreUnavailable("live sessions (postgresql://db/lockgate): refused")
        return [
            OpenSession(kind, "db", "p", "prod", "etl", "r", "t", 1, "j", NOW, "1.2.3.4", "a/0")
            for kind in self.kinds
        ]


def console(db: Path, live: Live | None = None) -> ConsoleContext:
    """Only the trail (and the live sessions) are the overview's; the rest is never used."""
    return trail_context(db, live=live)


serve = pytest.fixture(page_server(views_overview.add_routes))


class Page(HTMLParser):
    """The parts of the page the tests read: text per element id, links, tables' captions."""

    def __init__(self, html: str) -> None:
        super().__init__()
        self.links: list[str] = []
        self.captions: list[str] = []
        self.figures = 0
        self._caption = False
        self.text: list[str] = []
        self.feed(html)

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = dict(attrs)
        if tag == "a" and a.get("href"):
            self.links.append(a["href"] or "")
        if tag == "figure":
            self.figures += 1
        self._caption = tag == "caption"

    def handle_endtag(self, tag: str) -> None:
        if tag == "caption":
            self._caption = False

    def handle_data(self, data: str) -> None:
        if self._caption:
            self.captions.append(data)
        self.text.append(data)

    @property
    def words(self) -> str:
        return " ".join(" ".join(self.text).split())


TRAIL = [
    *[request("allowed", "finance", ago=120 + i) for i in range(30)],
    *[request("denied", "finance", ago=300 + i, resource="warehouse") for i in range(4)],
    *[request("throttled", "finance", ago=400) for _ in range(2)],
    *[request("upstream_error", "marketing", ago=500)],
    *[request("denied", "marketing", ago=600 + i) for i in range(7)],
    request("admitted", "finance", ago=130),  # an outcome follows: not counted twice
    AuditRecord(event="token_issued", ts=NOW - 700, dag_id="finance", decision="allow"),
    AuditRecord(event="token_issued", ts=NOW - 710, dag_id="marketing", decision="allow"),
    request("denied", "finance", ago=3 * 86400),  # outside the last 24 hours
]


async def test_the_overview_counts_the_trail_and_links_every_number(
    tmp_path: Path, serve: Callable[..., Any]
) -> None:
    write_trail(tmp_path / "audit.db", TRAIL)
    get = await serve(console(tmp_path / "audit.db"))
    status, html = await get("/console/")
    assert status == 200
    page = Page(html)
    words = page.words
    assert "Requests 44" in words and "Denials 11" in words and "Throttled 2" in words
    assert "DAGs 2" in words and "Tokens issued 2" in words and "Upstream errors 1" in words
    assert "Sessions open now" not in words  # the gateway keeps no live sessions here
    assert page.figures == 3  # every DAG, then finance and marketing
    assert "finance" in words and "marketing" in words
    # denied most: marketing (7) before finance (4); resources: orders-api (7), warehouse (4)
    assert words.index("marketing 7") < words.index("finance 4")
    assert words.index("orders-api 7") < words.index("warehouse 4")
    assert any("dag=marketing" in h and "decision=deny" in h for h in page.links)
    assert any("resource=warehouse" in h and "decision=deny" in h for h in page.links)
    assert any(h.startswith("/console/audit/record/") for h in page.links)
    assert any(h == "/console/audit/run?dag=finance&run=run-1" for h in page.links)
    assert "Chain" not in words  # no audit explorer served here: no verification to show
    assert sum("The 10 newest denied requests" in c for c in page.captions) == 1
    assert "style=" not in html and "<script" not in html
    assert '<link rel="stylesheet" href="/console/static/charts.css">' in html


async def test_the_window_selector_changes_the_window_and_ignores_unknown_ones(
    tmp_path: Path, serve: Callable[..., Any]
) -> None:
    write_trail(tmp_path / "audit.db", TRAIL)
    get = await serve(console(tmp_path / "audit.db"))
    _, week = await get("/console/?window=7d")
    assert "Denials 12" in Page(week).words  # the one three days ago is in the week
    assert 'href="/console/?window=7d" aria-current="page"' in week
    assert "one bar per 4 h" in Page(week).words
    _, odd = await get("/console/?window=%3Cscript%3E")
    assert 'href="/console/?window=24h" aria-current="page"' in odd
    assert "<script" not in odd


async def test_an_empty_trail_says_there_is_nothing_to_show(
    tmp_path: Path, serve: Callable[..., Any]
) -> None:
    get = await serve(console(tmp_path / "audit.db"))  # not even a file yet
    status, html = await get("/console/?window=1h")
    assert status == 200
    words = Page(html).words
    assert "Requests 0" in words and "No requests in this window." in words
    assert "No denials in this window." in words


async def test_what_pipelines_name_themselves_is_text(
    tmp_path: Path, serve: Callable[..., Any]
) -> None:
    evil = "<img src=x onerror=alert(1)>"
    write_trail(tmp_path / "audit.db", [request("denied", evil, resource=evil)])
    get = await serve(console(tmp_path / "audit.db"))
    _, html = await get("/console/")
    assert "<img" not in html
    assert "&lt;img src=x onerror=alert(1)&gt;" in html


async def test_live_sessions_are_counted_when_the_gateway_keeps_them(
    tmp_path: Path, serve: Callable[..., Any]
) -> None:
    get = await serve(console(tmp_path / "audit.db", Live(["cql", "cql", "postgres"])))
    _, html = await get("/console/")
    assert "Sessions open now 3 (2 cql, 1 postgres)" in Page(html).words
    get = await serve(console(tmp_path / "audit.db", Live(None)))
    status, html = await get("/console/")
    assert status == 200
    assert "Sessions open now ? (the session registry cannot be read now)" in Page(html).words


async def test_a_viewer_sees_the_overview(tmp_path: Path, serve: Callable[..., Any]) -> None:
    get = await serve(console(tmp_path / "audit.db"), signed_in("viewer"))
    status, _ = await get("/console/")
    assert status == 200


async def test_the_chain_badge_shows_the_explorer_s_last_verification(tmp_path: Path) -> None:
    write_trail(tmp_path / "audit.db", TRAIL)

    def both(app: web.Application) -> None:
        views_audit.add_routes(app)
        views_overview.add_routes(app)

    async with serving() as start:
        served = await start(console(tmp_path / "audit.db"), both)
        assert "Chain not verified yet" in Page((await served.page("/console/"))[1]).words
        await served.post("/console/audit/verify", headers={CSRF_HEADER: CSRF_TOKEN})
        words = Page((await served.page("/console/"))[1]).words
        assert f"Chain verified {len(TRAIL)} records" in words


class Unreachable(AuditReader):
    """A reader of a shared trail that is down."""

    def histogram(self, q: AuditQuery, *, bucket: float) -> list[HistogramBucket]:
        raise StoreUnavailable("shared trail (postgresql://db/lockgate): connection refused")


async def test_an_unreachable_trail_is_a_503_that_says_so(
    tmp_path: Path, serve: Callable[..., Any]
) -> None:
    ctx = console(tmp_path / "audit.db")
    ctx.audit_reader = lambda: Unreachable(tmp_path / "audit.db")
    get = await serve(ctx)
    status, html = await get("/console/?window=7d")
    assert status == 503
    words = Page(html).words
    assert "The audit trail cannot be read now: shared trail" in words
    assert 'href="/console/?window=7d" aria-current="page"' in html  # still a page to leave


class Counting(AuditReader):
    """A reader that notes the windows its histograms and counts read."""

    asked: list[tuple[str, float | None, float | None]]

    def histogram(self, q: AuditQuery, *, bucket: float) -> list[HistogramBucket]:
        self.asked.append(("histogram", q.since, q.until))
        return super().histogram(q, bucket=bucket)

    def count(self, q: AuditQuery) -> int:
        self.asked.append(("count", q.since, q.until))
        return super().count(q)


def test_settled_buckets_are_read_once_and_the_rest_every_time(tmp_path: Path) -> None:
    bucket, now = 120.0, 1_800_000_000.0  # a multiple of the bucket
    since = now - 6 * 3600
    trail = [
        dataclasses.replace(record, ts=now - 3600 * h - 1)
        for h in range(6)
        for record in (request("allowed", "etl"), AuditRecord(event="token_issued"))
    ]
    write_trail(tmp_path / "audit.db", trail)
    reader = Counting(tmp_path / "audit.db")
    reader.asked = []
    cache = views_overview.HistogramCache()

    def direct(start: float) -> tuple[list[HistogramBucket], int]:
        window = AuditQuery(since=start)
        tokens = reader.count(dataclasses.replace(window, event="token_issued"))
        return reader.histogram(window, bucket=bucket), tokens

    whole = direct(since)
    assert whole[1] == 6
    reader.asked.clear()
    assert cache.read(reader, since, bucket, now) == whole
    settled = math.floor((now - views_overview.SETTLE) / bucket) * bucket
    assert reader.asked[0] == ("histogram", since, settled)
    assert reader.asked[-2:] == [("count", settled, None), ("histogram", settled, None)]
    reader.asked.clear()

    later = now + 2 * bucket  # two more buckets settle; the window moves on with them
    assert cache.read(reader, since + 2 * bucket, bucket, later) == direct(since + 2 * bucket)
    assert reader.asked[:4] == [
        ("histogram", settled, settled + 2 * bucket),
        ("count", settled, settled + bucket),
        ("count", settled + bucket, settled + 2 * bucket),
        ("count", settled + 2 * bucket, None),
    ]
    reader.asked.clear()

    # a record shipped late into a settled bucket shows up when the cache is rebuilt
    write_trail(tmp_path / "audit.db", [dataclasses.replace(trail[0], ts=now - 2 * 3600)])
    rebuilt = later + views_overview.REBUILD + 1
    start = since + 2 * bucket
    assert cache.read(reader, start, bucket, rebuilt) == direct(start)
    assert reader.asked[0] == ("histogram", start, math.floor((rebuilt - 300) / bucket) * bucket)
