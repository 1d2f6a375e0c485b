"""The audit explorer: the trail filtered, a record in full, a run's timeline, the chain's
status and exports.

- ``GET /audit``: filters (the names the alerts and the other pages link with: ``dag``,
  ``run``, ``decision``, ``event``, ``resource``, ``since`` ...), the matching records newest
  first a page at a time (an opaque ``older`` cursor), how many match, the chain's badge.
- ``GET /audit/record/<seq>`` (``?replica=`` on shared state): every field of one record,
  its detail as JSON, its hash and the previous one.
- ``GET /audit/run?dag=D&run=R``: the run's records as marks over time, a lane per task
  try, denials drawn on top; the table below.
- ``GET /audit/verify`` (viewer) and ``POST /audit/verify`` (operator): the last
  verification of the chain, and one run now (off the event loop, one at a time).
- ``GET /audit/export.csv`` and ``/audit/export.json`` (:mod:`.views_audit_export`).

Every read of the trail runs on the console's read pool (:func:`read`, :mod:`.reads`): a
slow query never holds up other pages, and a burst of them never the gateway's engines.
Filters that cannot be read (a time, a try number, a cursor) answer 400 with the form and
what is wrong.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, TypeVar

from aiohttp import web

from lockgate.audit import EVENTS, AuditPage, AuditQuery, AuditReader, VerifyResult
from lockgate.audit.record import RECORD_FIELDS
from lockgate.console import reads
from lockgate.console.live import visible
from lockgate.console.reads import Reads, read_trail
from lockgate.console.views_audit_export import (
    EXPORT_SLOTS,
    ExportSlots,
    export_csv,
    export_json,
)
from lockgate.console.views_audit_filters import (
    DECISIONS,
    EXPORT_CAP,
    FILTERS,
    PAGE_SIZE,
    SUGGEST_MAX,
    SUGGEST_TTL,
    SUGGEST_WINDOW,
    TIMELINE_MAX,
    VERIFY_WAIT,
    BadFilter,
    badge,
    filters_of,
    href,
    parse_time,
    record_href,
    run_href,
    shadow_of,
    short,
    utc,
)
from lockgate.console.views_audit_timeline import timeline
from lockgate.console.web import ConsoleContext, action, context, render, requires
from lockgate.errors import StoreUnavailable

T = TypeVar("T")

#: what the templates call (the functions above)
HELPERS: dict[str, Any] = {
    "utc": utc,
    "record_href": record_href,
    "run_href": run_href,
    "badge": badge,
    "shadow_of": shadow_of,
    "short": short,
    # a heading or a sentence with a run or DAG id in it (a bidi override in one turns the
    # rest around); form values and links keep the id as it is
    "shown": visible,
}


# -- reading the trail off the loop ----------------------------------------------------


async def read(request: web.Request, ask: Callable[[AuditReader], T]) -> T:
    """``ask`` with a fresh reader, on the console's read pool (:mod:`.reads`: bounded, 503
    with Retry-After when every reader stays busy; never the engines' executor)."""
    return await read_trail(request, ask)


def _with_reader(ctx: ConsoleContext, ask: Callable[[AuditReader], T]) -> T:
    with ctx.audit_reader() as reader:
        return ask(reader)


def problem_page(request: web.Request, message: str, status: int) -> web.Response:
    return render(request, "audit_problem.html", status=status, message=message, **HELPERS)


# -- chain verification ----------------------------------------------------------------


@dataclass(frozen=True)
class Verification:
    """One verification of the chain: what it found, up to which head, when, how long."""

    result: VerifyResult
    head_seq: int
    at: float
    took: float


