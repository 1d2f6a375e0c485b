"""Quotas on CQL and PostgreSQL sessions with the stock Airflow hooks, end to end.

Real Airflow 3 DAGs (``dag.test()``), the Lockgate secrets backend, the real gateway with a
policy file's ``quotas:``, and behind it the fake Cassandra node and a real PostgreSQL:

* ``sales_bulk_load`` writes 50 rows with the stock ``CassandraHook`` under a rate with
  ``max_delay``: the gateway paces the statements, none is refused, no task fails, and the
  admitted records are spread at the quota's rate;
* ``sales_bulk_strict`` does the same under a rate without ``max_delay``: the stock driver
  does not back off on Overloaded (its retry policy tries the next host, and the gateway is
  the only one), so the task fails with the gateway's message and the audit says
  ``throttled`` (why docs/cql-engine.md prefers pacing);
* ``warehouse_orders_bulk`` writes 50 rows with the stock ``PostgresHook`` under a paced
  rate, in two tasks that each hold the resource's only session (a ``sessions`` cap of 1);
  a third task opens a second session while holding one: refused with 53300 until the
  first is closed, then it gets in.
"""

from __future__ import annotations

import textwrap
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from lockgate.audit.record import AuditRow
from lockgate.demo.run import run_dags
from lockgate.demo.stack import EXAMPLE_DAGS

from .cql_stack import RESOURCE as CQL_RESOURCE
from .cql_stack import CqlLocalStack
from .pg_stack import RESOURCE as PG_RESOURCE
from .pg_stack import PgLocalStack

if TYPE_CHECKING:
    from tests.pgserver import PgServer

pytest.importorskip("airflow.providers.apache.cassandra", reason="the Cassandra provider")
pytest.importorskip("airflow.providers.postgres", reason="the Postgres provider")
pytestmark = [pytest.mark.airflow, pytest.mark.slow]

ROWS = 50
RATE = 20  # statements per second, after a burst of BURST
BURST = 5

CQL_QUOTAS = f"""\
quotas:
  - id: sales-bulk-paced
    principals: ["airflow:prod/sales_bulk_load/*"]
    resources: [{CQL_RESOURCE}]
    actions: [write]
    rate: {RATE}/s
    burst: {BURST}
    max_delay: 5s
  - id: sales-bulk-strict
    principals: ["airflow:prod/sales_bulk_strict/*"]
    resources: [{CQL_RESOURCE}]
    actions: [write]
    rate: 1/m
    burst: {BURST}
"""

PG_QUOTAS = f"""\
quotas:
  - id: warehouse-bulk-paced
    principals: ["airflow:prod/warehouse_orders_bulk/*"]
    resources: [{PG_RESOURCE}]
    actions: [write]
    rate: {RATE}/s
    burst: {BURST}
    max_delay: 5s
  - id: warehouse-one-session
    principals: ["airflow:prod/warehouse_orders_bulk/*"]
    resources: [{PG_RESOURCE}]
    sessions: 1
"""

# The DAG files' own numbers: ROWS rows each (the PostgreSQL DAG: two tasks of half of them)
CQL_DAGS = """\
import datetime as dt

from airflow.providers.apache.cassandra.hooks.cassandra import CassandraHook
from airflow.sdk import DAG, task


def load(prefix: str) -> int:
    hook = CassandraHook(cassandra_conn_id="sales_cassandra")
    try:
        session = hook.get_conn()
        insert = session.prepare(
            "INSERT INTO orders (order_id, customer, amount) VALUES (?, ?, ?)"
        )
        for i in range(50):
            session.execute(insert, (f"{prefix}-{i}", "bulk", i))
        return 50
    finally:
        hook.shutdown_cluster()


@task(execution_timeout=dt.timedelta(minutes=5))
def bulk_load() -> int:
    return load("paced")


@task(execution_timeout=dt.timedelta(minutes=5))
def bulk_strict() -> int:
    return load("strict")


start = dt.datetime(2024, 1, 1, tzinfo=dt.timezone.utc)
with DAG("sales_bulk_load", schedule=None, start_date=start, catchup=False):
    bulk_load()
with DAG("sales_bulk_strict", schedule=None, start_date=start, catchup=False):
    bulk_strict()
"""

PG_DAGS = """\
import datetime as dt
import threading
import time

from airflow.providers.postgres.hooks.postgres import PostgresHook
from airflow.sdk import DAG, task


def load(first: int) -> int:
    hook = PostgresHook(postgres_conn_id="warehouse_pg")
    rows = [(f"bulk-{i}", "bulk", i) for i in range(first, first + 25)]
    hook.insert_rows("sales.orders", rows, target_fields=["order_id", "customer", "amount"])
    return len(rows)


@task(execution_timeout=dt.timedelta(minutes=5))
def load_first() -> int:
    return load(0)


@task(execution_timeout=dt.timedelta(minutes=5))
def load_second() -> int:
    return load(25)


@task(execution_timeout=dt.timedelta(minutes=5))
def second_session_waits() -> int:
    # Hold the only session; a second one is refused (53300) and retried until it fits.
    held = PostgresHook(postgres_conn_id="warehouse_pg").get_conn()
    tries = []

    def second() -> None:
        delay = 0.1
        while True:
            try:
                conn = PostgresHook(postgres_conn_id="warehouse_pg").get_conn()
            except Exception as exc:  # psycopg2.OperationalError: FATAL 53300
                if "over quota" not in str(exc):
                    raise
                tries.append(str(exc).strip().splitlines()[0])
                time.sleep(delay)
                delay = min(delay * 2, 1.0)
                continue
            with conn.cursor() as cur:
                cur.execute("SELECT count(*) FROM sales.orders")
                tries.append(f"in: {cur.fetchone()[0]} rows")  # the loads' and the seed
            conn.close()
            return

    waiter = threading.Thread(target=second)
    waiter.start()
    time.sleep(1.0)
    held.close()
    waiter.join(30)
    print("second session:", tries)
    if len(tries) < 2 or tries[-1] != "in: 51 rows":
        raise AssertionError(f"the second session did not wait its turn: {tries}")
    return len(tries)


start = dt.datetime(2024, 1, 1, tzinfo=dt.timezone.utc)
with DAG("warehouse_orders_bulk", schedule=None, start_date=start, catchup=False):
    load_first() >> load_second() >> second_session_waits()
"""


