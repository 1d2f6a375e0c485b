"""Databricks through Lockgate with the stock provider: run-now, submit, deferrable, SDK.

The ``databricks_default`` connection comes from the Lockgate secrets backend: host and port
of the gateway's Databricks listener, the task's own short-lived Lockgate token as the
password (PAT mode). No Databricks secret is on the worker.

- ``databricks_run_now``: triggers job 101 and polls it to SUCCESS, then reads the run with
  the databricks-sdk ``WorkspaceClient`` in a ``@task``.
- ``databricks_submit_big``: a one-off run asking for 64 workers; the guardrail caps this
  DAG at 8, so the gateway refuses it and says why.
- ``databricks_ungranted``: job 404 is not granted to anyone; refused.
- ``databricks_deferrable``: run-now in deferrable mode; the triggerer polls the run with a
  poll token that may only read runs this deployment started through Lockgate.
"""

from __future__ import annotations

from datetime import datetime

from airflow.providers.databricks.operators.databricks import (
    DatabricksRunNowOperator,
    DatabricksSubmitRunOperator,
)
from airflow.sdk import DAG, task

COMMON = {"start_date": datetime(2025, 1, 1), "schedule": None, "catchup": False}
FAST = {"polling_period_seconds": 1, "databricks_retry_limit": 2, "databricks_retry_delay": 1}


@task
def read_run_with_sdk(databricks_run_id: int) -> str:
    """The databricks-sdk, pointed at the gateway with the task's Lockgate token."""
    from airflow.sdk.bases.hook import BaseHook
    from databricks.sdk import WorkspaceClient

    conn = BaseHook.get_connection("databricks_default")
    w = WorkspaceClient(
        host=f"{conn.schema}://{conn.host}:{conn.port}", token=conn.password, auth_type="pat"
    )
    run = w.jobs.get_run(databricks_run_id)
    state = run.state.result_state.value if run.state and run.state.result_state else "?"
    print(f"SDK sees run {run.run_id} of job {run.job_id}: {state} at {run.run_page_url}")
    return state


with DAG("databricks_run_now", **COMMON):
    run_now = DatabricksRunNowOperator(task_id="run_load_job", job_id=101, **FAST)
    read_run_with_sdk(run_now.output["run_id"])

with DAG("databricks_submit_big", **COMMON):
    DatabricksSubmitRunOperator(
        task_id="submit_big_cluster",
        run_name="adhoc-backfill",
        timeout_seconds=1800,
        tasks=[
            {
                "task_key": "backfill",
                "notebook_task": {"notebook_path": "/Shared/backfill"},
                "new_cluster": {
                    "spark_version": "15.4.x-scala2.12",
                    "node_type_id": "i3.xlarge",
                    "num_workers": 64,
                },
            }
        ],
        databricks_retry_limit=1,
    )

with DAG("databricks_ungranted", **COMMON):
    DatabricksRunNowOperator(task_id="run_other_job", job_id=404, databricks_retry_limit=1)

with DAG("databricks_deferrable", **COMMON):
    DatabricksRunNowOperator(task_id="run_load_job_deferred", job_id=101, deferrable=True, **FAST)
