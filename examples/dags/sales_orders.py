"""Granted: the sales team loads and reads ``sales.orders`` in Cassandra through Lockgate.

The DAG holds no secret: ``sales_cassandra`` is answered by the Lockgate secrets backend
with a Connection that points at the gateway's CQL listener (user = the resource name,
password = a token minted for this task try, TLS trusting the gateway's CA). Policy rule
``sales-orders-read-write`` (examples/policies/sales.yaml) allows read and write on
``sales.orders`` only, and ``sales-no-ddl`` denies every schema change.

Tasks:

* ``wait_for_orders_table`` - the stock ``CassandraTableSensor`` (driver metadata reads).
* ``load_orders`` - the stock ``CassandraHook``: a prepared INSERT, executed alone and in a
  batch, then a read back.
* ``wait_for_first_order`` - the stock ``CassandraRecordSensor`` (a SELECT per poke).
* ``check_guardrails`` - plain ``cassandra-driver``: shows what the gateway refuses and
  asserts it, so the DAG fails if the guardrails ever stop working: DROP TABLE is denied,
  and a batch that also writes ``sales.payouts`` is denied whole (nothing of it lands).
"""

from __future__ import annotations

import datetime as dt
from typing import Any

from airflow.providers.apache.cassandra.hooks.cassandra import CassandraHook
from airflow.providers.apache.cassandra.sensors.record import CassandraRecordSensor
from airflow.providers.apache.cassandra.sensors.table import CassandraTableSensor
from airflow.sdk import DAG, task

CONN_ID = "sales_cassandra"
ORDERS = [("o-1", "acme", 120), ("o-2", "globex", 75), ("o-3", "initech", 310)]


@task(execution_timeout=dt.timedelta(minutes=5))
def load_orders() -> int:
    from cassandra.query import BatchStatement

    hook = CassandraHook(cassandra_conn_id=CONN_ID)
    try:
        session = hook.get_conn()  # keyspace "sales" comes from the catalog
        insert = session.prepare("INSERT INTO orders (order_id, customer, amount) VALUES (?, ?, ?)")
        session.execute(insert, ORDERS[0])
        batch = BatchStatement()
        for row in ORDERS[1:]:
            batch.add(insert, row)
        session.execute(batch)
        ids = sorted(r.order_id for r in session.execute("SELECT order_id FROM orders"))
        print(f"orders now in sales.orders: {ids}")
        if not {o[0] for o in ORDERS} <= set(ids):
            raise AssertionError(f"orders missing after the load: {ids}")
        return len(ids)
    finally:
        hook.shutdown_cluster()


@task(execution_timeout=dt.timedelta(minutes=5))
def check_guardrails() -> dict[str, Any]:
    from airflow.sdk import BaseHook
    from cassandra import Unauthorized
    from cassandra.auth import PlainTextAuthProvider
    from cassandra.cluster import Cluster
    from cassandra.query import BatchStatement, SimpleStatement

    conn = BaseHook.get_connection(CONN_ID)
    extra = conn.extra_dejson
    cluster = Cluster(
        [conn.host],
        port=int(conn.port),
        auth_provider=PlainTextAuthProvider(conn.login, conn.password),
        protocol_version=int(extra.get("protocol_version", 4)),
        ssl_options=extra.get("ssl_options"),
    )
    refused: dict[str, str] = {}
    try:
        session = cluster.connect(conn.schema)
        count = session.execute("SELECT count(*) FROM sales.orders").one()[0]
        try:
            session.execute("DROP TABLE sales.orders")
        except Unauthorized as exc:
            refused["drop"] = str(exc)
        else:
            raise AssertionError("DROP TABLE sales.orders was not refused")
        batch = BatchStatement()
        batch.add(
            SimpleStatement(
                "INSERT INTO sales.orders (order_id, customer, amount) VALUES (%s, %s, %s)"
            ),
            ("o-sneaky", "acme", 1),
        )
        batch.add(
            SimpleStatement("INSERT INTO sales.payouts (payout_id, amount) VALUES (%s, %s)"),
            ("p-1", 1_000_000),
        )
        try:
            session.execute(batch)
        except Unauthorized as exc:
            refused["batch"] = str(exc)
        else:
            raise AssertionError("a batch writing sales.payouts was not refused")
        sneaky = session.execute("SELECT order_id FROM orders WHERE order_id = 'o-sneaky'").all()
        if sneaky:
            raise AssertionError("part of a refused batch reached the cluster")
    finally:
        cluster.shutdown()
    for what, message in refused.items():
        print(f"refused as expected ({what}): {message}")
    if "admin on sales.orders" not in refused["drop"]:
        raise AssertionError(f"unexpected refusal for DROP: {refused['drop']}")
    if "sales.payouts" not in refused["batch"]:
        raise AssertionError(f"unexpected refusal for the batch: {refused['batch']}")
    return {"orders": int(count), "refused": sorted(refused)}


with DAG(
    dag_id="sales_orders",
    start_date=dt.datetime(2026, 1, 1),
    schedule=None,
    catchup=False,
    tags=["lockgate-example", "cassandra"],
):
    wait_table = CassandraTableSensor(
        task_id="wait_for_orders_table",
        cassandra_conn_id=CONN_ID,
        table="sales.orders",
        poke_interval=1,
        timeout=60,
    )
    wait_record = CassandraRecordSensor(
        task_id="wait_for_first_order",
        cassandra_conn_id=CONN_ID,
        table="sales.orders",
        keys={"order_id": "o-1"},
        poke_interval=1,
        timeout=60,
    )
    wait_table >> load_orders() >> wait_record >> check_guardrails()
