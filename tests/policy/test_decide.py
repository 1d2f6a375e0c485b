from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime, timedelta, timezone

import pytest

from lockgate.policy import Decision, PolicySet, Request
from tests.policy.conftest import rule

Build = Callable[..., PolicySet]
P = "airflow:prod/finance_daily/load"


def at(hh: int, mm: int = 0) -> datetime:
    return datetime(2026, 1, 1, hh, mm, tzinfo=UTC)


def test_empty_policy_denies(build: Build) -> None:
    d = build([]).decide(Request(P, "read", "orders-api", "/orders/1"))
    assert d == Decision(False, None, None, f"no rule allows {P} to read orders-api/orders/1")


def test_deny_by_default_when_nothing_matches(build: Build) -> None:
    ps = build([rule("r", principals=["airflow:prod/hr_*/*"], actions=["read"])])
    d = ps.decide(Request(P, "read", "orders-api"))
    assert not d.allowed and d.rule is None
    assert d.explain() == f"no rule allows {P} to read orders-api"


def test_allow_explains_rule_and_file(build: Build) -> None:
    ps = build(("policies/finance.yaml", [rule("finance-read-orders", actions=["read"])]))
    d = ps.decide(Request(P, "read", "orders-api", "/orders/1"))
    assert d.allowed and d.rule == "finance-read-orders" and d.source == "policies/finance.yaml"
    assert d.explain() == "allowed by rule finance-read-orders (finance.yaml)"


@pytest.mark.parametrize("deny_first", [True, False])
def test_explicit_deny_beats_allow_regardless_of_file_order(build: Build, deny_first: bool) -> None:
    allow = ("finance.yaml", [rule("finance-all", principals=["airflow:prod/finance_*/*"])])
    deny = ("security.yaml", [rule("no-deletes", "deny", actions=["admin"])])
    ps = build(deny, allow) if deny_first else build(allow, deny)
    d = ps.decide(Request(P, "admin", "orders-api", "/orders/1"))
    assert not d.allowed and d.rule == "no-deletes"
    assert d.explain() == "denied by rule no-deletes (security.yaml)"
    assert ps.decide(Request(P, "read", "orders-api", "/orders/1")).allowed


def test_actions_must_match(build: Build) -> None:
    ps = build([rule("r", actions=["read", "run"])])
    assert ps.decide(Request(P, "run", "jobs")).allowed
    assert not ps.decide(Request(P, "write", "jobs")).allowed


def test_unknown_action_denied_even_with_star(build: Build) -> None:
    ps = build([rule("r")])
    d = ps.decide(Request(P, "delete", "orders-api"))
    assert not d.allowed and "unknown action 'delete'" in d.explain()


# -- globs ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("pattern", "principal", "ok"),
    [
        ("airflow:prod/finance_*/*", "airflow:prod/finance_daily/load", True),
        ("airflow:prod/finance_*/*", "airflow:prod/hr_daily/load", False),
        ("airflow:prod/finance_*/*", "airflow:staging/finance_daily/load", False),
        ("airflow:prod/finance_*/*", "Airflow:prod/finance_daily/load", False),  # case
        ("airflow:prod/finance_?/*", "airflow:prod/finance_x/t", True),
        ("airflow:prod/finance_?/*", "airflow:prod/finance_xy/t", False),
        ("airflow:prod/*", "airflow:prod/finance_daily/load", True),  # names: * crosses /
        ("airflow:prod/[fh]*/*", "airflow:prod/hr/t", True),
        ("airflow:prod/orders_load/upsert", "airflow:prod/orders_load/upsert", True),
        ("airflow:prod/orders_load/upsert", "airflow:prod/orders_load/upsert2", False),
    ],
)
def test_principal_globs(build: Build, pattern: str, principal: str, ok: bool) -> None:
    ps = build([rule("r", principals=[pattern])])
    assert ps.decide(Request(principal, "read", "orders-api")).allowed is ok


@pytest.mark.parametrize(
    ("pattern", "resource", "ok"),
    [
        ("orders-*", "orders-api", True),
        ("orders-*", "orders", False),
        ("orders-api", "orders-API", False),
        ("*", "anything", True),
    ],
)
def test_resource_globs(build: Build, pattern: str, resource: str, ok: bool) -> None:
    assert (
        build([rule("r", resources=[pattern])]).decide(Request(P, "read", resource)).allowed is ok
    )


