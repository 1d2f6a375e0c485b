"""Granted: a bulk load of ``sales.orders`` through ``COPY ... FROM STDIN`` via Lockgate.

``COPY ... FROM STDIN`` is a write on the table (rule ``warehouse-orders-read-write``,
examples/policies/warehouse.yaml); the rows stream through the gateway to the server. The
task then dumps the table with ``COPY ... TO STDOUT`` (a read) and checks the rows it wrote
came back. ``COPY ... FROM`` a server file or ``PROGRAM`` would be refused: only the
stream forms are data access.
"""

from __future__ import annotations

import csv
import datetime as dt
import os
import tempfile

from airflow.providers.postgres.hooks.postgres import PostgresHook
from airflow.sdk import DAG, task

CONN_ID = "warehouse_pg"
ROWS = [(f"c-{i}", "bulk customer", 10 * i) for i in range(1, 51)]


@task(execution_timeout=dt.timedelta(minutes=5))
def copy_in_orders() -> int:
    hook = PostgresHook(postgres_conn_id=CONN_ID)
    with tempfile.TemporaryDirectory() as tmp:
        source = os.path.join(tmp, "orders.csv")
        with open(source, "w", encoding="utf-8", newline="") as f:
            csv.writer(f).writerows(ROWS)
        hook.copy_expert(
            "COPY sales.orders (order_id, customer, amount) FROM STDIN WITH (FORMAT csv)", source
        )
        dump = os.path.join(tmp, "dump.tsv")
        hook.bulk_dump("sales.orders", dump)
        with open(dump, encoding="utf-8") as f:
            dumped = {line.split("\t")[0] for line in f if line.strip()}
    missing = {r[0] for r in ROWS} - dumped
    if missing:
        raise AssertionError(f"rows missing after COPY: {sorted(missing)}")
    print(f"copied {len(ROWS)} orders; sales.orders holds {len(dumped)}")
    return len(dumped)


with DAG(
    dag_id="warehouse_orders_copy",
    start_date=dt.datetime(2026, 1, 1),
    schedule=None,
    catchup=False,
    tags=["lockgate-example", "postgres"],
):
    copy_in_orders()
