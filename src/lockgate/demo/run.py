"""``lockgate demo``: the whole product end to end on embedded defaults, five systems.

1. ``lockgate init`` into ``./demo`` (TLS, policy, deployment secret), free local ports.
2. Start a local stand-in for each seed system (App Service orders API, Cosmos DB, Data
   Factory behind Entra ID, a Cassandra node, Databricks: :mod:`lockgate.demo.standins`),
   each demanding its own credential, and the gateway that alone holds them.
3. Run each system's example DAGs from ``examples/dags`` through its stock operators with a
   real Airflow 3 (``dag.test()``, SQLite) in one pass; connections come from the Lockgate
   secrets backend.
4. Print each DAG's outcome (the refusal under a denied one), the audit per run and the
   chain check, in lines of at most 100 columns, and the time it all took.

Exits 0 when every DAG ended as the policy says it should and the chain is intact.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from lockgate import _log
from lockgate.audit import AuditRecord
from lockgate.demo.report import (
    audit_table,
    denial_from_audit,
    fit,
    refusal_reason,
    split_by_dag,
    wrap,
)
from lockgate.demo.stack import EXAMPLE_DAGS, LocalStack, airflow_bin

# (system, stock operators) -> each DAG and how the policy says it ends.
SYSTEMS: tuple[tuple[str, str, dict[str, str]], ...] = (
    ("App Service", "HttpOperator",
     {"finance_daily": "success", "finance_backfill": "failed"}),
    ("Cosmos DB", "AzureCosmosInsertDocumentOperator, AzureCosmosDBHook",
     {"orders_load_cosmos": "success", "finance_cosmos_write": "failed"}),
    ("Data Factory", "AzureDataFactoryRunPipelineOperator via the forward proxy",
     {"adf_load_orders": "success", "adf_load_orders_deferred": "success",
      "adf_drop_everything": "failed"}),
    ("Cassandra", "CassandraHook, Cassandra sensors via the CQL engine",
     {"sales_orders": "success", "sales_purge": "failed"}),
    ("Databricks", "DatabricksRunNowOperator, DatabricksSubmitRunOperator",
     {"databricks_run_now": "success", "databricks_submit_big": "failed"}),
)  # fmt: skip
EXPECTED = {dag: want for _, _, dags in SYSTEMS for dag, want in dags.items()}
DAG_WIDTH = max(map(len, EXPECTED))  # one column for every DAG id


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
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,  # one stream, in order: each DAG's lines follow its marker
        text=True,
        timeout=600,
    )
    output = proc.stdout
    results = [
        json.loads(line.split(" ", 1)[1])
        for line in proc.stdout.splitlines()
        if line.startswith("LOCKGATE-RESULT ")
    ]
    if proc.returncode != 0 or len(results) != len(dag_ids):
        raise RuntimeError(f"Airflow runner failed (exit {proc.returncode}):\n{output[-4000:]}")
    return results, output


def main(workdir: Path, airflow: bool = True) -> int:
    started = time.monotonic()
    workdir = workdir.resolve()  # Airflow needs an absolute AIRFLOW_HOME
    print(fit(f"Lockgate demo in {shown(workdir)}"))
    workdir.mkdir(parents=True, exist_ok=True)
    log_path = workdir / "lockgate.log"
    from lockgate.demo.systems import FiveSystemsStack

    with log_path.open("w", encoding="utf-8") as log_file, FiveSystemsStack(workdir) as stack:
        _log.setup("info", stream=log_file)  # the gateway's JSON logs, kept out of the way
        print(fit(f"  gateway logs (JSON lines) in {shown(log_path)}"))
        print(f"  gateway control plane {stack.control_url}, HTTP engine {stack.http_url}")
        print("  local stand-ins (lockgate.demo.standins), each demanding its own credential:")
        print("  App Service orders API, Cosmos DB, Data Factory + Entra ID, Cassandra, Databricks")
        if not airflow:
            return 0
        if not EXAMPLE_DAGS.is_dir():
            print(f"example DAGs not found at {EXAMPLE_DAGS}; run from a source checkout")
            return 2
        print(f"  running {len(EXPECTED)} example DAGs with Airflow 3 (dag.test) ...", flush=True)
        results, output = run_dags(stack, workdir / "airflow", list(EXPECTED))
        from lockgate.server import State

        if stack.gateway is not None:  # started with the stack
            stack.gateway.audit.flush(5.0)
        audit = State(stack.config).audit_log()
        try:
            trails = {r["dag_id"]: audit.search(dag=r["dag_id"], run=r["run_id"]) for r in results}
            ok = report_outcomes(results, output, trails)
            for r in results:
                print(fit(f"\n  audit for {r['dag_id']} run {r['run_id']}:"))
                for line in audit_table(trails[r["dag_id"]]):
                    print(line)
            verdict = audit.verify()
        finally:
            audit.close()
        print(
            f"\n  audit chain: {'intact' if verdict.ok else 'BROKEN'} ({verdict.checked} records)"
        )
    elapsed = time.monotonic() - started
    print(f"\n  demo took {elapsed:.0f} s")
    print("  next: `lockgate demo --secretless`, the same with no stored secret anywhere")
    return 0 if ok and verdict.ok else 1


def shown(path: Path) -> str:
    """``path`` relative to the working directory when it lies below it (shorter lines)."""
    try:
        return str(path.relative_to(Path.cwd()))
    except ValueError:
        return str(path)


def report_outcomes(
    results: list[dict[str, Any]], output: str, trails: Mapping[str, Sequence[AuditRecord]]
) -> bool:
    """Print each system's DAGs, the refusal under each failed one; True if all as expected."""
    by_dag = {r["dag_id"]: r for r in results}
    lines_of = split_by_dag(output)
    ok = True
    for system, operators, dags in SYSTEMS:
        print(fit(f"\n  {system} ({operators})"))
        for dag_id, want in dags.items():
            r = by_dag[dag_id]
            got = r["state"].split(".")[-1].lower()
            mark = "ok " if got == want else "BAD"
            ok &= got == want
            line = f"  [{mark}] {dag_id:{DAG_WIDTH}} {got:8} (expected {want})  {r['run_id']}"
            print(fit(line))
            if got == "failed":
                for line in explain_failure(lines_of.get(dag_id, []), trails.get(dag_id, ())):
                    print(line)
    return ok


def explain_failure(task_lines: list[str], trail: Sequence[AuditRecord]) -> list[str]:
    """Why a DAG failed, wrapped under it: the gateway's refusal as the task saw it, else as
    the audit recorded it together with the error the stock client raised."""
    seen = refusal_reason(task_lines)
    if seen and seen.startswith("Lockgate denied"):
        return wrap(f"why: {seen}", 8)
    recorded = denial_from_audit(trail)
    lines = wrap(f"why: {recorded}", 8) if recorded else []
    if seen:
        lines += wrap(f"task saw: {seen}", 8, max_lines=2)
    return lines or wrap("why: no reason found in the task log or the audit trail", 8)
