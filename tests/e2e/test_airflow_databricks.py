"""Real Airflow 3 DAGs with the stock Databricks provider and databricks-sdk, through
Lockgate, to the test workspace (src/lockgate/demo/standins/databricks) behind OAuth M2M.

The stack is the demo stack plus: the fake workspace on its own loop/thread, a ``databricks``
resource (profile databricks, mounted on its own TLS listener, cap of 8 workers for
``databricks_*`` DAGs), its service-principal credential (client_secret_basic), the example
policy examples/policies/databricks.yaml, and ``databricks_*`` delegated to ``prod``.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
import shutil
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from lockgate.cli import main as lockgate_cli
from lockgate.demo.run import run_dags
from lockgate.demo.stack import REPO_ROOT, LocalStack, free_port
from lockgate.demo.standins.databricks import DEFAULT_CLIENT_ID, FakeDatabricks, start

pytest.importorskip("airflow.providers.databricks", reason="the Databricks provider")
pytestmark = [pytest.mark.airflow, pytest.mark.slow]

POLICY = REPO_ROOT / "examples" / "policies" / "databricks.yaml"
CREDENTIAL = "databricks-sp"
JOB_101 = {
    "name": "etl-load",
    "timeout_seconds": 1800,
    "job_clusters": [
        {"job_cluster_key": "main",
         "new_cluster": {"node_type_id": "i3.xlarge", "autoscale": {"min_workers": 1,
                                                                    "max_workers": 4}}}
    ],
    "tasks": [{"task_key": "load", "job_cluster_key": "main"}],
}  # fmt: skip


class DatabricksStack(LocalStack):
    def __init__(self, workdir: Path) -> None:
        super().__init__(workdir, tls=True)
        self.sp_secret = "sp-secret-1"
        self.fake = FakeDatabricks({self.sp_secret}, pending_polls=4, running_polls=1)
        self.fake.add_job(101, JOB_101)
        self.fake.add_job(404, {"name": "other", "tasks": []})
        self.dbx_port = free_port()
        self._floop = asyncio.new_event_loop()
        self._fthread = threading.Thread(target=self._floop.run_forever, daemon=True)
        self._fthread.start()
        self._frunner, _ = self.fcall(start(self.fake, self.dbx_port))
        doc = yaml.safe_load(Path(self.config_path).read_text(encoding="utf-8"))
        doc["resources"].append(
            {"name": "databricks", "kind": "http", "upstream": f"http://127.0.0.1:{self.dbx_port}",
             "credential": CREDENTIAL, "conn_id": "databricks_default", "profile": "databricks",
             "listen": {"host": "127.0.0.1", "port": 0,
                        "tls": {"cert": "tls/cert.pem", "key": "tls/key.pem"}},
             "databricks": {"guardrails": [
                 {"principals": ["airflow:prod/databricks_*/*"], "max_workers": 8,
                  "allowed_node_types": ["i3.*", "m5.*"], "max_timeout_seconds": 7200}]}}
        )  # fmt: skip
        doc["credentials"].append(
            {"name": CREDENTIAL, "type": "oauth2_client_credentials",
             "token_url": f"http://127.0.0.1:{self.dbx_port}/oidc/v1/token",
             "client_id": DEFAULT_CLIENT_ID, "scope": "all-apis",
             "token_auth": "client_secret_basic", "overlap": 600}
        )  # fmt: skip
        for dep in doc["deployments"]:
            dep["dags"].append("databricks_*")
        Path(self.config_path).write_text(yaml.safe_dump(doc, sort_keys=False), encoding="utf-8")
        shutil.copy(POLICY, self.workdir / "policies" / "databricks.yaml")

    def set_databricks_secret(self, value: str) -> None:
        from lockgate.server import State

        State(self.config).credentials.rotate(CREDENTIAL, value)

    def fcall(self, coro: Any) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self._floop).result(30)

    def start(self) -> DatabricksStack:
        from lockgate.server import State

        State(self.config).credentials.set(CREDENTIAL, self.sp_secret)
        super().start()
        return self

    def stop(self) -> None:
        try:
            super().stop()
        finally:
            self.fcall(self._frunner.cleanup())
            self._floop.call_soon_threadsafe(self._floop.stop)
            self._fthread.join(10)

    def airflow_env(self, airflow_home: Path, dags_folder: Path | None = None) -> dict[str, str]:
        env = (
            super().airflow_env(airflow_home)
            if dags_folder is None
            else super().airflow_env(airflow_home, dags_folder)
        )
        if self.ca_file:  # aiohttp (the hook's async path, in the trigger) uses ssl defaults
            env["SSL_CERT_FILE"] = str(self.ca_file)
        return env


@pytest.fixture(scope="module")
def dbx(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DatabricksStack]:
    with DatabricksStack(tmp_path_factory.mktemp("lockgate-dbx")) as s:
        yield s


def _state(result: dict[str, Any]) -> str:
    return str(result["state"]).split(".")[-1].lower()


def _cli(stack: LocalStack, *argv: str) -> tuple[int, str]:
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        code = lockgate_cli(["--config", str(stack.config_path), *argv])
    return code, out.getvalue()


def test_stock_operators_guardrails_denials_deferrable_and_audit(
    dbx: DatabricksStack, airflow_home: Path
) -> None:
    dags = ["databricks_run_now", "databricks_submit_big", "databricks_ungranted",
            "databricks_deferrable"]  # fmt: skip
    results, output = run_dags(dbx, airflow_home, dags)
    by = {r["dag_id"]: r for r in results}
    assert _state(by["databricks_run_now"]) == "success", output[-4000:]
    assert _state(by["databricks_deferrable"]) == "success", output[-4000:]
    assert _state(by["databricks_submit_big"]) == "failed"
    assert _state(by["databricks_ungranted"]) == "failed"
    # the guardrail message, naming limit and value, is in the task log
    assert "num_workers 64 exceeds the limit 8 for airflow:prod/databricks_*/*" in output
    assert "job:404" in output and "no rule allows" in output
    assert "SDK sees run" in output and "SUCCESS" in output
    # the workspace saw only the gateway's OAuth tokens; no 64-worker submit reached it
    assert all(s.authorised for s in dbx.fake.seen)
    assert not dbx.fake.api_calls("runs/submit")
    assert len(dbx.fake.runs) == 2 and all(r.job_id == 101 for r in dbx.fake.runs.values())

    dbx.gateway.audit.flush(5.0)
    code, text = _cli(dbx, "audit", "search", "--dag", "databricks_run_now", "--json")
    assert code == 0
    rows = [json.loads(line) for line in text.splitlines() if line.strip()]
    started = [  # the outcome record: its "admitted" record has no run id yet
        r for r in rows
        if r["event"] == "allowed" and r["action"] == "run" and r["object"] == "job:101"
    ]  # fmt: skip
    assert started and started[0]["detail"]["cluster"]["max_workers_total"] == 4
    run_id = started[0]["detail"]["run_id"]
    assert any(r["detail"].get("run_page_url", "").endswith(f"/run/{run_id}") for r in rows), rows
    # the deferrable run was polled by a poll token (task @poll), audited as such
    polled = dbx.gateway.audit.search(resource="databricks", event="allowed")
    assert any(r.task_id == "@poll" for r in polled)
    code, text = _cli(dbx, "audit", "verify")
    assert code == 0, text


def test_rotating_the_service_principal_secret_during_a_run_fails_nothing(
    dbx: DatabricksStack, airflow_home: Path
) -> None:
    dbx.fake.token_ttl = 2  # upstream tokens expire during the run: refreshes use the new secret
    dbx.fake.pending_polls = 12  # the run lasts a dozen polls

    def rotate_midway() -> None:
        time.sleep(8)  # Airflow start-up; the task is then polling
        dbx.fake.client_secrets.add("sp-secret-2")
        dbx.set_databricks_secret("sp-secret-2")
        time.sleep(1.5)
        dbx.fake.client_secrets.discard("sp-secret-1")

    before = dbx.fake.token_calls
    rotator = threading.Thread(target=rotate_midway)
    rotator.start()
    results, output = run_dags(dbx, airflow_home, ["databricks_run_now"])
    rotator.join()
    assert _state(results[0]) == "success", output[-4000:]
    assert dbx.fake.token_calls > before
    assert "sp-secret-1" not in dbx.fake.client_secrets
