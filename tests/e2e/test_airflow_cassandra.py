"""Real Airflow 3 DAGs with the stock Cassandra provider, through Lockgate, to a Cassandra node.

The node is the fake from src/lockgate/demo/standins/cqlserver; the DAGs are
examples/dags/sales_*.py and
their policy examples/policies/sales.yaml. The Lockgate secrets backend answers
``sales_cassandra`` inside each task with the gateway's CQL listener (TLS) and a fresh token.
"""

from __future__ import annotations

import contextlib
import io
import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from lockgate.cli import main as lockgate_cli
from lockgate.demo.run import run_dags
from lockgate.demo.stack import REPO_ROOT
from lockgate.policy.cli import cmd_test
from lockgate.policy.loader import load_policy_files

from .cql_stack import RESOURCE, UPSTREAM_USER, CqlLocalStack

pytest.importorskip("airflow.providers.apache.cassandra", reason="the Cassandra provider")
pytestmark = [pytest.mark.airflow, pytest.mark.slow]

POLICIES = REPO_ROOT / "examples" / "policies"


@pytest.fixture(scope="module")
def cql_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[CqlLocalStack]:
    with CqlLocalStack(tmp_path_factory.mktemp("lockgate-cql")) as s:
        yield s


@pytest.fixture(scope="module")
def runs(cql_stack: CqlLocalStack, airflow_home: Path) -> tuple[dict[str, dict], str]:
    results, output = run_dags(
        cql_stack, airflow_home, ["sales_orders", "sales_purge", "marketing_sales_peek"]
    )
    return {r["dag_id"]: r for r in results}, output


def _cli(stack: CqlLocalStack, *argv: str) -> tuple[int, str]:
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        code = lockgate_cli(["--config", str(stack.config_path), *argv])
    return code, out.getvalue()


def _search(stack: CqlLocalStack, dag: str, run_id: str) -> list[dict]:
    code, text = _cli(stack, "audit", "search", "--dag", dag, "--run", run_id, "--json")
    assert code == 0, text
    return [json.loads(line) for line in text.splitlines() if line.strip()]


def _state(result: dict) -> str:
    return str(result["state"]).split(".")[-1].lower()


def test_example_sales_policy_tests_pass() -> None:
    policy_set = load_policy_files([POLICIES / "sales.yaml"], {RESOURCE})
    code, text = cmd_test(policy_set, POLICIES / "sales_tests.yaml")
    assert code == 0, text


def test_granted_dag_writes_reads_and_is_stopped_at_ddl_and_mixed_batches(
    cql_stack: CqlLocalStack, runs: tuple[dict[str, dict], str]
) -> None:
    by_dag, output = runs
    run = by_dag["sales_orders"]
    assert _state(run) == "success", output[-4000:]
    assert {t: s.split(".")[-1].lower() for t, s in run["tasks"].items()} == {
        "wait_for_orders_table": "success",
        "load_orders": "success",
        "wait_for_first_order": "success",
        "check_guardrails": "success",
    }
    # The writes reached the node, as the gateway's own user; the refused ones did not.
    orders = {r["order_id"]: r for r in cql_stack.node.rows("sales", "orders")}
    assert {"o-1", "o-2", "o-3"} <= set(orders) and "o-sneaky" not in orders
    assert orders["o-3"]["amount"] == 310
    assert cql_stack.node.rows("sales", "payouts") == []
    statements = cql_stack.node.statements()
    assert {role for role, _ in statements} == {UPSTREAM_USER}
    assert not any("DROP" in t.upper() or "payouts" in t for _, t in statements)
    # The guardrail task printed the gateway's refusals with principal, action and object.
    assert "Lockgate denied admin on sales.orders in sales-cassandra for " in output
    assert "airflow:prod/sales_orders/check_guardrails" in output

    cql_stack.gateway.audit.flush(5.0)
    rows = _search(cql_stack, "sales_orders", run["run_id"])
    assert rows and all(r["run_id"] == run["run_id"] for r in rows)
    cql = [r for r in rows if r.get("resource") == RESOURCE and r["event"] != "token_issued"]
    allowed = [r for r in cql if r["event"] == "allowed"]
    denied = [r for r in cql if r["event"] == "denied"]
    ops = {(r["action"], r["object"], r["detail"].get("op")) for r in allowed}
    assert ("write", "sales.orders", "execute") in ops  # prepared INSERT
    assert ("write", "sales.orders", "batch") in ops  # batch of prepared INSERTs
    assert ("read", "sales.orders", "query") in ops  # SELECT, record sensor
    assert any(r["detail"]["statement"].startswith("INSERT INTO orders") for r in allowed)
    assert {r["task_id"] for r in allowed} >= {"load_orders", "wait_for_first_order"}
    drop = [r for r in denied if r["action"] == "admin"]
    assert [(r["object"], r["rule"], r["detail"]["statement"]) for r in drop] == [
        ("sales.orders", "sales-no-ddl", "DROP TABLE sales.orders")
    ]
    batch = [r for r in denied if r["detail"].get("op") == "batch"]
    assert len(batch) == 1 and batch[0]["object"] == "sales.payouts"
    assert "INSERT INTO sales.payouts" in batch[0]["detail"]["statement"]
    assert all(r["task_id"] == "check_guardrails" for r in denied), [
        (r["task_id"], r["action"], r.get("reason")) for r in denied
    ]
    # Values bound to prepared statements are never in the trail, and neither is a token.
    trail = json.dumps(rows)
    assert "globex" not in trail and "initech" not in trail and "eyJ" not in trail


def test_lockgate_made_connections_log_no_warnings(runs: tuple[dict[str, dict], str]) -> None:
    """The stock hook over a Lockgate-made connection (TLS to the gateway): no driver
    deprecation (``ssl_options`` without ``ssl_context``, legacy execution parameters)."""
    _, output = runs
    noisy = [line for line in output.splitlines() if "DeprecationWarning" in line]
    assert noisy == [], "\n".join(noisy)
    assert "ssl_options without ssl_context" not in output


def test_drop_table_fails_the_task_with_the_reason(
    cql_stack: CqlLocalStack, runs: tuple[dict[str, dict], str]
) -> None:
    by_dag, output = runs
    run = by_dag["sales_purge"]
    assert _state(run) == "failed"
    assert "Unauthorized" in output
    assert (
        "Lockgate denied admin on sales.orders in sales-cassandra for "
        "airflow:prod/sales_purge/drop_orders" in output
    )
    rows = _search(cql_stack, "sales_purge", run["run_id"])
    denied = [r for r in rows if r["event"] == "denied"]
    assert [(r["action"], r["object"], r["decision"]) for r in denied] == [
        ("admin", "sales.orders", "deny")
    ]
    assert cql_stack.node.rows("sales", "orders")  # the table is still there


def test_ungranted_dag_gets_no_connection(
    cql_stack: CqlLocalStack, runs: tuple[dict[str, dict], str]
) -> None:
    by_dag, output = runs
    run = by_dag["marketing_sales_peek"]
    assert _state(run) == "failed"
    assert "AirflowSecretsBackendAccessDenied" in output
    assert "airflow:prod/marketing_sales_peek/peek_orders" in output
    rows = _search(cql_stack, "marketing_sales_peek", run["run_id"])
    assert rows and all(r["decision"] == "deny" for r in rows)
    assert not any(r["event"] == "allowed" for r in rows)
    code, text = _cli(cql_stack, "audit", "verify")
    assert code == 0, text