@dataclass
class Verifier:
    """The console's last verification and the one running now (one at a time)."""

    pool: Reads
    last: Verification | None = None
    running: asyncio.Task[Verification] | None = None
    started: float | None = None

    def start(self, ctx: ConsoleContext) -> asyncio.Task[Verification]:
        """The verification running now, started if none is."""
        if self.running is None or self.running.done():
            self.started = time.time()
            self.running = asyncio.get_running_loop().create_task(self._run(ctx))
        return self.running

    async def _run(self, ctx: ConsoleContext) -> Verification:
        began, clock = time.time(), time.monotonic()

        def check(reader: AuditReader) -> tuple[int, VerifyResult]:
            head = reader.head()[0]  # read first: the verification covers at least this
            return head, reader.verify()

        try:
            head, result = await self._when_a_reader_is_free(ctx, check)
        except StoreUnavailable as exc:
            result, head = VerifyResult(False, 0, None, f"trail unreachable: {exc}"), 0
        done = Verification(result, head, began, time.monotonic() - clock)
        self.last = done
        return done

    async def _when_a_reader_is_free(
        self, ctx: ConsoleContext, check: Callable[[AuditReader], T]
    ) -> T:
        """``check`` on the read pool, waiting as long as every reader is busy (it runs in
        the background: a busy console delays a verification, never fails it); a closing
        console's refusal goes through."""
        while True:
            try:
                return await self.pool.run(_with_reader, ctx, check)
            except web.HTTPServiceUnavailable:
                if self.pool.closing.is_set():
                    raise
                await asyncio.sleep(1.0)


VERIFIER: web.AppKey[Verifier] = web.AppKey("lockgate_console_audit_verifier", Verifier)


async def chain_status(request: web.Request) -> dict[str, object]:
    """What the badge says: the last verification (cached) and how far the head moved."""
    verifier = request.app[VERIFIER]
    last = verifier.last
    running = verifier.running is not None and not verifier.running.done()
    newer = 0
    if last is not None and last.result.ok:
        try:
            head = await read(request, lambda r: r.head()[0])
            newer = max(0, head - last.head_seq)
        except StoreUnavailable:
            newer = 0
    return {"last": last, "running": running, "started": verifier.started, "newer": newer}


@requires("viewer")
async def verify_page(request: web.Request) -> web.StreamResponse:
    return render(request, "audit_verify.html", status_of=await chain_status(request), **HELPERS)


@action("operator")
async def verify_now(request: web.Request) -> web.StreamResponse:
    task = request.app[VERIFIER].start(context(request))
    # a short chain answers at once; a long one goes on while the page says so
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(asyncio.shield(task), VERIFY_WAIT)
    raise web.HTTPSeeOther("/console/audit/verify")


# -- what the filter fields suggest -----------------------------------------------------


@dataclass
class Suggestions:
    """DAG and resource names seen in the last :data:`SUGGEST_WINDOW`, for the filter
    fields' lists; read at most once per :data:`SUGGEST_TTL` (one grouped count)."""

    dags: list[str] = field(default_factory=list)
    resources: list[str] = field(default_factory=list)
    read_at: float = -math.inf

    async def fresh(self, request: web.Request) -> Suggestions:
        now = time.monotonic()
        if now - self.read_at >= SUGGEST_TTL:
            self.read_at = now  # one read at a time, even when it fails
            q = AuditQuery(since=time.time() - SUGGEST_WINDOW)
            try:
                seen = await read(request, lambda r: r.count_by(q, ("dag", "resource")))
            except StoreUnavailable:
                return self
            self.dags = sorted({d for d, _ in seen if d})[:SUGGEST_MAX]
            self.resources = sorted({r for _, r in seen if r})[:SUGGEST_MAX]
        return self


SUGGESTIONS: web.AppKey[Suggestions] = web.AppKey("lockgate_console_audit_names", Suggestions)


# -- pages -----------------------------------------------------------------------------


