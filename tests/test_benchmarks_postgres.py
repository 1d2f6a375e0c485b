"""The PostgreSQL benchmark reads pgbench's results and judges the issue's targets."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from benchmarks.postgres import WORKLOADS, Run, main, median_latency_ms, parse_pgbench, report

from tests.pgserver.fixtures import require_postgres

PGBENCH_OUTPUT = """\
pgbench (15.18 (Debian 15.18-0+deb12u1))
transaction type: <builtin: select only>
scaling factor: 16
query mode: prepared
number of clients: 16
number of threads: 2
maximum number of tries: 1
duration: 10 s
number of transactions actually processed: 250000
number of failed transactions: 0 (0.000%)
latency average = 0.640 ms
initial connection time = 25.112 ms
tps = 25000.5 (without initial connection time)
"""


def test_pgbench_output_is_read() -> None:
    assert parse_pgbench(PGBENCH_OUTPUT) == (25000.5, 250000, 0.64, 0)


def test_median_latency_comes_from_the_per_transaction_log(tmp_path: Path) -> None:
    (tmp_path / "tx.1").write_text("0 0 100 0 1700000000 1\n0 1 300 0 1700000000 2\n")
    (tmp_path / "tx.1.1").write_text("1 0 200 0 1700000000 3\n")
    assert median_latency_ms(sorted(tmp_path.glob("tx*"))) == 0.2


def test_targets_are_judged_and_a_missing_side_is_not_measured() -> None:
    bouncer = Run(tps=1000, transactions=10000, latency_avg_ms=1, p50_ms=1, failed=0)
    fast = Run(tps=800, transactions=8000, latency_avg_ms=1, p50_ms=1, failed=0, cpu_seconds=0.1)
    direct1 = Run(tps=1, transactions=1, latency_avg_ms=0.05, p50_ms=0.05, failed=0)
    lockgate1 = Run(tps=1, transactions=1, latency_avg_ms=0.3, p50_ms=0.3, failed=0)
    lines = report(
        {"select-only prepared": {"direct": bouncer, "pgbouncer": bouncer, "lockgate": fast}},
        {"direct": direct1, "lockgate": lockgate1},
        16,
    )
    assert lines[-3].endswith("PASS") and "0.8x" in lines[-3]
    assert lines[-2].endswith("PASS") and "12.5 us" in lines[-2]
    assert lines[-1].endswith("PASS")
    missing = report({"select-only prepared": {"direct": bouncer, "lockgate": None}}, {}, 16)
    assert all(line.endswith("?") for line in missing[-3:])
    assert "n/a" in missing[2]


@pytest.mark.slow
def test_the_benchmark_runs_end_to_end_briefly(capsys: pytest.CaptureFixture[str]) -> None:
    require_postgres()
    # pgbouncer comes from tests/setup-system.sh (root); without it that column reads n/a.
    sides = 3 if shutil.which("pgbouncer") or Path("/usr/sbin/pgbouncer").exists() else 2
    assert main(["--seconds", "1", "--clients", "2", "--scale", "1"]) == 0
    out = capsys.readouterr().out
    for name, _args, _per_tx in WORKLOADS:
        row = next(line for line in out.splitlines() if line.startswith(name))
        assert row.count(" tps ") == sides, row
    assert "target >= 0.7x" in out and "target <= 20 us" in out and "target <= 0.3 ms" in out
