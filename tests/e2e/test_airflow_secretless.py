"""No stored secret anywhere: real Airflow 3 DAGs for Cosmos DB, Data Factory, Databricks and
an Entra-protected HTTP API, run by a worker whose only proof is a projected Kubernetes
service-account token, through a gateway whose every upstream credential is federated
(:mod:`lockgate.demo.secretless`). Then a scan of the worker's environment and files and of
the gateway's data directory finds no secret (:mod:`lockgate.demo.secret_scan`, which does find
planted ones and those of the stack before it went secretless), a token from the wrong
namespace is refused, and rotating Lockgate's signing keys (and the cluster's) between two
runs breaks nothing.

One stack for the module; Airflow runs three times (the four systems plus an environment
dump in one process, the four again after the rotation, one DAG with the wrong token).
"""

from __future__ import annotations

import contextlib
import io
import json
import shutil
import sqlite3
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import ec

from lockgate.cli import main as lockgate_cli
from lockgate.demo.report import split_by_dag
from lockgate.demo.run import run_dags
from lockgate.demo.secret_scan import (
    SecretScan,
    credential_rows,
    dumped_env,
)
from lockgate.demo.secretless import (
    DATABRICKS_ALGORITHM,
    DATABRICKS_AUDIENCE,
    DATABRICKS_CREDENTIAL,
    ENTRA_APPS,
    ENV_DUMP_DAG_ID,
    UPSTREAM_TOKEN_TTL,
    SecretlessStack,
)
from lockgate.demo.systems import FiveSystemsStack

pytest.importorskip("airflow.providers.microsoft.azure", reason="the Azure provider")
pytest.importorskip("airflow.providers.databricks", reason="the Databricks provider")
pytestmark = [pytest.mark.airflow, pytest.mark.slow]

# dag -> (the resource it touches, its tasks) for the four systems' DAGs that must succeed
SECRETLESS_DAGS = {
    "finance_daily": ("orders-api", {"read_orders"}),
    "orders_load_cosmos": ("orders-cosmos", {"insert_order", "read_back"}),
    "adf_load_orders": ("arm", {"run_load_orders", "wait_for_load_orders"}),
    "databricks_run_now": ("databricks", {"run_load_job", "read_run_with_sdk"}),
}


@dataclass
class Run:
    results: dict[str, dict[str, Any]]
    output: str

    def succeeded(self, dag: str) -> bool:
        return str(self.results[dag]["state"]).split(".")[-1].lower() == "success"

    def log_of(self, dag: str) -> str:
        """The end of ``dag``'s own output (for a failure's message)."""
        return "\n".join(split_by_dag(self.output).get(dag, []))[-6000:]


@pytest.fixture(scope="module")
def secretless(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SecretlessStack]:
    stack = SecretlessStack(tmp_path_factory.mktemp("lockgate-secretless"))
    stack.start()
    try:
        yield stack
    finally:
        stack.stop()


@pytest.fixture(scope="module")
def airflow_home(secretless: SecretlessStack) -> Path:
    return secretless.worker / "airflow"  # the worker's AIRFLOW_HOME (migrated at first run)


@pytest.fixture(scope="module")
def first_run(secretless: SecretlessStack, airflow_home: Path) -> Run:
    return _run(secretless, airflow_home, [*SECRETLESS_DAGS, ENV_DUMP_DAG_ID])


def _run(stack: SecretlessStack, airflow_home: Path, dags: list[str]) -> Run:
    results, output = run_dags(stack, airflow_home, dags)
    return Run({r["dag_id"]: r for r in results}, output)


def _cli(stack: SecretlessStack, *argv: str) -> tuple[int, str]:
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        code = lockgate_cli(["--config", str(stack.config_path), *argv])
    return code, out.getvalue()


