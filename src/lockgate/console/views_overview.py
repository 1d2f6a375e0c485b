"""The console's home page: requests and denials per DAG over a chosen window.

``GET /`` (viewer and above) shows, for the last hour, day, week or month: totals (requests,
denials, throttles, upstream errors, distinct DAGs, tokens issued), a stacked bar chart of
every DAG together and small multiples of the busiest DAGs (:mod:`lockgate.console.charts`),
the DAGs and resources denied most, the last denials, the chain's last verification (the
audit explorer's) and the sessions open now when the gateway keeps them. Every number links
into the audit explorer with the matching filters.

Past buckets do not change: :class:`HistogramCache` keeps the histogram of the buckets that
closed more than :data:`SETTLE` ago and reads only the rest from the trail (a month of a
busy trail is a scan of every record in it), rebuilding all every :data:`REBUILD` seconds so
that a replica's records shipped late still show up.

The audit trail is read on the console's read pool (:mod:`.reads`): a month of records is a
scan neither the event loop nor the engines' executor must wait behind.
"""

from __future__ import annotations

import asyncio
import math
import threading
import time
from collections import Counter
from dataclasses import dataclass, field, replace

from aiohttp import web

from lockgate.audit import AuditQuery, AuditReader, AuditRow, HistogramBucket
from lockgate.console import charts, reads
from lockgate.console.reads import run_read
from lockgate.console.views_audit import VERIFIER, chain_status
from lockgate.console.views_audit_filters import record_href, run_href
from lockgate.console.web import ConsoleContext, LiveSessions, context, render, requires
from lockgate.errors import StoreUnavailable

#: window name -> (seconds shown, bucket seconds): 30 to 60 bars each
WINDOWS: dict[str, tuple[float, float]] = {
    "1h": (3600.0, 120.0),
    "24h": (86400.0, 1800.0),
    "7d": (7 * 86400.0, 4 * 3600.0),
    "30d": (30 * 86400.0, 12 * 3600.0),
}
WINDOW_NAMES = {
    "1h": "Last hour",
    "24h": "Last 24 hours",
    "7d": "Last 7 days",
    "30d": "Last 30 days",
}
DEFAULT_WINDOW = "24h"
#: small multiples: this many DAGs, the rest together
TOP_DAGS = 6
#: the audit explorer's filter of denials
DENIED = {"decision": "deny", "event": "denied"}
#: the denials the "denied most" resources are counted over (the newest), and shown
DENIAL_SAMPLE = 2000
RECENT_DENIALS = 10
TOP_LISTED = 5


#: buckets that ended this long ago are settled: cached, not read again
SETTLE = 300.0
#: the cached histogram is read again in full this often (records shipped later than SETTLE)
REBUILD = 600.0


TOKENS = "token_issued"


@dataclass
class _Settled:
    since: float  # the first bucket it holds
    until: float  # the end of the last settled bucket it holds
    built: float  # when it was first read (rebuilt REBUILD seconds later)
    rows: list[HistogramBucket]
    tokens: dict[float, int]  # bucket start -> tokens issued in it


class HistogramCache:
    """Per bucket size (one per window), the histogram and the tokens issued of the settled
    buckets: a page reads from the trail only what came after the last settled bucket."""

    def __init__(self) -> None:
        self._lock = threading.Lock()  # one reader fills it; the others wait and reuse
        self._settled: dict[float, _Settled] = {}

    def read(
        self, reader: AuditReader, since: float, bucket: float, now: float
    ) -> tuple[list[HistogramBucket], int]:
        """What ``reader.histogram(AuditQuery(since=since), bucket=bucket)`` answers, and
        how many tokens were issued since ``since``."""
        settled_until = math.floor((now - SETTLE) / bucket) * bucket
        if settled_until <= since:
            return _fresh(reader, since, bucket)
        with self._lock:
            kept = self._settled.get(bucket)
            if kept is None or kept.since > since or now - kept.built > REBUILD:
                kept = _Settled(since, since, now, [], {})
            if kept.until < settled_until:
                more = AuditQuery(since=kept.until, until=settled_until)
                kept.rows += reader.histogram(more, bucket=bucket)
                # one count a bucket (the ts index narrows each): a window's tokens are a sum
                for start in _starts(kept.until, settled_until, bucket):
                    one = replace(more, event=TOKENS, since=start, until=start + bucket)
                    kept.tokens[start] = reader.count(one)
                kept.until = settled_until
            kept.rows = [b for b in kept.rows if b.start >= since]  # the window moved on
            kept.tokens = {t: n for t, n in kept.tokens.items() if t >= since}
            kept.since = since
            self._settled[bucket] = kept
            rows, tokens = list(kept.rows), sum(kept.tokens.values())
        newest, more_tokens = _fresh(reader, settled_until, bucket)
        return rows + newest, tokens + more_tokens


