"""The map-index conditions: one mapped task's instances share a principal, and a rule may
name some of them (``map_index``) or only mapped / unmapped tasks (``mapped``)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
import yaml

from lockgate.errors import ConfigError
from lockgate.policy import (
    PolicySet,
    Request,
    cmd_check,
    lint,
    parse_policy_texts,
    run_policy_tests,
)
from lockgate.policy.mapindex import MapCondition, parse_map_indexes, ranges_text
from tests.policy.conftest import rule

Build = Callable[..., PolicySet]
P = "airflow:prod/fan_out/load"  # one principal for every map index of the task


def ask(ps: PolicySet, map_index: int | None, action: str = "read") -> Request:
    return Request(P, action, "orders-api", "/orders/1", 600, None, map_index)


# -- syntax --------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("written", "ranges"),
    [
        (3, ((3, 3),)),
        ("0-9", ((0, 9),)),
        (" 4 - 6 ", ((4, 6),)),
        ("7", ((7, 7),)),
        ([0, 1, "10-19"], ((0, 0), (1, 1), (10, 19))),
    ],
)
def test_map_indexes_are_numbers_and_ranges(written: object, ranges: object) -> None:
    assert parse_map_indexes(written) == ranges


def test_ranges_read_back_as_written() -> None:
    assert ranges_text(((0, 0), (1, 1), (10, 19))) == "0, 1, 10-19"


@pytest.mark.parametrize(
    ("conditions", "needle"),
    [
        ("{map_index: -1}", "map indexes start at 0"),
        ('{map_index: "9-0"}', "range '9-0' ends before it starts"),
        ("{map_index: []}", "expected at least one map index"),
        ("{map_index: [1, two]}", 'expected map indexes: a number, a range like "0-9"'),
        ("{map_index: true}", "got True"),
        ("{map_index: 99999999}", "above the largest one a token carries"),
        ("{mapped: maybe}", "conditions.mapped (rule fan): expected true or false"),
        ("{map_index: 3, mapped: false}", "together they match nothing"),
        ("{map_idx: 3}", "unknown field (allowed: max_token_ttl, time_window, map_index, mapped)"),
    ],
)
def test_bad_conditions_name_file_line_and_rule(conditions: str, needle: str) -> None:
    text = (
        "rules:\n"
        "  - id: fan\n"
        "    effect: allow\n"
        "    principals: ['airflow:prod/fan_out/*']\n"
        "    actions: [read]\n"
        "    resources: [orders-api]\n"
        f"    conditions: {conditions}\n"
    )
    with pytest.raises(ConfigError) as info:
        parse_policy_texts([("policies/fan.yaml", text)])
    message = str(info.value)
    assert message.startswith("policies/fan.yaml:7: rules[0].conditions"), message
    assert "(rule fan)" in message and needle in message, message


# -- decisions -----------------------------------------------------------------------------
def test_two_map_indexes_of_one_task_one_allowed_one_denied(build: Build) -> None:
    ps = build(("fan.yaml", [rule("fan-first", conditions={"map_index": "0-1"})]))
    allowed = ps.decide(ask(ps, 1))
    assert allowed.allowed and allowed.rule == "fan-first"
    assert allowed.explain() == "allowed by rule fan-first (fan.yaml): map_index 1 in 0-1"
    denied = ps.decide(ask(ps, 2))
    assert not denied.allowed and denied.rule is None
    assert denied.explain() == (
        "rule fan-first matched but its condition map_index 0-1 does not hold (map_index 2)"
    )


def test_unmapped_and_unknown_index_do_not_meet_an_allow(build: Build) -> None:
    ps = build([rule("fan", conditions={"map_index": [0, "5-9"]})])
    unmapped = ps.decide(ask(ps, -1))
    assert not unmapped.allowed and "(task not mapped)" in unmapped.explain()
    unknown = ps.decide(ask(ps, None))
    assert not unknown.allowed and "(map_index unknown)" in unknown.explain()
    assert [ps.decide(ask(ps, i)).allowed for i in range(11)] == (
        [True, False, False, False, False, True, True, True, True, True, False]
    )


def test_a_deny_on_some_indexes_beats_the_allow(build: Build) -> None:
    deny_tail = rule("fan-no-tail", "deny", conditions={"map_index": "8-9"})
    ps = build(("fan.yaml", [rule("fan-all"), deny_tail]))
    assert ps.decide(ask(ps, 7)).explain() == "allowed by rule fan-all (fan.yaml)"
    d = ps.decide(ask(ps, 8))
    assert not d.allowed and d.rule == "fan-no-tail"
    assert d.explain() == "denied by rule fan-no-tail (fan.yaml): map_index 8 in 8-9"
    assert ps.decide(ask(ps, -1)).allowed
    # Unknown inputs fail closed: the deny applies.
    unknown = ps.decide(ask(ps, None))
    assert not unknown.allowed and unknown.explain().endswith(": map_index unknown")


def test_mapped_true_and_false(build: Build) -> None:
    ps = build(
        [
            rule("only-mapped", actions=["read"], conditions={"mapped": True}),
            rule("only-unmapped", actions=["write"], conditions={"mapped": False}),
        ]
    )
    assert (
        ps.decide(ask(ps, 0)).explain()
        == "allowed by rule only-mapped (team0.yaml): map_index 0, mapped"
    )
    assert ps.decide(ask(ps, -1)).explain() == (
        "rule only-mapped matched but its condition mapped true does not hold (task not mapped)"
    )
    assert ps.decide(ask(ps, -1, "write")).explain() == (
        "allowed by rule only-unmapped (team0.yaml): task not mapped"
    )
    assert ps.decide(ask(ps, 4, "write")).explain() == (
        "rule only-unmapped matched but its condition mapped false does not hold (map_index 4)"
    )
    assert not ps.decide(ask(ps, None, "write")).allowed


def test_with_other_conditions_all_must_hold(build: Build) -> None:
    ps = build([rule("fan", conditions={"map_index": 3, "max_token_ttl": 300})])
    assert not ps.decide(ask(ps, 3)).allowed  # TTL 600 > 300
    assert ps.decide(Request(P, "read", "orders-api", "/orders/1", 300, None, 3)).allowed
    assert not ps.decide(Request(P, "read", "orders-api", "/orders/1", 300, None, 4)).allowed


def test_a_policy_without_the_condition_ignores_the_map_index(build: Build) -> None:
    """Exactly today's decisions, the very same Decision objects, for every map index."""
    ps = build(
        [
            rule("read-all", actions=["read"]),
            rule("no-admin", "deny", actions=["admin"]),
            rule("short-writes", actions=["write"], conditions={"max_token_ttl": 900}),
        ]
    )
    for action in ("read", "write", "admin", "run"):
        today = ps.decide(Request(P, action, "orders-api", "/orders/1", 600))
        for map_index in (None, -1, 0, 1, 41):
            got = ps.decide(ask(ps, map_index, action))
            assert got == today and got.explain() == today.explain()
            if today.rule is not None:
                assert got is ps.rule(today.rule).decision  # type: ignore[union-attr]


