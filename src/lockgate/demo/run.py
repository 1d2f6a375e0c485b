"""``lockgate demo``: the whole product end to end on embedded defaults.

1. ``lockgate init`` into ``./demo`` (TLS, policy, deployment secret), free local ports.
2. Start the demo orders API (it demands its own bearer secret) and the gateway.
3. Run the example DAGs from ``examples/dags`` with a real Airflow 3 (``dag.test()``,
   SQLite), their ``orders_api`` connection served by the Lockgate secrets backend.
4. Print the outcome of each run and its audit trail, and verify the hash chain.

Exits 0 when every DAG ended as the policy says it should.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

from lockgate import _log
from lockgate.demo.stack import EXAMPLE_DAGS, LocalStack, airflow_bin

EXPECTED = {
    "finance_daily": "success",  # finance may read orders
    "orders_load": "success",  # orders_load may write and read
    "marketing_daily": "failed",  # no rule: refused when the token is requested
    "finance_backfill": "failed",  # token minted for read; the POST gets 403
}


def run_dags(
    stack: LocalStack, airflow_home: Path, dag_ids: list[str]
) -> tuple[list[dict[str, Any]], str]:
    """Run ``dag_ids`` in a fresh Airflow process; return the results and Airflow's output."""
    env = stack.airflow_env(airflow_home)
    if not (airflow_home / "airflow.db").exists():
        airflow_home.mkdir(parents=True, exist_ok=True)
        migrate = subprocess.run(
            [airflow_bin(), "db", "migrate"], env=env, capture_output=True, text=True, timeout=300
        )
        if migrate.returncode != 0:
            raise RuntimeError(
                f"airflow db migrate failed:\n{(migrate.stdout + migrate.stderr)[-3000:]}"
            )
    proc = subprocess.run(
        [sys.executable, "-m", "lockgate.demo.airflow_runner", *dag_ids],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    output = proc.stdout + proc.stderr
    results = [
        json.loads(line.split(" ", 1)[1])
        for line in proc.stdout.splitlines()
        if line.startswith("LOCKGATE-RESULT ")
    ]
    if proc.returncode != 0 or len(results) != len(dag_ids):
        raise RuntimeError(f"Airflow runner failed (exit {proc.returncode}):\n{output[-4000:]}")
    return results, output


def main(workdir: Path, airflow: bool = True) -> int:
    workdir = workdir.resolve()  # Airflow needs an absolute AIRFLOW_HOME
    print(f"Lockgate demo in {workdir}")
    workdir.mkdir(parents=True, exist_ok=True)
    log_path = workdir / "lockgate.log"
    with log_path.open("w", encoding="utf-8") as log_file, LocalStack(workdir) as stack:
        _log.setup("info", stream=log_file)  # the gateway's JSON logs, kept out of the way
        print(f"  gateway logs (JSON lines) in {log_path}")
        print(f"  gateway control plane {stack.control_url}, HTTP engine {stack.http_url}")
        print(f"  demo orders API on 127.0.0.1:{stack.upstream_port} (demands its own secret)")
        if not airflow:
            return 0
        if not EXAMPLE_DAGS.is_dir():
            print(f"example DAGs not found at {EXAMPLE_DAGS}; run from a source checkout")
            return 2
        print("  running example DAGs with Airflow 3 (dag.test) ...", flush=True)
        results, output = run_dags(stack, workdir / "airflow", list(EXPECTED))
        ok = True
        for r in results:
            want = EXPECTED[r["dag_id"]]
            got = r["state"].split(".")[-1].lower()
            mark = "ok " if got == want else "BAD"
            ok &= got == want
            print(f"  [{mark}] {r['dag_id']:18} {got:8} (expected {want})  run_id={r['run_id']}")
        for line in output.splitlines():
            if "Lockgate denied" in line or "access_denied" in line:
                print("   ", line.strip()[:240])
                break
        from lockgate.audit import format_records
        from lockgate.server import State

        st = State(stack.config)
        audit = st.audit_log()
        if stack.gateway is not None:  # started with the stack
            stack.gateway.audit.flush(5.0)
        for r in results:
            print(f"\n  audit for {r['dag_id']} run {r['run_id']}:")
            print(format_records(audit.search(dag=r["dag_id"], run=r["run_id"]), as_json=False))
        verdict = audit.verify()
        print(
            f"\n  audit chain: {'intact' if verdict.ok else 'BROKEN'} ({verdict.checked} records)"
        )
        audit.close()
        return 0 if ok and verdict.ok else 1
