"""Azure Data Factory through Lockgate with the stock operators, unchanged.

The ``azure_data_factory_default`` connection comes from the Lockgate secrets backend: the
subscription, resource group and factory, and no secret. When the backend answers it inside
the task it also exports ``IDENTITY_ENDPOINT``/``IDENTITY_HEADER`` (Lockgate's managed
identity endpoint and the task's own short-lived Lockgate token) and ``HTTPS_PROXY``
(Lockgate's forward proxy), so the hook's ``DefaultAzureCredential`` gets the Lockgate token
and its calls to https://management.azure.com go through the gateway, which checks the
pipeline against policy and calls ARM with its own Entra ID credential.

- ``adf_load_orders``: starts ``load_orders`` without waiting, then a sensor polls the run
  to Succeeded.
- ``adf_load_orders_deferred``: the same pipeline with ``deferrable=True``: the task starts
  the run and frees its worker slot; the triggerer watches the run with a Lockgate *poll
  token*, which may only read (and cancel) pipeline runs this deployment's tasks started
  through Lockgate (policy grants it to ``airflow:prod/*/@poll``: examples/policies/adf.yaml).
- ``adf_drop_everything``: ``drop_everything`` is granted to no one; the gateway refuses
  the createRun and the task log says why.
"""

from __future__ import annotations

from datetime import datetime, timedelta

from airflow.providers.microsoft.azure.operators.data_factory import (
    AzureDataFactoryRunPipelineOperator,
)
from airflow.providers.microsoft.azure.sensors.data_factory import (
    AzureDataFactoryPipelineRunStatusSensor,
)
from airflow.sdk import DAG

COMMON = {"start_date": datetime(2025, 1, 1), "schedule": None, "catchup": False}
FACTORY = {"resource_group_name": "rg-data", "factory_name": "adf-prod"}

with DAG("adf_load_orders", **COMMON):
    run = AzureDataFactoryRunPipelineOperator(
        task_id="run_load_orders",
        **FACTORY,
        pipeline_name="load_orders",
        parameters={"day": "{{ ds }}"},
        wait_for_termination=False,
        execution_timeout=timedelta(minutes=10),
    )
    wait = AzureDataFactoryPipelineRunStatusSensor(
        task_id="wait_for_load_orders",
        **FACTORY,
        run_id=run.output["run_id"],
        poke_interval=1,
        timeout=300,
        execution_timeout=timedelta(minutes=10),
    )

with DAG("adf_load_orders_deferred", **COMMON):
    AzureDataFactoryRunPipelineOperator(
        task_id="run_load_orders",
        **FACTORY,
        pipeline_name="load_orders",
        parameters={"airflow_run": "{{ run_id }}"},  # manual runs have no logical date
        deferrable=True,
        check_interval=1,
        execution_timeout=timedelta(minutes=10),
    )

with DAG("adf_drop_everything", **COMMON):
    AzureDataFactoryRunPipelineOperator(
        task_id="run_drop_everything",
        **FACTORY,
        pipeline_name="drop_everything",
        wait_for_termination=False,
    )
