"""The suggest benchmark builds a valid trail and measures both commands on it."""

from __future__ import annotations

from pathlib import Path

from benchmarks.policy_suggest import build, measure


def test_benchmark_measures_suggest_and_unused_on_a_small_trail(tmp_path: Path) -> None:
    config = build(tmp_path, 3000)
    suggested = measure(config, "suggest")
    assert suggested["rows"] > 2000 and suggested["rules"] > 0
    assert suggested["seconds"] >= 0 and suggested["peak_rss_mib"] > 0
    unused = measure(config, "unused")
    assert unused == {**unused, "rules": 3, "never_used": 2}
