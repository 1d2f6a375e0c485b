"""Charts of requests over time, drawn on the server as SVG: the overview's pictures.

Pure functions from counts to markup. A chart is a ``<figure>``: a stacked bar per time
bucket (denied at the bottom, where bars share a baseline and denials compare at a glance,
then throttled, upstream errors, allowed), y ticks, UTC time labels, a legend, and the same
numbers as a table in a ``<details>`` ("Show as table"). No script and no ``style=""``
(the console's Content Security Policy blocks both): colours are CSS classes from
``static/charts.css`` (lines also carry SVG presentation attributes). Every label (a DAG id
is whatever a pipeline called itself) is escaped.

Accessibility: the picture is one ``role="img"`` with an ``aria-label`` summary; the bars are
links (to the audit explorer for that DAG and time window, its denials when it has any) for
the mouse only (``aria-hidden``, ``tabindex="-1"``): keyboard and screen-reader users follow
the table's links, one per decision and bucket.

Data comes in as :class:`lockgate.audit.HistogramBucket` (or anything shaped like it);
:func:`series_of` folds them into one series for every DAG together and small multiples for
the busiest DAGs, the rest as "other DAGs".
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Protocol
from urllib.parse import urlencode

from markupsafe import Markup, escape

from lockgate.console.live import visible

AUDIT_PATH = "/console/audit"
#: stacking order, bottom first: (field, legend label, audit explorer filter of a segment)
KINDS: tuple[tuple[str, str, dict[str, str]], ...] = (
    ("denied", "Denied", {"decision": "deny", "event": "denied"}),
    ("throttled", "Throttled", {"decision": "deny", "event": "throttled"}),
    ("upstream_errors", "Upstream errors", {"event": "upstream_error"}),
    ("allowed", "Allowed", {"event": "allowed"}),
)
#: label steps a time axis may use (seconds): round times a reader expects
TIME_STEPS = (60, 120, 300, 600, 900, 1800, 3600, 7200, 10800, 21600, 43200, 86400,
              2 * 86400, 3 * 86400, 5 * 86400, 7 * 86400, 14 * 86400)  # fmt: skip
NO_DAG = "(no DAG)"


class BucketLike(Protocol):
    """One histogram bucket of one DAG (:class:`lockgate.audit.HistogramBucket`)."""

    @property
    def start(self) -> float: ...
    @property
    def dag(self) -> str | None: ...
    @property
    def allowed(self) -> int: ...
    @property
    def denied(self) -> int: ...
    @property
    def throttled(self) -> int: ...
    @property
    def upstream_errors(self) -> int: ...


@dataclass(frozen=True)
class TimeAxis:
    """Buckets of ``bucket`` seconds from ``start`` (a multiple of ``bucket``, UTC) up to
    ``until``: the last bucket may still be filling."""

    start: float
    until: float
    bucket: float

    @classmethod
    def ending(cls, now: float, span: float, bucket: float) -> TimeAxis:
        """The last ``span`` seconds before ``now`` on a grid of whole buckets."""
        return cls(math.floor((now - span) / bucket) * bucket, now, bucket)

    @property
    def count(self) -> int:
        return max(1, math.ceil((self.until - self.start) / self.bucket))

    def starts(self) -> list[float]:
        return [self.start + i * self.bucket for i in range(self.count)]

    def index(self, ts: float) -> int | None:
        """The bucket ``ts`` falls in; None outside the axis."""
        i = math.floor((ts - self.start) / self.bucket)
        return i if 0 <= i < self.count else None


@dataclass(frozen=True)
class Counts:
    allowed: int = 0
    denied: int = 0
    throttled: int = 0
    upstream_errors: int = 0

    @property
    def total(self) -> int:
        return self.allowed + self.denied + self.throttled + self.upstream_errors

    def __add__(self, other: Counts) -> Counts:
        return Counts(
            self.allowed + other.allowed,
            self.denied + other.denied,
            self.throttled + other.throttled,
            self.upstream_errors + other.upstream_errors,
        )

    def of(self, kind: str) -> int:
        return int(getattr(self, kind))


@dataclass(frozen=True)
class Series:
    """One chart's bars: ``counts[i]`` is bucket ``i`` of the axis. ``dag``: the audit
    explorer filter of its links (None with ``linked``: every DAG); unlinked series (other
    DAGs together, records without a DAG) have no single filter to link to."""

    label: str
    counts: tuple[Counts, ...]
    dag: str | None = None
    linked: bool = True

    @property
    def totals(self) -> Counts:
        return sum(self.counts, Counts())


def series_of(
    buckets: Iterable[BucketLike], axis: TimeAxis, *, top: int = 6
) -> tuple[Series, list[Series]]:
    """Every DAG together, and one series per DAG for the ``top`` DAGs by requests (ties:
    by name), the rest summed as "other DAGs". Buckets outside the axis are left out."""
    per_dag: dict[str | None, list[Counts]] = {}
    for b in buckets:
        i = axis.index(b.start)
        if i is None:
            continue
        row = per_dag.setdefault(b.dag, [Counts()] * axis.count)
        row[i] = row[i] + Counts(b.allowed, b.denied, b.throttled, b.upstream_errors)
    every = [Counts()] * axis.count
    for row in per_dag.values():
        every = [a + b for a, b in zip(every, row, strict=True)]
    ranked = sorted(per_dag.items(), key=lambda kv: (-sum(c.total for c in kv[1]), kv[0] or ""))
    shown = [  # the label says the id in sentences (bidi controls as code points); links use dag
        Series(NO_DAG if dag is None else visible(dag), tuple(row), dag=dag, linked=dag is not None)
        for dag, row in ranked[:top]
    ]
    rest = ranked[top:]
    if rest:
        other = [Counts()] * axis.count
        for _, row in rest:
            other = [a + b for a, b in zip(other, row, strict=True)]
        label = f"{len(rest)} other DAG{'s' if len(rest) != 1 else ''}"
        shown.append(Series(label, tuple(other), linked=False))
    return Series("All DAGs", tuple(every)), shown


# -- formatting ------------------------------------------------------------------------------


def utc(ts: float, fmt: str = "%Y-%m-%d %H:%M") -> str:
    return datetime.fromtimestamp(ts, UTC).strftime(fmt)


def iso(ts: float) -> str:
    """A time as the audit explorer's filters take it: ISO 8601, UTC."""
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def duration(seconds: float) -> str:
    """``1800`` -> ``30 min``; ``14400`` -> ``4 h``; ``86400`` -> ``1 day``."""
    if seconds < 3600:
        return f"{seconds / 60:g} min"
    if seconds < 86400:
        return f"{seconds / 3600:g} h"
    days = seconds / 86400
    return f"{days:g} day{'s' if days != 1 else ''}"


