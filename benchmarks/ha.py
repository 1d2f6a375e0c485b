"""Three replicas on one PostgreSQL: how fast a change on one reaches the others, and what
failures cost.

    .venv/bin/python -m benchmarks.ha [--revocations 200] [--rotations 20] [--sessions 20]

One private PostgreSQL server (tests/pgserver) and three ``lockgate serve`` processes on
loopback, each with its own data_dir and replica_id, sharing one database (the harness of
tests/ha). Catch-up poll every 0.5 s. What is measured (every time from the return of the
call that made the change):

* **revocation**: a token minted on r1 is revoked by jti on r2 (``POST /v1/revoke``); time
  until r1 and r3 refuse it (each polled until 401);
* **open PostgreSQL sessions**: a session through r1 runs a statement every 20 ms, or sits
  idle; its token revoked on r2; time until the session ends (a statement refused, or the
  gateway's FATAL on the idle connection) -- and it must be closed;
* **credential rotation**: ``lockgate creds rotate`` on r3 under load through every replica;
  time until a request through each replica reaches the upstream with the new secret; the
  upstream accepts old and new until every replica has switched, then the new one only:
  any request failing counts;
* **signing key rotation**: ``lockgate keys rotate`` on r1 while r1 mints a token every
  50 ms and r2/r3 serve them: time until every replica publishes the new key, until the
  new key signs, and requests failed;
* **kill -9** of r2 under load: requests in flight that failed, failures on r1/r3, the
  upstream's log compared with ``lockgate audit search`` over the shared trail after r2
  restarts on its data_dir, ``lockgate audit verify``;
* **PostgreSQL restarted, and down 3 s** under load (max_staleness 10 s): requests failed;
  **down 5 s with max_staleness 2 s**: first refusal (``shared_state_stale``) after the
  server went away, time for every replica to serve again once it is back.

Targets (issue 11): revocation, session closure, credential and key propagation <= 1 s at
p99; zero failed requests under rotation, on the surviving replicas and within
max_staleness; no audit record lost; audit verify passes.
"""

from __future__ import annotations

import argparse
import secrets
import sys
import tempfile
import time
from pathlib import Path

from tests.ha.cluster import Cluster, add_pg_resource, build_cluster
from tests.ha.failures import kill_under_load, postgres_outage_under_load
from tests.ha.scenarios import (
    credential_rotation,
    key_rotation,
    percentile,
    revocation_propagation,
    session_closure,
    summary_ms,
)
from tests.pgserver import PgServer, start_pg_server
from tests.pgserver.state import shared_state_settings

from benchmarks._common import judge

PROPAGATION_P99_S = 1.0
CATCH_UP = 0.5


def _cluster(
    work: Path, server: PgServer, name: str, *, max_staleness: float, pg_resource: bool = False
) -> Cluster:
    settings = shared_state_settings(
        server, work / f"{name}-state", catch_up_interval=CATCH_UP, max_staleness=max_staleness,
        connect_timeout=1,
    )  # fmt: skip
    resource = add_pg_resource(server, secrets.token_hex(4)) if pg_resource else None
    cluster = build_cluster(work / name, settings, pg_resource=resource)
    cluster.start_all()
    return cluster


def _p99_line(label: str, values: list[float]) -> str:
    p99_ms = percentile(values, 99) * 1000 if values else None
    return judge(label, p99_ms, PROPAGATION_P99_S * 1000, at_least=False, unit=" ms")


def _zero(label: str, count: int) -> str:
    return judge(label, count, 0, at_least=False, unit="")


def _propagation(cluster: Cluster, args: argparse.Namespace, lines: list[str]) -> None:
    revocations = revocation_propagation(cluster, args.revocations, revoke_on=1, watched=(0, 2))
    every: list[float] = []
    for i, values in revocations.items():
        print(f"revocation r2 -> {cluster.replicas[i].name}: {summary_ms(values)}", flush=True)
        every += values
    lines.append(_p99_line(f"revocation p99 over {len(every)} refusals", every))

    for kind, idle in (("busy", False), ("idle", True)):
        sessions = session_closure(cluster, args.sessions, session_on=0, revoke_on=1, idle=idle)
        left_open = len(sessions.closed) - sum(sessions.closed)
        print(f"{kind} PostgreSQL session on r1, revoked on r2: ended after "
              f"{summary_ms(sessions.latencies)}; {left_open} left open", flush=True)  # fmt: skip
        lines.append(_p99_line(f"{kind} session end p99", sessions.latencies))
        lines.append(_zero(f"{kind} sessions left open", left_open))

    rotation = credential_rotation(cluster, args.rotations, rotate_on=2)
    every = []
    for i, values in rotation.latencies.items():
        print(f"credential rotated on r3 -> {cluster.replicas[i].name}: {summary_ms(values)}",
              flush=True)  # fmt: skip
        every += values
    print(f"  {rotation.requests} requests during the rotations, "
          f"{len(rotation.failures)} failed", flush=True)  # fmt: skip
    lines.append(_p99_line(f"credential rotation p99 over {len(every)} switches", every))
    lines.append(_zero("requests failed during credential rotations", len(rotation.failures)))

    keys = key_rotation(cluster, args.key_rotations, rotate_on=0, verify_on=(1, 2))
    every = []
    for i, values in keys.latencies.items():
        print(f"signing key rotated on r1 -> published by {cluster.replicas[i].name}: "
              f"{summary_ms(values)}", flush=True)  # fmt: skip
        every += values
    print(f"  new key signs after {summary_ms(keys.extra['signing'])}; {keys.requests} "
          f"requests on r2/r3, {len(keys.failures)} failed", flush=True)  # fmt: skip
    lines.append(_p99_line("signing key publication p99", every))
    lines.append(_zero("requests failed during key rotations", len(keys.failures)))


