"""Grants never exercised, and by whom, from audit rows."""

from __future__ import annotations

import json
from typing import Any

from lockgate.policy import parse_policy_texts
from lockgate.policy.usage import format_usage, rule_usage

POLICY = """
rules:
  - id: finance-read
    effect: allow
    principals: ["airflow:prod/finance/*"]
    actions: [read]
    resources: [api]
    objects: ["/orders/*"]
  - id: finance-write
    effect: allow
    principals: ["airflow:prod/finance/load"]
    actions: [write]
    resources: [api]
  - id: no-admin
    effect: deny
    principals: ["*"]
    actions: [admin]
    resources: ["*"]
"""


def row(principal: str, rule: str | None, event: str = "admitted", **kw: Any) -> dict[str, Any]:
    base = {"event": event, "ts": 1_796_000_000.0, "principal": principal, "rule": rule,
            "decision": "allow", "run_id": "r1", "detail": {}}  # fmt: skip
    return {**base, **kw}


def test_never_used_rules_first_and_who_never_used_them() -> None:
    policy = parse_policy_texts([("finance.yaml", POLICY)])
    rows = [
        row("airflow:prod/finance/load", "finance-read"),
        row("airflow:prod/finance/load", "finance-read"),
        row("airflow:prod/finance/load", "finance-read", event="allowed", detail={"ref": "x"}),
        row("airflow:prod/finance/report", None, event="token_issued"),
        row("airflow:prod/finance/report", "no-admin", event="denied", decision="deny"),
        row("airflow:dev/finance/load", "finance-write"),  # another deployment
    ]
    uses = rule_usage(policy, rows, deployment="prod")
    assert [(u.id, u.used) for u in uses] == [("finance-write", False), ("finance-read", True)]
    write, read = uses
    assert write.unused_by == ["airflow:prod/finance/load"]
    assert read.seen.count == 2 and read.used_by == {"airflow:prod/finance/load": 2}
    assert read.unused_by == ["airflow:prod/finance/report"]
    text = format_usage(uses)
    assert text.startswith("1 of 2 allow rule(s) never used in the window")
    assert "finance-write (finance.yaml): NEVER USED" in text
    assert "never used by airflow:prod/finance/report" in text
    assert json.loads(json.dumps([u.to_dict() for u in uses]))[1]["uses"] == 2


def test_without_a_deployment_every_principal_counts() -> None:
    policy = parse_policy_texts([("finance.yaml", POLICY)])
    uses = rule_usage(policy, [row("airflow:dev/finance/load", "finance-write")])
    assert {u.id: u.used for u in uses} == {"finance-read": False, "finance-write": True}
