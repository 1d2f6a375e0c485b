"""A run's timeline geometry: a lane per task try in the order tries first appear, marks
placed by time inside the plot, denials larger and drawn last, axis labels as precise as the
run's span needs, and a text summary for screen readers."""

from __future__ import annotations

from lockgate.audit import AuditRow
from lockgate.console.views_audit_timeline import duration, timeline

T0 = 1_767_225_600.0


def _row(seq: int, ts: float, task: str | None, tries: int | None, decision: str) -> AuditRow:
    return AuditRow(event="denied" if decision == "deny" else "allowed", ts=ts, task_id=task,
                    try_number=tries, decision=decision, action="read", object=f"o{seq}",
                    seq=seq)  # fmt: skip


def _link(row: AuditRow) -> str:
    return f"/r/{row.seq}"


def test_lanes_marks_and_summary() -> None:
    rows = [
        _row(1, T0, "extract", 1, "allow"),
        _row(2, T0 + 10, "load", 1, "deny"),
        _row(3, T0 + 20, "extract", 2, "allow"),
        _row(4, T0 + 40, "load", 1, "allow"),
        _row(5, T0 + 100, None, None, "error"),
    ]
    t = timeline(rows, _link)
    assert [lane.label for lane in t.lanes] == [
        "extract · try 1", "load · try 1", "extract · try 2", "(no task)",
    ]  # fmt: skip
    assert t.marks[-1].kind == "deny" and t.marks[-1].r > t.marks[0].r  # drawn on top
    by_href = {m.href: m for m in t.marks}
    assert by_href["/r/1"].x == t.plot_left and by_href["/r/5"].x == t.plot_right
    assert by_href["/r/4"].y == by_href["/r/2"].y  # the same lane
    assert t.plot_left < by_href["/r/2"].x < by_href["/r/3"].x < by_href["/r/4"].x
    assert t.summary == "5 records in 4 task tries over 100.0 s; 1 denied"
    assert len({tick.label for tick in t.ticks}) == len(t.ticks) == 5
    assert all(t.plot_left <= tick.x <= t.plot_right for tick in t.ticks)


def test_a_run_of_milliseconds_and_a_single_record() -> None:
    rows = [_row(i, T0 + i * 0.002, "t", 1, "allow") for i in range(4)]
    t = timeline(rows, _link)
    assert t.summary == "4 records in 1 task try over 6 ms; 0 denied"
    assert len({tick.label for tick in t.ticks}) == 5  # milliseconds on the axis
    one = timeline(rows[:1], _link)
    assert one.marks[0].x == (one.plot_left + one.plot_right) / 2 and len(one.ticks) == 1
    empty = timeline([], _link)
    assert empty.marks == [] and empty.ticks == [] and empty.summary.startswith("0 records")


def test_duration() -> None:
    assert [duration(s) for s in (0.0064, 42.5, 3480, 14_400)] == [
        "6 ms", "42.5 s", "58.0 min", "4.0 h",
    ]  # fmt: skip