def _dags_folder(tmp: Path, name: str, source: str) -> Path:
    folder = tmp / "dags"
    folder.mkdir(exist_ok=True)
    (folder / name).write_text(textwrap.dedent(source), encoding="utf-8")
    return folder


class _QuotaCqlStack(CqlLocalStack):
    def __init__(self, workdir: Path) -> None:
        super().__init__(workdir)
        (self.workdir / "policies" / "quotas.yaml").write_text(CQL_QUOTAS, encoding="utf-8")
        self.dags = _dags_folder(workdir, "sales_bulk.py", CQL_DAGS)

    def airflow_env(self, airflow_home: Path, dags_folder: Path = EXAMPLE_DAGS) -> dict[str, str]:
        return super().airflow_env(airflow_home, self.dags)


class _QuotaPgStack(PgLocalStack):
    def __init__(self, workdir: Path, server: PgServer) -> None:
        super().__init__(workdir, server)
        (self.workdir / "policies" / "quotas.yaml").write_text(PG_QUOTAS, encoding="utf-8")
        self.dags = _dags_folder(workdir, "warehouse_bulk.py", PG_DAGS)

    def airflow_env(self, airflow_home: Path, dags_folder: Path = EXAMPLE_DAGS) -> dict[str, str]:
        return super().airflow_env(airflow_home, self.dags)


@pytest.fixture(scope="module")
def cql_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[_QuotaCqlStack]:
    with _QuotaCqlStack(tmp_path_factory.mktemp("lockgate-cql-quotas")) as s:
        yield s


@pytest.fixture(scope="module")
def pg_stack(
    pg_server: PgServer, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[_QuotaPgStack]:
    stack = _QuotaPgStack(tmp_path_factory.mktemp("lockgate-pg-quotas"), pg_server)
    with stack:
        yield stack


def _state(value: object) -> str:
    return str(value).split(".")[-1].lower()


def _trail(stack: CqlLocalStack | PgLocalStack, dag: str, run_id: str) -> list[AuditRow]:
    assert stack.gateway is not None
    stack.gateway.audit.flush(5.0)
    rows = stack.gateway.audit.tail(5000)
    return [r for r in rows if r.dag_id == dag and r.run_id == run_id]


def _spread(records: list[AuditRow]) -> float:
    times = sorted(r.ts for r in records)
    return times[-1] - times[0]


def test_cql_writes_are_paced_and_a_stock_driver_without_pacing_fails(
    cql_stack: _QuotaCqlStack, airflow_home: Path
) -> None:
    results, output = run_dags(cql_stack, airflow_home, ["sales_bulk_load", "sales_bulk_strict"])
    by_dag = {r["dag_id"]: r for r in results}
    paced = by_dag["sales_bulk_load"]
    assert _state(paced["state"]) == "success", output[-4000:]
    assert {_state(s) for s in paced["tasks"].values()} == {"success"}
    orders = {r["order_id"] for r in cql_stack.node.rows("sales", "orders")}
    assert {f"paced-{i}" for i in range(ROWS)} <= orders
    trail = _trail(cql_stack, "sales_bulk_load", paced["run_id"])
    writes = [r for r in trail if r.event == "admitted" and r.action == "write"]
    writes = [r for r in writes if r.detail.get("op") != "prepare"]  # a PREPARE asks nothing
    assert len(writes) == ROWS
    assert not [r for r in trail if r.event == "throttled"]
    # paced at the quota's rate: the statements after the burst took at least their tokens
    assert _spread(writes) >= (ROWS - BURST) / RATE * 0.9

    strict = by_dag["sales_bulk_strict"]
    assert _state(strict["state"]) == "failed"
    assert "over quota 'sales-bulk-strict'" in output
    trail = _trail(cql_stack, "sales_bulk_strict", strict["run_id"])
    throttled = [r for r in trail if r.event == "throttled"]
    assert throttled and throttled[0].detail["limit"] == "sales-bulk-strict"
    assert throttled[0].rule == "sales-orders-read-write"
    executes = [r for r in trail if r.event == "admitted" and r.detail.get("op") == "execute"]
    assert len(executes) == BURST


def test_pg_writes_are_paced_and_a_second_session_waits_its_turn(
    pg_stack: _QuotaPgStack, airflow_home: Path
) -> None:
    results, output = run_dags(pg_stack, airflow_home, ["warehouse_orders_bulk"])
    (run,) = results
    assert _state(run["state"]) == "success", output[-4000:]
    assert {_state(s) for s in run["tasks"].values()} == {"success"}
    # second_session_waits asserts in the task that its second session was refused, then got in
    trail = _trail(pg_stack, "warehouse_orders_bulk", run["run_id"])
    writes = [r for r in trail if r.event == "admitted" and r.action == "write"]
    assert len(writes) == ROWS
    assert _spread(writes) >= (ROWS - 2 * BURST) / RATE * 0.9
    throttled = [r for r in trail if r.event == "throttled"]
    assert throttled and {r.detail["kind"] for r in throttled} == {"sessions"}
    assert all(r.action == "connect" for r in throttled)