def test_four_upstreams_run_with_no_secret_and_are_audited(
    secretless: SecretlessStack, first_run: Run
) -> None:
    for dag in [*SECRETLESS_DAGS, ENV_DUMP_DAG_ID]:
        assert first_run.succeeded(dag), first_run.log_of(dag)
    assert "COSMOS read order-1001 amount 42.5" in first_run.output

    # the audit shows each system's requests allowed for its own DAG and task
    secretless.running_gateway.audit.flush(5.0)
    for dag, (resource, tasks) in SECRETLESS_DAGS.items():
        run_id = first_run.results[dag]["run_id"]
        records = secretless.running_gateway.audit.search(dag=dag, run=run_id, limit=1000)
        touched = [r for r in records if r.resource == resource and r.event == "allowed"]
        assert {r.task_id for r in touched} == tasks, (dag, records)
        for r in records:  # every record names the deployment the cluster's token proved
            assert r.deployment == "prod" and r.task_id in tasks, r
            assert r.principal in (None, f"airflow:prod/{dag}/{r.task_id}"), r
            assert r.decision != "deny", r
    code, text = _cli(secretless, "audit", "verify")
    assert code == 0, text

    # no upstream holds a secret of the gateway's, and the gateway stores none
    assert not secretless.entra.client_secrets and not secretless.entra.client_certs
    assert not secretless.databricks.client_secrets
    assert secretless.cosmos.disable_local_auth
    code, text = _cli(secretless, "creds", "list")
    assert code == 0 and "4 of 4 credentials hold no secret" in text, text
    assert "orders-api, orders-cosmos, arm, databricks" in text, text

    # each upstream saw only tokens its cloud issued for a federated assertion
    issuer = secretless.config.issuer_url
    assertions = secretless.assertions_seen()
    entra_subjects = {c["sub"] for cloud, _, c in assertions if cloud == "entra"}
    assert entra_subjects == {f"lockgate:credential:{name}" for name in ENTRA_APPS}
    for cloud, header, claims in assertions:
        assert claims["iss"] == issuer
        assert set(claims) >= {"iat", "nbf", "exp", "jti"}
        if cloud == "entra":
            assert header["alg"] == "RS256" and claims["aud"] == "api://AzureADTokenExchange"
        else:
            assert header["alg"] == DATABRICKS_ALGORITHM
            assert claims["aud"] == DATABRICKS_AUDIENCE
            assert claims["sub"] == f"lockgate:credential:{DATABRICKS_CREDENTIAL}"
    assert any(cloud == "databricks" for cloud, _, _ in assertions)
    # the clouds read Lockgate's discovery and keys over https, trusting the stack's CA
    for fetched in (secretless.entra.issuer_keys.fetched,
                    secretless.databricks_federation.keys.fetched):  # fmt: skip
        assert f"{issuer}/.well-known/openid-configuration" in fetched, fetched
    apps = {c["appid"] for c in secretless.entra.issued}
    assert apps == {app for app, _ in ENTRA_APPS.values()}
    assert {r.auth_type for r in secretless.cosmos.requests} == {"aad"}
    assert secretless.adf.seen and all(s.authorised for s in secretless.adf.seen)
    assert secretless.databricks.seen and all(s.authorised for s in secretless.databricks.seen)
    assert secretless.upstream.seen and all(
        s.authorization.startswith("Bearer eyJ") for s in secretless.upstream.seen
    )


def test_a_scan_of_the_worker_and_the_gateway_finds_no_secret(
    secretless: SecretlessStack, airflow_home: Path, first_run: Run
) -> None:
    secretless.running_gateway.audit.flush(5.0)
    task_env = dumped_env(secretless.worker_tmp / "task-environment.json")
    # the environment of a running task: Airflow's context, the worker's home and temp
    assert task_env["AIRFLOW_CTX_DAG_ID"] == ENV_DUMP_DAG_ID
    assert task_env["AIRFLOW_HOME"] == str(airflow_home)
    assert task_env["HOME"] == str(secretless.worker_home)
    backend = json.loads(task_env["AIRFLOW__WORKERS__SECRETS_BACKEND_KWARGS"])
    assert backend["identity_token_file"] == str(secretless.token_file)
    assert not {k for k in backend if "secret" in k}, backend
    assert not [name for name in task_env if name.startswith("LOCKGATE")]

    worker = secretless.secret_scan(gateway=False)
    findings = worker.scan_env(task_env, "task environment")
    findings += worker.scan_bytes("the tasks' logs", first_run.output.encode())
    # AIRFLOW_HOME (airflow.db, logs), the worker's home and temp files, the token volume
    findings += worker.scan_tree(secretless.worker)
    gateway = secretless.secret_scan(gateway=True)
    data_dir = secretless.config.data_dir
    findings += gateway.scan_tree(data_dir)
    findings += gateway.scan_tree(secretless.config_path)
    findings += gateway.scan_tree(secretless.workdir / "policies")
    assert not findings, "\n".join(map(str, findings))
    assert credential_rows(data_dir / "credentials.db") == []
    # what was scanned is what matters: the worker's Airflow and the gateway really ran here
    assert (airflow_home / "airflow.db").is_file() and (data_dir / "audit.db").is_file()
    assert list((data_dir / "keys").glob("*.pem")), "Lockgate's own signing keys, allowed"


