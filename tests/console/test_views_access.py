"""The access map pages over a real PolicyStore (policy files in tmp_path) and a real audit
trail (records written by AuditLog): a DAG's and a principal's grants with their rule lines,
denies and use, who can reach a resource, one request checked (with the shadow verdict),
escaping, labels, and the questions that cannot be answered."""

from __future__ import annotations

import re
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any, cast

import pytest

from lockgate.audit import AuditReader, AuditRecord
from lockgate.config import LockgateConfig
from lockgate.console import views_access
from lockgate.console.web import ConsoleContext
from lockgate.policy import PolicyStore, cmd_check
from tests.console._views import page_server, signed_in, trail_context, write_trail

NOW = time.time()

TEAM = """\
rules:
  - id: etl-reads-orders
    effect: allow
    principals: ["airflow:prod/etl/*"]
    actions: [read]
    resources: [orders]
    objects: ["/orders/**"]
    description: "ETL reads <orders>"
  - id: etl-writes-orders
    effect: allow
    principals: ["airflow:prod/etl/load"]
    actions: [write]
    resources: [orders]
    objects: ["/orders/*"]
  - id: no-pii
    effect: deny
    principals: ["airflow:prod/*"]
    actions: ["*"]
    resources: [orders]
    objects: ["/orders/pii/*"]
  - id: finance-billing
    effect: allow
    principals: ["airflow:prod/finance_*/*"]
    actions: [read, write]
    resources: [billing]
    conditions:
      time_window: {start: "00:00", end: "23:59"}
"""

SHADOW = """\
mode: shadow
rules:
  - id: etl-reads-orders
    effect: allow
    principals: ["airflow:prod/etl/*"]
    actions: [read]
    resources: [orders]
    objects: ["/orders/open/*"]
"""

CONFIG = {
    "deployments": [{"name": "prod", "dags": ["etl", "finance_*"]}],
    "oidc_issuers": [{"issuer": "https://k8s.example", "audience": "lockgate",
                      "deployment": "prod", "jwks_uri": "https://k8s.example/jwks"}],
    "resources": [{"name": "orders", "kind": "http", "upstream": "https://127.0.0.1:2"},
                  {"name": "billing", "kind": "http", "upstream": "https://127.0.0.1:3"}],
}  # fmt: skip


def admitted(dag: str, task: str, rule: str, *, ago: float = 60.0, **kw: Any) -> AuditRecord:
    return AuditRecord(
        event="admitted",
        ts=NOW - ago,
        deployment="prod",
        dag_id=dag,
        task_id=task,
        run_id="run-1",
        try_number=1,
        principal=f"airflow:prod/{dag}/{task}",
        resource=kw.pop("resource", "orders"),
        action=kw.pop("action", "read"),
        object="/orders/1",
        decision="allow",
        rule=rule,
        **kw,
    )


def console(
    tmp_path: Path, *, shadow: bool = False, records: Sequence[AuditRecord] = ()
) -> ConsoleContext:
    (tmp_path / "team.yaml").write_text(TEAM)
    files = [tmp_path / "team.yaml"]
    if shadow:
        (tmp_path / "watch.yaml").write_text(SHADOW)
        files.append(tmp_path / "watch.yaml")
    db = tmp_path / "audit.db"
    write_trail(db, records)
    return trail_context(
        db,
        config=LockgateConfig.model_validate(CONFIG),
        policy=PolicyStore(lambda: files, {"orders", "billing"}, raise_on_error=True),
    )


serve = pytest.fixture(page_server(views_access.add_routes))


def text(html: str) -> str:
    """The page's text, tags dropped and white space folded."""
    return " ".join(re.sub(r"<[^>]+>", " ", html).split())


def labelled(html: str) -> None:
    """Every input and select has a <label for> naming its id; every table a caption."""
    fields = [f for f in re.findall(r"<(?:input|select)\b[^>]*>", html) if 'type="hidden"' not in f]
    ids = [m.group(1) for f in fields if (m := re.search(r'\bid="([^"]+)"', f))]
    assert len(ids) == len(fields)
    for i in ids:
        assert f'<label for="{i}"' in html, i
    assert html.count("<table") == html.count("<caption>")
    assert 'style="' not in html and "<script" not in html


async def test_index_offers_configured_and_seen_dags(tmp_path: Path, serve: Any) -> None:
    denied = AuditRecord(
        event="denied", ts=NOW - 5, deployment="prod", dag_id="finance_eu", task_id="x",
        principal="airflow:prod/finance_eu/x", resource="billing", action="read",
        decision="deny", reason="no rule allows",
    )  # fmt: skip
    records = [admitted("etl", "load", "etl-reads-orders"), denied]
    get = await serve(console(tmp_path, records=records))
    status, html = await get("/console/access")
    assert status == 200
    labelled(html)
    options = re.findall(r'<option value="([^"]+)"', html)
    assert options[:3] == ["prod/etl", "prod/finance_*", "prod/finance_eu"]
    assert "orders" in options and "billing" in options
    assert '<a href="/console/access/resource?name=orders">orders</a>' in html
    assert "orders 3 rules" in text(html) and "billing 1 rule " in text(html)
    assert await get("/console/access?resource=orders") == (
        302,
        "/console/access/resource?name=orders",
    )


