"""``lockgate demo --secretless``: the demo with no stored secret anywhere, end to end.

1. Start :class:`~lockgate.demo.secretless.SecretlessStack` in the demo directory: a
   stand-in Kubernetes cluster whose projected service-account token is the worker's only
   proof, Entra ID, Cosmos DB, Data Factory, Databricks and the orders API trusting
   Lockgate's issuer, and a gateway whose every upstream credential is federated.
2. Run the four systems' example DAGs with a real Airflow 3, as ``lockgate demo`` does, and
   one DAG that dumps a task's environment for the scan.
3. Print, in lines of at most 100 columns: each DAG's result, which upstreams ran with no
   stored secret (``lockgate creds list``), what the clouds saw (each assertion's alg, iss,
   sub, aud; never the JWT), the worker's proof (token file, issuer, subject; never the
   token) and the secret scan's verdict (what was scanned, what was found).

Exits 0 only when every DAG succeeded and the scan found nothing.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import shutil
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import jwt

from lockgate import _log
from lockgate.demo.report import fit, split_by_dag, wrap
from lockgate.demo.run import explain_failure, run_dags, shown
from lockgate.demo.secret_scan import Finding, credential_rows, dumped_env, files_under
from lockgate.demo.secretless import ENV_DUMP_DAG_ID, SecretlessStack
from lockgate.demo.stack import EXAMPLE_DAGS

# dag -> (the system it runs on, the resource it reaches through the gateway)
SECRETLESS_DAGS = {
    "finance_daily": ("orders API (App Service, Entra)", "orders-api"),
    "orders_load_cosmos": ("Cosmos DB (Entra, key auth off)", "orders-cosmos"),
    "adf_load_orders": ("Data Factory (ARM, Entra)", "arm"),
    "databricks_run_now": ("Databricks (federation policy)", "databricks"),
}
DAG_WIDTH = max(map(len, [*SECRETLESS_DAGS, ENV_DUMP_DAG_ID]))
CLOUD_NAMES = {"entra": "Entra ID", "databricks": "Databricks"}
# What an earlier secretless run left in the demo directory (its mark: ``worker``): removed
# first, so the scan sees this run only.
EARLIER_RUN = ("data", "worker", "dags")


def main(workdir: Path) -> int:
    started = time.monotonic()
    workdir = workdir.resolve()  # Airflow needs an absolute AIRFLOW_HOME
    print(fit(f"Lockgate demo with no stored secret anywhere, in {shown(workdir)}"))
    if not EXAMPLE_DAGS.is_dir():
        print(f"example DAGs not found at {EXAMPLE_DAGS}; run from a source checkout")
        return 2
    if (workdir / "worker").is_dir():
        for name in EARLIER_RUN:
            shutil.rmtree(workdir / name, ignore_errors=True)
    elif (workdir / "data").exists():  # another stack's state (stored credentials): kept
        refusal = f"{shown(workdir)} holds another Lockgate's data; choose another --dir"
        print("\n".join(wrap(refusal, 2, max_lines=10)))
        return 2
    workdir.mkdir(parents=True, exist_ok=True)
    log_path = workdir / "lockgate.log"
    with log_path.open("w", encoding="utf-8") as log_file:
        # The gateway's JSON logs, kept out of the way from the start (the stack's setup
        # logs too: a new master key for an empty credential store).
        _log.setup("info", stream=log_file)
        return run(workdir, log_path, started)


def run(workdir: Path, log_path: Path, started: float) -> int:
    with SecretlessStack(workdir) as stack:
        print(fit(f"  gateway logs (JSON lines) in {shown(log_path)}"))
        print(fit(f"  gateway control plane {stack.control_url}, HTTP engine {stack.http_url}"))
        print(fit(f"  Lockgate's issuer, which the clouds trust: {stack.config.issuer_url}"))
        for line in wrap(
            "local stand-ins (lockgate.demo.standins): a Kubernetes cluster's service-account "
            "issuer; Entra ID, Cosmos DB, Data Factory, Databricks and the orders API, none "
            "holding a secret of the gateway's",
            2,
        ):
            print(line)
        dag_ids = [*SECRETLESS_DAGS, ENV_DUMP_DAG_ID]
        print(
            f"  running {len(SECRETLESS_DAGS)} example DAGs and an environment dump with "
            "Airflow 3 (dag.test) ...",
            flush=True,
        )
        results, output = run_dags(stack, stack.worker / "airflow", dag_ids)
        stack.running_gateway.audit.flush(5.0)
        ok = report_dags(stack, results, output)
        report_proof(stack)
        report_credentials(stack)
        report_assertions(stack)
        clean = report_scan(stack, output)
    print(f"\n  demo took {time.monotonic() - started:.0f} s")
    return 0 if ok and clean else 1


def report_dags(stack: SecretlessStack, results: list[dict[str, Any]], output: str) -> bool:
    """Each DAG's result and what the audit recorded for its run; True if all succeeded."""
    print("\n  DAG results (stock operators, through the gateway; requests counted in the audit)")
    lines_of = split_by_dag(output)
    ok = True
    for r in results:
        dag_id = r["dag_id"]
        state = str(r["state"]).split(".")[-1].lower()
        ok &= state == "success"
        trail = stack.running_gateway.audit.search(dag=dag_id, run=r["run_id"], limit=1000)
        if dag_id in SECRETLESS_DAGS:
            system, resource = SECRETLESS_DAGS[dag_id]
            allowed = sum(1 for t in trail if t.event == "allowed" and t.resource == resource)
            refused = sum(1 for t in trail if t.decision == "deny")
            what = f"{system}: {allowed} allowed, {refused} refused"
        else:
            what = "a task's environment, written for the scan"
        mark = "ok " if state == "success" else "BAD"
        print(fit(f"  [{mark}] {dag_id:{DAG_WIDTH}} {state:8} {what}"))
        if state != "success":
            for line in explain_failure(lines_of.get(dag_id, []), trail):
                print(line)
    config = shown(Path(stack.config_path))
    print(fit(f"  each run's audit trail: lockgate --config {config} audit search --dag DAG"))
    return ok


