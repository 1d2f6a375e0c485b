"""How fast a change reaches another process: a write+touch transaction on one
PostgresDatabase, then ``version()`` moving in a PostgresDatabase of another process (the
LISTEN/NOTIFY path). Prints p50/p99 over 200 changes; fails above the 1 s bound."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Callable

import pytest

from lockgate.config import PostgresStateSettings
from lockgate.store import CORE_DOMAIN, CORE_MIGRATIONS, PostgresDatabase, migrate

CHANGES = 200

# The other process: report (version, time seen) each time version("revocations") moves,
# until it has seen the writer's last change.
_WATCHER = """
import json, sys, time
from lockgate.config import PostgresStateSettings
from lockgate.store import PostgresDatabase
settings = PostgresStateSettings.model_validate(json.loads(sys.stdin.readline()))
db = PostgresDatabase(settings, replica_id="watcher")
db.start_watching()
while db.stale_for() > 0.5:
    time.sleep(0.01)
print("ready", flush=True)
seen, last = [], db.version("revocations")
target = last + int(sys.argv[1])  # a fresh database: the writer's changes are all there is
deadline = time.monotonic() + 120
while last < target and time.monotonic() < deadline:
    v = db.version("revocations")
    if v != last:
        seen.append((v, time.monotonic()))
        last = v
    time.sleep(0.0002)
print(json.dumps(seen), flush=True)
db.close()
"""


def _percentile(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(p / 100 * (len(ordered) - 1)))]


@pytest.mark.slow
def test_propagation_to_another_process(
    pg_state: Callable[..., PostgresStateSettings],
) -> None:
    settings = pg_state()
    db = PostgresDatabase(settings, replica_id="writer")
    migrate(db, CORE_DOMAIN, CORE_MIGRATIONS)
    watcher = subprocess.Popen(
        [sys.executable, "-c", _WATCHER, str(CHANGES)],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert watcher.stdin is not None and watcher.stdout is not None
        watcher.stdin.write(settings.model_dump_json() + "\n")
        watcher.stdin.flush()
        assert watcher.stdout.readline().strip() == "ready"
        started: dict[int, float] = {}
        round_trips: list[float] = []
        for _ in range(CHANGES):
            t0 = time.monotonic()  # CLOCK_MONOTONIC: one clock for both processes
            with db.transaction() as cur:
                cur.execute(
                    "INSERT INTO lockgate_meta (key, value) VALUES ('bench', ?) "
                    "ON CONFLICT (key) DO UPDATE SET value = excluded.value",
                    (str(t0),),
                )
                cur.touch("revocations")
            round_trips.append(time.monotonic() - t0)
            started[db.version("revocations")] = t0
            time.sleep(0.01)  # one change at a time: each one's own latency
        seen = json.loads(watcher.stdout.readline())
    finally:
        watcher.wait(30)
    # A change counts as arrived when the watcher saw its version or a later one.
    latencies = [next(t for seen_v, t in seen if seen_v >= v) - t0 for v, t0 in started.items()]
    assert len(latencies) == CHANGES and seen[-1][0] == max(started)
    db.close()
    report = {
        "write+touch round trip ms": (_percentile(round_trips, 50), _percentile(round_trips, 99)),
        "propagation ms": (_percentile(latencies, 50), _percentile(latencies, 99)),
    }
    print()
    for name, (p50, p99) in report.items():
        print(f"{name}: p50 {p50 * 1000:.2f}  p99 {p99 * 1000:.2f}  (n={CHANGES})")
    assert _percentile(latencies, 99) < 1.0