async def test_a_dags_grants_per_resource_with_lines_denies_and_use(
    tmp_path: Path, serve: Any
) -> None:
    records = [admitted("etl", "load", "etl-reads-orders", ago=60.0 * i) for i in range(1, 4)]
    records.append(admitted("etl", "load", "etl-reads-orders", ago=40 * 86400.0))  # too old
    records.append(admitted("other", "load", "etl-reads-orders"))  # another DAG
    get = await serve(console(tmp_path, records=records))
    status, html = await get("/console/access/dag?deployment=prod&dag=etl")
    assert status == 200, html
    labelled(html)
    page = text(html)
    assert "What DAG etl of prod may do" in page
    assert "2 grants on 1 resource; 1 not used in the last 30 days." in page
    assert "etl-reads-orders team.yaml:2" in page
    assert "etl-writes-orders team.yaml:9" in page and "no-pii team.yaml:15" in page
    assert "finance-billing" not in page
    assert "ETL reads &lt;orders&gt;" in html  # escaped, never markup
    # the deny refuses part of the read grant (/orders/**), none of the write one (/orders/*)
    assert page.count("in part no-pii team.yaml:15") == 1
    # seen in use: the three recent reads of this DAG, linked to the audit explorer
    assert re.search(r'href="/console/audit\?[^"]*dag=etl[^"]*event=admitted[^"]*">3</a>', html)
    assert "never used" in page  # the write grant
    assert "every task" in page and "some tasks" in page
    same = await get("/console/access/dag?ref=prod/etl")
    assert same[0] == 200 and text(same[1]) == page


async def test_a_glob_of_dags_and_a_principal(tmp_path: Path, serve: Any) -> None:
    get = await serve(console(tmp_path))
    status, html = await get("/console/access/dag?deployment=prod&dag=finance_*")
    assert status == 200
    page = text(html)
    assert "finance-billing" in page and "etl-reads-orders" not in page
    assert "time_window 00:00-23:59 UTC" in page
    assert "Use is counted for one DAG at a time" in page
    status, html = await get("/console/access/dag?deployment=prod&dag=nope")
    assert "not delegated" in text(html) and "may act only for DAGs etl, finance_*" in text(html)
    status, html = await get("/console/access/dag?deployment=qa&dag=etl")
    assert "No deployment named qa is configured" in text(html)
    status, html = await get("/console/access/principal?p=airflow:prod/etl/extract")
    page = text(html)
    assert status == 200 and "etl-reads-orders" in page and "etl-writes-orders" not in page
    assert 'href="/console/access/dag?deployment=prod&amp;dag=etl"' in html
    assert 'href="/console/access/check?principal=airflow%3Aprod%2Fetl%2Fextract"' in html
    status, html = await get("/console/access/principal?p=airflow:dev/x/y")
    assert "No rule applies: everything is denied by default." in text(html)


async def test_who_can_reach_a_resource(tmp_path: Path, serve: Any) -> None:
    records = [admitted("etl", "load", "etl-reads-orders")]
    get = await serve(console(tmp_path, records=records))
    status, html = await get("/console/access/resource?name=orders")
    assert status == 200
    labelled(html)
    page = text(html)
    assert "2 allow rules, 1 deny rule" in page
    assert 'href="/console/access/dag?deployment=prod&amp;dag=etl"' in html
    assert "finance-billing" not in page
    status, html = await get("/console/access/resource?name=billing")
    assert "prod / finance_*" in text(html)
    status, html = await get("/console/access/resource?name=nowhere")
    assert "No resource named nowhere is configured" in text(html)


async def test_check_says_what_policy_check_prints(tmp_path: Path, serve: Any) -> None:
    ctx = console(tmp_path)
    get = await serve(ctx)
    status, html = await get("/console/access/check")
    assert status == 200
    labelled(html)
    asked = "principal=airflow:prod/etl/load&resource=orders&action=read&object=/orders/pii/1"
    status, html = await get(f"/console/access/check?{asked}")
    assert status == 200
    page = text(html)
    assert "DENY airflow:prod/etl/load read orders" in page
    assert "Decided by rule no-pii in team.yaml:15" in page
    _, printed = cmd_check(
        ctx.policy.current,
        "airflow:prod/etl/load",
        "read",
        "orders/orders/pii/1",
        deployments={"prod": ["etl", "finance_*"]},
    )
    assert printed.replace("<", "&lt;").replace(">", "&gt;") in html
    status, html = await get("/console/access/check?principal=airflow:prod/nope/t"
                             "&resource=orders&action=read&object=/orders/1")  # fmt: skip
    assert "may not act for dag nope" in text(html) and "DENY" in text(html)


async def test_check_shows_the_shadow_verdict(tmp_path: Path, serve: Any) -> None:
    get = await serve(console(tmp_path, shadow=True))
    asked = "principal=airflow:prod/etl/load&resource=orders&action=read&object=/orders/1"
    status, html = await get(f"/console/access/check?{asked}")
    page = text(html)
    assert status == 200
    assert "ALLOW airflow:prod/etl/load" in page
    assert "The shadow policy would deny (differs from what is enforced)" in page