def _failures(cluster: Cluster, server: PgServer, lines: list[str]) -> None:
    kill = kill_under_load(cluster, victim=1, before=3.0, after=3.0)
    print(
        f"kill -9 of r2 under load: {kill.in_flight_failed} in-flight requests failed, "
        f"{kill.victim_failed_after_kill} failed while it was down; r1/r3: "
        f"{kill.others_requests} requests, {len(kill.others_failures)} failed; upstream served "
        f"{kill.served}, {len(kill.missing_from_audit)} missing from the shared trail after "
        f"r2 restarted ({kill.restart_seconds:.1f} s); audit verify exit "
        f"{kill.verify_returncode}",
        flush=True,
    )
    lines.append(_zero("requests failed on the surviving replicas", len(kill.others_failures)))
    lines.append(_zero("served requests missing from the audit trail",
                       len(kill.missing_from_audit)))  # fmt: skip
    lines.append(_zero("audit verify exit code", kill.verify_returncode))

    restart = postgres_outage_under_load(cluster, server.restart)
    down = postgres_outage_under_load(cluster, server.pause, server.resume, down_for=3.0)
    for label, figures in (("restarted", restart), ("down 3 s", down)):
        failed = sum(n for status, n in figures.statuses.items() if status != 200)
        print(f"PostgreSQL {label} under load (max_staleness 10 s): statuses "
              f"{figures.statuses}", flush=True)  # fmt: skip
        lines.append(_zero(f"requests failed, PostgreSQL {label}", failed))


def _past_staleness(strict: Cluster, server: PgServer, lines: list[str]) -> None:
    stale = postgres_outage_under_load(strict, server.pause, server.resume, down_for=5.0,
                                       after=5.0)  # fmt: skip
    first = stale.first_refusal_after_down()
    back = stale.served_again_after()
    slowest = max((s for s in back.values() if s is not None), default=None)
    print(
        f"PostgreSQL down 5 s (max_staleness 2 s): statuses {stale.statuses}; first refusal "
        f"{'none' if first is None else f'{first:.2f} s'} after it went away; every replica "
        f"served again {'never' if None in back.values() else f'{slowest:.2f} s'} after it "
        f"was back",
        flush=True,
    )
    lines.append(judge("served from memory after PostgreSQL went away (max_staleness 2 s)",
                       first, 2.0 - CATCH_UP, at_least=True, unit=" s"))  # fmt: skip
    lines.append(judge("every replica serving again after PostgreSQL came back",
                       None if None in back.values() else slowest, 5.0, at_least=False,
                       unit=" s"))  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--revocations", type=int, default=200)
    parser.add_argument("--sessions", type=int, default=20)
    parser.add_argument("--rotations", type=int, default=20)
    parser.add_argument("--key-rotations", type=int, default=3)
    parser.add_argument("--no-failures", action="store_true", help="propagation only")
    args = parser.parse_args(argv)
    lines: list[str] = []
    with tempfile.TemporaryDirectory(prefix="lockgate-bench-ha-") as tmp:
        work = Path(tmp)
        server = start_pg_server(work)
        clusters: list[Cluster] = []
        try:
            started = time.monotonic()
            clusters.append(_cluster(work, server, "patient", max_staleness=10,
                                     pg_resource=True))  # fmt: skip
            print(f"three replicas ready in {time.monotonic() - started:.1f} s", flush=True)
            _propagation(clusters[0], args, lines)
            if not args.no_failures:
                _failures(clusters[0], server, lines)
                clusters[0].close()  # one cluster at a time on a 2-core machine
                clusters.append(_cluster(work, server, "strict", max_staleness=2))
                _past_staleness(clusters[1], server, lines)
        finally:
            for cluster in clusters:
                cluster.close()
            server.stop()
    print("\n".join(lines))
    return 1 if any(line.endswith(("MISS", "?")) for line in lines) else 0


if __name__ == "__main__":
    sys.exit(main())
