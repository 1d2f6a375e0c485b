"""MintPolicy: the kill switch first, then the policy's mint check, then the TTL caps."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from lockgate.config import parse_config
from lockgate.control import MintPolicy
from lockgate.identity import RevocationStore, TaskIdentity
from lockgate.policy.store import PolicyStore

POLICY = """\
rules:
  - id: finance-read
    effect: allow
    principals: ["airflow:prod/finance_*/*"]
    actions: [read]
    resources: [orders]
  - id: short-lived
    effect: allow
    principals: ["airflow:prod/short_*/*"]
    actions: [read]
    resources: [orders]
    conditions:
      max_token_ttl: 120
  - id: shards-0-9
    effect: allow
    principals: ["airflow:prod/shards/*"]
    actions: [read]
    resources: [orders]
    conditions:
      map_index: "0-9"
"""


@pytest.fixture
def mint(tmp_path: Path) -> Iterator[tuple[MintPolicy, RevocationStore]]:
    (tmp_path / "p.yaml").write_text(POLICY)
    config = parse_config(
        {"data_dir": str(tmp_path), "tokens": {"default_ttl": 600, "max_ttl": 1800},
         "resources": [{"name": "orders", "kind": "http", "upstream": "https://o.test"}],
         "policies": [str(tmp_path / "p.yaml")]},
        tmp_path / "lockgate.yaml",
    )  # fmt: skip
    policy = PolicyStore(config.policy_files, raise_on_error=True)
    policy.reload_if_changed()
    revocations = RevocationStore(tmp_path / "revocations.db")
    yield MintPolicy(config, policy, revocations), revocations
    revocations.close()


def task(dag: str) -> TaskIdentity:
    return TaskIdentity("prod", dag, "load", "run-1", 1)


def test_allowed_ttl_is_the_default_or_the_request_capped(mint: tuple[MintPolicy, object]) -> None:
    policy, _ = mint
    assert policy(task("finance_daily"), "orders", None).ttl == 600
    assert policy(task("finance_daily"), "orders", 60).ttl == 60
    long = policy(task("finance_daily"), "orders", 86_400)
    assert long.allowed and long.ttl == 1800 and long.rule == "finance-read"


def test_a_rule_condition_caps_the_ttl(mint: tuple[MintPolicy, object]) -> None:
    policy, _ = mint
    assert policy(task("short_job"), "orders", None).ttl == 120
    assert policy(task("short_job"), "orders", 1000).ttl == 120


def test_no_rule_denies_and_says_why(mint: tuple[MintPolicy, object]) -> None:
    policy, _ = mint
    decision = policy(task("billing"), "orders", None)
    assert not decision.allowed and decision.ttl == 0 and decision.reason


def test_a_blocked_dag_gets_nothing_even_when_policy_allows(
    mint: tuple[MintPolicy, RevocationStore],
) -> None:
    policy, revocations = mint
    revocations.block("prod", "finance_daily", "operator alice", "incident 7")
    decision = policy(task("finance_daily"), "orders", None)
    assert not decision.allowed and "blocked" in decision.reason and decision.rule is None
    assert policy(task("finance_weekly"), "orders", None).allowed


def test_a_mapped_instance_no_allow_covers_gets_no_token(mint: tuple[MintPolicy, object]) -> None:
    policy, _ = mint
    inside = policy(TaskIdentity("prod", "shards", "load", "run-1", 1, 3), "orders", None)
    assert inside.allowed and inside.rule == "shards-0-9"
    outside = policy(TaskIdentity("prod", "shards", "load", "run-1", 1, 12), "orders", None)
    assert not outside.allowed
    assert "airflow:prod/shards/load" in outside.reason
    unmapped = policy(TaskIdentity("prod", "shards", "load", "run-1", 1), "orders", None)
    assert not unmapped.allowed
