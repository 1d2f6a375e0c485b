"""The overview's SVG charts, parsed: bar heights proportional to the counts, stacking order,
every label escaped, links into the audit explorer, the table alternative, the empty state
and the small multiples' folding of DAGs beyond the top into "other"."""

from __future__ import annotations

import xml.etree.ElementTree as ET
from dataclasses import dataclass
from urllib.parse import parse_qs, urlsplit

import pytest

from lockgate.console import charts

SVG = "{http://www.w3.org/2000/svg}"
HOUR = 3600.0
# 2026-12-05 00:00 UTC, a whole multiple of every bucket the overview uses
T0 = 1796428800.0


@dataclass(frozen=True)
class Bucket:
    start: float
    dag: str | None
    allowed: int = 0
    denied: int = 0
    throttled: int = 0
    upstream_errors: int = 0


def parse(markup: str) -> ET.Element:
    """The figure as XML (the chart is well-formed: an SVG namespace added for the parser)."""
    text = str(markup).replace("<svg ", f'<svg xmlns="{SVG[1:-1]}" ', 1)
    return ET.fromstring(text)  # noqa: S314 - markup this module rendered, not the world's


def segments(figure: ET.Element) -> list[ET.Element]:
    return [e for e in figure.iter(f"{SVG}rect") if "seg" in e.get("class", "").split()]


def axis(buckets: int = 4) -> charts.TimeAxis:
    return charts.TimeAxis(T0, T0 + buckets * HOUR, HOUR)


def test_bar_heights_are_proportional_to_the_counts_and_stack_denied_first() -> None:
    data = [Bucket(T0, "etl", allowed=30, denied=10), Bucket(T0 + HOUR, "etl", allowed=60),
            Bucket(T0 + 3 * HOUR, "etl", allowed=5, denied=5, throttled=10)]  # fmt: skip
    every, _ = charts.series_of(data, axis())
    fig = parse(charts.stacked_bars(every, axis(), ident="t"))
    segs = segments(fig)
    per_count = {float(s.get("height", 0)) / int(s.get("data-count", 0)) for s in segs}
    assert max(per_count) - min(per_count) < 0.01  # one scale for every segment
    kinds = [s.get("class", "").split()[1] for s in segs]
    assert kinds == ["seg-denied", "seg-allowed", "seg-allowed",
                     "seg-denied", "seg-throttled", "seg-allowed"]  # fmt: skip
    first = segs[:2]  # the denied segment sits on the baseline, allowed on top of it
    assert float(first[0].get("y", 0)) > float(first[1].get("y", 0))
    assert abs(float(first[1].get("y", 0)) + float(first[1].get("height", 0))
               - float(first[0].get("y", 0))) < 0.02  # fmt: skip
    bottoms = {round(float(s.get("y", 0)) + float(s.get("height", 0)), 1) for s in segs
               if s.get("class", "").endswith("seg-denied")}  # fmt: skip
    assert len(bottoms) == 1  # every denied segment starts at the same baseline


def test_the_y_axis_reaches_the_busiest_bucket_with_round_ticks() -> None:
    assert charts.nice_ticks(60) == [0, 20, 40, 60]
    assert charts.nice_ticks(61) == [0, 20, 40, 60, 80]
    assert charts.nice_ticks(7) == [0, 2, 4, 6, 8]
    assert charts.nice_ticks(1) == [0, 1]
    assert charts.nice_ticks(12345)[-1] >= 12345 and len(charts.nice_ticks(12345)) <= 6


def test_labels_are_escaped_everywhere() -> None:
    dag = '<b>x</b>" onload="alert(1)'
    _, dags = charts.series_of([Bucket(T0, dag, allowed=3, denied=1)], axis())
    markup = str(charts.stacked_bars(dags[0], axis(), ident="d"))
    assert "<b>" not in markup and 'onload="' not in markup
    fig = parse(markup)  # still well-formed: nothing broke out of a text or attribute
    assert fig.find("figcaption") is not None
    assert fig.findtext("figcaption") == dag
    texts = [t.text or "" for t in fig.iter(f"{SVG}title")]
    assert any(dag in t for t in texts)
    hrefs = [a.get("href", "") for a in fig.iter(f"{SVG}a")]
    assert hrefs and all(parse_qs(urlsplit(h).query)["dag"] == [dag] for h in hrefs)


def test_bars_and_table_cells_link_to_the_audit_explorer_for_their_window() -> None:
    data = [Bucket(T0 + HOUR, "etl", allowed=2, denied=3), Bucket(T0 + 2 * HOUR, "etl", allowed=4)]
    _, dags = charts.series_of(data, axis())
    fig = parse(charts.stacked_bars(dags[0], axis(), ident="d"))
    bars = list(fig.iter(f"{SVG}a"))
    assert all(a.get("tabindex") == "-1" for a in bars)  # the table's links serve the keyboard
    queries = [parse_qs(urlsplit(a.get("href", "")).query) for a in bars]
    assert {urlsplit(a.get("href", "")).path for a in bars} == {"/console/audit"}
    window = {"dag": ["etl"], "since": ["2026-12-05T01:00:00Z"], "until": ["2026-12-05T02:00:00Z"]}
    assert queries[0] == {**window, "decision": ["deny"]}  # a bar with denials: its denials
    assert queries[1] == {"dag": ["etl"], "since": ["2026-12-05T02:00:00Z"],
                          "until": ["2026-12-05T03:00:00Z"]}  # fmt: skip
    tip = bars[0].findtext(f"{SVG}title")
    assert tip == (
        "etl, 2026-12-05 01:00 to 02:00 UTC: 3 denied, 0 throttled, 0 upstream errors, 2 allowed"
    )
    table = fig.find("details/table")
    assert table is not None and table.findtext("caption", "").startswith("etl")
    rows = table.findall("tbody/tr")
    assert len(rows) == 2  # buckets without requests are left out
    assert rows[0].findtext("th") == "2026-12-05 01:00"
    cells = rows[0].findall("td")
    assert [("".join(c.itertext())) for c in cells] == ["3", "0", "0", "2", "5"]
    assert cells[1].find("a") is None  # nothing throttled: nothing to open
    denied = parse_qs(urlsplit(cells[0].find("a").get("href", "")).query)  # type: ignore[union-attr]
    assert denied == {**window, "decision": ["deny"], "event": ["denied"]}
    allowed = parse_qs(urlsplit(cells[3].find("a").get("href", "")).query)  # type: ignore[union-attr]
    assert allowed == {**window, "event": ["allowed"]}