def audit_href(**filters: str | float | None) -> str:
    """A link into the audit explorer with ``filters`` (None left out; times as ISO UTC)."""
    params = {
        k: iso(v) if k in ("since", "until") and isinstance(v, float | int) else str(v)
        for k, v in filters.items()
        if v is not None
    }
    return f"{AUDIT_PATH}?{urlencode(params, safe=':')}"  # ':' is fine in a query: shorter


def nice_ticks(peak: int, most: int = 5) -> list[int]:
    """0 and round steps (1, 2 or 5 times a power of ten) up to at least ``peak``, at most
    ``most`` steps."""
    if peak <= 0:
        return [0, 1]
    raw = peak / most
    power = 10 ** math.floor(math.log10(raw)) if raw >= 1 else 1
    step = next(m * power for m in (1, 2, 5, 10) if m * power >= raw)
    step = max(1, int(step))
    return [step * i for i in range(math.ceil(peak / step) + 1)]


def label_step(axis: TimeAxis, most: int) -> float:
    """Seconds between time labels: a round step, a whole number of buckets, at most
    ``most`` labels on the axis."""
    span = axis.count * axis.bucket
    for step in TIME_STEPS:
        if step >= axis.bucket and step % axis.bucket == 0 and span / step <= most:
            return float(step)
    return axis.bucket * math.ceil(axis.count / most)


def time_labels(axis: TimeAxis, step: float) -> dict[int, str]:
    """Bucket index -> its label, on every ``step`` (a round UTC time): days as ``05 Dec``;
    times of day as ``06:00``, with the date where the day changes (and on the first label of
    an axis longer than a day), so a reader never guesses which day a time is on."""
    labels: dict[int, str] = {}
    day = None if axis.count * axis.bucket > 86400 else utc(axis.start, "%d %b")
    for i, start in enumerate(axis.starts()):
        if start % step:
            continue
        if step >= 86400:
            labels[i] = utc(start, "%d %b")
            continue
        today = utc(start, "%d %b")
        labels[i] = utc(start, "%H:%M") if today == day else utc(start, "%d %b %H:%M")
        day = today
    return labels


