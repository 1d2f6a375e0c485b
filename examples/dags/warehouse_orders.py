"""Granted: the orders pipeline loads and reads ``sales.orders`` in PostgreSQL through Lockgate.

The DAG holds no secret: ``warehouse_pg`` is answered by the Lockgate secrets backend with a
Connection to the gateway's PostgreSQL listener (database = the resource name
``warehouse-pg``, password = a token minted for this task try, ``sslmode=verify-full``
against the gateway's CA). Policy rule ``warehouse-orders-read-write``
(examples/policies/warehouse.yaml) allows read and write on ``sales.orders`` only, and
``warehouse-no-ddl`` denies every schema change. The gateway logs in upstream with a
credential only it holds.

Tasks:

* ``count_orders`` / ``read_orders`` - the stock ``SQLExecuteQueryOperator`` with ``conn_id``.
* ``load_orders`` - the stock ``PostgresHook``: ``insert_rows`` (parameters bound server
  side), ``copy_expert`` with ``COPY ... FROM STDIN``, then ``get_records`` to read back.
* ``summarise_orders`` - ``PostgresHook.get_df``: pandas over the hook's SQLAlchemy engine.
* ``check_guardrails`` - shows what the gateway refuses and asserts it, so the DAG fails if
  the guardrails ever stop working: ``DROP TABLE`` through the hook, and a read of
  ``other.secret`` with plain psycopg2, each get SQLSTATE 42501 (insufficient_privilege)
  naming the principal, action and object; the session stays usable after each refusal.
"""

from __future__ import annotations

import datetime as dt
import os
import tempfile
from typing import Any

from airflow.providers.common.sql.operators.sql import SQLExecuteQueryOperator
from airflow.providers.postgres.hooks.postgres import PostgresHook
from airflow.sdk import DAG, task

CONN_ID = "warehouse_pg"
COLUMNS = ["order_id", "customer", "amount"]
INSERTED = [("w-1", "acme", 120), ("w-2", "globex", 75)]
COPIED = [("w-3", "initech", 310)]
INSUFFICIENT_PRIVILEGE = "42501"


def sqlstate(exc: BaseException) -> str | None:
    """The SQLSTATE of a psycopg 3 (``sqlstate``) or psycopg2 (``pgcode``) error."""
    return getattr(exc, "sqlstate", None) or getattr(exc, "pgcode", None)


@task(execution_timeout=dt.timedelta(minutes=5))
def load_orders() -> list[tuple[str, int]]:
    hook = PostgresHook(postgres_conn_id=CONN_ID)
    hook.insert_rows("sales.orders", INSERTED, target_fields=COLUMNS)
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "orders.tsv")
        with open(path, "w", encoding="utf-8") as f:
            f.writelines("\t".join(map(str, row)) + "\n" for row in COPIED)
        hook.copy_expert(f"COPY sales.orders ({', '.join(COLUMNS)}) FROM STDIN", path)
    rows = [
        (str(order_id), int(amount))
        for order_id, amount in hook.get_records(
            "SELECT order_id, amount FROM sales.orders ORDER BY order_id"
        )
    ]
    print(f"orders now in sales.orders: {rows}")
    wanted = {(o, a) for o, _, a in INSERTED + COPIED}
    if not wanted <= set(rows):
        raise AssertionError(f"orders missing after the load: {rows}")
    return rows


@task(execution_timeout=dt.timedelta(minutes=5))
def summarise_orders() -> dict[str, int]:
    # pandas through the hook's SQLAlchemy engine (it reads the system catalog to learn
    # types at connect: catalog reads of names and types need no rule)
    frame = PostgresHook(postgres_conn_id=CONN_ID).get_df(
        "SELECT customer, sum(amount) AS total FROM sales.orders GROUP BY customer"
    )
    totals = {str(c): int(t) for c, t in zip(frame["customer"], frame["total"], strict=True)}
    print(f"totals by customer: {totals}")
    if totals.get("initech") != 310:
        raise AssertionError(f"unexpected totals: {totals}")
    return totals


@task(execution_timeout=dt.timedelta(minutes=5))
def check_guardrails() -> dict[str, Any]:
    import psycopg2  # type: ignore[import-untyped]
    import psycopg2.errors  # type: ignore[import-untyped]
    from airflow.sdk import BaseHook

    refused: dict[str, str] = {}
    hook = PostgresHook(postgres_conn_id=CONN_ID)
    try:
        hook.run("DROP TABLE sales.orders")
    except Exception as exc:  # the hook's driver error (psycopg 3 or psycopg2)
        if sqlstate(exc) != INSUFFICIENT_PRIVILEGE:
            raise
        refused["drop"] = str(exc).strip()
    else:
        raise AssertionError("DROP TABLE sales.orders was not refused")

    conn = BaseHook.get_connection(CONN_ID)
    extra = conn.extra_dejson
    # What the secrets backend handed this task (the password is its token: never printed).
    print(
        f"connection {CONN_ID}: {conn.conn_type}://{conn.login}@{conn.host}:{conn.port}/"
        f"{conn.schema} sslmode={extra.get('sslmode')}"
    )
    pg = psycopg2.connect(
        host=conn.host,
        port=conn.port,
        dbname=conn.schema,
        user=conn.login,
        password=conn.password,
        sslmode=extra.get("sslmode", "verify-full"),
        sslrootcert=extra.get("sslrootcert"),
    )
    try:
        pg.autocommit = True  # (inside a transaction, a refusal fails it like any error)
        with pg.cursor() as cur:
            try:
                cur.execute("SELECT * FROM other.secret")
            except psycopg2.errors.InsufficientPrivilege as exc:
                refused["secret"] = str(exc).strip()
            else:
                raise AssertionError("a read of other.secret was not refused")
            # The session is still usable after the refusal, as after any server error.
            cur.execute("SELECT count(*) FROM sales.orders")
            count = int(cur.fetchone()[0])
    finally:
        pg.close()
    for what, message in refused.items():
        print(f"refused as expected ({what}): {message}")
    if "admin" not in refused["drop"] or "sales.orders" not in refused["drop"]:
        raise AssertionError(f"unexpected refusal for DROP: {refused['drop']}")
    if "read" not in refused["secret"] or "other.secret" not in refused["secret"]:
        raise AssertionError(f"unexpected refusal for other.secret: {refused['secret']}")
    still_there = hook.get_first("SELECT count(*) FROM sales.orders")
    if not still_there or int(still_there[0]) != count:
        raise AssertionError(f"sales.orders changed under the refusals: {still_there}")
    return {"orders": count, "refused": sorted(refused)}


with DAG(
    dag_id="warehouse_orders",
    start_date=dt.datetime(2026, 1, 1),
    schedule=None,
    catchup=False,
    tags=["lockgate-example", "postgres"],
):
    count_orders = SQLExecuteQueryOperator(
        task_id="count_orders",
        conn_id=CONN_ID,
        sql="SELECT count(*) FROM sales.orders",
    )
    read_orders = SQLExecuteQueryOperator(
        task_id="read_orders",
        conn_id=CONN_ID,
        sql="SELECT order_id, customer, amount FROM sales.orders WHERE amount > %(floor)s",
        parameters={"floor": 100},
    )
    count_orders >> load_orders() >> read_orders >> summarise_orders() >> check_guardrails()
