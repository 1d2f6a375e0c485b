"""Real Airflow 3 DAGs with the stock Postgres provider, through Lockgate, to a real PostgreSQL.

The server comes from tests/pgserver; the DAGs are examples/dags/warehouse_*.py and their
policy examples/policies/warehouse.yaml. The Lockgate secrets backend answers
``warehouse_pg`` inside each task with the gateway's PostgreSQL listener (TLS, verify-full),
the resource name as the database and a fresh token as the password.

Oracle: the server's own statement log (``log_statement = all``) against the audit trail —
every statement the server executed for the gateway's login has an audit record allowing
it (the gateway's relation-catalog query at login aside), and no denied statement ever
reached the server.
"""

from __future__ import annotations

import contextlib
import io
import json
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from lockgate.cli import main as lockgate_cli
from lockgate.demo.run import run_dags
from lockgate.demo.stack import REPO_ROOT
from lockgate.policy.cli import cmd_test
from lockgate.policy.loader import load_policy_files

from .pg_stack import (
    RESOURCE,
    PgLocalStack,
    catalog_query,
    denied_but_executed,
    judged_statements,
    statement_text,
    unaudited,
)

if TYPE_CHECKING:
    from tests.pgserver import PgServer

pytest.importorskip("airflow.providers.postgres", reason="the Postgres provider")
pytestmark = [pytest.mark.airflow, pytest.mark.slow]

POLICIES = REPO_ROOT / "examples" / "policies"
DAGS = [
    "warehouse_orders",
    "warehouse_orders_copy",
    "warehouse_orders_purge",
    "warehouse_marketing_peek",
]


