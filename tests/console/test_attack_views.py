"""The console's pages under attack: what a pipeline wrote into the audit trail (a DAG id, a
run id, an object) and what a signed-in person types into a form or a query string must never
do more than the page says. Each test is one attack that once worked: an operator lifting or
setting an admin's deployment-wide kill switch through a DAG named ``*``; a viewer holding
every worker thread with exports; filters past what the trail or a calendar holds answered
with a 500 and a traceback."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator, Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any, cast

import pytest
from aiohttp import ClientSession, web
from aiohttp.test_utils import TestServer

from lockgate.audit import AuditPage, AuditQuery, AuditReader, AuditRecord
from lockgate.console import (
    reads,
    views_access,
    views_audit,
    views_audit_export,
    views_live,
    views_policy,
)
from lockgate.console.app import VIEWS
from lockgate.console.web import ConsoleContext, ConsoleUser
from lockgate.identity.revocation import ANY_DAG
from lockgate.policy import PolicyStore
from lockgate.state import State
from tests.console._state import Trail, real_state
from tests.console._views import CSRF_TOKEN, signed_in, views_app


# -- a console over real state ----------------------------------------------------------------
@pytest.fixture
def state(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[State]:
    monkeypatch.delenv("LOCKGATE_MASTER_KEY", raising=False)
    with real_state(tmp_path) as st:
        yield st


@pytest.fixture
def trail(state: State) -> Iterator[Trail]:
    t = Trail(state)
    try:
        yield t
    finally:
        t.close()


def request_records(n: int = 3) -> list[AuditRecord]:
    return [
        AuditRecord(event="allowed", ts=1_767_225_600.0 + i, deployment="prod", dag_id="etl",
                    run_id="run-1", task_id="load", resource="orders-api", action="read",
                    object=f"/orders/{i}", decision="allow", rule="etl-read")
        for i in range(n)
    ]  # fmt: skip


def context_of(st: State, trail: Trail) -> ConsoleContext:
    cfg = st.config
    return ConsoleContext(
        config=cfg, audit_reader=lambda: AuditReader(cfg.data_dir / "audit.db"),
        audit=trail.log, policy=cast(Any, None), revocations=st.revocations,
        credentials=st.credentials, database=st.database,
    )  # fmt: skip


class Console:
    """Views served on a socket, asked as a signed-in browser would."""

    def __init__(self, server: TestServer, http: ClientSession) -> None:
        self.server, self.http = server, http
        self.origin = str(server.make_url("/")).rstrip("/")

    async def get(self, path: str, **params: str) -> tuple[int, str]:
        async with self.http.get(self.server.make_url(path), params=params) as r:
            return r.status, await r.text()

    async def post(self, data: dict[str, str]) -> tuple[int, str, str]:
        form = {**data, "csrf": CSRF_TOKEN}
        async with self.http.post(
            self.server.make_url("/console/live/act"), data=form,
            headers={"Origin": self.origin}, allow_redirects=False,
        ) as r:  # fmt: skip
            return r.status, r.headers.get("Location", ""), await r.text()


async def serve(
    ctx: ConsoleContext, add_routes: Any, user: ConsoleUser | None = None
) -> AsyncIterator[Console]:
    server = TestServer(views_app(ctx, add_routes, user), host="127.0.0.1")
    await server.start_server()
    try:
        async with ClientSession() as http:
            yield Console(server, http)
    finally:
        await server.close()


@pytest.fixture
async def explorer(state: State, trail: Trail) -> AsyncIterator[Console]:
    trail.write(*request_records())
    async for c in serve(context_of(state, trail), views_audit.add_routes):
        yield c


@pytest.fixture
async def operator(state: State, trail: Trail) -> AsyncIterator[Console]:
    async for c in serve(
        context_of(state, trail), views_live.add_routes, signed_in("operator", "olivia")
    ):
        yield c


@pytest.mark.parametrize("act", ["block_dag", "unblock_dag", "revoke_dag", "revoke_run"])
async def test_a_dag_named_star_is_refused_it_would_be_the_whole_deployment(
    state: State, trail: Trail, operator: Console, act: str
) -> None:
    """``*`` is how the store says "every DAG of a deployment": blocking DAG ``*`` of prod
    is blocking prod (an admin's action), and unblocking it lifts an admin's kill switch."""
    state.revocations.block("prod", None, "admin@example.com", "incident 7")
    form = {"act": act, "deployment": "prod", "dag": ANY_DAG, "run": "r1"}
    status, _ = await operator.get("/console/live/confirm", **form)
    assert status == 400
    status, _, _ = await operator.post(form)
    assert status == 400
    assert [(b.deployment, b.dag_id) for b in state.revocations.blocks()] == [("prod", "*")]
    assert not trail.rows("mint_unblocked") and not trail.rows("mint_blocked")
    assert not trail.rows("token_revoked")


# -- exports: bounded work per person ---------------------------------------------------------
async def test_exports_at_once_are_capped_the_next_is_told_to_retry(
    state: State, trail: Trail, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Each export may read up to EXPORT_CAP records in worker threads: a page of export
    links opened fifty times over would hold every worker thread of the primary (where
    tokens are minted) reading the trail. Past MAX_EXPORTS at once: 429, Retry-After."""
    trail.write(*request_records())
    release = asyncio.Event()
    real_page = views_audit_export._page

    async def slow_page(
        request: web.Request, reader: AuditReader, q: AuditQuery, older: str | None
    ) -> AuditPage:
        await release.wait()  # an export reading a long trail
        return await real_page(request, reader, q, older)

    monkeypatch.setattr(views_audit_export, "_page", slow_page)
    async for console in serve(context_of(state, trail), views_audit.add_routes):
        url = console.server.make_url("/console/audit/export.csv")
        running = [
            asyncio.create_task(console.http.get(url))
            for _ in range(views_audit_export.MAX_EXPORTS)
        ]
        await asyncio.sleep(0.2)  # they hold their slots, waiting on the trail
        async with console.http.get(url) as refused:
            assert refused.status == 429
            assert refused.headers["Retry-After"].isdigit()
        release.set()
        for task in running:
            async with await task as answer:
                assert answer.status == 200
                assert "/orders/2" in await answer.text()
        for _ in range(50):  # the slots are given back as the handlers return
            status, text = await console.get("/console/audit/export.csv")
            if status != 429:
                break
            await asyncio.sleep(0.05)
        assert status == 200 and "/orders/2" in text


# -- filters: a query string the trail cannot hold is a 400 naming it, never a 500 -------------
@pytest.mark.parametrize(
    "query",
    [
        "try=²",  # a digit to str.isdigit, not to int()
        "try=99999999999999999999999",  # past SQLite's integers
        "try=" + "9" * 5000,  # past int()'s digits
        "since=1e308",  # past any calendar
        "until=-1e20",
        "since=inf",
        "since=nan",
    ],
)
@pytest.mark.parametrize("path", ["/console/audit", "/console/audit/export.csv"])
async def test_a_filter_out_of_range_is_refused_naming_it(
    explorer: Console, path: str, query: str
) -> None:
    async with explorer.http.get(explorer.server.make_url(f"{path}?{query}")) as got:
        text = await got.text()
    assert got.status == 400, text
    assert query.split("=")[0] in text and "Traceback" not in text


POLICY = """\
rules:
  - id: etl-read
    effect: allow
    principals: ["airflow:prod/etl/*"]
    actions: [read]
    resources: [orders-api]
"""


@pytest.fixture
async def least_privilege(state: State, trail: Trail, tmp_path: Path) -> AsyncIterator[Console]:
    trail.write(*request_records())
    (tmp_path / "team.yaml").write_text(POLICY)
    ctx = context_of(state, trail)
    ctx.policy = PolicyStore(lambda: [tmp_path / "team.yaml"], {"orders-api"})
    async for c in serve(ctx, views_policy.add_routes):
        yield c


@pytest.mark.parametrize("since", ["1e308", "nan", "-inf", "9" * 30, "99999999999d"])
@pytest.mark.parametrize("page", ["/console/policy", "/console/policy/unused",
                                  "/console/policy/shadow", "/console/policy/suggest"])  # fmt: skip
async def test_a_least_privilege_window_past_any_calendar_is_refused_naming_it(
    least_privilege: Console, page: str, since: str
) -> None:
    status, text = await least_privilege.get(page, since=since, dag="etl")
    assert status == 400, text
    assert "since" in text and "Traceback" not in text


# -- authorization: every route of every view, by role ----------------------------------------
def console_routes() -> list[tuple[str, str, Any]]:
    """(method, path, handler) of every view module's routes, as the console serves them."""
    app = web.Application()
    for view in VIEWS:
        view.add_routes(app)
    return [
        (r.method, r.resource.canonical, r.handler)
        for r in app.router.routes()
        if r.method != "HEAD" and r.resource is not None and "static" not in r.resource.canonical
    ]


def test_every_view_route_is_behind_a_role() -> None:
    """A handler not wrapped by requires() or action() would answer anyone signed in (and
    a POST without the CSRF check): every route's handler is one of theirs."""
    routes = console_routes()
    assert len(routes) > 20
    naked = [(m, p) for m, p, h in routes if not hasattr(h, "__wrapped__")]
    assert naked == []


@pytest.fixture
async def every_view(state: State, trail: Trail, tmp_path: Path) -> AsyncIterator[Any]:
    trail.write(*request_records())
    (tmp_path / "team.yaml").write_text(POLICY)
    ctx = context_of(state, trail)
    ctx.policy = PolicyStore(lambda: [tmp_path / "team.yaml"], {"orders-api"})

    def add(app: web.Application) -> None:
        for view in VIEWS:
            view.add_routes(app)

    async def as_user(role: str) -> AsyncIterator[Console]:
        async for c in serve(ctx, add, signed_in(role, role)):
            yield c

    yield as_user


@pytest.mark.parametrize("role", ["viewer", "operator"])
async def test_a_post_above_ones_role_changes_nothing(
    state: State, trail: Trail, every_view: Any, role: str
) -> None:
    state.revocations.block("prod", None, "admin@example.com", "incident 7")
    state.revocations.block("prod", "etl", "olivia@example.com", "incident 8")
    posts = [p for m, p, _ in console_routes() if m == "POST"]
    assert "/live/act" in posts and "/audit/verify" in posts
    forms = [  # what each role may not do
        {"act": "unblock_deployment", "deployment": "prod"},
        {"act": "block_deployment", "deployment": "prod"},
    ]
    if role == "viewer":
        forms += [{"act": "unblock_dag", "deployment": "prod", "dag": "etl"},
                  {"act": "revoke_token", "jti": "j1"},
                  {"act": "block_dag", "deployment": "prod", "dag": "etl"}]  # fmt: skip
    async for console in every_view(role):
        for form in forms:
            status, _, _ = await console.post(form)
            assert status == 403, form
            status, _ = await console.get("/console/live/confirm", **form)
            assert status == 403, form
        if role == "viewer":
            async with console.http.post(
                console.server.make_url("/console/audit/verify"),
                data={"csrf": CSRF_TOKEN}, headers={"Origin": console.origin},
            ) as verify:  # fmt: skip
                assert verify.status == 403
    blocks = {(b.deployment, b.dag_id) for b in state.revocations.blocks()}
    assert blocks == {("prod", "*"), ("prod", "etl")}
    for event in ("mint_blocked", "mint_unblocked", "token_revoked"):
        assert not trail.rows(event), event


# -- the live page's confirmations say exactly what will be done ------------------------------
@pytest.fixture
async def admin_live(state: State, trail: Trail) -> AsyncIterator[Console]:
    async for c in serve(context_of(state, trail), views_live.add_routes):
        yield c


async def test_a_bidi_override_in_a_dag_id_cannot_reorder_the_confirmation(
    state: State, trail: Trail, admin_live: Console
) -> None:
    """A DAG named ``etl<RLO>...`` would reverse, on screen, the rest of the sentence an
    operator confirms ("... gets no new token until unblocked"): bidi controls are shown as
    their code points; the action still names the DAG exactly."""
    dag = "etl\u202egnp.exe\u2066"
    status, page = await admin_live.get(
        "/console/live/confirm", act="block_dag", deployment="prod", dag=dag
    )
    assert status == 200
    shown = page.split('<form method="post"')[0]  # what is read (the form carries it exactly)
    assert "\u202e" not in shown and "\u2066" not in shown
    assert "etl&lt;U+202E&gt;gnp.exe&lt;U+2066&gt;" in shown or "etl<U+202E>" in shown
    assert f'name="dag" value="{dag}"' in page
    status, location, _ = await admin_live.post(
        {"act": "block_dag", "deployment": "prod", "dag": dag}
    )
    assert status == 303
    assert [(b.deployment, b.dag_id) for b in state.revocations.blocks()] == [("prod", dag)]
    [record] = trail.rows("mint_blocked")
    assert record.dag_id == dag and record.principal == "console:alice"
    status, page = await admin_live.get(location)
    notice = page.split('<p class="notice" role="status">')[1].split("</p>")[0]
    assert notice.startswith("DAG etl&lt;U+202E&gt;gnp.exe&lt;U+2066&gt; of deployment prod")


async def test_a_target_longer_than_the_form_takes_is_refused_not_cut(
    state: State, trail: Trail, admin_live: Console
) -> None:
    """Cutting a 600-character DAG id to 500 would block a different DAG than the one named."""
    dag = "d" * 600
    status, _ = await admin_live.get("/console/live/confirm", act="block_dag", dag=dag)
    assert status == 400
    status, _, _ = await admin_live.post({"act": "block_dag", "dag": dag})
    assert status == 400
    assert state.revocations.blocks() == [] and not trail.rows("mint_blocked")


# -- exports: a cell a spreadsheet would run ----------------------------------------------------
@pytest.mark.parametrize(
    "value",
    [" =HYPERLINK(\"http://evil.example\")", "\n=1+1", "\r\n@SUM(A1)", "\uff1d1+1", "\uff0b1",
     "\u00a0-1+1", "\t=1"],
)  # fmt: skip
def test_a_formula_behind_blanks_or_in_full_width_is_not_a_formula_in_the_csv(value: str) -> None:
    """Spreadsheets trim blanks on import (LibreOffice's "trim spaces", Excel's newline in a
    quoted cell) and some read a full-width equals sign as =: such a cell starts with ' too."""
    assert views_audit_export.csv_cell(value) == "'" + value
    # a value that only looks like one further in stays as it was
    assert views_audit_export.csv_cell("sales=1+1") == "sales=1+1"


async def test_a_link_cannot_claim_an_action_was_done(
    state: State, trail: Trail, admin_live: Console
) -> None:
    """``/console/live?done=block_dag&dag=etl`` sent to an operator said "DAG etl blocked"
    when nothing was: the notice is shown only on the page the action itself redirected to
    (signed with the session's CSRF token, which a link's author does not know)."""
    for done, target in (
        ("block_dag", {"dag": "etl"}),
        ("unblock_deployment", {"deployment": "prod"}),
    ):
        status, page = await admin_live.get("/console/live", done=done, **target)
        assert status == 200 and 'role="status"' not in page, done
    status, location, _ = await admin_live.post(
        {"act": "block_dag", "deployment": "prod", "dag": "etl"}
    )
    assert status == 303
    status, page = await admin_live.get(location)
    assert "DAG etl of deployment prod blocked" in page
    status, page = await admin_live.get(location.replace("etl", "billing"))
    assert 'role="status"' not in page  # the signature is over the target too


@pytest.mark.parametrize("at", ["9999-12-31T23:59:59-14:00", "0001-01-01T00:00:00+14:00"])
async def test_a_check_at_a_moment_past_the_calendar_is_refused_naming_it(
    state: State, trail: Trail, tmp_path: Path, at: str
) -> None:
    (tmp_path / "team.yaml").write_text(POLICY)
    ctx = context_of(state, trail)
    ctx.policy = PolicyStore(lambda: [tmp_path / "team.yaml"], {"orders-api"})
    async for console in serve(ctx, views_access.add_routes):
        status, page = await console.get(
            "/console/access/check", principal="airflow:prod/etl/load", resource="orders-api",
            action="read", object="/orders/1", at=at,
        )  # fmt: skip
        assert status == 400 and "is not a time" in page


# -- the trail read over and over: on the console's own bounded pool --------------------------
async def test_a_burst_of_explorer_pages_waits_on_the_console_pool_not_the_engines(
    state: State, trail: Trail
) -> None:
    """Every page load counts its matches over the whole trail: a burst of them ran in the
    default executor the engines share. They run on the console's pool now, and past it
    a page is told to retry."""
    trail.write(*request_records())
    ctx = context_of(state, trail)
    opened = ctx.audit_reader
    hold, threads = threading.Event(), []

    def slow_reader() -> AuditReader:
        threads.append(threading.current_thread().name)
        hold.wait(5)  # a count over a long trail
        return opened()

    ctx.audit_reader = slow_reader

    def add(app: web.Application) -> None:
        reads.install(app, reads.Reads(readers=1, wait=0.1, retry_after=7))
        views_audit.add_routes(app)

    async for console in serve(ctx, add):
        first = asyncio.create_task(console.get("/console/audit"))
        await asyncio.sleep(0.2)
        status, page = await console.get("/console/audit", dag="etl")
        assert status == 503
        hold.set()
        status, page = await first
        assert status == 200 and "/orders/2" in page
    assert threads and all(name.startswith("console-read") for name in threads)


RLO_RUN = "manual\u202e2026-12-05"


async def test_a_bidi_override_in_a_run_id_cannot_turn_the_run_pages_heading_around(
    state: State, trail: Trail
) -> None:
    trail.write(*[replace(r, run_id=RLO_RUN) for r in request_records()])
    async for console in serve(context_of(state, trail), views_audit.add_routes):
        status, page = await console.get("/console/audit/run", dag="etl", run=RLO_RUN)
        assert status == 200 and "/orders/2" in page
        heading = page.split("<h1>")[1].split("</h1>")[0]
        assert heading.startswith("Run manual&lt;U+202E&gt;2026-12-05")
        title = page.split("<title>")[1].split("</title>")[0]
        assert "\u202e" not in title


async def test_a_bidi_override_in_a_dag_id_cannot_turn_the_access_pages_heading_around(
    state: State, trail: Trail, tmp_path: Path
) -> None:
    (tmp_path / "team.yaml").write_text(POLICY)
    ctx = context_of(state, trail)
    ctx.policy = PolicyStore(lambda: [tmp_path / "team.yaml"], {"orders-api"})
    async for console in serve(ctx, views_access.add_routes):
        status, page = await console.get(
            "/console/access/principal", p="airflow:prod/etl\u202e/load"
        )
        assert status == 200
        heading = page.split("<h1>")[1].split("</h1>")[0]
        assert "&lt;U+202E&gt;" in heading and "\u202e" not in heading
