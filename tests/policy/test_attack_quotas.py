"""A second name of the same upstream is a way past a quota counting only the first:
``policy lint`` warns of it (quota-alias) when it knows the upstreams."""

from __future__ import annotations

from lockgate.policy import cmd_lint, lint, parse_policy_texts

POLICY = """
rules:
  - id: etl-write
    effect: allow
    principals: ["airflow:prod/etl_*/*"]
    actions: [read, write]
    resources: [orders-api, orders-api-v2]
  - id: ops-only
    effect: allow
    principals: ["airflow:prod/ops/*"]
    actions: [write]
    resources: [orders-admin]
quotas:
  - id: etl-rate
    principals: ["airflow:prod/etl_*/*"]
    resources: [orders-api]
    actions: [write]
    rate: 10/s
"""
UPSTREAMS = {
    "orders-api": "https://orders.internal/",
    "orders-api-v2": "HTTPS://orders.internal",  # the same upstream, another name
    "orders-admin": "https://orders.internal",  # the same, but not open to etl DAGs
    "billing": "https://billing.internal",
}


def test_a_quota_missing_another_name_of_its_upstream_is_warned_of() -> None:
    ps = parse_policy_texts([("team.yaml", POLICY)])
    found = [f for f in lint(ps, set(UPSTREAMS), UPSTREAMS) if f.kind == "quota-alias"]
    assert len(found) == 1
    (f,) = found
    assert f.rule == "etl-rate" and f.severity == "warning"
    assert "'orders-api-v2'" in f.message and "orders-api" in f.message
    assert not [f for f in lint(ps, set(UPSTREAMS)) if f.kind == "quota-alias"]  # not told


def test_a_quota_counting_every_name_is_not_warned_of() -> None:
    text = POLICY.replace("resources: [orders-api]\n    actions", "resources: [orders-api*]\n"
                          "    actions")  # fmt: skip
    ps = parse_policy_texts([("team.yaml", text)])
    assert not [f for f in lint(ps, set(UPSTREAMS), UPSTREAMS) if f.kind == "quota-alias"]
    code, out = cmd_lint(ps, set(UPSTREAMS), upstreams=UPSTREAMS)
    assert code == 0 and "no problems found" in out, out
