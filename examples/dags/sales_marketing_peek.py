"""Ungranted: a marketing DAG that tries to read the sales orders in Cassandra.

No policy rule names ``marketing_*`` for resource ``sales-cassandra``, so the Lockgate secrets
backend is refused a token for ``sales_cassandra`` (``AirflowSecretsBackendAccessDenied``
with the reason) and the task fails before any statement is sent. The refusal is audited.
"""

from __future__ import annotations

import datetime as dt

from airflow.providers.apache.cassandra.hooks.cassandra import CassandraHook
from airflow.sdk import DAG, task


@task(retries=0, execution_timeout=dt.timedelta(minutes=5))
def peek_orders() -> int:
    hook = CassandraHook(cassandra_conn_id="sales_cassandra")
    try:
        return len(hook.get_conn().execute("SELECT * FROM sales.orders").all())
    finally:
        hook.shutdown_cluster()


with DAG(
    dag_id="marketing_sales_peek",
    start_date=dt.datetime(2026, 1, 1),
    schedule=None,
    catchup=False,
    tags=["lockgate-example", "cassandra"],
):
    peek_orders()
