"""The ``quotas:`` list of a policy file: what it accepts, and errors worded like rules'."""

from __future__ import annotations

from pathlib import Path

import pytest

from lockgate.errors import ConfigError
from lockgate.policy import PolicySet, load_policy_files

QUOTA = """
  - id: etl-rate
    principals: ["airflow:prod/etl/*"]
    resources: [orders-api]
    rate: 10
"""


def load(
    tmp_path: Path, text: str, name: str = "q.yaml", known: set[str] | None = None
) -> PolicySet:
    p = tmp_path / name
    p.write_text(text)
    return load_policy_files([p], known)


def load_error(tmp_path: Path, text: str, known: set[str] | None = None) -> str:
    with pytest.raises(ConfigError) as info:
        load(tmp_path, text, known=known)
    return str(info.value)


def test_a_file_may_hold_only_quotas(tmp_path: Path) -> None:
    ps = load(tmp_path, "quotas:" + QUOTA)
    assert len(ps) == 0
    (quota,) = ps.quotas
    assert (quota.id, quota.rate, quota.burst, quota.per, quota.max_delay) == (
        "etl-rate", 10.0, 10.0, "dag", 0.0,
    )  # fmt: skip
    assert quota.actions == {"read", "write", "admin", "run"}


def test_neither_rules_nor_quotas_is_an_error(tmp_path: Path) -> None:
    assert "expected a 'rules' list, a 'quotas' list or both" in load_error(tmp_path, "x: 1\n")


@pytest.mark.parametrize(
    ("written", "per_second"),
    [("5", 5.0), ("2.5", 2.5), ("'100/s'", 100.0), ("600/m", 10.0), ("'3600/h'", 1.0)],
)
def test_rates(tmp_path: Path, written: str, per_second: float) -> None:
    ps = load(tmp_path, "quotas:" + QUOTA.replace("rate: 10", f"rate: {written}"))
    assert ps.quotas[0].rate == per_second
    assert ps.quotas[0].burst == max(1.0, per_second)


@pytest.mark.parametrize("written", ["0", "-1", "fast", "10/d", "true"])
def test_bad_rates_name_file_line_field_and_quota(tmp_path: Path, written: str) -> None:
    msg = load_error(tmp_path, "quotas:" + QUOTA.replace("rate: 10", f"rate: {written}"))
    assert msg.startswith(f"{tmp_path / 'q.yaml'}:5: quotas[0].rate (quota etl-rate): "), msg


@pytest.mark.parametrize(("written", "seconds"), [("0", 0.0), ("'250ms'", 0.25), ("2s", 2.0)])
def test_max_delay(tmp_path: Path, written: str, seconds: float) -> None:
    ps = load(tmp_path, "quotas:" + QUOTA + f"    max_delay: {written}\n")
    assert ps.quotas[0].max_delay == seconds


def test_a_quota_without_a_limit(tmp_path: Path) -> None:
    msg = load_error(tmp_path, "quotas:" + QUOTA.replace("    rate: 10\n", ""))
    assert "a quota needs at least one limit: rate, concurrency, sessions or runs" in msg


@pytest.mark.parametrize(
    ("extra", "says"),
    [
        ("    concurrency: 0\n", "quotas[0].concurrency (quota etl-rate): expected a positive"),
        ("    sessions: two\n", "quotas[0].sessions (quota etl-rate)"),
        ("    per: run\n", "expected one of dag, task, all (got 'run')"),
        ("    limit: 3\n", "quotas[0].limit (quota etl-rate): unknown field (allowed: id,"),
        ("    run_max_age: 1h\n", "run_max_age is the age after which a run stops counting"),
        ("    max_delay: soon\n", "quotas[0].max_delay (quota etl-rate)"),
    ],
)
def test_errors(tmp_path: Path, extra: str, says: str) -> None:
    assert says in load_error(tmp_path, "quotas:" + QUOTA + extra)


def test_burst_needs_a_rate_max_delay_does_not(tmp_path: Path) -> None:
    capped = "quotas:" + QUOTA.replace("rate: 10", "concurrency: 2")
    assert "burst is the size of a rate's bucket" in load_error(tmp_path, capped + "    burst: 5\n")
    assert load(tmp_path, capped + "    max_delay: 1s\n").quotas[0].max_delay == 1.0


def test_duplicate_quota_ids_across_files_name_both(tmp_path: Path) -> None:
    a, b = tmp_path / "a.yaml", tmp_path / "b.yaml"
    a.write_text("quotas:" + QUOTA)
    b.write_text("quotas:" + QUOTA)
    with pytest.raises(ConfigError) as info:
        load_policy_files([a, b])
    msg = str(info.value)
    assert str(a) in msg and str(b) in msg and "duplicate quota id 'etl-rate'" in msg


def test_unknown_literal_resource_is_an_error(tmp_path: Path) -> None:
    msg = load_error(tmp_path, "quotas:" + QUOTA, known={"billing-api"})
    assert "quotas[0].resources[0] (quota etl-rate): unknown resource 'orders-api'" in msg


def test_a_rule_and_a_quota_may_share_an_id(tmp_path: Path) -> None:
    rule = (
        "rules:\n  - id: etl-rate\n    effect: allow\n    principals: ['*']\n"
        "    actions: [read]\n    resources: [orders-api]\n"
    )
    ps = load(tmp_path, rule + "quotas:" + QUOTA)
    assert ps.rule("etl-rate") is not None and ps.quotas[0].id == "etl-rate"
