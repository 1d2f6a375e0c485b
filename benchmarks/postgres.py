"""PostgreSQL data path: pgbench direct vs PgBouncer vs Lockgate, on one PostgreSQL server.

    .venv/bin/python -m benchmarks.postgres [--seconds 10] [--clients 16] [--scale 16]

``LOCKGATE_BENCH_PG_SECONDS`` shortens every run (the default is 10 s). One private
PostgreSQL server (tests/pgserver: TLS, SCRAM, statement logging off) with a pgbench
database; in front of it, each in its own process:

* **pgbouncer**: Debian's ``pgbouncer``, session pooling, SCRAM with an auth_file holding the
  role's SCRAM secret, TLS to the client (``require``) and to the server (``verify-full``);
* **lockgate**: ``lockgate serve`` with a ``kind: postgres`` resource ``bench`` and the
  postgres listener; pgbench logs in with a minted token as the password, ``sslmode=require``
  and the resource name as database; the policy lets the bench DAG read and write
  ``public.pgbench_*``. Every statement is parsed, decided by policy and audited.

``direct`` is pgbench against the server itself (``sslmode=require``). Workloads: pgbench's
built-in select-only (``-S``: one SELECT per transaction) and TPC-B-like (BEGIN, three
UPDATEs, a SELECT, an INSERT, END: seven statements), each with ``-M simple`` and
``-M prepared``, ``--clients`` clients (pgbench ``-j 2``), ``-n`` (no vacuum between runs).

What is measured:

* transactions/s: pgbench's own ``tps`` (without connection time);
* p50 latency: the median of pgbench's per-transaction log (``-l``) at 16 clients, and a
  one-client select-only prepared run for the *added* p50 (Lockgate p50 - direct p50: the
  hop's cost without queueing behind 15 other clients on a 2-core machine);
* gateway CPU per statement: CPU time of the gateway's process tree (``/proc``, every thread
  and worker) during a run, divided by the statements pgbench completed in it. Select-only
  prepared is the *cached* statement path (the same text judged again and again).

Targets (issue): >= 0.7x PgBouncer transactions/s on select-only prepared; gateway CPU
<= 20 us per cached statement; added p50 <= 0.3 ms. Until the PostgreSQL engine is
registered the Lockgate column reads ``n/a``.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import re
import secrets
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from tests.pgserver import (
    PgServer,
    PostgresMissing,
    as_server_user,
    find_pg_bin,
    server_user_dir,
    start_pg_server,
    write_server_file,
)

from benchmarks._common import judge

#: Lockgate / PgBouncer transactions/s, select-only prepared, 16 clients.
VS_PGBOUNCER = 0.7
#: Gateway CPU per cached statement, microseconds.
CPU_US_PER_STATEMENT = 20.0
#: Lockgate p50 - direct p50, one client, select-only prepared, ms.
ADDED_P50_MS = 0.3

RESOURCE = "bench"
DATABASE = "bench"
ROLE = "bench"
SIDES = ("direct", "pgbouncer", "lockgate")
#: (label, pgbench arguments, statements per transaction)
WORKLOADS: list[tuple[str, list[str], int]] = [
    ("select-only simple", ["-S", "-M", "simple"], 1),
    ("select-only prepared", ["-S", "-M", "prepared"], 1),
    ("tpcb-like simple", ["-M", "simple"], 7),
    ("tpcb-like prepared", ["-M", "prepared"], 7),
]
CACHED = "select-only prepared"

POLICY = """\
rules:
  - id: bench-pgbench
    effect: allow
    principals: ["airflow:prod/bench_pg/*"]
    actions: [read, write]
    resources: [bench]
    objects: ["public.pgbench_*"]
"""

GATEWAY_CONFIG = """\
data_dir: {data}
log_level: warning
listeners:
  control: {{host: 127.0.0.1, port: {control}}}
  http: {{host: 127.0.0.1, port: {http}}}
  postgres: {{host: 127.0.0.1, port: {port}, tls: {{cert: {cert}, key: {key}}}}}
resources:
  - name: {resource}
    kind: postgres
    host: 127.0.0.1
    port: {pg_port}
    database: {database}
    username: {role}
    credential: bench-pg
    tls: verify-full
    ca_file: {pg_ca}
credentials:
  - {{name: bench-pg, type: static}}
policies: ["policies/*.yaml"]
"""


@dataclass
class Endpoint:
    """Where pgbench connects for one side, and the process whose CPU is the gateway's."""

    host: str
    port: int
    dbname: str
    user: str
    password: str
    pid: int | None = None


@dataclass
class Run:
    """One pgbench run."""

    tps: float
    transactions: int
    latency_avg_ms: float
    p50_ms: float
    failed: int
    cpu_seconds: float | None = None  # the gateway's, during the run

    def cpu_us_per_statement(self, per_tx: int) -> float | None:
        if self.cpu_seconds is None or not self.transactions:
            return None
        return self.cpu_seconds / (self.transactions * per_tx) * 1e6


