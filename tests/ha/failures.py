"""Failures under load, measured: the tests assert on the figures, ``benchmarks/ha.py``
prints them.

- :func:`kill_under_load`: ``kill -9`` of one replica under load, restart it on its data_dir,
  compare the upstream's log with ``lockgate audit search`` over the shared trail, run
  ``lockgate audit verify``.
- :func:`postgres_outage_under_load`: PostgreSQL restarted, or stopped and started again,
  under load through every replica.
"""

from __future__ import annotations

import json
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass

from tests.ha.cluster import Cluster
from tests.ha.scenarios import Load, Outcome

# -- kill -9 --------------------------------------------------------------------------------


@dataclass
class KillFigures:
    victim_requests: int
    victim_failed_after_kill: int
    in_flight_failed: int  # started before the kill, answered by nothing
    others_requests: int
    others_failures: list[Outcome]
    served: int  # requests of this load the upstream served (its log)
    missing_from_audit: set[str]
    verify_returncode: int
    verify_output: str
    restart_seconds: float


def kill_under_load(
    cluster: Cluster, *, victim: int = 1, before: float = 1.5, after: float = 1.5
) -> KillFigures:
    """Load through every replica; ``kill -9`` of ``victim`` mid-load; the others keep
    serving; the victim restarts on its data_dir. Then every request of the load that the
    upstream served must have its record in ``lockgate audit search`` (the shared trail, all
    replicas), and ``lockgate audit verify`` must pass."""
    everyone = range(len(cluster.replicas))
    run_id = f"kill-{secrets.token_hex(3)}"
    token, _ = cluster.mint(0, run_id=run_id)
    with Load(cluster, everyone, token, threads=2) as load:
        time.sleep(before)
        killed_at = time.monotonic()
        cluster.kill(victim)
        time.sleep(after)
    restart = time.monotonic()
    cluster.start(victim)
    cluster.wait_ready(victim)
    restart_seconds = time.monotonic() - restart
    served = {p for p in cluster.upstream.served_paths() if p.startswith(f"/orders/{load.tag}-")}
    deadline = time.monotonic() + 60
    while True:
        missing = served - audited_objects(cluster, run_id)
        if not missing or time.monotonic() > deadline:
            break
        time.sleep(1.0)
    verify = cluster.cli(0, "audit", "verify", check=False)
    victim_results = load.results(victim)
    others = [o for o in load.results() if o.replica != victim]
    return KillFigures(
        victim_requests=len(victim_results),
        victim_failed_after_kill=sum(
            1 for o in victim_results if o.status != 200 and o.end >= killed_at
        ),
        in_flight_failed=sum(
            1 for o in victim_results if o.status == 0 and o.start < killed_at <= o.end
        ),
        others_requests=len(others),
        others_failures=[o for o in others if o.status != 200],
        served=len(served),
        missing_from_audit=missing,
        verify_returncode=verify.returncode,
        verify_output=(verify.stdout + verify.stderr).strip(),
        restart_seconds=restart_seconds,
    )


def audited_objects(cluster: Cluster, run_id: str) -> set[str]:
    """Objects of the admitted and allowed records of ``run_id`` that ``lockgate audit
    search`` finds in the shared trail (every replica)."""
    done = cluster.cli(0, "audit", "search", "--run", run_id, "--json", "--limit", "10000000")
    objects = set()
    for line in done.stdout.splitlines():
        if line.strip():
            record = json.loads(line)
            if record["event"] in ("admitted", "allowed"):
                objects.add(str(record["object"]))
    return objects


# -- PostgreSQL out of reach ----------------------------------------------------------------


@dataclass
class OutageFigures:
    down_at: float  # the outage began (just before it: the server goes away after this)
    resume_at: float  # resume() called (the server may answer from here on)
    back_at: float  # resume() returned
    outcomes: list[Outcome]
    statuses: dict[int, int]  # status -> count

    def window(self, start: float, end: float) -> list[Outcome]:
        return [o for o in self.outcomes if start <= o.start and o.end <= end]

    def first_refusal_after_down(self) -> float | None:
        refused = [o.start for o in self.outcomes if o.status == 401 and o.start >= self.down_at]
        return min(refused) - self.down_at if refused else None

    def served_again_after(self) -> dict[int, float | None]:
        """Per replica: seconds from PostgreSQL's return to its first served request
        after its last refusal."""
        back: dict[int, float | None] = {}
        for replica in sorted({o.replica for o in self.outcomes}):
            mine = [o for o in self.outcomes if o.replica == replica]
            refused = [o.end for o in mine if o.status != 200]
            if not refused:
                back[replica] = 0.0
                continue
            last = max(refused)
            later = [o.end for o in mine if o.status == 200 and o.start > last]
            back[replica] = max(0.0, min(later) - self.back_at) if later else None
        return back


def postgres_outage_under_load(
    cluster: Cluster,
    outage: Callable[[], None],
    resume: Callable[[], None] | None = None,
    *,
    down_for: float = 0.0,
    before: float = 1.0,
    after: float = 3.0,
) -> OutageFigures:
    """Load through every replica while ``outage()`` runs (a restart, or a stop followed by
    ``resume()`` ``down_for`` seconds later)."""
    token, _ = cluster.mint(0, run_id="outage")
    with Load(cluster, range(len(cluster.replicas)), token, threads=1, pause=0.01) as load:
        time.sleep(before)
        down_at = time.monotonic()
        outage()
        if resume is not None:
            time.sleep(down_for)
        resume_at = time.monotonic()
        if resume is not None:
            resume()
        back_at = time.monotonic()
        time.sleep(after)
    outcomes = load.results()
    statuses: dict[int, int] = {}
    for o in outcomes:
        statuses[o.status] = statuses.get(o.status, 0) + 1
    return OutageFigures(down_at, resume_at, back_at, outcomes, statuses)
