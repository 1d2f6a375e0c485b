"""Partly granted: a finance DAG may read orders but not write them.

The token is minted (finance may read), and the gateway answers the POST with 403 naming
the principal, the action, the object and that no rule allows it.
"""

from __future__ import annotations

import datetime as dt
import json

from airflow.providers.http.operators.http import HttpOperator
from airflow.sdk import DAG

with DAG(
    dag_id="finance_backfill",
    start_date=dt.datetime(2026, 1, 1),
    schedule=None,
    catchup=False,
    tags=["lockgate-example"],
):
    HttpOperator(
        task_id="overwrite_orders",
        http_conn_id="orders_api",
        method="POST",
        endpoint="orders",
        data=json.dumps({"id": "o-1", "amount": 0}),
        headers={"Content-Type": "application/json"},
    )
