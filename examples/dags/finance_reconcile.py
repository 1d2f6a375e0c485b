"""Many requests in one task: a finance DAG reading orders 60 times with the stock HttpHook.

HttpHook looks its connection up on every run(), so this exercises the secrets backend's
per-task-try token cache, and it keeps requests flowing while a credential rotates.
"""

from __future__ import annotations

import datetime as dt
import time

from airflow.providers.http.hooks.http import HttpHook
from airflow.sdk import DAG, task

with DAG(
    dag_id="finance_reconcile",
    start_date=dt.datetime(2026, 1, 1),
    schedule=None,
    catchup=False,
    tags=["lockgate-example"],
):

    @task
    def read_many(count: int = 60, pause: float = 0.05) -> int:
        hook = HttpHook(method="GET", http_conn_id="orders_api")
        for _ in range(count):
            hook.run("orders").raise_for_status()
            time.sleep(pause)
        return count

    read_many()
