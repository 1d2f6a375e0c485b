"""Granted: the orders_load DAG may write orders (policy rule orders-load-writes)."""

from __future__ import annotations

import datetime as dt
import json

from airflow.providers.http.operators.http import HttpOperator
from airflow.sdk import DAG

with DAG(
    dag_id="orders_load",
    start_date=dt.datetime(2026, 1, 1),
    schedule=None,
    catchup=False,
    tags=["lockgate-example"],
):
    write = HttpOperator(
        task_id="write_order",
        http_conn_id="orders_api",
        method="POST",
        endpoint="orders",
        data=json.dumps({"id": "o-1001", "amount": 42.5, "currency": "EUR"}),
        headers={"Content-Type": "application/json"},
        log_response=True,
    )
    read = HttpOperator(
        task_id="read_back",
        http_conn_id="orders_api",
        method="GET",
        endpoint="orders/o-1001",
        log_response=True,
        response_check=lambda response: response.json()["amount"] == 42.5,
    )
    write >> read
