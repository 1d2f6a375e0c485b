"""Ungranted: a marketing DAG that tries to read the sales orders in PostgreSQL.

Marketing DAGs may read their own schema (rule ``warehouse-marketing-read``,
examples/policies/warehouse.yaml), so the Lockgate secrets backend hands this task a token
for ``warehouse_pg``; but no rule lets them read ``sales.orders``. The gateway refuses that
SELECT with SQLSTATE 42501 before it reaches the server, and the refusal is audited. The task
asserts the refusal (it fails if the read ever succeeds) and that the session is still
usable afterwards.
"""

from __future__ import annotations

import datetime as dt
from contextlib import closing

from airflow.providers.postgres.hooks.postgres import PostgresHook
from airflow.sdk import DAG, task

INSUFFICIENT_PRIVILEGE = "42501"


@task(retries=0, execution_timeout=dt.timedelta(minutes=5))
def peek_orders() -> int:
    hook = PostgresHook(postgres_conn_id="warehouse_pg")
    with closing(hook.get_conn()) as conn:
        hook.set_autocommit(conn, True)
        with closing(conn.cursor()) as cur:
            try:
                cur.execute("SELECT * FROM sales.orders")
            except Exception as exc:  # the hook's driver error (psycopg 3 or psycopg2)
                code = getattr(exc, "sqlstate", None) or getattr(exc, "pgcode", None)
                if code != INSUFFICIENT_PRIVILEGE:
                    raise
                print(f"refused as expected: {str(exc).strip()}")
            else:
                raise AssertionError("marketing read sales.orders: the gateway let it through")
            cur.execute("SELECT name, budget FROM marketing.campaigns")
            campaigns = cur.fetchall()
    print(f"campaigns visible to marketing: {len(campaigns)}")
    return len(campaigns)


with DAG(
    dag_id="warehouse_marketing_peek",
    start_date=dt.datetime(2026, 1, 1),
    schedule=None,
    catchup=False,
    tags=["lockgate-example", "postgres"],
):
    peek_orders()
