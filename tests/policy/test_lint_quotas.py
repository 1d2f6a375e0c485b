"""Lint and check on quotas: warnings for quotas that count nothing, the quotas a request
counts against."""

from __future__ import annotations

import textwrap

import pytest

from lockgate.policy import cmd_check, cmd_lint, lint, parse_policy_texts
from lockgate.policy.lint import _may_meet

RULES = """
rules:
  - id: etl-write
    effect: allow
    principals: ["airflow:prod/etl_*/*"]
    actions: [read, write]
    resources: [orders-api]
  - id: jobs-run
    effect: allow
    principals: ["airflow:prod/*"]
    actions: [run]
    resources: [dbx]
"""


def quotas(text: str) -> str:
    return RULES + "quotas:\n" + textwrap.indent(textwrap.dedent(text), "  ")


def kinds(text: str) -> list[tuple[str | None, str]]:
    ps = parse_policy_texts([("team.yaml", quotas(text))])
    return [(f.rule, f.kind) for f in lint(ps, {"orders-api", "dbx"}) if f.kind.startswith("q")]


def test_a_reachable_quota_has_no_finding() -> None:
    assert kinds("""
        - id: etl-rate
          principals: ["airflow:prod/etl_daily/*"]
          resources: ["orders-*"]
          actions: [write]
          rate: 5
        """) == []  # fmt: skip


@pytest.mark.parametrize(
    ("entry", "kind"),
    [
        ("principals: ['airflow:dev/*']\n  resources: [orders-api]\n  rate: 5",
         "quota-unreachable"),
        ("principals: ['*']\n  resources: [orders-api]\n  actions: [admin]\n  rate: 5",
         "quota-unreachable"),
        ("principals: ['*']\n  resources: [billing-api]\n  rate: 5", "quota-unknown-resource"),
        ("principals: ['*']\n  resources: [dbx]\n  actions: [read]\n  runs: 2",
         "quota-no-effect"),
    ],
)  # fmt: skip
def test_quotas_that_count_nothing_are_warned_about(entry: str, kind: str) -> None:
    found = kinds(f"- id: q\n  {entry}\n")
    assert ("q", kind) in found, found


def test_a_session_cap_is_reached_by_any_allowed_action() -> None:
    found = kinds("- id: s\n  principals: ['airflow:prod/etl_x/*']\n  resources: [orders-api]\n"
                  "  actions: [admin]\n  sessions: 2\n")  # fmt: skip
    assert found == []


@pytest.mark.parametrize(
    ("a", "b", "meet"),
    [
        ("airflow:prod/*", "airflow:dev/*", False),
        ("airflow:prod/*", "airflow:*/x/*", True),
        ("*-api", "*-db", False),
        ("orders-api", "orders-*", True),
        ("orders-api", "billing-*", False),
        ("[ab]x", "*bx", True),
    ],
)
def test_globs_meet_conservatively(a: str, b: str, meet: bool) -> None:
    assert _may_meet(a, b) is meet


def test_warnings_leave_lint_passing_and_are_counted() -> None:
    text = quotas("- id: q\n  principals: ['x']\n  resources: [orders-api]\n  rate: 1\n")
    ps = parse_policy_texts([("team.yaml", text)])
    code, text = cmd_lint(ps, {"orders-api", "dbx"})
    assert code == 0
    assert "warning: team.yaml: quota q: no allow rule reaches it" in text
    assert "2 rules, 1 quotas in team.yaml: 0 error(s), 1 warning(s)" in text
    assert cmd_lint(ps, {"orders-api", "dbx"}, strict=True)[0] == 1


def test_check_names_the_quotas_an_allowed_request_counts_against() -> None:
    ps = parse_policy_texts([("team.yaml", quotas("""
        - id: etl-rate
          principals: ["airflow:prod/*"]
          resources: [orders-api]
          rate: 600/m
          max_delay: 2s
          concurrency: 4
        - id: runs
          principals: ["*"]
          resources: [dbx]
          runs: 2
        """))])  # fmt: skip
    code, text = cmd_check(ps, "airflow:prod/etl_daily/load", "write", "orders-api/orders")
    assert code == 0
    assert (
        "  quota etl-rate (team.yaml): rate 10/s (burst 10, waits up to 2s), 4 in flight per dag"
        in text
    )
    code, text = cmd_check(ps, "airflow:prod/etl_daily/load", "run", "dbx/job:1")
    assert code == 0 and "  quota runs (team.yaml): 2 runs per dag" in text
    code, text = cmd_check(ps, "airflow:prod/other/load", "write", "orders-api/orders")
    assert code == 1 and "quota" not in text  # denied: no quota is asked