@pytest.mark.parametrize(
    ("pattern", "obj", "ok"),
    [
        ("*", "", True),
        ("*", "/orders/1/items/2", True),  # a lone * is "any object"
        ("**", "/orders/1", True),
        ("/orders/*", "/orders/1", True),
        ("/orders/*", "/orders/1/items", False),  # * stays in one segment
        ("/orders/**", "/orders/1/items", True),  # ** crosses segments
        ("/orders/**", "/orders", False),
        ("/orders/*/items", "/orders/1/items", True),
        ("/orders/*/items", "/orders/1/2/items", False),
        ("/orders/**/items", "/orders/1/2/items", True),
        ("/orders/?", "/orders/1", True),
        ("/orders/?", "/orders//", False),
        ("sales/*", "sales/orders", True),
        ("/orders/[!x]", "/orders//", False),
        ("/Orders/*", "/orders/1", False),
    ],
)
def test_object_globs(build: Build, pattern: str, obj: str, ok: bool) -> None:
    ps = build([rule("r", objects=[pattern])])
    assert ps.decide(Request(P, "read", "orders-api", obj)).allowed is ok


def test_default_objects_match_everything(build: Build) -> None:
    ps = build(
        [{"id": "r", "effect": "allow", "principals": [P], "actions": ["read"], "resources": ["x"]}]
    )
    assert ps.decide(Request(P, "read", "x", "/a/b/c")).allowed


# -- conditions ----------------------------------------------------------------------------


def test_max_token_ttl(build: Build) -> None:
    ps = build([rule("finance-read", conditions={"max_token_ttl": 900})])
    assert ps.decide(Request(P, "read", "o", token_ttl=600)).allowed
    assert ps.decide(Request(P, "read", "o", token_ttl=900)).allowed
    d = ps.decide(Request(P, "read", "o", token_ttl=901))
    assert not d.allowed and d.rule is None
    assert d.explain() == (
        "rule finance-read matched but its condition max_token_ttl 900s does not hold "
        "(token TTL 901s)"
    )
    # Unknown token lifetime fails closed for an allow.
    assert not ps.decide(Request(P, "read", "o")).allowed


def test_time_window(build: Build) -> None:
    ps = build(
        [rule("finance-read", conditions={"time_window": {"start": "06:00", "end": "20:00"}})]
    )
    assert ps.decide(Request(P, "read", "o", now=at(6))).allowed
    assert ps.decide(Request(P, "read", "o", now=at(19, 59))).allowed
    d = ps.decide(Request(P, "read", "o", now=at(20)))
    assert not d.allowed
    assert d.explain() == (
        "rule finance-read matched but its condition time_window 06:00-20:00 UTC does not hold"
    )
    assert not ps.decide(Request(P, "read", "o", now=at(5, 59))).allowed


def test_time_window_wraps_midnight(build: Build) -> None:
    ps = build([rule("night", conditions={"time_window": {"start": "22:00", "end": "06:00"}})])
    for hh, ok in [
        (22, True),
        (23, True),
        (0, True),
        (5, True),
        (6, False),
        (12, False),
        (21, False),
    ]:
        assert ps.decide(Request(P, "read", "o", now=at(hh))).allowed is ok, hh


def test_time_window_is_utc(build: Build) -> None:
    ps = build([rule("day", conditions={"time_window": {"start": "06:00", "end": "20:00"}})])
    plus2 = timezone(timedelta(hours=2))
    # 21:00 at UTC+2 is 19:00 UTC: inside. 07:00 at UTC+2 is 05:00 UTC: outside.
    assert ps.decide(Request(P, "read", "o", now=datetime(2026, 1, 1, 21, tzinfo=plus2))).allowed
    assert not ps.decide(Request(P, "read", "o", now=datetime(2026, 1, 1, 7, tzinfo=plus2))).allowed
    assert ps.decide(Request(P, "read", "o", now=at(12).timestamp())).allowed  # epoch seconds