@pytest.mark.parametrize(
    ("query", "problem"),
    [
        ("principal=airflow:prod/etl/load&resource=orders&action=fly", "unknown action 'fly'"),
        ("principal=airflow:prod/etl/load&resource=gone&action=read", "unknown resource 'gone'"),
        ("principal=someone&resource=orders&action=read", "bad principal 'someone'"),
        ("principal=airflow:prod/etl/load&resource=orders&action=read&map_index=x",
         "is not a whole number"),
    ],
)  # fmt: skip
async def test_questions_that_cannot_be_answered(
    tmp_path: Path, serve: Any, query: str, problem: str
) -> None:
    get = await serve(console(tmp_path))
    status, html = await get(f"/console/access/check?{query}")
    assert status == 400
    assert "Nothing can be decided" in text(html) and problem in html.replace("&#39;", "'")


async def test_missing_choices_and_viewers(tmp_path: Path, serve: Any) -> None:
    get = await serve(console(tmp_path), signed_in("viewer", "val"))
    assert (await get("/console/access/dag?deployment=prod"))[0] == 400
    assert (await get("/console/access/principal"))[0] == 400
    assert (await get("/console/access/resource"))[0] == 400
    status, html = await get("/console/access/principal?p=<script>x</script>")
    assert status == 200 and "<script>x" not in html and "&lt;script&gt;x" in html


async def test_use_is_one_grouped_count(tmp_path: Path, serve: Any) -> None:
    ctx = console(tmp_path)
    asked: list[tuple[Any, tuple[str, ...]]] = []

    class Counting:
        def __enter__(self) -> Counting:
            return self

        def __exit__(self, *exc: object) -> None:
            return None

        def histogram(self, q: Any, *, bucket: float) -> list[Any]:
            return []

        def count_by(self, q: Any, fields: tuple[str, ...]) -> dict[tuple[str, str], int]:
            asked.append((q, fields))
            return {("etl-reads-orders", "orders"): 1234, ("gone", "orders"): 5}

    ctx.audit_reader = lambda: cast(AuditReader, Counting())
    get = await serve(ctx)
    status, html = await get("/console/access/dag?deployment=prod&dag=etl")
    assert status == 200 and ">1,234</a>" in html
    [(q, fields)] = asked
    assert fields == ("rule", "resource")
    assert (q.deployment, q.dag, q.event) == ("prod", "etl", "admitted")
    assert q.since == pytest.approx(time.time() - views_access.USE_WINDOW, abs=60)


async def test_the_dag_list_is_kept_a_minute(
    tmp_path: Path, serve: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    ctx = console(tmp_path)
    get = await serve(ctx)
    assert "prod/finance_late" not in (await get("/console/access"))[1]
    late = AuditRecord(event="allowed", ts=NOW, deployment="prod", dag_id="finance_late",
                       resource="billing", action="read", decision="allow")  # fmt: skip
    write_trail(tmp_path / "audit.db", [late])
    assert "prod/finance_late" not in (await get("/console/access"))[1]
    monkeypatch.setattr(views_access, "DAGS_TTL", 0.0)
    assert "prod/finance_late" in (await get("/console/access"))[1]


async def test_a_trail_that_cannot_be_read_leaves_the_grants(tmp_path: Path, serve: Any) -> None:
    ctx = console(tmp_path)

    def broken() -> AuditReader:
        raise OSError("disk gone")

    ctx.audit_reader = broken
    get = await serve(ctx)
    status, html = await get("/console/access")
    assert status == 200 and '<option value="prod/finance_*">' in html
    status, html = await get("/console/access/dag?deployment=prod&dag=etl")
    assert status == 200
    assert "etl-reads-orders" in text(html) and "use is not counted" in text(html)
    assert "never used" not in text(html)


async def test_check_at_a_moment(tmp_path: Path, serve: Any) -> None:
    (tmp_path / "late.yaml").write_text(
        "rules:\n  - id: night-freeze\n    effect: deny\n    principals: ['*']\n"
        "    actions: ['*']\n    resources: [billing]\n"
        "    conditions: {time_window: {start: '23:00', end: '23:30'}}\n"
    )
    ctx = console(tmp_path)
    files = [tmp_path / "team.yaml", tmp_path / "late.yaml"]
    ctx.policy = PolicyStore(lambda: files, {"orders", "billing"}, raise_on_error=True)
    get = await serve(ctx)
    asked = "principal=airflow:prod/finance_eu/x&resource=billing&action=read&object=/x"
    status, html = await get(f"/console/access/check?{asked}&at=2026-12-05T23:10")
    assert status == 200
    page = text(html)
    assert "At 2026-12-05 23:10:00 UTC." in page and "Decided by rule night-freeze" in page
    status, html = await get(f"/console/access/check?{asked}&at=2026-12-05T12:00:00")
    assert "Decided by rule finance-billing" in text(html)
    status, html = await get(f"/console/access/check?{asked}&at=noon")
    assert status == 400 and "is not a time like" in text(html)
