"""The console benchmark builds a chain that verifies, serves it, signs in and times pages."""

from __future__ import annotations

import time
from pathlib import Path

from benchmarks.console import (
    healthz_during,
    measure_suggest,
    pages,
    serve,
    time_pages,
    write_trail,
)
from benchmarks.policy_suggest import build

from lockgate.audit import AuditReader


def test_the_trail_is_a_valid_chain_of_every_kind_of_record(tmp_path: Path) -> None:
    now = time.time()
    asked = write_trail(tmp_path, 3000, now)
    reader = AuditReader(tmp_path / "audit.db")
    assert reader.verify().ok
    rows = reader.search(limit=3000)
    assert len(rows) == 3000 and rows[-1].ts < now
    events = {r.event for r in rows}
    assert {"token_issued", "admitted", "allowed", "denied", "throttled"} <= events
    assert any("shadow" in r.detail for r in rows)
    assert reader.record(asked["seq"]) is not None
    assert any(r.run_id == asked["run"] and r.dag_id == asked["dag"] for r in rows)


def test_a_small_run_signs_in_and_every_page_answers(tmp_path: Path) -> None:
    served, asked = serve(tmp_path, 500, time.time())
    try:
        assert served.cookie
        timings = time_pages(served, asked)
        median, worst, seconds = healthz_during(served, "/console/audit/export.csv")
    finally:
        served.stop()
    assert [label for label, _ in pages(asked)] == list(timings)
    assert {label: t.status for label, t in timings.items() if t.status != 200} == {}
    assert all(t.cold > 0 and t.warm > 0 for t in timings.values())
    assert 0 < median <= worst and seconds > 0


def test_both_suggest_paths_read_the_same_rows(tmp_path: Path) -> None:
    config = build(tmp_path, 2000)
    cli, console = measure_suggest(config, "cli"), measure_suggest(config, "console")
    assert cli["rows"] == console["rows"] > 1000
    assert cli["yaml"] == console["yaml"] and cli["peak_rss_mib"] > 0
