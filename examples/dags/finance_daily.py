"""Granted: finance DAGs may read orders through Lockgate (policy rule finance-read-orders).

The DAG holds no secret: ``orders_api`` is answered by the Lockgate secrets backend with a
Connection that points at the gateway and carries a token minted for this task try.
"""

from __future__ import annotations

import datetime as dt

from airflow.providers.http.operators.http import HttpOperator
from airflow.sdk import DAG

with DAG(
    dag_id="finance_daily",
    start_date=dt.datetime(2026, 1, 1),
    schedule=None,
    catchup=False,
    tags=["lockgate-example"],
):
    HttpOperator(
        task_id="read_orders",
        http_conn_id="orders_api",
        method="GET",
        endpoint="orders",
        log_response=True,
        execution_timeout=dt.timedelta(minutes=10),
    )
