"""Real Airflow 3: Data Factory's extra link, and deferrable ADF and HTTP operators run by
Airflow's trigger runner (``dag.test()`` runs each trigger inline, as the triggerer would).

- A successful ``AzureDataFactoryRunPipelineOperator`` pushes its "Monitor Pipeline Run"
  link (built after the task body, outside its context) and logs no ERROR.
- ``deferrable=True`` on ADF (examples/dags/adf_pipelines.py): the task starts the run
  once, the trigger polls it with a poll token (task ``@poll``) through the identity
  endpoint and the forward proxy, and the task succeeds.
- ``deferrable=True`` on ``HttpOperator``: the trigger sends the request with a token of the
  deferred task try itself (the task's principal, audited as such), and the task succeeds.
- Per DAG run: in the triggerer every ADF trigger shares the deployment's poll token (the
  Azure SDK reads it from the process environment), yet the provider's own async hook and
  azure-identity's credential, fed the connection the secrets backend gives a trigger,
  obtain a poll token narrowed to the trigger's DAG run: DAG run A's trigger reads A's
  pipeline run and is refused B's.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import sqlite3
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from lockgate.airflow import deferral as deferral_context
from lockgate.airflow import secrets
from lockgate.demo.run import run_dags
from lockgate.demo.stack import REPO_ROOT
from tests.e2e.test_airflow_adf import AdfStack

pytest.importorskip("airflow.providers.microsoft.azure", reason="the Azure provider")
pytestmark = [pytest.mark.airflow, pytest.mark.slow]

LINK_KEY = "_link_AzureDataFactoryPipelineRunLink"

DEFERRABLE_DAGS = """
from datetime import datetime

from airflow.providers.http.operators.http import HttpOperator
from airflow.providers.http.sensors.http import HttpSensor
from airflow.providers.microsoft.azure.operators.data_factory import (
    AzureDataFactoryRunPipelineOperator,
)
from airflow.sdk import DAG

COMMON = {"start_date": datetime(2025, 1, 1), "schedule": None, "catchup": False}

with DAG("adf_deferred", **COMMON):
    AzureDataFactoryRunPipelineOperator(
        task_id="run_load_orders", resource_group_name="rg-data", factory_name="adf-prod",
        pipeline_name="load_orders", deferrable=True, check_interval=1,
    )

with DAG("finance_deferred", **COMMON):
    HttpOperator(
        task_id="read_orders", http_conn_id="orders_api", endpoint="orders", method="GET",
        deferrable=True,
    )

with DAG("finance_deferred_sensor", **COMMON):
    HttpSensor(
        task_id="wait_for_order", http_conn_id="orders_api", endpoint="orders/late-1",
        deferrable=True, poke_interval=2, timeout=300,
    )
"""


# What a deployment grants its triggerer: poll tokens read (and cancel) the pipeline runs its
# tasks started through Lockgate; the profile refuses them everything else.
TRIGGERER_POLICY = """
rules:
  - id: test-adf-triggerer-polls
    effect: allow
    principals: ["airflow:prod/*/@poll"]
    actions: [read, run]
    resources: ["arm"]
    objects: ["factory:adf-prod/pipeline:*"]
