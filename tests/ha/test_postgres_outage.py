"""Three replicas while their PostgreSQL server restarts or stays down (issue 11, items 4
and 5): requests are decided from memory within ``max_staleness``, refused with
``shared_state_stale`` past it, and served again once PostgreSQL is back, by the same
processes (no gateway restart). Each test has a private server (it is stopped mid-test).
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.ha.cluster import Cluster, build_cluster, ready_status
from tests.ha.failures import postgres_outage_under_load
from tests.ha.scenarios import revocation_propagation, summary_ms
from tests.pgserver import PgServer
from tests.pgserver.fixtures import PgServerFactory
from tests.pgserver.state import shared_state_settings

pytestmark = pytest.mark.slow

CATCH_UP = 0.5


def private_cluster(tmp_path: Path, server: PgServer, max_staleness: float) -> Iterator[Cluster]:
    settings = shared_state_settings(
        server, tmp_path / "pg-state", catch_up_interval=CATCH_UP, max_staleness=max_staleness,
        connect_timeout=1,
    )  # fmt: skip
    cluster = build_cluster(tmp_path / "cluster", settings)
    try:
        cluster.start_all()
        yield cluster
    finally:
        cluster.close()


@pytest.fixture
def server(pg_server_factory: PgServerFactory) -> PgServer:
    return pg_server_factory()


@pytest.fixture
def patient(tmp_path: Path, server: PgServer) -> Iterator[Cluster]:
    """Replicas that trust memory for 10 s without PostgreSQL."""
    yield from private_cluster(tmp_path, server, max_staleness=10)


@pytest.fixture
def strict(tmp_path: Path, server: PgServer) -> Iterator[Cluster]:
    """Replicas that trust memory for 2 s only."""
    yield from private_cluster(tmp_path, server, max_staleness=2)


def stale_refusals_shipped(cluster: Cluster) -> int:
    """How many replicas' ``shared_state_stale`` refusals ``lockgate audit search
    --replica R`` finds in the shared trail."""
    found = 0
    for replica in cluster.replicas:
        done = cluster.cli(
            0, "audit", "search", "--replica", replica.name, "--decision", "deny", "--json",
            "--limit", "100000",
        )  # fmt: skip
        lines = [json.loads(line) for line in done.stdout.splitlines() if line.strip()]
        found += any(record["reason"] == "shared_state_stale" for record in lines)
    return found


def until_ready(cluster: Cluster, timeout: float = 10.0) -> None:
    for i in range(len(cluster.replicas)):
        cluster.wait_ready(i, timeout)


@pytest.mark.parametrize("down_for", [0.0, 3.0], ids=["restart", "down-3s"])
def test_postgresql_restarted_mid_load_fails_no_request(
    patient: Cluster, server: PgServer, down_for: float
) -> None:
    """A fast restart, and a stop of 3 s then a start: within max_staleness (10 s) every
    request is served from memory."""
    pids = [r.proc.pid for r in patient.replicas if r.proc is not None]
    if down_for:
        figures = postgres_outage_under_load(
            patient, server.pause, server.resume, down_for=down_for
        )
    else:
        figures = postgres_outage_under_load(patient, server.restart)
    print(
        f"PostgreSQL down {figures.back_at - figures.down_at:.2f} s under load "
        f"(max_staleness 10 s): statuses {figures.statuses}"
    )
    assert set(figures.statuses) == {200} and figures.statuses[200] > 30  # load went on throughout
    # caught up by themselves: ready, and a revocation reaches every replica again at once
    until_ready(patient)
    assert [r.proc.pid for r in patient.replicas if r.proc is not None] == pids
    latencies = revocation_propagation(patient, 10, revoke_on=1, watched=(0, 2))
    for i, values in latencies.items():
        print(f"after the restart, revocation r2 -> {patient.replicas[i].name}: "
              f"{summary_ms(values)}")  # fmt: skip
        assert max(values) < 1.0


def test_postgresql_down_past_max_staleness_refuses_then_recovers(
    strict: Cluster, server: PgServer
) -> None:
    pids = [r.proc.pid for r in strict.replicas if r.proc is not None]
    figures = postgres_outage_under_load(
        strict, server.pause, server.resume, down_for=5.0, after=5.0
    )
    first_refusal = figures.first_refusal_after_down()
    back = figures.served_again_after()
    print(
        f"PostgreSQL down {figures.back_at - figures.down_at:.1f} s (max_staleness 2 s): "
        f"statuses {figures.statuses}; first refusal {first_refusal} s after it went down; "
        f"served again after it was back: {back}"
    )
    # Only served (from memory) or refused (stale): no request hangs or errs.
    assert set(figures.statuses) == {200, 401}
    # Served from memory for the bound (less one catch-up period: the last contact may
    # be that old when the server goes away) ...
    assert first_refusal is not None and first_refusal >= 2.0 - CATCH_UP - 0.25
    # ... and nothing served once past it, until PostgreSQL is back.
    past_bound = figures.window(figures.down_at + 2.0 + 1.0, figures.resume_at)
    assert past_bound and {o.status for o in past_bound} == {401}
    # Back: every replica serves again within seconds, same processes.
    assert all(seconds is not None and seconds < 4.0 for seconds in back.values()), back
    assert [r.proc.pid for r in strict.replicas if r.proc is not None] == pids
    until_ready(strict)
    # The refusals were audited with their reason, and reached the shared trail.
    deadline = time.monotonic() + 30
    while stale_refusals_shipped(strict) < len(strict.replicas):
        assert time.monotonic() < deadline, "stale refusals not in the shared trail"
        time.sleep(1.0)
    assert all(ready_status(r)[1]["checks"]["shared_state"] == "ok" for r in strict.replicas)