def test_the_picture_is_one_labelled_image_and_the_links_are_hidden_from_readers() -> None:
    every, _ = charts.series_of([Bucket(T0, "etl", allowed=7, denied=2)], axis())
    fig = parse(charts.stacked_bars(every, axis(), ident="a"))
    svg = fig.find(f"{SVG}svg")
    assert svg is not None
    image = svg.find(f"{SVG}g[@role='img']")
    assert image is not None
    label = image.get("aria-label", "")
    assert "9 requests: 2 denied, 0 throttled, 0 upstream errors, 7 allowed" in label
    assert "2026-12-05 00:00 UTC" in label
    marks = svg.find(f"{SVG}g[@aria-hidden='true']")
    assert marks is not None and len(segments(marks)) == 2
    assert fig.find("details/summary").text == "Show as table"  # type: ignore[union-attr]
    assert "style=" not in str(charts.stacked_bars(every, axis(), ident="a"))


def test_an_empty_window_says_so_instead_of_drawing_nothing() -> None:
    every, dags = charts.series_of([], axis())
    assert dags == []
    fig = parse(charts.stacked_bars(every, axis(), ident="a"))
    assert fig.find(f"{SVG}svg") is None
    assert fig.findtext("p") == "No requests in this window."


def test_the_busiest_dags_get_their_own_chart_and_the_rest_are_summed() -> None:
    data = [Bucket(T0, f"dag{i}", allowed=10 * i) for i in range(1, 6)]
    data += [Bucket(T0 + HOUR, None, denied=1), Bucket(T0 + 9 * HOUR, "late", allowed=99)]
    every, dags = charts.series_of(data, axis(), top=2)
    assert [s.label for s in dags] == ["dag5", "dag4", "4 other DAGs"]
    assert dags[-1].linked is False and dags[-1].totals == charts.Counts(60, 1, 0, 0)
    assert every.totals == charts.Counts(150, 1, 0, 0)  # "late" is past the axis: left out
    every, dags = charts.series_of(data, axis(), top=10)
    assert dags[-1].label == charts.NO_DAG and not dags[-1].linked
    fig = parse(charts.stacked_bars(dags[-1], axis(), ident="n"))
    assert list(fig.iter(f"{SVG}a")) == []  # no single DAG to filter on


@pytest.mark.parametrize(
    ("span", "bucket", "first_label"),
    [
        (3600, 120, "00:00"),
        (86400, 1800, "00:00"),
        (7 * 86400, 4 * 3600, "05 Dec"),
        (30 * 86400, 12 * 3600, None),
    ],
)
def test_time_labels_fall_on_round_utc_times(
    span: int, bucket: int, first_label: str | None
) -> None:
    ax = charts.TimeAxis(T0, T0 + span, float(bucket))
    assert 24 <= ax.count <= 60
    every, _ = charts.series_of([Bucket(T0, "etl", allowed=1)], ax)
    fig = parse(charts.stacked_bars(every, ax, ident="a"))
    labels = [t.text for t in fig.iter(f"{SVG}text") if t.get("text-anchor") == "middle"]
    assert 2 <= len(labels) <= charts.LARGE.labels
    if first_label is not None:
        assert labels[0] == first_label


def test_an_axis_ending_now_covers_the_window_in_whole_buckets() -> None:
    ax = charts.TimeAxis.ending(T0 + 125.0, 3600.0, 120.0)
    assert ax.start % 120 == 0 and ax.start <= T0 + 125 - 3600
    assert ax.index(T0 + 125.0) == ax.count - 1
    assert ax.index(ax.start - 1) is None and ax.index(T0 + 10_000) is None


def test_small_multiples_share_one_legend() -> None:
    every, _ = charts.series_of([Bucket(T0, "etl", allowed=1)], axis())
    alone = parse(charts.stacked_bars(every, axis(), frame=charts.SMALL, ident="a", keyed=False))
    assert alone.find("ul") is None
    shared = ET.fromstring(str(charts.legend()))  # noqa: S314 - markup this module rendered
    assert [("".join(li.itertext())) for li in shared] == [
        "Allowed", "Upstream errors", "Throttled", "Denied"
    ]  # fmt: skip


def test_a_time_of_day_carries_its_date_where_the_day_changes() -> None:
    ax = charts.TimeAxis(T0 - 12 * HOUR, T0 + 12 * HOUR + 1, 1800.0)  # noon to noon: 49 bars
    labels = list(charts.time_labels(ax, charts.label_step(ax, 7)).values())
    assert labels == ["04 Dec 12:00", "18:00", "05 Dec 00:00", "06:00", "12:00"]
    hour = charts.TimeAxis(T0 + HOUR, T0 + 2 * HOUR, 120.0)
    assert list(charts.time_labels(hour, 600.0).values())[:2] == ["01:00", "01:10"]
