from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

import pytest
import yaml

from lockgate.errors import ConfigError
from lockgate.policy import (
    PolicySet,
    cmd_check,
    cmd_test,
    load_policy_files,
    run_policy_tests,
    split_target,
)
from tests.policy.conftest import EXAMPLES, rule

Build = Callable[..., PolicySet]
P = "airflow:prod/finance_daily/load"
T = "tests:\n  - {name: x, principal: p, action: read, resource: r, "


@pytest.fixture
def example() -> PolicySet:
    return load_policy_files([EXAMPLES / "finance.yaml"], {"orders-api"})


def test_example_tests_pass(example: PolicySet) -> None:
    results = run_policy_tests(example, EXAMPLES / "finance_tests.yaml")
    assert len(results) >= 10
    assert [r.name for r in results if not r.passed] == []
    assert cmd_test(example, EXAMPLES / "finance_tests.yaml") == (
        0,
        f"{len(results)} passed, 0 failed",
    )


def test_mismatch_exits_1_with_expected_vs_got(example: PolicySet, tmp_path: Path) -> None:
    f = tmp_path / "t.yaml"
    f.write_text(
        "tests:\n"
        "  - name: finance writes (wrongly expected)\n"
        f"    principal: {P}\n"
        "    action: write\n"
        "    resource: orders-api\n"
        "    object: /orders/1\n"
        "    expect: allow\n"
        "  - name: wrong rule expected\n"
        f"    principal: {P}\n"
        "    action: read\n"
        "    resource: orders-api\n"
        "    object: /orders/1\n"
        "    expect: allow\n"
        "    rule: orders-load-write\n"
        "  - name: fine\n"
        f"    principal: {P}\n"
        "    action: read\n"
        "    resource: orders-api\n"
        "    expect: deny\n"
    )
    results = run_policy_tests(example, f)
    assert [r.passed for r in results] == [False, False, True]
    code, text = cmd_test(example, f)
    assert code == 1
    assert "FAIL finance writes (wrongly expected): expected allow, got deny" in text
    assert f"no rule allows {P} to write orders-api/orders/1" in text
    assert "expected rule orders-load-write, got finance-read-orders" in text
    assert "1 passed, 2 failed" in text


def test_at_and_token_ttl(build: Build, tmp_path: Path) -> None:
    ps = build(
        [
            rule(
                "day",
                conditions={
                    "max_token_ttl": 600,
                    "time_window": {"start": "06:00", "end": "20:00"},
                },
            )
        ]
    )
    base = {"principal": P, "action": "read", "resource": "r"}
    cases = [
        {"name": "day", "at": "2026-01-01T10:00:00Z", "expect": "allow"},
        {"name": "night, naive time is UTC", "at": "2026-01-01T21:00:00", "expect": "deny"},
        {"name": "long", "at": "2026-01-01T10:00:00+00:00", "token_ttl": "1h", "expect": "deny"},
        {
            "name": "short",
            "at": "2026-01-01T10:00:00Z",
            "token_ttl": 60,
            "expect": "allow",
            "rule": "day",
        },
    ]
    f = tmp_path / "t.yaml"
    f.write_text(yaml.safe_dump({"tests": [{**base, **c} for c in cases]}))
    assert all(r.passed for r in run_policy_tests(ps, f)), [str(r) for r in run_policy_tests(ps, f)]


@pytest.mark.parametrize(
    ("text", "needle"),
    [
        (
            "tests:\n  - {name: x, principal: p, action: delete, resource: r, expect: allow}\n",
            "tests[0].action: expected one of read, write, admin, run (got 'delete')",
        ),
        (
            T + "expect: allow, foo: 1}\n",
            "tests[0].foo: unknown field (allowed: name, principal",
        ),
        (
            "tests:\n  - {name: x, principal: p, action: read, resource: r, expect: yes}\n",
            "tests[0].expect",
        ),
        (
            T + "expect: allow, at: soon}\n",
            "tests[0].at: expected an ISO time",
        ),
        ("nope\n", "expected a mapping with a 'tests' list"),
    ],
)
def test_bad_test_file(example: PolicySet, tmp_path: Path, text: str, needle: str) -> None:
    f = tmp_path / "t.yaml"
    f.write_text(text)
    with pytest.raises(ConfigError) as info:
        run_policy_tests(example, f)
    assert needle in str(info.value) and "t.yaml" in str(info.value)
    code, out = cmd_test(example, f)
    assert code == 2 and needle in out


@pytest.mark.parametrize(
    ("target", "expected"),
    [
        ("orders-api/orders/1", ("orders-api", "/orders/1")),
        ("orders-api", ("orders-api", "")),
        ("orders-api/", ("orders-api", "/")),
        ("cosmos/sales/orders", ("cosmos", "/sales/orders")),
    ],
)
def test_split_target(target: str, expected: tuple[str, str]) -> None:
    assert split_target(target) == expected


def test_cmd_check(example: PolicySet) -> None:
    code, text = cmd_check(example, P, "read", "orders-api/orders/1")
    assert code == 0
    assert "allowed by rule finance-read-orders (finance.yaml)" in text
    assert "Every finance DAG in prod may read orders" in text  # the rule's description

    code, text = cmd_check(example, "airflow:prod/x/y", "write", "orders-api/orders/1")
    assert code == 1
    assert "no rule allows airflow:prod/x/y to write orders-api/orders/1" in text
    assert "denied by default" in text

    code, text = cmd_check(example, P, "admin", "orders-api/orders/1")
    assert code == 1 and "denied by rule orders-no-admin (finance.yaml)" in text

    # Default TTL is that of a freshly minted token; an explicit longer one is refused.
    assert cmd_check(example, P, "read", "orders-api/orders/1", token_ttl=3600)[0] == 1

    night = datetime(2026, 1, 1, 23, tzinfo=UTC)
    noon = datetime(2026, 1, 1, 12, tzinfo=UTC)
    w = "airflow:prod/orders_load/upsert"
    assert cmd_check(example, w, "write", "orders-api/orders/1", at=night)[0] == 0
    code, text = cmd_check(example, w, "write", "orders-api/orders/1", at=noon)
    assert code == 1 and "time_window 22:00-06:00 UTC does not hold" in text


def test_cmd_check_bad_input(example: PolicySet) -> None:
    code, text = cmd_check(example, P, "delete", "orders-api/orders/1")
    assert code == 2 and "unknown action 'delete'" in text
    assert cmd_check(example, P, "read", "/orders/1")[0] == 2


def test_cmd_check_takes_a_database_object_without_the_slash(build: Build) -> None:
    """``warehouse/sales.orders`` on a cql or postgres resource asks for ``sales.orders`` (the
    engines' object), an HTTP resource's object keeps its ``/``."""
    ps = build(
        [
            rule("sales-read", principals=["airflow:prod/etl/*"], actions=["read"],
                 resources=["warehouse", "api"], objects=["sales.*", "/sales.*"]),
        ]
    )  # fmt: skip
    principal = "airflow:prod/etl/load"
    code, text = cmd_check(
        ps, principal, "read", "warehouse/sales.orders", database_resources={"warehouse"}
    )
    assert code == 0 and "object sales.orders" in text, text
    code, text = cmd_check(
        ps, principal, "read", "warehouse/other.secret", database_resources={"warehouse"}
    )
    assert code == 1 and "object other.secret" in text, text
    code, text = cmd_check(ps, principal, "read", "api/sales.x", database_resources={"warehouse"})
    assert code == 0 and "object /sales.x" in text, text
