"""The console's least-privilege pages over records written by the real AuditLog: the
suggestion (its downloads are byte for byte what ``lockgate policy suggest --out`` writes),
unused grants, shadow disagreements grouped with links into the audit explorer, the DAG
list, bad windows, and the read bound."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from lockgate.audit import AuditReader, AuditRecord
from lockgate.cli import main
from lockgate.config import LockgateConfig, load_config
from lockgate.console import views_policy
from lockgate.console.reads import READS, Reads
from lockgate.console.views_policy import Reading, add_routes, bounded
from lockgate.console.web import ConsoleContext
from lockgate.policy import PolicyStore
from tests.test_cli_policy_usage import BROAD, record, write_records

from ._views import signed_in, views_app

SHADOW = {
    "mode": "shadow",
    "rules": [
        {"id": "tight", "effect": "allow", "principals": ["airflow:prod/finance/load"],
         "actions": ["read"], "resources": ["orders-api"], "objects": ["/orders/*"]},
    ],
}  # fmt: skip


def would_deny(task: str, obj: str) -> AuditRecord:
    verdict = {"decision": "deny", "rule": None, "reason": "no rule matches"}
    return record(task, obj, detail={"shadow": verdict})


RECORDS = [
    *(record("load", f"/orders/{i}") for i in range(3)),
    record("load", "/orders/1", "allowed", detail={"ref": "x", "status": 200}),
    record("load", "/admin", "denied", decision="deny", rule=None),
    record("report", "/summary"),
    record("load", "/old", ts=1.0),
    would_deny("report", "/summary"),
    would_deny("report", "/summary"),
    record("other", "/x", dag_id="ingest", principal="airflow:prod/ingest/other",
           detail={"shadow": {"decision": "allow", "rule": "tight", "reason": "allowed"}},
           event="denied", decision="deny", rule=None),
    record("other", "/y", "allowed", dag_id="ingest", principal="airflow:prod/ingest/other"),
]  # fmt: skip


def trail_config(tmp_path: Path) -> Path:
    """A configuration over :data:`BROAD` and :data:`SHADOW` with :data:`RECORDS` written."""
    (tmp_path / "policies").mkdir()
    (tmp_path / "policies" / "broad.yaml").write_text(yaml.safe_dump(BROAD))
    (tmp_path / "policies" / "tight.yaml").write_text(yaml.safe_dump(SHADOW))
    path = tmp_path / "lockgate.yaml"
    path.write_text(
        yaml.safe_dump({"data_dir": str(tmp_path / "data"), "policies": ["policies/*.yaml"]})
    )
    (tmp_path / "data").mkdir()
    write_records(tmp_path / "data" / "audit.db", RECORDS)
    return path


@pytest.fixture
def config_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.delenv("LOCKGATE_CONFIG", raising=False)
    return trail_config(tmp_path)


def context_of(cfg: LockgateConfig) -> ConsoleContext:
    def unused(*_: object) -> Any:
        raise AssertionError("the least-privilege pages touch no store")

    return ConsoleContext(
        config=cfg,
        audit_reader=lambda: AuditReader(cfg.data_dir / "audit.db"),
        audit=None,
        policy=PolicyStore(cfg.policy_files),
        revocations=unused,  # type: ignore[arg-type]
        credentials=unused,  # type: ignore[arg-type]
        database=unused,
    )


@pytest.fixture
async def client(config_path: Path) -> AsyncIterator[TestClient]:  # type: ignore[type-arg]
    app = views_app(context_of(load_config(config_path)), add_routes, signed_in("viewer"))
    async with TestClient(TestServer(app)) as c:
        yield c


async def page(client: TestClient, url: str, status: int = 200) -> str:  # type: ignore[type-arg]
    resp = await client.get(url)
    text = await resp.text()
    assert resp.status == status, text
    return text


async def test_suggest_page_and_downloads_match_the_cli(
    client: TestClient,  # type: ignore[type-arg]
    config_path: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    html = await page(client, "/console/policy/suggest?dag=finance&since=30d")
    assert "suggested-finance-1" in html and "/orders/*" in html
    assert "Asked but denied (1)" in html and "/admin" in html
    assert "read 8 records" in html  # the finance rows of the window; /old is older
    assert 'href="/console/policy/suggest.yaml?dag=finance&amp;since=30d"' in html
    out = tmp_path / "out"
    assert main(["-c", str(config_path), "policy", "suggest", "--dag", "finance", "--out",
                 str(out)]) == 0  # fmt: skip
    capsys.readouterr()
    resp = await client.get("/console/policy/suggest.yaml?dag=finance&since=30d")
    assert resp.status == 200
    assert resp.headers["Content-Disposition"] == 'attachment; filename="suggested-finance.yaml"'
    assert await resp.text() == (out / "suggested-finance.yaml").read_text()
    resp = await client.get("/console/policy/suggest-tests.yaml?dag=finance&since=30d")
    assert resp.headers["Content-Disposition"].endswith('filename="suggested-finance.tests.yaml"')
    assert await resp.text() == (out / "suggested-finance.tests.yaml").read_text()


async def test_suggest_without_a_dag_offers_the_dags_of_the_trail(client: TestClient) -> None:  # type: ignore[type-arg]
    html = await page(client, "/console/policy/suggest")
    assert '<option value="finance">' in html and '<option value="ingest">' in html
    assert (await client.get("/console/policy/suggest.yaml")).status == 400


async def test_overview_lists_dags_and_the_shadow_state(client: TestClient) -> None:  # type: ignore[type-arg]
    html = await page(client, "/console/policy")
    assert 'href="/console/policy/suggest?dag=finance&amp;since=30d"' in html
    assert "shadow set loaded" in html and 'href="/console/policy/unused?since=30d"' in html


async def test_unused_names_the_grant_nobody_used_and_who_could(client: TestClient) -> None:  # type: ignore[type-arg]
    html = await page(client, "/console/policy/unused?since=30d")
    assert "1 of 2 allow rules never used since 30d" in html
    never = html.split("<code>never-used</code>", 1)[1].split("</tr>", 1)[0]
    assert "never used" in never and "airflow:prod/finance/load" in never


async def test_shadow_disagreements_grouped_with_links_to_the_explorer(
    client: TestClient,  # type: ignore[type-arg]
) -> None:
    html = await page(client, "/console/policy/shadow?since=30d")
    assert "3 records where the shadow policy decides otherwise" in html
    assert "A shadow set is loaded (3 rules" in html
    rows = html.split("<tbody>", 1)[1].split("</tr>")
    assert "finance" in rows[0] and "would deny" in rows[0] and ">2</a>" in rows[0]
    assert "ingest" in rows[1] and "would allow" in rows[1] and "<code>tight</code>" in rows[1]
    assert 'href="/console/audit?shadow=1&amp;dag=finance&amp;since=' in html


async def test_a_bad_window_is_said_not_raised(client: TestClient) -> None:  # type: ignore[type-arg]
    for url in (
        "/console/policy/suggest?dag=finance&since=yesterday",
        "/console/policy/unused?since=yesterday",
        "/console/policy/shadow?since=x",
    ):
        assert "bad since" in await page(client, url, 400)
    assert (await client.get("/console/policy/suggest.yaml?dag=f&since=x")).status == 400


async def test_a_read_cut_short_is_said_and_never_downloaded(
    client: TestClient,  # type: ignore[type-arg]
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(views_policy, "READ_ROWS", 4)
    html = await page(client, "/console/policy/suggest?dag=finance")
    assert "read 4 records" in html and "stopped at 4 records" in html
    resp = await client.get("/console/policy/suggest.yaml?dag=finance")
    assert resp.status == 503 and "lockgate policy suggest --dag finance" in await resp.text()


def test_bounded_counts_what_it_read() -> None:
    # what AuditReader.usage_rows yields: plain mappings of the fields suggest/usage read
    rows = [{"event": "admitted", "ts": float(i), "dag_id": "d"} for i in range(10)]
    reading = Reading(None)
    got = list(bounded(rows, reading, seconds=60, most=3))
    assert [r["ts"] for r in got] == [0.0, 1.0, 2.0] and reading.rows == 3
    assert got[0].get("dag_id") == "d" and got[0].get("nope") is None and "event" in got[0]
    assert (reading.first, reading.last, reading.stopped) == (0.0, 2.0, "stopped at 3 records")


async def test_a_broken_shadow_file_is_named_and_enforcement_goes_on(
    config_path: Path,
) -> None:
    (config_path.parent / "policies" / "tight.yaml").write_text("mode: shadow\nrules: [oops\n")
    cfg = load_config(config_path)
    app = views_app(context_of(cfg), add_routes, signed_in("viewer"))
    async with TestClient(TestServer(app)) as c:
        html = await page(c, "/console/policy/shadow?since=30d")
        assert "The shadow policy is not loaded (enforcement is unchanged)" in html
        assert "tight.yaml" in html
        assert "shadow set not loaded" in await page(c, "/console/policy")
        # the enforced set still decides: one rule of two never used, as before
        assert "1 of 2 allow rules never used" in await page(c, "/console/policy/unused")


async def test_reads_run_in_their_own_pool_and_beyond_it_are_told_to_retry() -> None:
    # the pages read on the console's shared pool (lockgate.console.reads): installed once
    app = web.Application()
    add_routes(app)
    assert isinstance(app[READS], Reads)
    reads = Reads(readers=1, wait=0.05, retry_after=30)
    started, release = threading.Event(), threading.Event()

    def slow() -> str:
        started.set()
        release.wait(10)
        return threading.current_thread().name

    first = asyncio.ensure_future(reads.run(slow))
    assert await asyncio.to_thread(started.wait, 10)
    with pytest.raises(web.HTTPServiceUnavailable) as refused:
        await reads.run(slow)
    assert refused.value.headers["Retry-After"] == "30"
    release.set()
    assert (await first).startswith("console-read")  # never the default executor
    assert reads.running == 0
    await reads.close()


def test_a_closing_console_stops_a_read() -> None:
    closing = threading.Event()
    closing.set()
    reading = Reading(None)
    rows = [{"event": "admitted", "ts": float(i)} for i in range(5000)]
    assert list(bounded(rows, reading, seconds=60, most=10**6, stop=closing)) == []
    assert reading.stopped == "stopped: the console is closing"
