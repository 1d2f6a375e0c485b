"""What ``lockgate demo`` prints: refusals under their DAG, audit lines of at most 100 columns."""

from __future__ import annotations

import json

from lockgate.audit import AuditRecord
from lockgate.demo.report import (
    WIDTH,
    audit_table,
    denial_from_audit,
    refusal_reason,
    split_by_dag,
    wrap,
)

OUTPUT = """\
airflow noise before any DAG
LOCKGATE-DAG finance_daily
[2026-01-01T00:00:00.000+0000] {http.py:1} INFO - all fine
LOCKGATE-DAG finance_backfill
[2026-01-01T00:00:01.000+0000] {http.py:440} ERROR - HTTP error: Forbidden
[2026-01-01T00:00:01.000+0000] {http.py:441} ERROR - {"error": "forbidden", \
"principal": "airflow:prod/finance_backfill/overwrite_orders", "action": "write", \
"resource": "orders-api", "object": "/orders", "reason": "no rule allows it", "rule": null}
LOCKGATE-DAG sales_purge
cassandra.Unauthorized: Error from server: code=2100 message="Lockgate denied admin on \
sales.orders in sales-cassandra for airflow:prod/sales_purge/drop_orders: denied by rule x"
"""


def test_output_is_split_per_dag_and_each_refusal_found_under_its_own_dag() -> None:
    parts = split_by_dag(OUTPUT)
    assert list(parts) == ["finance_daily", "finance_backfill", "sales_purge"]
    assert refusal_reason(parts["finance_daily"]) is None
    http = refusal_reason(parts["finance_backfill"])
    assert http == (
        "Lockgate denied write on orders-api//orders for "
        "airflow:prod/finance_backfill/overwrite_orders: no rule allows it"
    )
    cql = refusal_reason(parts["sales_purge"])
    assert cql is not None and cql.startswith("Lockgate denied admin on sales.orders")


def test_a_client_error_line_is_the_last_resort_and_the_audit_names_the_refusal() -> None:
    lines = ["requests.exceptions.HTTPError: 403 Client Error: Forbidden for url: https://x/y"]
    assert refusal_reason(lines) == lines[0]
    denied = AuditRecord(
        event="denied", principal="airflow:prod/d/t", resource="databricks",
        action="run", object="job:submit", reason="guardrail: num_workers 64 exceeds 8",
    )  # fmt: skip
    assert denial_from_audit([AuditRecord(event="token_issued"), denied]) == (
        "Lockgate denied run on databricks/job:submit for airflow:prod/d/t: "
        "guardrail: num_workers 64 exceeds 8"
    )


def test_audit_lines_never_pass_100_columns_and_a_refusal_keeps_its_reason() -> None:
    long = "x" * 300
    rows = [
        AuditRecord(event="token_issued", ts=1.0, task_id=long, resource=long, action="mint",
                    rule=long),
        AuditRecord(event="admitted", ts=1.0, task_id="t", resource="r", object="a"),
        *(AuditRecord(event="allowed", ts=1.0, task_id="t", resource="r", action="read",
                      object=f"system_schema.{n}", status=2) for n in ("tables", "columns")),
        AuditRecord(event="denied", ts=2.0, task_id="t", resource="r", action="admin",
                    object=long, rule="no-ddl", reason="denied: " + "why " * 60, status=403),
    ]  # fmt: skip
    lines = audit_table(rows)
    assert all(len(line) <= WIDTH for line in lines), [len(x) for x in lines]
    text = "\n".join(lines)
    assert "r/2x system_schema.tables, system_schema.col" in text  # folded into one line
    assert "why: rule=no-ddl denied: why why" in text
    assert "(and 1 write-ahead 'admitted' record, one before each allowed)" in text
    assert audit_table([])[-1].strip() == "(no audit records)"


def test_wrap_fits_and_keeps_names_whole() -> None:
    lines = wrap("why: " + "orders-api/orders " * 30, 8, max_lines=3)
    assert len(lines) == 3 and all(len(x) <= WIDTH for x in lines)
    assert all(" orders-api/orders" in x or x.strip().startswith("why") for x in lines)
    assert json.dumps(lines)  # plain strings
