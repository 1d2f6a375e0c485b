"""A DAG run's timeline as geometry for a server-rendered SVG (no script, no inline style):
one lane per task try, in the order the tries first appear; one mark per record at its
time, each a link to the record; denials larger and drawn last, so they stay on top."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime

from lockgate.audit import AuditRow

WIDTH = 960
LABELS = 200  # the lane labels' column
RIGHT = 48  # room for the last time label
TOP = 8
LANE = 28
AXIS = 36
TICKS = 5


@dataclass(frozen=True)
class Lane:
    y: float  # the lane's middle
    label: str
    top: float


@dataclass(frozen=True)
class Mark:
    x: float
    y: float
    r: float
    kind: str  # "allow" | "deny" | "error" | "other": the CSS class
    href: str
    label: str  # the mark's title (its accessible name)


@dataclass(frozen=True)
class Tick:
    x: float
    label: str


@dataclass(frozen=True)
class Timeline:
    width: int
    height: float
    plot_left: float
    plot_right: float
    axis_y: float
    lanes: list[Lane]
    marks: list[Mark]
    ticks: list[Tick]
    denied: int
    summary: str


def kind_of(row: AuditRow) -> str:
    return row.decision if row.decision in ("allow", "deny", "error") else "other"


def lane_label(task: str | None, try_number: int | None) -> str:
    name = task or "(no task)"
    if len(name) > 24:
        name = name[:23] + "…"
    return f"{name} · try {try_number}" if try_number is not None else name


def timeline(rows: Sequence[AuditRow], link: Callable[[AuditRow], str]) -> Timeline:
    """The geometry of ``rows`` (oldest first); ``link``: a record's URL."""
    keys: dict[tuple[str | None, int | None], int] = {}
    for row in rows:
        keys.setdefault((row.task_id, row.try_number), len(keys))
    lanes = [
        Lane(TOP + i * LANE + LANE / 2, lane_label(task, tries), TOP + i * LANE)
        for (task, tries), i in keys.items()
    ]
    axis_y = TOP + max(1, len(lanes)) * LANE + 6
    left, right = float(LABELS), float(WIDTH - RIGHT)
    first = rows[0].ts if rows else 0.0
    last = rows[-1].ts if rows else 0.0
    span = max(last - first, 0.0)

    def x_of(ts: float) -> float:
        if span == 0:
            return (left + right) / 2
        return round(left + (ts - first) / span * (right - left), 2)

    marks = []
    for row in rows:
        kind = kind_of(row)
        what = " ".join(p for p in (row.action, row.object or row.resource) if p)
        marks.append(
            Mark(
                x_of(row.ts), lanes[keys[(row.task_id, row.try_number)]].y,
                7.0 if kind == "deny" else 5.0, kind, link(row),
                f"{_clock(row.ts, span)} {row.event} {what}".strip(),
            )
        )  # fmt: skip
    marks.sort(key=lambda m: m.kind == "deny")  # denials last: drawn on top
    ticks = []
    if rows:
        count = 1 if span == 0 else TICKS
        for i in range(count):
            ts = first + (span * i / (count - 1) if count > 1 else 0)
            ticks.append(Tick(x_of(ts), _clock(ts, span)))
    denied = sum(1 for m in marks if m.kind == "deny")
    tries = "task try" if len(lanes) == 1 else "task tries"
    summary = (
        f"{len(rows)} record{'' if len(rows) == 1 else 's'} in {len(lanes)} {tries} over "
        f"{duration(span)}; {denied} denied"
    )
    return Timeline(WIDTH, axis_y + AXIS, left, right, axis_y, lanes, marks, ticks, denied,
                    summary)  # fmt: skip


def _clock(ts: float, span: float) -> str:
    """A time on the axis, as precise as the run's span needs (UTC)."""
    when = datetime.fromtimestamp(ts, UTC)
    if span < 10:
        return when.strftime("%H:%M:%S.%f")[:-3]
    return when.strftime("%H:%M:%S" if span < 86_400 else "%m-%d %H:%M")


def duration(seconds: float) -> str:
    """``0.006`` -> ``6 ms``; ``42.5`` -> ``42.5 s``; ``3480`` -> ``58.0 min``."""
    if seconds < 1:
        return f"{seconds * 1000:.0f} ms"
    if seconds < 120:
        return f"{seconds:.1f} s"
    if seconds < 7_200:
        return f"{seconds / 60:.1f} min"
    return f"{seconds / 3600:.1f} h"


__all__ = ["Lane", "Mark", "Tick", "Timeline", "timeline"]