# -- the chart -------------------------------------------------------------------------------


@dataclass(frozen=True)
class Frame:
    """A chart's size in viewBox units and its plot area's margins."""

    width: int
    height: int
    left: int
    right: int
    top: int
    bottom: int
    labels: int  # at most this many time labels

    @property
    def plot_w(self) -> float:
        return self.width - self.left - self.right

    @property
    def plot_h(self) -> float:
        return self.height - self.top - self.bottom


LARGE = Frame(width=760, height=260, left=52, right=10, top=12, bottom=34, labels=7)
SMALL = Frame(width=380, height=150, left=44, right=8, top=10, bottom=28, labels=4)


def summary(series: Series, axis: TimeAxis) -> str:
    """The chart in one sentence: its aria-label."""
    t = series.totals
    what = f"{series.label}: requests per {duration(axis.bucket)}, {utc(axis.start)} to "
    what += f"{utc(axis.until)} UTC. "
    if t.total == 0:
        return what + "No requests in this window."
    busiest = max(range(axis.count), key=lambda i: series.counts[i].total)
    peak = series.counts[busiest]
    said = ", ".join(f"{t.of(kind):,} {label.lower()}" for kind, label, _ in KINDS)
    when = utc(axis.start + busiest * axis.bucket)
    return (
        f"{what}{t.total:,} requests: {said}. Busiest {when} UTC with {peak.total:,} "
        f"({peak.denied:,} denied)."
    )


def stacked_bars(
    series: Series, axis: TimeAxis, *, frame: Frame = LARGE, ident: str, keyed: bool = True
) -> Markup:
    """``series`` as a ``<figure>``: the SVG, its legend (unless ``keyed`` is False: small
    multiples share one :func:`legend`) and its table. ``ident`` makes the figure's element
    ids unique on the page (one per chart)."""
    slug = escape(ident)
    title = escape(series.label)
    head = f'<figure class="chart" id="chart-{slug}"><figcaption>{title}</figcaption>'
    if series.totals.total == 0:
        return _built(f'{head}<p class="empty">No requests in this window.</p></figure>')
    ticks = nice_ticks(max(c.total for c in series.counts))
    return _built(
        head
        + _svg(series, axis, frame, ticks)
        + (_legend() if keyed else "")
        + _table(series, axis)
        + "</figure>"
    )


def _svg(series: Series, axis: TimeAxis, frame: Frame, ticks: list[int]) -> str:
    f = frame
    top = ticks[-1]
    scale = f.plot_h / top
    base = f.top + f.plot_h
    parts = [
        f'<svg class="chart-svg" viewBox="0 0 {f.width} {f.height}" '
        f'preserveAspectRatio="xMidYMid meet" focusable="false">',
        f'<g role="img" aria-label="{escape(summary(series, axis))}">'
        f'<rect class="plot" x="{f.left}" y="{f.top}" width="{f.plot_w:g}" '
        f'height="{f.plot_h:g}" fill="none"/></g>',
        '<g aria-hidden="true">',
    ]
    for value in ticks:  # y grid and tick labels
        y = round(base - value * scale, 2)
        parts.append(
            f'<line class="grid" x1="{f.left}" x2="{f.width - f.right}" y1="{y:g}" y2="{y:g}" '
            f'stroke="#ddd"/><text class="tick" x="{f.left - 6}" y="{y:g}" '
            f'text-anchor="end" dominant-baseline="middle">{_short(value)}</text>'
        )
    slot = f.plot_w / axis.count
    width = round(max(slot * 0.8, 1.0), 2)
    labels = time_labels(axis, label_step(axis, f.labels))
    for i in range(axis.count):
        x = round(f.left + i * slot + (slot - width) / 2, 2)
        parts.append(_bar(series, axis, i, x, width, base, scale))
        if i in labels:
            cx = round(f.left + i * slot, 2)
            parts.append(
                f'<line class="axis" x1="{cx:g}" x2="{cx:g}" y1="{base}" y2="{base + 4}" '
                f'stroke="#888"/><text class="tick" x="{cx:g}" y="{base + 16}" '
                f'text-anchor="middle">{escape(labels[i])}</text>'
            )
    parts.append(
        f'<line class="axis" x1="{f.left}" x2="{f.width - f.right}" y1="{base}" y2="{base}" '
        f'stroke="#888"/><text class="axis-title" x="{f.width - f.right}" '
        f'y="{f.height - 2}" text-anchor="end">UTC</text>'
    )
    parts.append("</g></svg>")
    return "".join(parts)