def test_the_principal_never_carries_the_map_index(build: Build) -> None:
    ps = build([rule("fan", principals=[P], conditions={"map_index": 2})])
    assert ps.decide(ask(ps, 2)).allowed
    assert (
        "no rule allows"
        in ps.decide(Request(f"{P}/2", "read", "orders-api", "/x", 60, None, 2)).explain()
    )


def test_explanations_are_kept_per_index(build: Build) -> None:
    ps = build([rule("fan", conditions={"map_index": "0-9999"})])
    assert ps.decide(ask(ps, 5)) is ps.decide(ask(ps, 5))  # no new object per request
    for i in range(3000):  # bounded: past the limit they are rebuilt
        assert ps.decide(ask(ps, i)).explain().endswith(f"map_index {i} in 0-9999")


def test_condition_compiled() -> None:
    assert MapCondition.of(None, None) is None
    cond = MapCondition.of(((0, 1),), None)
    assert cond is not None and cond.holds(1) and not cond.holds(2) and not cond.holds(None)


@pytest.mark.parametrize("ranges", [((0, 9), (20, 20)), ((0, 9), (20, 20), (100, 1_000_000))])
def test_small_and_wide_ranges_decide_alike(ranges: tuple[tuple[int, int], ...]) -> None:
    """Small spans are looked up in a set, wide ones compared range by range: same answers."""
    cond = MapCondition.of(ranges, None)
    assert cond is not None
    assert (cond.members is None) == (ranges[-1][1] == 1_000_000)
    got = [i for i in (-1, 0, 9, 10, 19, 20, 21, 99, 100, 1_000_000, 1_000_001) if cond.holds(i)]
    expected = [0, 9, 20] + ([100, 1_000_000] if cond.members is None else [])
    assert got == expected


