"""Real Airflow 3: Data Factory's extra link, and deferrable ADF and HTTP operators run by
Airflow's trigger runner (``dag.test()`` runs each trigger inline, as the triggerer would).

- A successful ``AzureDataFactoryRunPipelineOperator`` pushes its "Monitor Pipeline Run"
  link (built after the task body, outside its context) and logs no ERROR.
- ``deferrable=True`` on ADF (examples/dags/adf_pipelines.py): the task starts the run
  once, the trigger polls it with a poll token (task ``@poll``) through the identity
  endpoint and the forward proxy, and the task succeeds.
- ``deferrable=True`` on ``HttpOperator``: the trigger sends the request with a token of the
  deferred task try itself (the task's principal, audited as such), and the task succeeds.
"""

from __future__ import annotations

import shutil
import sqlite3
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

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
