"""Not granted: no rule lets marketing DAGs touch orders-api.

The task fails before any request leaves the worker: the secrets backend's token request is
refused and Airflow reports AirflowSecretsBackendAccessDenied with Lockgate's reason.
"""

from __future__ import annotations

import datetime as dt

from airflow.providers.http.operators.http import HttpOperator
from airflow.sdk import DAG

with DAG(
    dag_id="marketing_daily",
    start_date=dt.datetime(2026, 1, 1),
    schedule=None,
    catchup=False,
    tags=["lockgate-example"],
):
    HttpOperator(
        task_id="peek_orders",
        http_conn_id="orders_api",
        method="GET",
        endpoint="orders",
    )