def test_the_scan_finds_a_planted_secret(
    secretless: SecretlessStack, first_run: Run, tmp_path: Path
) -> None:
    worker_scan, gateway_scan = (
        secretless.secret_scan(gateway=False),
        secretless.secret_scan(gateway=True),
    )
    worker = tmp_path / "worker"
    shutil.copytree(secretless.worker, worker, symlinks=True)
    data_dir = tmp_path / "data"
    shutil.copytree(secretless.config.data_dir, data_dir)
    assert not worker_scan.scan_tree(worker) and not gateway_scan.scan_tree(data_dir)

    # on the worker: a withdrawn client secret in a temp file, a stray key, an Entra token
    # in a log, and Lockgate's own signing key (allowed in the gateway, never on a worker)
    secret = next(v for k, v in secretless.retired_secrets.items() if k.startswith("Entra"))
    (worker / "tmp" / "leftover.txt").write_text(f"token cache\n{secret}\n")
    stray_key = ec.generate_private_key(ec.SECP256R1())
    (worker / "airflow" / "stray.pem").write_bytes(_pem(stray_key))
    entra_token = jwt.encode(
        {"iss": f"https://sts.windows.net/{secretless.entra.tenant}/", "aud": "x"},
        stray_key, algorithm="ES256",
    )  # fmt: skip
    (worker / "airflow" / "logs.txt").write_text(f"Authorization: Bearer {entra_token}\n")
    signing_key = sorted((data_dir / "keys").glob("*.pem"))[0]
    shutil.copy(signing_key, worker / "home" / "lockgate.pem")
    found = {(Path(f.where).name, f.what) for f in worker_scan.scan_tree(worker)}
    assert ("leftover.txt", "known secret " + _label(secretless, secret)) in found
    assert ("stray.pem", "a PRIVATE KEY that is not Lockgate's") in found
    assert ("lockgate.pem", "a PRIVATE KEY that is not Lockgate's") in found
    assert any(name == "logs.txt" and "sts.windows.net" in what for name, what in found)

    # in the gateway's data directory: a stored credential, a stray key next to its own
    con = sqlite3.connect(data_dir / "credentials.db")
    with con:
        con.execute(
            "insert into credential_versions (name, version, created_at, key_id, nonce,"
            " ciphertext) values ('orders-api-key', 1, 0, 'k', x'00', x'00')"
        )
    con.close()
    assert credential_rows(data_dir / "credentials.db") == ["orders-api-key"]
    (data_dir / "keys" / "stray.pem").write_bytes(_pem(stray_key))
    found = {(Path(f.where).name, f.what) for f in gateway_scan.scan_tree(data_dir)}
    assert found == {("stray.pem", "a PRIVATE KEY that is not Lockgate's")}

    # in a task's environment: a client secret file setting, an account key
    env = dumped_env(secretless.worker_tmp / "task-environment.json")
    kwargs = json.loads(env["AIRFLOW__WORKERS__SECRETS_BACKEND_KWARGS"])
    env["AIRFLOW__WORKERS__SECRETS_BACKEND_KWARGS"] = json.dumps(
        {**kwargs, "client_secret_file": "/etc/lockgate/prod.secret"}
    )
    assert [f.what for f in worker_scan.scan_env(env)] == ["a client secret setting"]
    env["SOME_TOOL_KEY"] = secretless.retired_secrets["Cosmos DB account key #0"]
    assert "a Cosmos DB account key" in {f.what for f in worker_scan.scan_env(env)}