def _bar(
    series: Series, axis: TimeAxis, i: int, x: float, width: float, base: float, scale: float
) -> str:
    """One bucket's stacked segments under one tooltip. With a filter to link to, the bar
    opens the audit explorer on that DAG and window: its denials when it has any (what
    people click a bar for), else all its requests. Mouse only: the table carries the
    per-decision links for everyone."""
    counts = series.counts[i]
    if counts.total == 0:
        return ""
    start = axis.start + i * axis.bucket
    when = f"{utc(start)} to {utc(start + axis.bucket, '%H:%M')} UTC"
    said = ", ".join(f"{counts.of(kind):,} {label.lower()}" for kind, label, _ in KINDS)
    out = [f"<title>{escape(f'{series.label}, {when}: {said}')}</title>"]
    y = base
    for kind, _, _ in KINDS:
        n = counts.of(kind)
        if n == 0:
            continue
        h = round(n * scale, 2)
        y = round(y - h, 2)
        out.append(
            f'<rect class="seg seg-{kind}" x="{x:g}" y="{y:g}" width="{width:g}" '
            f'height="{h:g}" data-count="{n}"/>'
        )
    marks = "".join(out)
    if not series.linked:
        return f'<g class="bar">{marks}</g>'
    denied = {"decision": "deny"} if counts.denied or counts.throttled else {}
    href = audit_href(dag=series.dag, since=start, until=start + axis.bucket, **denied)
    return f'<a class="bar" href="{escape(href)}" tabindex="-1">{marks}</a>'


def _decision_href(series: Series, kind: str, start: float, bucket: float) -> str:
    filters = next(f for k, _, f in KINDS if k == kind)
    return audit_href(dag=series.dag, since=start, until=start + bucket, **filters)


def legend() -> Markup:
    """What the colours mean, for charts drawn without their own."""
    return _built(_legend())


def _legend() -> str:
    items = "".join(
        f'<li><span class="swatch seg-{kind}" aria-hidden="true"></span>{label}</li>'
        for kind, label, _ in reversed(KINDS)
    )
    return f'<ul class="legend" aria-label="Legend">{items}</ul>'


def _table(series: Series, axis: TimeAxis) -> str:
    """The chart's numbers, buckets with requests only, each count a link (keyboard and
    screen readers reach the explorer from here)."""
    rows = []
    for i, counts in enumerate(series.counts):
        if counts.total == 0:
            continue
        start = axis.start + i * axis.bucket
        cells = []
        for kind, _, _ in KINDS:
            n = counts.of(kind)
            text = f"{n:,}"
            if series.linked and n:
                href = escape(_decision_href(series, kind, start, axis.bucket))
                text = f'<a href="{href}">{text}</a>'
            cells.append(f'<td class="num">{text}</td>')
        rows.append(
            f'<tr><th scope="row">{escape(utc(start))}</th>{"".join(cells)}'
            f'<td class="num">{counts.total:,}</td></tr>'
        )
    head = "".join(f'<th scope="col" class="num">{label}</th>' for _, label, _ in KINDS)
    return (
        '<details class="chart-table"><summary>Show as table</summary>'
        f'<table class="data"><caption>{escape(series.label)}: requests per '
        f"{escape(duration(axis.bucket))} (UTC; buckets without requests left out)</caption>"
        f'<thead><tr><th scope="col">Bucket start (UTC)</th>{head}'
        f'<th scope="col" class="num">Total</th></tr></thead><tbody>{"".join(rows)}</tbody></table>'
        "</details>"
    )


def _built(html: str) -> Markup:
    """Markup this module assembled: every value in it went through ``escape`` (text and
    attributes alike) or is a number this module formatted."""
    return Markup(html)  # noqa: S704 - the one door; see the docstring


def _short(n: int) -> str:
    """Tick labels: 1500 -> 1.5k, 2000000 -> 2M."""
    if n >= 1_000_000:
        return f"{n / 1_000_000:g}M"
    if n >= 1000:
        return f"{n / 1000:g}k"
    return str(n)