# -- pgbench ----------------------------------------------------------------------------------
def pgbench_path() -> Path:
    found = shutil.which("pgbench")
    return Path(found) if found else find_pg_bin() / "pgbench"


def parse_pgbench(output: str) -> tuple[float, int, float, int]:
    """tps (without connection time), transactions, average latency (ms), failed ones."""
    tps = re.search(r"^tps = ([\d.]+) \(without initial connection time\)", output, re.M)
    done = re.search(r"^number of transactions actually processed: (\d+)", output, re.M)
    avg = re.search(r"^latency average = ([\d.]+) ms", output, re.M)
    failed = re.search(r"^number of failed transactions: (\d+)", output, re.M)
    if not (tps and done):
        raise RuntimeError(f"pgbench printed no result:\n{output[-1500:]}")
    return (
        float(tps.group(1)),
        int(done.group(1)),
        float(avg.group(1)) if avg else float("nan"),
        int(failed.group(1)) if failed else 0,
    )


def median_latency_ms(log_files: list[Path]) -> float:
    """Median of pgbench's per-transaction log (``-l``): the third field is the latency, us."""
    latencies: list[int] = []
    for path in log_files:
        with path.open() as fh:
            for line in fh:
                fields = line.split()
                if len(fields) >= 3 and fields[2].isdigit():
                    latencies.append(int(fields[2]))
    return statistics.median(latencies) / 1000 if latencies else float("nan")


def tree_cpu_seconds(pid: int) -> float:
    """CPU time (user + system) of ``pid`` and its live descendants so far (Linux /proc)."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        with contextlib.suppress(OSError, ValueError, IndexError):
            fields = stat.read_text().rsplit(")", 1)[1].split()
            children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    total, todo = 0.0, [pid]
    while todo:
        current = todo.pop()
        with contextlib.suppress(OSError, IndexError, ValueError):
            fields = Path(f"/proc/{current}/stat").read_text().rsplit(")", 1)[1].split()
            total += (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
        todo.extend(children.get(current, []))
    return total


def pgbench(
    end: Endpoint,
    args: list[str],
    *,
    clients: int,
    seconds: float,
    workdir: Path,
) -> Run:
    logs = Path(tempfile.mkdtemp(prefix="pgbench-log-", dir=workdir))
    argv = [
        str(pgbench_path()), "-n", "-c", str(clients), "-j", str(min(2, clients)),
        "-T", str(max(1, round(seconds))), "-l", f"--log-prefix={logs / 'tx'}",
        "-h", end.host, "-p", str(end.port), "-U", end.user, *args, end.dbname,
    ]  # fmt: skip
    env = {
        **os.environ,
        "PGPASSWORD": end.password,
        "PGSSLMODE": "require",
        "PGCONNECT_TIMEOUT": "10",
    }
    cpu0 = tree_cpu_seconds(end.pid) if end.pid else None
    done = subprocess.run(
        argv, capture_output=True, text=True, env=env, cwd=logs, timeout=seconds + 120, check=False
    )
    cpu = tree_cpu_seconds(end.pid) - cpu0 if end.pid and cpu0 is not None else None
    if done.returncode != 0 and "tps = " not in done.stdout:
        raise RuntimeError(f"pgbench exited {done.returncode}: {done.stderr.strip()[-1500:]}")
    tps, transactions, avg, failed = parse_pgbench(done.stdout)
    p50 = median_latency_ms(sorted(logs.glob("tx*")))
    shutil.rmtree(logs, ignore_errors=True)
    return Run(tps, transactions, avg, p50, failed, cpu)


# -- the three sides ---------------------------------------------------------------------------
def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _wait_port(port: int, proc: subprocess.Popen[bytes], timeout: float = 30.0) -> None:
    import socket

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{proc.args!r} exited {proc.returncode} before listening")
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.5):
            return
        time.sleep(0.05)
    raise RuntimeError(f"nothing listening on 127.0.0.1:{port} after {timeout} s")


def _stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)


def prepare_server(workdir: Path, scale: int) -> tuple[PgServer, str]:
    """The server (statement log off: it would cost the server more than anything measured),
    the bench role and a pgbench database of ``scale``."""
    server = start_pg_server(
        workdir,
        settings={
            "log_statement": "none",
            "log_connections": "off",
            "log_disconnections": "off",
            "shared_buffers": "128MB",
        },
    )
    password = secrets.token_urlsafe(18)
    server.create_user(ROLE, password)
    server.psql(f"CREATE DATABASE {DATABASE} OWNER {ROLE};")
    env = {**os.environ, "PGPASSWORD": password, "PGSSLMODE": "require"}
    subprocess.run(
        [str(pgbench_path()), "-i", "-q", "-s", str(scale), "-h", server.host,
         "-p", str(server.port), "-U", ROLE, DATABASE],
        env=env, check=True, capture_output=True, timeout=600,
    )  # fmt: skip
    return server, password


@contextlib.contextmanager
def pgbouncer(server: PgServer, password: str) -> Iterator[Endpoint | None]:
    """Debian's pgbouncer in session mode in front of ``server`` (None when not installed)."""
    binary = shutil.which("pgbouncer") or (
        "/usr/sbin/pgbouncer" if Path("/usr/sbin/pgbouncer").exists() else None
    )
    if binary is None:
        print("  pgbouncer not installed (tests/setup-system.sh installs it): column n/a")
        yield None
        return
    from lockgate.tlsgen import write_dev_tls

    home = server_user_dir("lockgate-pgbouncer-")
    # pgbouncer runs as the postgres system user: its key must be that user's.
    made = write_dev_tls(Path(tempfile.mkdtemp(prefix="pgbouncer-tls-")))
    tls = {name: home / f"{name}.pem" for name in ("cert", "key")}
    for name, path in tls.items():
        write_server_file(path, made[name].read_bytes())
    shutil.rmtree(made["key"].parent, ignore_errors=True)
    # The role's SCRAM secret: pgbouncer checks the client with it and logs in upstream.
    secret = server.psql("SELECT rolpassword FROM pg_authid WHERE rolname = 'bench'").strip()
    write_server_file(home / "userlist.txt", f'"{ROLE}" "{secret}"\n')
    port = _free_port()
    write_server_file(
        home / "pgbouncer.ini",
        f"""[databases]
{DATABASE} = host={server.host} port={server.port} dbname={DATABASE}
[pgbouncer]
listen_addr = 127.0.0.1
listen_port = {port}
unix_socket_dir =
auth_type = scram-sha-256
auth_file = {home / "userlist.txt"}
pool_mode = session
max_client_conn = 200
default_pool_size = 40
client_tls_sslmode = require
client_tls_cert_file = {tls["cert"]}
client_tls_key_file = {tls["key"]}
server_tls_sslmode = verify-full
server_tls_ca_file = {server.ca_file}
logfile = {home / "pgbouncer.log"}
pidfile = {home / "pgbouncer.pid"}
ignore_startup_parameters = extra_float_digits
""",
    )
    proc = subprocess.Popen(
        as_server_user([binary, str(home / "pgbouncer.ini")]),
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd="/",
    )  # fmt: skip
    try:
        _wait_port(port, proc)
        yield Endpoint("127.0.0.1", port, DATABASE, ROLE, password, None)
    finally:
        _stop(proc)
        shutil.rmtree(home, ignore_errors=True)