def test_the_scan_finds_the_secrets_of_the_stack_before_it_went_secretless(
    tmp_path: Path,
) -> None:
    """The same scan on the five-systems stack it was made from (client secret on workers,
    upstream secrets in the gateway's store): found."""
    with FiveSystemsStack(tmp_path / "before") as before:
        env = before.airflow_env(tmp_path / "airflow")
        deployment_secret = before.deployment_secret
        data_dir = before.config.data_dir
        stored = sorted(c.name for c in before.config.credentials)
    scan = SecretScan(known={"deployment client secret": deployment_secret})
    assert "a client secret setting" in {f.what for f in scan.scan_env(env)}
    found = {(Path(f.where).name, f.what) for f in scan.scan_tree(tmp_path / "before")}
    assert ("deployment-prod.secret", "known secret deployment client secret") in found
    assert credential_rows(data_dir / "credentials.db") == stored


def _label(stack: SecretlessStack, value: str) -> str:
    return next(k for k, v in stack.retired_secrets.items() if v == value)


def _pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    from cryptography.hazmat.primitives import serialization

    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def test_rotating_signing_keys_on_both_sides_between_runs_breaks_nothing(
    secretless: SecretlessStack, airflow_home: Path, first_run: Run
) -> None:
    before = {(cloud, h["alg"], h["kid"]) for cloud, h, _ in secretless.assertions_seen()}
    seen = len(secretless.assertions_seen())
    entra_seen = len(secretless.entra.token_requests)
    jwks_fetches = secretless.cluster.jwks_requests
    code, text = _cli(secretless, "keys", "rotate")
    assert code == 0, text
    # the cluster rotates its service-account key too; the kubelet refreshes the token
    secretless.cluster.rotate_key()
    secretless.project_token()
    # the new keys sign after signing.publish_ahead (2 s); the first run's upstream tokens
    # expire, so the second run's come from assertions the new keys signed
    time.sleep(UPSTREAM_TOKEN_TTL)
    second = _run(secretless, airflow_home, list(SECRETLESS_DAGS))
    for dag in SECRETLESS_DAGS:
        assert second.succeeded(dag), second.log_of(dag)
    after = {(cloud, h["alg"], h["kid"]) for cloud, h, _ in secretless.assertions_seen()[seen:]}
    # the clouds took assertions signed by the new key of each algorithm (the old keys,
    # still published, may sign until the gateway has taken the rotation up)
    new = {(cloud, alg) for cloud, alg, kid in after if kid not in {k for _, _, k in before}}
    assert new == {("entra", "RS256"), ("databricks", DATABRICKS_ALGORITHM)}, (before, after)
    assert all(r.status == 200 for r in secretless.entra.token_requests[entra_seen:])
    # Lockgate fetched the cluster's keys again for the new kid
    assert secretless.cluster.jwks_requests > jwks_fetches


def test_a_token_from_another_namespace_is_refused(
    secretless: SecretlessStack, airflow_home: Path, first_run: Run
) -> None:
    started = time.time()
    upstream_seen = len(secretless.upstream.seen)
    secretless.project_token(namespace="default")
    try:
        wrong = _run(secretless, airflow_home, ["finance_daily"])
    finally:
        secretless.project_token()
    assert not wrong.succeeded("finance_daily")
    # the task log carries the token service's refusal; the audit says which claim failed
    assert "Lockgate refused (HTTP 400): subject token rejected" in wrong.output
    secretless.running_gateway.audit.flush(5.0)
    refused = secretless.running_gateway.audit.search(decision="deny", since=started)
    assert refused and {(r.event, r.reason) for r in refused} == {
        ("auth_failed", "oidc_claim_not_allowed:kubernetes.io.namespace")
    }, refused
    assert not secretless.running_gateway.audit.search(decision="allow", since=started)
    assert len(secretless.upstream.seen) == upstream_seen  # nothing reached the orders API