@requires("viewer")
async def explorer(request: web.Request) -> web.StreamResponse:
    params = request.rel_url.query
    values = {k: params.get(k, "") for k in FILTERS}
    try:
        q, values = filters_of(params)
        older = params.get("older") or None

        def ask(reader: AuditReader) -> tuple[AuditPage, int]:
            return reader.query(q, limit=PAGE_SIZE, older=older), reader.count(q)

        page, total = await read(request, ask)
    except ValueError as exc:  # BadFilter, a malformed cursor
        return _explorer_page(request, values, {}, error=str(exc), status=400)
    except StoreUnavailable as exc:
        problem = f"the trail is unreachable: {exc}"
        return _explorer_page(request, values, {}, error=problem, status=503)
    chain = await chain_status(request)
    names = await request.app[SUGGESTIONS].fresh(request)
    return _explorer_page(request, values, chain, page=page, total=total, older=older, names=names)


def _explorer_page(
    request: web.Request,
    values: Mapping[str, str],
    chain: Mapping[str, object],
    *,
    page: AuditPage | None = None,
    total: int = 0,
    older: str | None = None,
    error: str | None = None,
    status: int = 200,
    names: Suggestions | None = None,
) -> web.Response:
    return render(
        request, "audit_index.html", status=status, values=values, error=error,
        chain={"last": None, "running": False, "started": None, "newer": 0, **chain},
        rows=page.rows if page else [], total=total, paged=older is not None,
        older_href=href("/audit", values, older=page.older) if page and page.older else None,
        newest_href=href("/audit", values), events=sorted(EVENTS), decisions=DECISIONS,
        csv_href=href("/audit/export.csv", values), json_href=href("/audit/export.json", values),
        export_cap=EXPORT_CAP, page_size=PAGE_SIZE, names=names or Suggestions(), **HELPERS,
    )  # fmt: skip


@requires("viewer")
async def record_page(request: web.Request) -> web.StreamResponse:
    seq = int(request.match_info["seq"])
    replica = request.rel_url.query.get("replica") or None
    try:
        row = await read(request, lambda r: r.record(seq, replica))
    except StoreUnavailable as exc:
        return problem_page(request, f"the trail is unreachable: {exc}", 503)
    if row is None:
        where = f" of replica {replica}" if replica else ""
        return problem_page(request, f"no record {seq}{where}", 404)
    fields = [(name, getattr(row, name)) for name in RECORD_FIELDS if name != "detail"]
    # the record read closely: a bidi control in the JSON shown as its code point
    detail = json.dumps(row.detail, indent=2, sort_keys=True, ensure_ascii=False)
    detail = visible(detail, lines=True)
    return render(request, "audit_record.html", row=row, fields=fields, detail=detail, **HELPERS)


@requires("viewer")
async def run_page(request: web.Request) -> web.StreamResponse:
    params = request.rel_url.query
    dag, run = params.get("dag", "").strip() or None, params.get("run", "").strip()
    if not run:
        return problem_page(request, "run: required (a DAG run id)", 400)
    q = AuditQuery(dag=dag, run=run)
    try:
        page = await read(request, lambda r: r.query(q, limit=TIMELINE_MAX))
    except StoreUnavailable as exc:
        return problem_page(request, f"the trail is unreachable: {exc}", 503)
    rows = page.rows[::-1]  # oldest first: the timeline reads left to right
    return render(
        request, "audit_run.html", dag=dag, run=run, rows=page.rows, cut=page.older is not None,
        timeline=timeline(rows, record_href), limit=TIMELINE_MAX,
        audit_href=href("/audit", {"dag": dag or "", "run": run}), **HELPERS,
    )  # fmt: skip


def add_routes(app: web.Application) -> None:
    app[VERIFIER] = Verifier(reads.install(app))
    app[SUGGESTIONS] = Suggestions()
    app[EXPORT_SLOTS] = ExportSlots()
    app.router.add_get("/audit", explorer)
    app.router.add_get(r"/audit/record/{seq:\d{1,18}}", record_page)
    app.router.add_get("/audit/run", run_page)
    app.router.add_get("/audit/verify", verify_page)
    app.router.add_post("/audit/verify", verify_now)
    app.router.add_get("/audit/export.csv", export_csv)
    app.router.add_get("/audit/export.json", export_json)


__all__ = ["FILTERS", "BadFilter", "add_routes", "filters_of", "parse_time"]