def test_conditions_not_cached_across_time(build: Build) -> None:
    ps = build([rule("day", conditions={"time_window": {"start": "06:00", "end": "20:00"}})])
    assert ps.decide(Request(P, "read", "o", now=at(12))).allowed
    assert not ps.decide(Request(P, "read", "o", now=at(22))).allowed
    assert ps.decide(Request(P, "read", "o", now=at(12))).allowed


def test_conditional_deny_applies_only_when_it_holds(build: Build) -> None:
    ps = build(
        [
            rule("all"),
            rule("freeze", "deny", conditions={"time_window": {"start": "00:00", "end": "02:00"}}),
        ]
    )
    assert ps.decide(Request(P, "read", "o", now=at(12))).allowed
    d = ps.decide(Request(P, "read", "o", now=at(1)))
    assert not d.allowed and d.rule == "freeze"


def test_second_allow_used_when_first_condition_fails(build: Build) -> None:
    ps = build(
        [
            rule("short", conditions={"max_token_ttl": 60}),
            rule("day", conditions={"time_window": {"start": "06:00", "end": "20:00"}}),
        ]
    )
    assert ps.decide(Request(P, "read", "o", token_ttl=600, now=at(12))).rule == "day"
    d = ps.decide(Request(P, "read", "o", token_ttl=600, now=at(22)))
    assert not d.allowed and "rule short matched" in d.explain()


# -- mint ----------------------------------------------------------------------------------


def test_mint_check_and_max_ttl(build: Build) -> None:
    ps = build(
        (
            "finance.yaml",
            [
                rule(
                    "read",
                    principals=["airflow:prod/finance_*/*"],
                    actions=["read"],
                    resources=["orders-api"],
                    objects=["/orders/*"],
                    conditions={"max_token_ttl": "15m"},
                ),
                rule(
                    "write",
                    principals=["airflow:prod/finance_daily/*"],
                    actions=["write"],
                    resources=["orders-api"],
                    conditions={"max_token_ttl": 300},
                ),
                rule(
                    "report",
                    principals=["airflow:prod/finance_*/*"],
                    actions=["read"],
                    resources=["reports"],
                ),
                rule("no-hr", "deny", principals=["airflow:prod/hr_*/*"]),
                rule("hr-read", principals=["airflow:prod/hr_*/*"], actions=["read"]),
                rule(
                    "no-night-hr",
                    "deny",
                    principals=["airflow:prod/hr_night/*"],
                    conditions={"time_window": {"start": "00:00", "end": "01:00"}},
                ),
            ],
        )
    )
    d = ps.mint_check(P, "orders-api")
    assert d.allowed and d.rule == "read"
    assert ps.max_ttl(P, "orders-api") == 300  # smallest cap among matching allows
    assert ps.max_ttl("airflow:prod/finance_monthly/x", "orders-api") == 900
    assert ps.max_ttl(P, "reports") is None
    assert ps.mint_check(P, "reports").allowed
    d = ps.mint_check(P, "customers")
    assert not d.allowed and d.explain() == f"no rule allows {P} to use customers"
    d = ps.mint_check("airflow:prod/hr_daily/t", "orders-api")
    assert not d.allowed and d.rule == "no-hr"
    # A partial (conditional) deny does not block minting.
    assert not ps.mint_check("airflow:prod/hr_night/t", "orders-api").allowed  # no-hr covers it
    ps2 = build(
        [
            rule("ok"),
            rule("partial", "deny", actions=["write"]),
            rule(
                "odd-hours", "deny", conditions={"time_window": {"start": "00:00", "end": "01:00"}}
            ),
        ]
    )
    assert ps2.mint_check(P, "x").allowed


def test_cache_is_bounded_and_used(build: Build) -> None:
    ps = PolicySet(build([rule("r", objects=["/a/*"])]).rules, cache_size=8)
    for i in range(100):
        ps.decide(Request(P, "read", "o", f"/a/{i}"))
    info = ps.cache_info()
    assert info.currsize == 8  # type: ignore[attr-defined]
    ps.decide(Request(P, "read", "o", "/a/99"))
    assert ps.cache_info().hits == 1  # type: ignore[attr-defined]
