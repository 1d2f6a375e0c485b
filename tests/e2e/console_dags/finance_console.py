"""A finance DAG run the console is asked about: one task the policy lets through, one it
refuses.

``read_orders`` reads ``/orders`` (rule ``finance-read-orders`` of ``lockgate init``'s
policy); ``overwrite_orders`` then writes to it, which no rule allows: the gateway answers
403 and Airflow fails that task. Both use the stock HttpOperator; the ``orders_api``
connection comes from the Lockgate secrets backend.
"""

from __future__ import annotations

import datetime as dt
import json

from airflow.providers.http.operators.http import HttpOperator
from airflow.sdk import DAG

with DAG(
    dag_id="finance_console",
    start_date=dt.datetime(2026, 1, 1),
    schedule=None,
    catchup=False,
):
    read_orders = HttpOperator(
        task_id="read_orders",
        http_conn_id="orders_api",
        method="GET",
        endpoint="orders",
    )
    overwrite_orders = HttpOperator(
        task_id="overwrite_orders",
        http_conn_id="orders_api",
        method="POST",
        endpoint="orders",
        data=json.dumps({"id": "o-1", "amount": 0}),
        headers={"Content-Type": "application/json"},
    )
    read_orders >> overwrite_orders
