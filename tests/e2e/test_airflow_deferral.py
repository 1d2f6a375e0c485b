"""Real Airflow 3: Data Factory's extra link, and deferrable ADF and HTTP operators whose
conn_ids offer no poll tokens.

- A successful ``AzureDataFactoryRunPipelineOperator`` pushes its "Monitor Pipeline Run"
  link (built after the task body, outside its context) and logs no ERROR.
- ``deferrable=True`` on ADF fails at the task's first lookup, before createRun: no run is
  started upstream (so a retry cannot start a duplicate), and the reason is at ERROR.
- ``deferrable=True`` on ``HttpOperator`` fails in the trigger with the reason at ERROR,
  and no request reaches the upstream.
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
"""


class DeferralStack(AdfStack):
    """The ADF stack with the example ADF DAGs and the deferrable ones in its DAG folder."""

    def __init__(self, workdir: Path) -> None:
        super().__init__(workdir)
        self.dags = workdir / "dags"
        self.dags.mkdir()
        shutil.copy(REPO_ROOT / "examples" / "dags" / "adf_pipelines.py", self.dags)
        (self.dags / "deferred.py").write_text(DEFERRABLE_DAGS, encoding="utf-8")

    def airflow_env(self, airflow_home: Path, dags_folder: Path | None = None) -> dict[str, str]:
        return super().airflow_env(airflow_home, dags_folder or self.dags)


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


def test_deferrable_adf_and_http_fail_before_anything_starts_with_the_reason_at_error(
    deferral: DeferralStack, airflow_home: Path
) -> None:
    runs_before = len(deferral.adf.runs)
    creates_before = len(deferral.adf.calls("createRun"))
    orders_seen = len(deferral.upstream.seen)
    results, output = run_dags(deferral, airflow_home, ["adf_deferred", "finance_deferred"])
    by = {r["dag_id"]: r for r in results}
    assert _state(by["adf_deferred"]) == "failed", output[-6000:]
    assert _state(by["finance_deferred"]) == "failed", output[-6000:]
    # ADF: refused at the first lookup, before createRun: no pipeline run was started
    assert len(deferral.adf.runs) == runs_before
    assert len(deferral.adf.calls("createRun")) == creates_before
    assert "runs with deferrable=True" in output and "offers no poll tokens" in output
    # HTTP: the trigger was refused with the reason, not "conn_id ... isn't defined"
    assert "asked for outside a task try" in output
    assert len(deferral.upstream.seen) == orders_seen
    errors = "\n".join(_task_log_errors(output))
    assert "deferrable=True" in errors and "deferrable=False" in errors, errors[-4000:]