@pytest.fixture(scope="module")
def pg_stack(
    pg_server: PgServer, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[PgLocalStack]:
    with PgLocalStack(tmp_path_factory.mktemp("lockgate-pg"), pg_server) as s:
        yield s


@pytest.fixture(scope="module")
def runs(pg_stack: PgLocalStack, airflow_home: Path) -> tuple[dict[str, dict[str, Any]], str]:
    results, output = run_dags(pg_stack, airflow_home, DAGS)
    return {r["dag_id"]: r for r in results}, output


def _cli(stack: PgLocalStack, *argv: str) -> tuple[int, str]:
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        code = lockgate_cli(["--config", str(stack.config_path), *argv])
    return code, out.getvalue()


def _search(stack: PgLocalStack, dag: str, run_id: str) -> list[dict[str, Any]]:
    assert stack.gateway is not None
    stack.gateway.audit.flush(5.0)
    code, text = _cli(stack, "audit", "search", "--dag", dag, "--run", run_id, "--json")
    assert code == 0, text
    return [json.loads(line) for line in text.splitlines() if line.strip()]


def _state(result: dict[str, Any]) -> str:
    return str(result["state"]).split(".")[-1].lower()


def _statement(record: dict[str, Any]) -> str:
    return statement_text(record.get("detail") or {}) or ""


def test_example_warehouse_policy_tests_pass() -> None:
    policy_set = load_policy_files([POLICIES / "warehouse.yaml"], {RESOURCE})
    code, text = cmd_test(policy_set, POLICIES / "warehouse_tests.yaml")
    assert code == 0, text


def test_granted_dag_loads_reads_and_is_stopped_at_ddl(
    pg_stack: PgLocalStack, runs: tuple[dict[str, dict[str, Any]], str]
) -> None:
    by_dag, output = runs
    run = by_dag["warehouse_orders"]
    assert _state(run) == "success", output[-6000:]
    assert {t: s.split(".")[-1].lower() for t, s in run["tasks"].items()} == {
        "count_orders": "success",
        "load_orders": "success",
        "read_orders": "success",
        "summarise_orders": "success",
        "check_guardrails": "success",
    }
    # The writes reached the server; the table is still there; the refused read did not run.
    orders = dict(pg_stack.superuser_query("SELECT order_id, amount FROM sales.orders"))
    assert {"w-1": 120, "w-2": 75, "w-3": 310}.items() <= orders.items()
    statements = pg_stack.upstream_statements()
    assert not any("other.secret" in s or "DROP" in s.upper() for s in statements)
    # No token in any task's output (the Connection's password is one).
    assert "eyJ" not in output
    # The secrets backend handed out the gateway's listener, the resource as the database.
    assert (
        f"connection warehouse_pg: postgres://lockgate@127.0.0.1:{pg_stack.pg_port}/"
        "warehouse-pg sslmode=verify-full"
    ) in output
    # The guardrail task printed the gateway's refusals with principal, action and object.
    assert "airflow:prod/warehouse_orders/check_guardrails" in output
    assert "refused as expected (drop)" in output and "refused as expected (secret)" in output

    rows = _search(pg_stack, "warehouse_orders", run["run_id"])
    assert rows and all(r["run_id"] == run["run_id"] for r in rows)
    pg = [r for r in rows if r.get("resource") == RESOURCE and r["event"] != "token_issued"]
    allowed = [r for r in pg if r["decision"] == "allow"]
    denied = [r for r in pg if r["event"] == "denied"]
    ops = {(r["action"], r["object"]) for r in allowed}
    assert {("read", "sales.orders"), ("write", "sales.orders")} <= ops
    texts = [_statement(r) for r in allowed]
    assert any(t.startswith("INSERT INTO sales.orders") for t in texts)
    assert any(t.startswith("COPY sales.orders") and "FROM STDIN" in t for t in texts)
    # Outcomes carry the rows the server reported: two INSERTs of one row, a COPY of one.
    outcome_rows = [
        (_statement(r).split(" (")[0], r["detail"].get("rows"))
        for r in pg
        if r["event"] == "allowed" and r["task_id"] == "load_orders" and r["action"] == "write"
    ]
    assert sorted(outcome_rows) == [
        ("COPY sales.orders", 1),
        ("INSERT INTO sales.orders", 1),
        ("INSERT INTO sales.orders", 1),
    ]
    assert {r["task_id"] for r in allowed} >= {"count_orders", "load_orders", "read_orders"}
    assert sorted((r["action"], r["object"], _statement(r)) for r in denied) == [
        ("admin", "sales.orders", "DROP TABLE sales.orders"),
        ("read", "other.secret", "SELECT * FROM other.secret"),
    ]
    drop = next(r for r in denied if r["action"] == "admin")
    assert drop["rule"] == "warehouse-no-ddl"
    assert all(r["task_id"] == "check_guardrails" for r in denied)
    # Values bound as parameters are never in the trail, and neither is a token.
    trail = json.dumps(rows)
    assert "globex" not in trail and "initech" not in trail and "eyJ" not in trail


def test_copy_dag_writes_through_copy(
    pg_stack: PgLocalStack, runs: tuple[dict[str, dict[str, Any]], str]
) -> None:
    by_dag, output = runs
    run = by_dag["warehouse_orders_copy"]
    assert _state(run) == "success", output[-6000:]
    copied = pg_stack.superuser_query("SELECT count(*) FROM sales.orders WHERE order_id LIKE 'c-%'")
    assert copied == [(50,)]
    rows = _search(pg_stack, "warehouse_orders_copy", run["run_id"])
    allowed = [r for r in rows if r.get("resource") == RESOURCE and r["decision"] == "allow"]
    copies = {(r["action"], r["object"], _statement(r)) for r in allowed if r["action"]}
    assert (
        "write",
        "sales.orders",
        "COPY sales.orders (order_id, customer, amount) FROM STDIN WITH (FORMAT csv)",
    ) in copies
    assert ("read", "sales.orders", "COPY sales.orders TO STDOUT") in copies
    copied_in = [
        r["detail"].get("rows")
        for r in allowed
        if r["event"] == "allowed" and _statement(r).endswith("FROM STDIN WITH (FORMAT csv)")
    ]
    assert copied_in == [50]
    assert not [r for r in rows if r["event"] == "denied"]


def test_drop_table_fails_the_task_with_the_reason(
    pg_stack: PgLocalStack, runs: tuple[dict[str, dict[str, Any]], str]
) -> None:
    by_dag, output = runs
    run = by_dag["warehouse_orders_purge"]
    assert _state(run) == "failed"
    assert "InsufficientPrivilege" in output
    assert (
        "Lockgate denied admin on sales.orders in warehouse-pg for "
        "airflow:prod/warehouse_orders_purge/drop_orders: denied by rule warehouse-no-ddl"
    ) in output
    rows = _search(pg_stack, "warehouse_orders_purge", run["run_id"])
    denied = [r for r in rows if r["event"] == "denied"]
    assert [(r["action"], r["object"], r["rule"], _statement(r)) for r in denied] == [
        ("admin", "sales.orders", "warehouse-no-ddl", "DROP TABLE sales.orders")
    ]
    assert pg_stack.superuser_query("SELECT count(*) FROM sales.orders")  # still there


def test_ungranted_dag_cannot_read_orders(
    pg_stack: PgLocalStack, runs: tuple[dict[str, dict[str, Any]], str]
) -> None:
    by_dag, output = runs
    run = by_dag["warehouse_marketing_peek"]
    # The task asserts the refusal itself: it succeeds only when the read got 42501.
    assert _state(run) == "success", output[-6000:]
    assert "refused as expected" in output
    assert "airflow:prod/warehouse_marketing_peek/peek_orders" in output
    rows = _search(pg_stack, "warehouse_marketing_peek", run["run_id"])
    denied = [r for r in rows if r["event"] == "denied"]
    assert [(r["action"], r["object"], _statement(r)) for r in denied] == [
        ("read", "sales.orders", "SELECT * FROM sales.orders")
    ]
    allowed = [r for r in rows if _statement(r) and r["decision"] == "allow"]
    # Besides statements that touch no object (action "session"), only its own schema.
    assert {(r["action"], r["object"]) for r in allowed if r["action"] != "session"} == {
        ("read", "marketing.campaigns")
    }


def test_server_statement_log_matches_the_audit(
    pg_stack: PgLocalStack, runs: tuple[dict[str, dict[str, Any]], str]
) -> None:
    logged = pg_stack.upstream_statements()
    judged = judged_statements(pg_stack.audit_rows())
    assert logged and any("sales.orders" in s for s in logged)
    assert unaudited(logged, judged, exempt=[catalog_query()]) == []
    assert denied_but_executed(logged, judged) == []
    # The server's own counters: no DAG scanned or changed a table of schema "other".
    assert set(pg_stack.other_activity_at_start) == {"secret", "orders"}
    assert pg_stack.table_activity_since("other", pg_stack.other_activity_at_start) == {}
    code, text = _cli(pg_stack, "audit", "verify")
    assert code == 0, text
