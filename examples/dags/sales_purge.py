"""Denied: a sales DAG that tries to drop its table fails with the gateway's reason.

Policy lets sales DAGs read and write ``sales.orders`` but rule ``sales-no-ddl`` denies every
schema change, so the stock ``CassandraHook`` gets ``Unauthorized`` ("Lockgate denied admin
on sales.orders in sales-cassandra for airflow:prod/sales_purge/drop_orders: ...") and the
task fails. The refusal is in the audit trail under this DAG run; the table is untouched.
"""

from __future__ import annotations

import datetime as dt

from airflow.providers.apache.cassandra.hooks.cassandra import CassandraHook
from airflow.sdk import DAG, task


@task(retries=0, execution_timeout=dt.timedelta(minutes=5))
def drop_orders() -> None:
    hook = CassandraHook(cassandra_conn_id="sales_cassandra")
    try:
        hook.get_conn().execute("DROP TABLE sales.orders")
    finally:
        hook.shutdown_cluster()


with DAG(
    dag_id="sales_purge",
    start_date=dt.datetime(2026, 1, 1),
    schedule=None,
    catchup=False,
    tags=["lockgate-example", "cassandra"],
):
    drop_orders()