def report_proof(stack: SecretlessStack) -> None:
    """The worker's proof: where its token is, who issued it and for whom (never the token)."""
    claims = jwt.decode(stack.token_file.read_text(encoding="ascii").strip(),
                        options={"verify_signature": False})  # fmt: skip
    audience = claims.get("aud")
    audiences = ", ".join(audience) if isinstance(audience, list) else str(audience)
    print("\n  The worker's proof: no client secret, a projected service-account token")
    print(fit(f"    token file  {shown(stack.token_file)} (re-read at every mint)"))
    print(fit(f"    issuer      {claims.get('iss')} (the cluster's, in oidc_issuers for prod)"))
    print(fit(f"    subject     {claims.get('sub')}, audience {audiences}"))
    env = task_environment(stack)
    if env is None:
        print(f"    secrets backend settings in the task: unknown ({ENV_DUMP_DAG_ID} failed)")
        return
    kwargs = json.loads(env.get("AIRFLOW__WORKERS__SECRETS_BACKEND_KWARGS", "{}"))
    for line in wrap(f"secrets backend settings in the task: {', '.join(sorted(kwargs))}", 4):
        print(line)


def task_environment(stack: SecretlessStack) -> dict[str, str] | None:
    """The environment the dump DAG's task held (None: that DAG did not write it)."""
    path = stack.worker_tmp / "task-environment.json"
    return dumped_env(path) if path.is_file() else None


def report_credentials(stack: SecretlessStack) -> None:
    """``lockgate creds list``, as an operator would run it."""
    # The command itself, what an operator sees (not lockgate.cli: it imports the demo).
    from lockgate.cli_creds import cmd_creds_list

    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        cmd_creds_list(argparse.Namespace(config=str(stack.config_path)))
    print("\n  Upstream credentials (lockgate creds list)")
    for line in out.getvalue().splitlines():
        for part in wrap(line, 4):
            print(part)


def report_assertions(stack: SecretlessStack) -> None:
    """What the clouds saw: the assertions they accepted, by cloud, alg, iss, sub and aud,
    and where they read Lockgate's keys. Their records go to ``clouds-saw.json``."""
    seen = Counter(
        (cloud, str(header.get("alg")), str(claims.get("iss")), str(claims.get("sub")),
         str(claims.get("aud")))
        for cloud, header, claims in stack.assertions_seen()
    )  # fmt: skip
    print("\n  What the clouds saw: assertions Lockgate signed, accepted (never the JWT itself)")
    for (cloud, alg, iss, sub, aud), count in sorted(seen.items(), key=_entra_first):
        print(fit(f"    {CLOUD_NAMES.get(cloud, cloud)}: {count} accepted, alg {alg}, iss {iss}"))
        print(fit(f"      sub {sub}, aud {aud}"))
    if not seen:
        print("    (no assertion accepted)")
    discovery = f"{stack.config.issuer_url}/.well-known/openid-configuration"
    fetched = {"entra": stack.entra.issuer_keys, "databricks": stack.databricks_federation.keys}
    readers = [CLOUD_NAMES[cloud] for cloud, keys in fetched.items() if discovery in keys.fetched]
    if readers:
        print(fit(f"    {' and '.join(readers)} read {discovery}"))
    record = write_cloud_records(stack)
    print(fit(f"    the stand-ins' own records of it: {shown(record)}"))