# -- at mint -------------------------------------------------------------------------------
def test_mint_check_and_max_ttl_follow_a_known_map_index(build: Build) -> None:
    ps = build(
        [
            rule("fan-head", conditions={"map_index": "0-4", "max_token_ttl": 300}),
            rule("fan-tail", conditions={"map_index": "5-9"}),
            rule("fan-stop", "deny", conditions={"map_index": 9}),
        ]
    )
    # Unknown index: as before (conditions are per request); the smallest cap applies.
    assert ps.mint_check(P, "orders-api").allowed
    assert ps.max_ttl(P, "orders-api") == 300
    assert ps.mint_check(P, "orders-api", 2).rule == "fan-head"
    assert ps.max_ttl(P, "orders-api", 2) == 300
    assert ps.mint_check(P, "orders-api", 6).rule == "fan-tail"
    assert ps.max_ttl(P, "orders-api", 6) is None
    stop = ps.mint_check(P, "orders-api", 9)
    assert (
        not stop.allowed
        and stop.explain() == "denied by rule fan-stop (team0.yaml): map_index 9 in 9"
    )
    nothing = ps.mint_check(P, "orders-api", 12)
    assert not nothing.allowed and nothing.rule is None
    assert not ps.mint_check(P, "orders-api", -1).allowed


# -- lint ----------------------------------------------------------------------------------
def test_lint_tells_allows_for_other_indexes_apart(build: Build) -> None:
    ps = build(
        [
            rule("head", resources=["orders-api"], conditions={"map_index": "0-4"}),
            rule("tail", resources=["orders-api"], conditions={"map_index": "5-9"}),
            rule("tail-again", resources=["orders-api"], conditions={"map_index": "5-9"}),
        ]
    )
    shadowed = [f.rule for f in lint(ps, {"orders-api"}) if f.kind == "shadowed"]
    assert shadowed == ["tail-again"]


def test_a_deny_on_some_indexes_shadows_nothing(build: Build) -> None:
    ps = build(
        [
            rule("all", resources=["orders-api"], actions=["read"]),
            rule("stop-9", "deny", resources=["orders-api"], conditions={"map_index": 9}),
        ]
    )
    assert [f for f in lint(ps, {"orders-api"}) if f.kind == "shadowed"] == []


# -- policy test files and policy check -------------------------------------------------------
def test_policy_test_cases_name_the_map_index(build: Build, tmp_path: Path) -> None:
    ps = build([rule("fan", principals=[P], conditions={"map_index": [0, 1]})])
    base = {"principal": P, "action": "read", "resource": "orders-api"}
    cases = [
        {"name": "instance 0", "map_index": 0, "expect": "allow", "rule": "fan"},
        {"name": "instance 1", "map_index": 1, "expect": "allow"},
        {"name": "instance 2", "map_index": 2, "expect": "deny"},
        {"name": "not mapped by default", "expect": "deny"},
    ]
    f = tmp_path / "t.yaml"
    f.write_text(yaml.safe_dump({"tests": [{**base, **c} for c in cases]}))
    results = run_policy_tests(ps, f)
    assert all(r.passed for r in results), [str(r) for r in results]

    f.write_text(
        yaml.safe_dump({"tests": [{**base, "name": "x", "map_index": -2, "expect": "deny"}]})
    )
    with pytest.raises(ConfigError, match=r"tests\[0\].map_index"):
        run_policy_tests(ps, f)


def test_policy_check_with_a_map_index(build: Build) -> None:
    ps = build(("fan.yaml", [rule("fan", principals=[P], conditions={"map_index": "0-9"})]))
    code, text = cmd_check(ps, P, "read", "orders-api/orders/1", map_index=3)
    assert code == 0, text
    assert text.splitlines()[:2] == [
        f"ALLOW {P} read orders-api object /orders/1 map_index 3",
        "  allowed by rule fan (fan.yaml): map_index 3 in 0-9",
    ]
    code, text = cmd_check(ps, P, "read", "orders-api/orders/1", map_index=12)
    assert code == 1 and "map_index 0-9 does not hold (map_index 12)" in text, text
    code, text = cmd_check(ps, P, "read", "orders-api/orders/1")  # not mapped by default
    assert code == 1 and "(task not mapped)" in text and "map_index -1" not in text, text
    code, text = cmd_check(ps, P, "read", "orders-api/orders/1", map_index=-5)
    assert code == 2 and "bad map index -5" in text