def _fresh(reader: AuditReader, since: float, bucket: float) -> tuple[list[HistogramBucket], int]:
    window = AuditQuery(since=since)
    tokens = reader.count(replace(window, event=TOKENS))
    return reader.histogram(window, bucket=bucket), tokens


def _starts(since: float, until: float, bucket: float) -> list[float]:
    return [since + i * bucket for i in range(round((until - since) / bucket))]


CACHE: web.AppKey[HistogramCache] = web.AppKey("lockgate_console_overview_cache", HistogramCache)


@dataclass
class Overview:
    """What the page shows, read from the trail in one go."""

    buckets: list[charts.BucketLike]
    tokens_issued: int
    #: the newest denials of the window, newest first (at most DENIAL_SAMPLE)
    denials: list[AuditRow]
    #: more denials in the window than ``denials`` holds
    denials_capped: bool
    #: open sessions per kind; None when the registry cannot be read now
    sessions: Counter[str] | None = field(default_factory=Counter)


def add_routes(app: web.Application) -> None:
    reads.install(app)
    app[CACHE] = HistogramCache()
    app.router.add_get("/", overview, name="overview")


@requires("viewer")
async def overview(request: web.Request) -> web.StreamResponse:
    window = request.query.get("window", DEFAULT_WINDOW)
    if window not in WINDOWS:
        window = DEFAULT_WINDOW
    span, bucket = WINDOWS[window]
    now = time.time()
    axis = charts.TimeAxis.ending(now, span, bucket)
    ctx = context(request)
    windows = [(name, WINDOW_NAMES[name]) for name in WINDOWS]
    try:
        data = await run_read(request, _read, ctx, request.app[CACHE], axis, now)
    except StoreUnavailable as exc:  # the shared trail is down: say so, not a traceback
        error = f"The audit trail cannot be read now: {exc}"
        return render(request, "overview.html", status=503, window=window, windows=windows,
                      error=error)  # fmt: skip
    if ctx.live is not None:
        data.sessions = await asyncio.to_thread(_open_sessions, ctx.live)
    # the audit explorer's last verification of the chain, when the explorer is served
    chain = await chain_status(request) if VERIFIER in request.app else None
    every, per_dag = charts.series_of(data.buckets, axis, top=TOP_DAGS)
    totals = every.totals
    since = axis.start
    return render(
        request,
        "overview.html",
        window=window,
        windows=windows,
        error=None,
        axis=axis,
        since_text=charts.utc(axis.start),
        until_text=charts.utc(axis.until),
        bucket_text=charts.duration(bucket),
        totals=totals,
        dag_count=len({b.dag for b in data.buckets if b.dag is not None}),
        tokens_issued=data.tokens_issued,
        chart_all=charts.stacked_bars(every, axis, ident="all"),
        legend=charts.legend(),
        chart_dags=[
            charts.stacked_bars(s, axis, frame=charts.SMALL, ident=f"dag-{i}", keyed=False)
            for i, s in enumerate(per_dag)
        ],
        denied_dags=[
            (charts.NO_DAG, None, n)
            if dag is None
            else (dag, charts.audit_href(dag=dag, since=since, **DENIED), n)
            for dag, n in _denied_dags(data.buckets)
        ],
        denied_resources=[
            (resource, charts.audit_href(resource=resource, since=since, **DENIED), n)
            if resource
            else ("(none)", None, n)
            for resource, n in Counter(r.resource for r in data.denials).most_common(TOP_LISTED)
        ],
        denials_counted=len(data.denials),
        denials_capped=data.denials_capped,
        recent=data.denials[:RECENT_DENIALS],
        sessions=data.sessions,
        live=ctx.live is not None,
        chain=chain,
        href=charts.audit_href,
        record_href=record_href,
        run_href=run_href,
        utc=charts.utc,
        since=since,
    )


def _denied_dags(buckets: list[charts.BucketLike]) -> list[tuple[str | None, int]]:
    denied: Counter[str | None] = Counter()
    for b in buckets:
        if b.denied:
            denied[b.dag] += b.denied
    return sorted(denied.items(), key=lambda kv: (-kv[1], kv[0] or ""))[:TOP_LISTED]


def _open_sessions(live: LiveSessions) -> Counter[str] | None:
    try:
        return Counter(s.kind for s in live.open_sessions())
    except StoreUnavailable:  # the shared registry is down: the rest of the page still is
        return None


def _read(
    ctx: ConsoleContext, cache: HistogramCache, axis: charts.TimeAxis, now: float
) -> Overview:
    with ctx.audit_reader() as reader:
        buckets, tokens = cache.read(reader, axis.start, axis.bucket, now)
        newest = AuditQuery(event="denied", since=axis.start)
        denials = reader.query(newest, limit=DENIAL_SAMPLE)
    return Overview(list(buckets), tokens, denials.rows, denials.older is not None)
