"""Denied: an orders DAG that tries to drop its table fails with the gateway's reason.

Policy lets the orders DAGs read and write ``sales.orders`` but rule ``warehouse-no-ddl``
(examples/policies/warehouse.yaml) denies every schema change, so the stock
``PostgresHook`` gets SQLSTATE 42501 (insufficient_privilege) with "Lockgate denied admin
on sales.orders in warehouse-pg for airflow:prod/warehouse_orders_purge/drop_orders: ..."
and the task fails, as it would on the server's own permission error. The refusal is in the
audit trail under this DAG run; the statement never reaches the server.
"""

from __future__ import annotations

import datetime as dt

from airflow.providers.postgres.hooks.postgres import PostgresHook
from airflow.sdk import DAG, task


@task(retries=0, execution_timeout=dt.timedelta(minutes=5))
def drop_orders() -> None:
    PostgresHook(postgres_conn_id="warehouse_pg").run("DROP TABLE sales.orders")


with DAG(
    dag_id="warehouse_orders_purge",
    start_date=dt.datetime(2026, 1, 1),
    schedule=None,
    catchup=False,
    tags=["lockgate-example", "postgres"],
):
    drop_orders()