def lockgate_engine_missing() -> str | None:
    """Why the PostgreSQL engine cannot serve yet, or None when it can."""
    try:
        from lockgate.gateway.registry import engine_class

        engine_class("postgres")
    except Exception as exc:  # a registry without the kind or an engine that does not import
        return f"{type(exc).__name__}: {exc}"
    return None


@contextlib.contextmanager
def lockgate(server: PgServer, password: str, workdir: Path) -> Iterator[Endpoint | None]:
    """``lockgate serve`` with resource ``bench`` in front of ``server`` (None without the
    engine)."""
    missing = lockgate_engine_missing()
    if missing:
        print(f"  the PostgreSQL engine is not registered ({missing}): column n/a")
        yield None
        return
    from lockgate.config import load_config
    from lockgate.identity import TaskIdentity, TokenIssuer
    from lockgate.server import State
    from lockgate.tlsgen import write_dev_tls

    root = workdir / "lockgate"
    (root / "policies").mkdir(parents=True)
    (root / "policies" / "bench.yaml").write_text(POLICY)
    tls = write_dev_tls(root / "tls")
    port = _free_port()
    config_path = root / "lockgate.yaml"
    config_path.write_text(
        GATEWAY_CONFIG.format(
            data=root / "data", control=_free_port(), http=_free_port(), port=port,
            cert=tls["cert"], key=tls["key"], resource=RESOURCE, pg_port=server.port,
            database=DATABASE, role=ROLE, pg_ca=server.ca_file,
        )
    )  # fmt: skip
    state = State(load_config(config_path))
    state.credentials.set("bench-pg", password)
    config = load_config(config_path)
    token = TokenIssuer(state.keys, config.issuer_url).mint(
        TaskIdentity("prod", "bench_pg", "pgbench", "run-1", 1), RESOURCE, 3600
    )[0]
    repo = Path(__file__).resolve().parents[1]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(repo / "src"), str(repo)])}
    proc = subprocess.Popen(
        [sys.executable, "-m", "lockgate", "--config", str(config_path), "serve"],
        cwd=root, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        _wait_port(port, proc)
        yield Endpoint("127.0.0.1", port, RESOURCE, "lockgate", str(token), proc.pid)
    finally:
        _stop(proc)


# -- the report -------------------------------------------------------------------------------
def _cell(run: Run | None) -> str:
    return f"{run.tps:9.0f} tps p50 {run.p50_ms:6.2f} ms" if run else f"{'n/a':>24}"


def report(
    results: dict[str, dict[str, Run | None]],
    latency: dict[str, Run | None],
    clients: int,
) -> list[str]:
    """The table and the target lines."""
    lines = [f"{'workload':22} " + " | ".join(f"{side:>24}" for side in SIDES)]
    for name, per_tx in ((w[0], w[2]) for w in WORKLOADS):
        row = results.get(name, {})
        line = f"{name:22} " + " | ".join(_cell(row.get(side)) for side in SIDES)
        lg, bouncer = row.get("lockgate"), row.get("pgbouncer")
        if lg and bouncer:
            line += f"   lockgate/pgbouncer {lg.tps / bouncer.tps:.2f}x"
        cpu = lg.cpu_us_per_statement(per_tx) if lg else None
        if cpu is not None:
            line += f"   gateway CPU {cpu:.1f} us/stmt"
        lines.append(line)
    cached = results.get(CACHED, {})
    lg, bouncer = cached.get("lockgate"), cached.get("pgbouncer")
    ratio = lg.tps / bouncer.tps if lg and bouncer else None
    cpu = lg.cpu_us_per_statement(1) if lg else None
    one_lg, one_direct = latency.get("lockgate"), latency.get("direct")
    added = one_lg.p50_ms - one_direct.p50_ms if one_lg and one_direct else None
    if one_direct:
        lines.append(
            "1 client, select-only prepared p50: "
            + ", ".join(f"{side} {r.p50_ms:.3f} ms" for side, r in latency.items() if r)
        )
    lines += [
        judge(f"lockgate / pgbouncer tps ({CACHED}, {clients} clients)", ratio,
              VS_PGBOUNCER, at_least=True, unit="x"),
        judge(f"gateway CPU per cached statement ({CACHED})", cpu,
              CPU_US_PER_STATEMENT, at_least=False, unit=" us"),
        judge("added p50 vs direct (1 client, select-only prepared)", added,
              ADDED_P50_MS, at_least=False, unit=" ms"),
    ]  # fmt: skip
    return lines


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.postgres")
    default_seconds = float(os.environ.get("LOCKGATE_BENCH_PG_SECONDS", "10"))
    p.add_argument("--seconds", type=float, default=default_seconds, help="per pgbench run")
    p.add_argument("--clients", type=int, default=16)
    p.add_argument("--scale", type=int, default=16, help="pgbench -s (branches)")
    a = p.parse_args(argv if argv is not None else [])
    try:
        find_pg_bin()
        pgbench_path()
    except PostgresMissing as exc:
        print(f"  not measured: {exc}")
        return 0
    results: dict[str, dict[str, Run | None]] = {}
    latency: dict[str, Run | None] = {}
    errors = 0
    with contextlib.ExitStack() as stack:
        workdir = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="lg-bench-pg-")))
        server, password = prepare_server(workdir, a.scale)
        stack.callback(server.stop)
        sides: dict[str, Endpoint | None] = {
            "direct": Endpoint(server.host, server.port, DATABASE, ROLE, password),
            "pgbouncer": stack.enter_context(pgbouncer(server, password)),
            "lockgate": stack.enter_context(lockgate(server, password, workdir)),
        }
        print(
            f"pgbench -c {a.clients} -j 2 -T {a.seconds:g} (scale {a.scale}), TLS everywhere; "
            "p50 from pgbench's per-transaction log"
        )
        for name, args, _per_tx in WORKLOADS:
            row = results.setdefault(name, {})
            for side, end in sides.items():
                if end is None:
                    row[side] = None
                    continue
                try:
                    row[side] = pgbench(
                        end, args, clients=a.clients, seconds=a.seconds, workdir=workdir
                    )
                    errors += row[side].failed  # type: ignore[union-attr]
                except (RuntimeError, subprocess.SubprocessError) as exc:
                    print(f"  {name} {side}: {exc}")
                    row[side] = None
                    errors += 1
        for side, end in sides.items():
            if end is None:
                continue
            try:
                latency[side] = pgbench(
                    end, ["-S", "-M", "prepared"], clients=1, seconds=a.seconds, workdir=workdir
                )
            except (RuntimeError, subprocess.SubprocessError) as exc:
                print(f"  1 client {side}: {exc}")
                latency[side] = None
    for line in report(results, latency, a.clients):
        print(line, flush=True)
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
