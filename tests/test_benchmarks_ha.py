"""The HA benchmark's figures: percentiles as the note quotes them, and a brief run."""

from __future__ import annotations

import pytest
from benchmarks.ha import _p99_line, main

from tests.ha.scenarios import percentile, summary_ms
from tests.pgserver.fixtures import require_postgres


def test_percentiles_are_nearest_rank() -> None:
    values = [i / 1000 for i in range(1, 101)]  # 1..100 ms
    assert percentile(values, 50) == 0.05 and percentile(values, 99) == 0.099
    assert percentile([0.2], 99) == 0.2
    assert summary_ms(values) == "p50 50.0 ms, p99 99.0 ms, max 100.0 ms (n=100)"
    assert summary_ms([]) == "no samples"
    assert _p99_line("x", values).endswith("PASS")
    assert _p99_line("x", [float("inf")]).endswith("MISS")
    assert _p99_line("x", []).endswith("?")


@pytest.mark.slow
def test_the_benchmark_runs_end_to_end_briefly(capsys: pytest.CaptureFixture[str]) -> None:
    require_postgres()
    main(["--revocations", "3", "--sessions", "1", "--rotations", "2", "--key-rotations", "1"])
    out = capsys.readouterr().out
    for label in (
        "revocation p99 over 6 refusals",
        "busy session end p99",
        "idle sessions left open",
        "credential rotation p99 over 6 switches",
        "signing key publication p99",
        "requests failed on the surviving replicas",
        "served requests missing from the audit trail",
        "audit verify exit code",
        "requests failed, PostgreSQL restarted",
        "requests failed, PostgreSQL down 3 s",
        "served from memory after PostgreSQL went away",
        "every replica serving again after PostgreSQL came back",
    ):
        [line] = [line for line in out.splitlines() if line.strip().startswith(label)]
        assert line.endswith(("PASS", "MISS")), line