def _entra_first(item: tuple[tuple[str, ...], int]) -> tuple[bool, tuple[str, ...]]:
    return item[0][0] != "entra", item[0]


def write_cloud_records(stack: SecretlessStack) -> Path:
    """The stand-ins' records of the token requests they took (secrets and assertions
    redacted by the stand-ins themselves; headers and claims kept), as JSON."""
    record = {
        "entra": [
            {"form": r.form, "status": r.status, "error": r.error,
             "assertion_header": r.assertion_header, "assertion_claims": r.assertion_claims}
            for r in stack.entra.token_requests
        ],
        "databricks": [
            {"assertion_header": h, "assertion_claims": c}
            for h, c in stack.databricks_federation.accepted
        ],
        "discovery_fetched": {
            "entra": stack.entra.issuer_keys.fetched,
            "databricks": stack.databricks_federation.keys.fetched,
        },
    }  # fmt: skip
    path = stack.workdir / "clouds-saw.json"
    path.write_text(json.dumps(record, indent=2, default=str) + "\n", encoding="utf-8")
    return path


@dataclass
class ScanReport:
    """What the scan read (label -> how much) and what it found."""

    scanned: dict[str, str] = field(default_factory=dict)
    findings: list[Finding] = field(default_factory=list)
    unscanned: list[str] = field(default_factory=list)  # what could not be read


def scan(stack: SecretlessStack, output: str) -> ScanReport:
    """The worker (a task's environment, the tasks' logs, its files) and the gateway (data
    directory, config, policies), each against its own rules."""
    report = ScanReport()
    worker = stack.secret_scan(gateway=False)
    task_env = task_environment(stack)
    if task_env is None:
        report.unscanned.append(f"a task's environment ({ENV_DUMP_DAG_ID} failed)")
    else:
        report.findings += worker.scan_env(task_env, "task environment")
        report.scanned["a task's environment"] = f"{len(task_env)} variables"
    report.findings += worker.scan_bytes("the tasks' logs", output.encode())
    report.scanned["the tasks' logs"] = f"{len(output.splitlines())} lines"
    report.findings += worker.scan_tree(stack.worker)
    count = sum(1 for _ in files_under(stack.worker))
    report.scanned["the worker's files"] = (
        f"{count} under {shown(stack.worker)}: Airflow home, home, temp, token volume"
    )
    gateway = stack.secret_scan(gateway=True)
    data_dir = stack.config.data_dir
    roots = (data_dir, Path(stack.config_path), stack.workdir / "policies")
    for root in roots:
        report.findings += gateway.scan_tree(root)
    count = sum(1 for root in roots for _ in files_under(root))
    report.scanned["the gateway's files"] = f"{count}: data directory, lockgate.yaml, policies"
    stored = credential_rows(data_dir / "credentials.db")
    report.scanned["the credential store"] = f"{len(stored)} credentials stored"
    report.findings += [Finding("the credential store", f"credential {n} stored") for n in stored]
    return report


def report_scan(stack: SecretlessStack, output: str) -> bool:
    """The secret scan's verdict; True if it found nothing."""
    result = scan(stack, output)
    print("\n  Secret scan (lockgate.demo.secret_scan)")
    for line in wrap(
        "looks for: the secrets the stand-ins held before they went secretless, account "
        "keys, connection strings, client secret settings, Databricks tokens, upstream access "
        "tokens, private keys other than the gateway's own signing and TLS keys",
        4,
    ):
        print(line)
    for label, amount in result.scanned.items():
        print(fit(f"    {label:24} {amount}"))
    if result.unscanned:
        print(fit(f"    not scanned: {', '.join(result.unscanned)}"))
    if not result.findings:
        incomplete = ", but the scan is incomplete" if result.unscanned else ""
        print(f"    verdict: nothing found{incomplete}")
        return not result.unscanned
    print(f"    verdict: {len(result.findings)} found")
    for finding in result.findings:
        for line in wrap(str(finding), 6, max_lines=6):
            print(line)
    return False
