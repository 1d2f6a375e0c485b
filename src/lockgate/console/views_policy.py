"""The console's least-privilege pages: what ``policy suggest`` and ``policy unused`` say,
and what a shadow policy would decide otherwise.

- ``GET /policy``: the DAGs the audit trail saw in the window (each a link to its
  suggestion), the way to unused grants, and the shadow set's state.
- ``GET /policy/suggest?dag=D&since=30d[&deployment=P]``: :func:`lockgate.policy.suggest.
  suggest` over the DAG's audit rows: the rules with their evidence, the denied asks, the
  policy file and its tests; ``/policy/suggest.yaml`` and ``/policy/suggest-tests.yaml``
  download the very text ``lockgate policy suggest --out`` writes (``Suggestion.policy_yaml``
  and ``tests_yaml``, the one rendering of both).
- ``GET /policy/unused?since=30d[&deployment=P]``: :func:`lockgate.policy.usage.rule_usage`
  of the enforced set: grants never exercised, and by whom.
- ``GET /policy/shadow?since=30d``: records whose shadow verdict differs from the enforced
  one, grouped by DAG, verdict and rule, each group a link into the audit explorer.

Every page is for viewers. The trail is read off the event loop, on the console's read pool
(:mod:`lockgate.console.reads`: the default executor serves the gateway's engines, which
must never wait behind a long read; a page finding every reader busy is told to retry),
through :meth:`~lockgate.audit.AuditReader.usage_rows` (the CLI's read: only the fields
suggest/usage use, no row objects), and within bounds (:data:`READ_SECONDS`,
:data:`READ_ROWS`): a page says how much it read and whether it stopped short; a download
that would be cut short is refused instead.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any, TypeVar

from aiohttp import web

from lockgate.audit import AuditQuery, AuditReader
from lockgate.console import reads as console_reads
from lockgate.console.charts import audit_href
from lockgate.console.reads import reads_of
from lockgate.console.views_audit_filters import LAST_TIME
from lockgate.console.views_credentials import when
from lockgate.console.web import ConsoleContext, context, render, requires
from lockgate.policy.suggest import Suggestion, suggest, suggestion_name
from lockgate.policy.usage import RuleUse, parse_since, rule_usage

#: Seconds a page may spend reading the audit trail before it answers with what it read
#: (200,000 records of one DAG took 7.6 s on a busy shared core; see the module's tests).
READ_SECONDS = 30.0
#: Records a page reads at most.
READ_ROWS = 2_000_000
#: Shadow records grouped at most (the newest; the count says how many there are).
SHADOW_ROWS = 10_000
#: Test cases shown on the suggestion page (all of them are in the download).
SHOWN_TESTS = 200
DEFAULT_SINCE = "30d"

_T = TypeVar("_T")


# -- reading the trail within bounds ----------------------------------------------------------
@dataclass
class Reading:
    """How much of the trail a page read: rows, their time span, and whether it stopped."""

    since: float | None
    rows: int = 0
    first: float | None = None
    last: float | None = None
    seconds: float = 0.0
    stopped: str = ""  # why it stopped short ("" : it read the whole window)

    @property
    def summary(self) -> str:
        read = f"read {self.rows:,} record{'s' * (self.rows != 1)}"
        if self.first is not None and self.last is not None:
            read += f" from {when(self.first)} to {when(self.last)}"
        return f"{read} in {self.seconds:.1f} s"


def bounded(
    rows: Iterable[Mapping[str, Any]],
    reading: Reading,
    *,
    seconds: float,
    most: int,
    stop: threading.Event | None = None,
) -> Iterator[Mapping[str, Any]]:
    """``rows`` (the mappings suggest/usage read), counted into ``reading``, until the
    window ends, ``seconds`` pass, ``most`` rows were read or ``stop`` is set (the
    console is closing)."""
    start = time.monotonic()
    try:
        for row in rows:
            if reading.rows >= most:
                reading.stopped = f"stopped at {most:,} records"
                return
            if reading.rows % 1024 == 0:
                if time.monotonic() - start > seconds:
                    reading.stopped = f"stopped after {seconds:g} s"
                    return
                if stop is not None and stop.is_set():
                    reading.stopped = "stopped: the console is closing"
                    return
            reading.rows += 1
            ts = row["ts"]
            if reading.first is None:
                reading.first = ts
            reading.last = ts
            yield row
    finally:
        reading.seconds = time.monotonic() - start


def _read(
    ctx: ConsoleContext,
    dag: str | None,
    since: float | None,
    use: Callable[[Iterator[Mapping[str, Any]]], _T],
    *,
    deployment: str | None = None,
    stop: threading.Event | None = None,
) -> tuple[_T, Reading]:
    """``use`` over the bounded rows of ``dag`` since ``since`` (blocking: run in a thread)."""
    reading = Reading(since)
    with ctx.audit_reader() as reader:
        rows = bounded(reader.usage_rows(dag=dag, since=since), reading,
                       seconds=READ_SECONDS, most=READ_ROWS, stop=stop)  # fmt: skip
        if deployment:
            rows = (r for r in rows if r.get("deployment") == deployment)
        return use(rows), reading


@dataclass(frozen=True)
class Window:
    """The window a page was asked for: ``since`` as typed and as a time."""

    text: str
    since: float | None
    error: str = ""


def window_of(request: web.Request) -> Window:
    text = request.query.get("since", DEFAULT_SINCE).strip() or DEFAULT_SINCE
    try:
        since = parse_since(text, name="since")
    except (ValueError, OverflowError) as exc:
        return Window(text, None, str(exc))
    if not 0 <= since <= LAST_TIME:  # NaN too: past any calendar, nothing can be read or shown
        return Window(text, None, f"bad since {text[:40]!r}: not between 1970 and 9999")
    return Window(text, since)


def _text(request: web.Request, name: str) -> str | None:
    return request.query.get(name, "").strip() or None


# -- pages ----------------------------------------------------------------------------------
@dataclass(frozen=True)
class DagSeen:
    dag: str
    allowed: int
    denied: int


def _dags(reader: AuditReader, since: float | None) -> list[DagSeen]:
    """Every DAG with a request in the window, with its allowed and denied counts (one
    grouped query, not a scan)."""
    now = time.time()
    width = max(1.0, now - (since if since is not None else 0.0) + 1.0)
    totals: dict[str, list[int]] = {}
    for b in reader.histogram(AuditQuery(since=since), bucket=width):
        if b.dag:
            seen = totals.setdefault(b.dag, [0, 0])
            seen[0] += b.allowed
            seen[1] += b.denied
    return [DagSeen(d, a, n) for d, (a, n) in sorted(totals.items())]


def _dag_list(ctx: ConsoleContext, since: float | None) -> list[DagSeen]:
    with ctx.audit_reader() as reader:
        return _dags(reader, since)


@requires("viewer")
async def overview_page(request: web.Request) -> web.StreamResponse:
    ctx = context(request)
    window = window_of(request)
    dags = [] if window.error else await reads_of(request).run(_dag_list, ctx, window.since)
    return render(
        request,
        "policy_overview.html",
        status=400 if window.error else 200,
        window=window,
        dags=dags,
        shadow=ctx.policy.shadow is not None,
        shadow_error=ctx.policy.shadow_error,
        rules=len(ctx.policy.current.rules),
        policy_error=ctx.policy.last_error,
    )


@dataclass
class Asked:
    """A suggestion as asked for (``dag``, ``window``, ``deployment``) and as found: the
    suggestion and what was read for it, or without a DAG the DAGs to pick from."""

    dag: str | None
    window: Window
    deployment: str | None
    found: Suggestion | None = None
    reading: Reading | None = None
    dags: list[DagSeen] = field(default_factory=list)


async def _suggestion(request: web.Request) -> Asked:
    ctx = context(request)
    asked = Asked(_text(request, "dag"), window_of(request), _text(request, "deployment"))
    dag, since = asked.dag, asked.window.since
    if asked.window.error:
        return asked
    if dag is None:
        asked.dags = await reads_of(request).run(_dag_list, ctx, since)
        return asked
    reads = reads_of(request)
    asked.found, asked.reading = await reads.run(
        _read,
        ctx,
        dag,
        since,
        lambda rows: suggest(rows, dag),
        deployment=asked.deployment,
        stop=reads.closing,
    )
    return asked


@requires("viewer")
async def suggest_page(request: web.Request) -> web.StreamResponse:
    asked = await _suggestion(request)
    found, window = asked.found, asked.window
    tests: list[dict[str, Any]] = found.tests() if found is not None else []
    download = {"dag": asked.dag or "", "since": window.text}
    if asked.deployment:
        download["deployment"] = asked.deployment
    return render(
        request,
        "policy_suggest.html",
        status=400 if window.error else 200,
        dag=asked.dag,
        window=window,
        deployment=asked.deployment or "",
        found=found,
        reading=asked.reading,
        dags=asked.dags,
        asks=found.denied_asks() if found is not None else [],
        policy_text=found.policy_yaml() if found is not None else "",
        tests=tests[:SHOWN_TESTS],
        tests_total=len(tests),
        download=download,
    )


async def _download(request: web.Request, tests: bool) -> web.StreamResponse:
    asked = await _suggestion(request)
    dag, window, found, reading = asked.dag, asked.window, asked.found, asked.reading
    if window.error:
        raise web.HTTPBadRequest(text=window.error)
    if dag is None or found is None or reading is None:
        raise web.HTTPBadRequest(text="dag: required")
    if reading.stopped:
        # a partial suggestion would look whole once saved: refuse rather than mislead
        raise web.HTTPServiceUnavailable(
            text=f"the window holds more than the console reads ({reading.stopped}): "
            f"narrow it, or run lockgate policy suggest --dag {dag} --since {window.text}"
        )
    name = suggestion_name(dag) + (".tests.yaml" if tests else ".yaml")
    return web.Response(
        text=found.tests_yaml() if tests else found.policy_yaml(),
        content_type="application/yaml",
        charset="utf-8",
        headers={"Content-Disposition": f'attachment; filename="{name}"'},
    )


@requires("viewer")
async def suggest_download(request: web.Request) -> web.StreamResponse:
    return await _download(request, tests=False)


@requires("viewer")
async def suggest_tests_download(request: web.Request) -> web.StreamResponse:
    return await _download(request, tests=True)


@requires("viewer")
async def unused_page(request: web.Request) -> web.StreamResponse:
    ctx = context(request)
    window, deployment = window_of(request), _text(request, "deployment")
    uses: list[RuleUse] = []
    reading = None
    if not window.error:
        policy_set = ctx.policy.current  # what is enforced now
        reads = reads_of(request)
        uses, reading = await reads.run(
            _read, ctx, None, window.since,
            lambda rows: rule_usage(policy_set, rows, deployment=deployment),
            stop=reads.closing,
        )  # fmt: skip
    return render(
        request,
        "policy_unused.html",
        status=400 if window.error else 200,
        window=window,
        deployment=deployment or "",
        uses=uses,
        never=[u for u in uses if not u.used],
        reading=reading,
    )


# -- shadow verdicts --------------------------------------------------------------------------
@dataclass
class ShadowGroup:
    """Records of one DAG on which the shadow set says the same other thing."""

    dag: str | None
    would: str  # "would deny" | "would allow"
    rule: str | None  # the shadow rule that decided (None: no shadow rule matched)
    enforced_rule: str | None
    resources: set[str] = field(default_factory=set)
    count: int = 0
    last: float = 0.0

    def href(self, since: float | None) -> str:
        return audit_href(shadow=1, dag=self.dag, since=since)


@dataclass
class ShadowReport:
    total: int
    read: int
    groups: list[ShadowGroup]


def shadow_groups(rows: Iterable[Any]) -> list[ShadowGroup]:
    """Group shadow records (AuditRow) by DAG, verdict, shadow rule and enforced rule."""
    groups: dict[tuple[str | None, str, str | None, str | None], ShadowGroup] = {}
    for row in rows:
        verdict = row.detail.get("shadow") if isinstance(row.detail, Mapping) else None
        if not isinstance(verdict, Mapping):
            continue
        would = "would allow" if verdict.get("decision") == "allow" else "would deny"
        rule = verdict.get("rule") if isinstance(verdict.get("rule"), str) else None
        key = (row.dag_id, would, rule, row.rule)
        group = groups.get(key)
        if group is None:
            group = groups[key] = ShadowGroup(row.dag_id, would, rule, row.rule)
        group.count += 1
        group.last = max(group.last, row.ts or 0.0)
        if row.resource:
            group.resources.add(row.resource)
    return sorted(groups.values(), key=lambda g: (-g.count, g.dag or "", g.would, g.rule or ""))


def _shadow_report(ctx: ConsoleContext, since: float | None) -> ShadowReport:
    q = AuditQuery(since=since, shadow=True)
    rows: list[Any] = []
    with ctx.audit_reader() as reader:
        total = reader.count(q)
        older: str | None = None
        while len(rows) < SHADOW_ROWS:
            page = reader.query(q, limit=min(1000, SHADOW_ROWS - len(rows)), older=older)
            rows += page.rows
            older = page.older
            if older is None:
                break
    return ShadowReport(total, len(rows), shadow_groups(rows))


@requires("viewer")
async def shadow_page(request: web.Request) -> web.StreamResponse:
    ctx = context(request)
    window = window_of(request)
    report = (
        None if window.error else await reads_of(request).run(_shadow_report, ctx, window.since)
    )
    return render(
        request,
        "policy_shadow.html",
        status=400 if window.error else 200,
        window=window,
        report=report,
        loaded=ctx.policy.shadow is not None,
        shadow_rules=len(ctx.policy.shadow.rules) if ctx.policy.shadow is not None else 0,
        shadow_error=ctx.policy.shadow_error,
        all_href=audit_href(shadow=1, since=window.since),
        when=when,
    )


def add_routes(app: web.Application) -> None:
    console_reads.install(app)
    app.router.add_get("/policy", overview_page, name="policy")
    app.router.add_get("/policy/suggest", suggest_page, name="policy-suggest")
    app.router.add_get("/policy/suggest.yaml", suggest_download, name="policy-suggest-yaml")
    app.router.add_get(
        "/policy/suggest-tests.yaml", suggest_tests_download, name="policy-suggest-tests"
    )
    app.router.add_get("/policy/unused", unused_page, name="policy-unused")
    app.router.add_get("/policy/shadow", shadow_page, name="policy-shadow")