"""


class DeferralStack(AdfStack):
    """The ADF stack with the example ADF DAGs and the deferrable ones in its DAG folder."""

    def __init__(self, workdir: Path) -> None:
        super().__init__(workdir)
        self.dags = workdir / "dags"
        self.dags.mkdir()
        shutil.copy(REPO_ROOT / "examples" / "dags" / "adf_pipelines.py", self.dags)
        (self.dags / "deferred.py").write_text(DEFERRABLE_DAGS, encoding="utf-8")
        adf_policy = (self.workdir / "policies" / "adf.yaml").read_text(encoding="utf-8")
        if "@poll" not in adf_policy:
            (self.workdir / "policies" / "adf_triggerer.yaml").write_text(
                TRIGGERER_POLICY, encoding="utf-8"
            )

    def airflow_env(self, airflow_home: Path, dags_folder: Path | None = None) -> dict[str, str]:
        env = super().airflow_env(airflow_home, dags_folder or self.dags)
        # the trigger's clients are aiohttp's, which read the trust store from SSL_CERT_FILE
        env["SSL_CERT_FILE"] = str(self.bundle)
        return env


@pytest.fixture(scope="module")
def deferral(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DeferralStack]:
    with DeferralStack(tmp_path_factory.mktemp("lockgate-deferral")) as s:
        yield s


def _state(result: dict[str, Any]) -> str:
    return str(result["state"]).split(".")[-1].lower()


def _task_log_errors(output: str) -> list[str]:
    return [line for line in output.splitlines() if "[error" in line.lower() or " ERROR " in line]


def test_a_successful_adf_run_pushes_its_monitor_link_and_logs_no_error(
    deferral: DeferralStack, airflow_home: Path
) -> None:
    results, output = run_dags(deferral, airflow_home, ["adf_load_orders"])
    assert _state(results[0]) == "success", output[-6000:]
    assert "Failed to push an xcom for task operator extra link" not in output, output[-6000:]
    assert not _task_log_errors(output), _task_log_errors(output)
    con = sqlite3.connect(airflow_home / "airflow.db")
    try:
        rows = con.execute(
            "select value from xcom where dag_id = ? and run_id = ? and key = ?",
            ("adf_load_orders", results[0]["run_id"], LINK_KEY),
        ).fetchall()
    finally:
        con.close()
    assert rows, "the Monitor Pipeline Run link was not pushed"
    link = str(rows[0][0])
    assert "https://adf.azure.com/en-us/monitoring/pipelineruns/" in link
    assert "/subscriptions/sub-1/resourceGroups/rg-data/" in link
    assert "factories/adf-prod" in link


def test_deferrable_adf_and_http_succeed_through_their_triggers(
    deferral: DeferralStack, airflow_home: Path
) -> None:
    creates_before = len(deferral.adf.calls("createRun"))
    orders_seen = len(deferral.upstream.seen)
    results, output = run_dags(
        deferral, airflow_home, ["adf_load_orders_deferred", "finance_deferred"]
    )
    by = {r["dag_id"]: r for r in results}
    assert _state(by["adf_load_orders_deferred"]) == "success", output[-8000:]
    assert _state(by["finance_deferred"]) == "success", output[-8000:]
    assert "running trigger in line" in output  # both deferred, and their triggers ran
    # The provider's async ADF hook closes its client but never the DefaultAzureCredential it
    # built, whose aiohttp session asyncio then reports at shutdown: any managed identity
    # does that, Lockgate's or Azure's.
    errors = [e for e in _task_log_errors(output) if "Unclosed c" not in e]
    assert not errors, errors
    # ADF: one run started, by the task; polled by the trigger with a poll token
    assert len(deferral.adf.calls("createRun")) == creates_before + 1
    deferral.gateway.audit.flush(5.0)
    arm = deferral.gateway.audit.search(resource="arm", event="allowed")
    started = [r for r in arm if r.dag_id == "adf_load_orders_deferred" and r.action == "run"]
    assert started and started[-1].task_id == "run_load_orders"
    polled = [r for r in arm if r.task_id == "@poll" and r.action == "read"]
    assert polled and all(r.object == "factory:adf-prod/pipeline:load_orders" for r in polled)
    assert not [r for r in deferral.gateway.audit.search(resource="arm", event="denied")
                if r.task_id == "@poll"]  # fmt: skip
    # HTTP: the trigger's request reached the app as the deferred task itself
    assert len(deferral.upstream.seen) == orders_seen + 1
    served = [
        r for r in deferral.gateway.audit.search(dag="finance_deferred", event="allowed")
        if r.task_id == "read_orders"
    ]  # fmt: skip
    assert served and served[-1].principal == "airflow:prod/finance_deferred/read_orders"
    assert served[-1].run_id == by["finance_deferred"]["run_id"]


CONN_ID = "azure_data_factory_default"
DAG = "adf_load_orders_deferred"
# as Airflow names runs: "+" and ":" must reach the identity endpoint as they are
RUN_A = "manual__2025-01-01T00:00:00+00:00"
RUN_B = "manual__2025-01-02T00:00:00+00:00"


def _coords(run_id: str) -> dict[str, Any]:
    return {"dag_id": DAG, "task_id": "run_load_orders", "run_id": run_id, "try_number": 1,
            "map_index": -1}  # fmt: skip


def _trigger_scope_scenario(backend_kwargs: dict[str, str]) -> dict[str, str]:
    """Run in a fresh process whose trust store is the worker bundle (aiohttp reads
    SSL_CERT_FILE once, at import): two DAG runs each start a pipeline run as their task;
    then, as in the triggerer (one process, the trigger's DAG run named only in the log
    context), the provider's ``AzureDataFactoryAsyncHook`` with azure-identity's credential
    polls with the connection the secrets backend gives each trigger."""
    import structlog.contextvars
    from airflow.providers.microsoft.azure.hooks import data_factory
    from azure.core.exceptions import HttpResponseError
    from azure.identity.aio import ManagedIdentityCredential
    from azure.mgmt.datafactory.aio import DataFactoryManagementClient

    backend = secrets.LockgateSecretsBackend(**backend_kwargs)

    def as_task(coords: dict[str, Any] | None) -> None:
        task = type("Task", (), {"task_id": "run_load_orders", "deferrable": False})()
        secrets.task_coordinates = lambda: coords  # type: ignore[assignment,return-value]
        deferral_context.running_task = lambda: task if coords else None

    async def start_run(run_id: str) -> str:
        """The task of DAG run ``run_id`` starts load_orders with its own token."""
        as_task(_coords(run_id))
        await asyncio.to_thread(backend.get_conn_value, CONN_ID)  # exports the task's env
        async with (
            ManagedIdentityCredential() as credential,
            DataFactoryManagementClient(credential, "sub-1") as client,
        ):
            run = await client.pipelines.create_run("rg-data", "adf-prod", "load_orders")
            return str(run.run_id)

    async def trigger_reads(run_id: str, pipeline_run: str) -> str:
        """What the trigger of DAG run ``run_id`` gets polling ``pipeline_run``."""
        as_task(None)
        with structlog.contextvars.bound_contextvars(trigger_id=1, **_coords(run_id)):
            hook = data_factory.AzureDataFactoryAsyncHook(azure_data_factory_conn_id=CONN_ID)
            try:
                run = await hook.get_pipeline_run(pipeline_run, "rg-data", "adf-prod")
                return str(run.status)
            except HttpResponseError as exc:
                return f"refused {exc.status_code}: {exc.message}"
            finally:
                await hook.close()

    async def lookup(conn_id: str) -> Any:  # as the triggerer's secrets chain answers it
        return await backend.aget_connection(conn_id)

    data_factory.get_async_connection = lookup  # type: ignore[assignment]

    async def scenario() -> dict[str, str]:
        run_a, run_b = await start_run(RUN_A), await start_run(RUN_B)
        return {
            "a_reads_a": await trigger_reads(RUN_A, run_a),
            "a_reads_b": await trigger_reads(RUN_A, run_b),
            "b_reads_b": await trigger_reads(RUN_B, run_b),
        }

    return asyncio.run(scenario())


def test_an_adf_trigger_reads_only_the_pipeline_runs_of_its_own_dag_run(
    deferral: DeferralStack,
) -> None:
    """DAG run A's trigger reads A's pipeline run and is refused B's; B's trigger (after
    A's, in the same process: azure-identity caches per credential) reads B's."""
    assert deferral.ca_file is not None
    kwargs = {
        "url": deferral.control_url, "deployment": "prod", "ca_file": str(deferral.ca_file),
        "client_secret_file": str(deferral.written["deployment_secret"]),
    }  # fmt: skip
    own = ("AZURE_", "IDENTITY_", "MSI_", "HTTPS_PROXY", "NO_PROXY")  # no identity of its own
    env = {k: v for k, v in os.environ.items() if not k.upper().startswith(own)}
    env["SSL_CERT_FILE"] = str(deferral.bundle)
    env["PYTHONPATH"] = str(REPO_ROOT)
    code = (
        "import json, sys; from tests.e2e.test_airflow_deferral import _trigger_scope_scenario"
        " as run; print('RESULT ' + json.dumps(run(json.loads(sys.argv[1]))))"
    )
    done = subprocess.run(
        [sys.executable, "-c", code, json.dumps(kwargs)],
        env=env, cwd=REPO_ROOT, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    lines = [line for line in done.stdout.splitlines() if line.startswith("RESULT ")]
    assert done.returncode == 0 and lines, done.stdout[-4000:] + done.stderr[-4000:]
    got = json.loads(lines[-1].removeprefix("RESULT "))
    assert not got["a_reads_a"].startswith("refused"), got
    assert got["a_reads_b"].startswith("refused 403"), got
    assert "was not started by" in got["a_reads_b"], got
    assert not got["b_reads_b"].startswith("refused"), got
    deferral.gateway.audit.flush(5.0)
    polled = [r for r in deferral.gateway.audit.search(resource="arm") if r.task_id == "@poll"]
    seen = {(r.principal, r.run_id, r.decision) for r in polled if r.action == "read"}
    assert seen >= {
        (f"airflow:prod/{DAG}/@poll", RUN_A, "allow"),
        (f"airflow:prod/{DAG}/@poll", RUN_A, "deny"),
        (f"airflow:prod/{DAG}/@poll", RUN_B, "allow"),
    }, seen
