"""The access map (policy/access.py): grants of a principal or DAG, reachers of a resource,
and explain(), with the engine as the oracle."""

from __future__ import annotations

import itertools
from collections.abc import Callable
from fnmatch import fnmatchcase
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from lockgate.policy import PolicySet, Request, cmd_check, parse_policies, parse_policy_texts
from lockgate.policy.access import explain, grants_for, reachers_of, rule_lines

from .conftest import rule

Build = Callable[..., PolicySet]

PRINCIPALS = ["*", "airflow:prod/*", "airflow:prod/etl/*", "airflow:prod/etl/load", "airflow:*/x*"]
RESOURCES = ["*", "orders", "ord*", "pg"]
OBJECTS = ["*", "/a/*", "/a/**", "/b", "sales.*"]
ACTION_SETS = [["*"], ["read"], ["write"], ["read", "write"], ["admin", "run"]]
CONDITIONS: list[dict[str, Any]] = [
    {},
    {"time_window": {"start": "06:00", "end": "20:00"}},
    {"map_index": "0-3"},
    {"mapped": False},
]


@st.composite
def rule_dicts(draw: st.DrawFn, i: int) -> dict[str, Any]:
    effect = draw(st.sampled_from(["allow", "allow", "deny"]))
    conditions = dict(draw(st.sampled_from(CONDITIONS)))
    if effect == "allow" and draw(st.booleans()):
        conditions["max_token_ttl"] = draw(st.sampled_from([300, 900]))
    return rule(
        f"r{i}",
        effect,
        principals=draw(st.lists(st.sampled_from(PRINCIPALS), min_size=1, max_size=2)),
        resources=draw(st.lists(st.sampled_from(RESOURCES), min_size=1, max_size=2)),
        objects=draw(st.lists(st.sampled_from(OBJECTS), min_size=1, max_size=2)),
        actions=draw(st.sampled_from(ACTION_SETS)),
        conditions=conditions,
    )


policies = st.integers(min_value=0, max_value=6).flatmap(
    lambda n: st.tuples(*(rule_dicts(i) for i in range(n)))
)


def policy(rules: tuple[dict[str, Any], ...] | list[dict[str, Any]]) -> PolicySet:
    return parse_policies([("team.yaml", {"rules": list(rules)})])


@settings(max_examples=200, deadline=None)
@given(
    policies,
    st.sampled_from(["airflow:prod/etl/load", "airflow:prod/etl/x1", "airflow:dev/x/y"]),
    st.sampled_from(["orders", "orders-v2", "pg"]),
    st.sampled_from(["read", "write", "admin", "run"]),
    st.sampled_from(["", "/a/1", "/a/1/2", "/b", "sales.orders"]),
    st.sampled_from([-1, 0, 2, 7]),
    st.sampled_from([3 * 3600.0, 12 * 3600.0, 23 * 3600.0]),
    st.sampled_from([None, 300, 900, 3600]),
)
def test_explain_decides_as_the_engine(
    rules: tuple[dict[str, Any], ...],
    principal: str,
    resource: str,
    action: str,
    obj: str,
    map_index: int,
    at: float,
    token_ttl: int | None,
) -> None:
    ps = policy(rules)
    answer = explain(ps, principal, resource, action, obj, map_index, at, token_ttl=token_ttl)
    ttl = token_ttl if token_ttl is not None else ps.max_ttl(principal, resource, map_index)
    oracle = ps.decide_uncached(Request(principal, action, resource, obj, ttl, at, map_index))
    assert answer.decision == oracle
    assert answer.allowed == oracle.allowed
    assert answer.text.splitlines()[1] == f"  {oracle.explain()}"


@settings(max_examples=200, deadline=None)
@given(policies, st.sampled_from(["etl", "e*", "x?", "other"]))
def test_a_dags_grants_are_the_rules_some_task_of_it_matches(
    rules: tuple[dict[str, Any], ...], dag: str
) -> None:
    ps = policy(rules)
    # tasks and DAG ids over a small alphabet that every pattern above can tell apart
    names = ["etl", "e", "x1", "xy", "other", "load", "x"]
    dags = [d for d in names if fnmatchcase(d, dag)]
    principals = [f"airflow:prod/{d}/{t}" for d, t in itertools.product(dags, names)]
    expected = {r.id for r in ps.rules if any(r.principals(p) for p in principals)}
    got = {g.rule for g in grants_for(ps, deployment="prod", dag=dag)}
    assert got == expected


def test_grants_of_a_principal_and_the_denies_that_shadow_them(build: Build) -> None:
    ps = build(
        [
            rule("read-orders", principals=["airflow:prod/etl/*"], resources=["orders"],
                 actions=["read"], objects=["/orders/**"], description="ETL reads"),
            rule("no-pii", "deny", principals=["airflow:prod/*"], resources=["orders"],
                 actions=["*"], objects=["/orders/pii/*"]),
            rule("freeze", "deny", principals=["*"], resources=["ord*"], actions=["*"],
                 conditions={"time_window": {"start": "22:00", "end": "23:00"}}),
            rule("all-pg", principals=["airflow:prod/etl/load"], resources=["pg"]),
            rule("wipe", "deny", principals=["airflow:prod/etl/load"], resources=["pg"]),
            rule("other-dag", principals=["airflow:prod/billing/*"], resources=["orders"]),
        ]
    )  # fmt: skip
    grants = {g.rule: g for g in grants_for(ps, "airflow:prod/etl/load")}
    assert list(grants) == ["read-orders", "no-pii", "freeze", "all-pg", "wipe"]
    read = grants["read-orders"]
    assert read.actions == ("read",) and read.objects == ("/orders/**",)
    assert read.description == "ETL reads" and read.on("orders") and not read.on("pg")
    assert [(s.rule, s.whole) for s in read.shadowed_by] == [("no-pii", False), ("freeze", False)]
    assert grants["freeze"].conditions == ("time_window 22:00-23:00 UTC",)
    assert [(s.rule, s.whole) for s in grants["all-pg"].shadowed_by] == [("wipe", True)]
    assert grants["all-pg"].actions == ("read", "write", "admin", "run")


def test_grants_of_a_dag_say_whether_every_task_or_some(build: Build) -> None:
    ps = build(
        [
            rule("dag-wide", principals=["airflow:prod/etl/*"], resources=["orders"]),
            rule("one-task", principals=["airflow:prod/etl/load"], resources=["pg"]),
            rule("prefix", principals=["airflow:prod/etl_*/*"], resources=["pg"]),
            rule("everyone-else", principals=["airflow:dev/*"], resources=["pg"]),
        ]
    )
    grants = {g.rule: g for g in grants_for(ps, deployment="prod", dag="etl")}
    assert set(grants) == {"dag-wide", "one-task"}
    assert grants["dag-wide"].whole and not grants["one-task"].whole
    assert {g.rule for g in grants_for(ps, deployment="prod", dag="etl_v2")} == {"prefix"}


def test_reachers_of_a_resource_name_the_known_dags(build: Build) -> None:
    ps = build(
        [
            rule("etl", principals=["airflow:prod/etl/*"], resources=["orders"]),
            rule("finance-load", principals=["airflow:prod/finance_*/load"],
                 resources=["ord*"], actions=["write"]),
            rule("pii", "deny", principals=["airflow:prod/finance_x/*"], resources=["orders"]),
            rule("pg-only", principals=["*"], resources=["pg"]),
        ]
    )  # fmt: skip
    dags = [("prod", "etl"), ("prod", "finance_*"), ("prod", "finance_x"), ("dev", "etl")]
    reach = {r.grant.rule: r for r in reachers_of(ps, "orders", dags)}
    assert list(reach) == ["etl", "finance-load", "pii"]
    assert [(d.deployment, d.dag, d.whole) for d in reach["etl"].dags] == [("prod", "etl", True)]
    assert [(d.dag, d.whole) for d in reach["finance-load"].dags] == [
        ("finance_*", False),
        ("finance_x", False),
    ]
    assert [(s.rule, s.whole) for s in reach["finance-load"].grant.shadowed_by] == [("pii", False)]


def test_rule_lines_name_the_line_of_each_rule_id(tmp_path: Any) -> None:
    text = (
        "rules:\n"
        "  - id: first\n    effect: allow\n    principals: ['*']\n    actions: [read]\n"
        "    resources: [orders]\n"
        "  - effect: deny\n    id: second\n    principals: ['*']\n    actions: ['*']\n"
        "    resources: [orders]\n"
    )
    path = tmp_path / "team.yaml"
    path.write_text(text)
    ps = parse_policy_texts([(str(path), text)])
    lines = rule_lines(ps)
    assert lines == {"first": 2, "second": 8}
    where = {g.rule: g.where for g in grants_for(ps, "airflow:a/b/c", lines=lines)}
    assert where == {"first": "team.yaml:2", "second": "team.yaml:8"}
    path.write_text("not: [valid")
    assert rule_lines(ps) == {}  # changed since it was loaded: nothing guessed


def test_cmd_check_prints_what_explain_says(build: Build) -> None:
    ps = build([rule("read-orders", principals=["airflow:prod/etl/*"], resources=["orders"],
                     actions=["read"], description="ETL reads")])  # fmt: skip
    code, text = cmd_check(
        ps, "airflow:prod/etl/load", "read", "orders/x", deployments={"prod": ["fin*"]}
    )
    assert code == 1
    assert text.splitlines() == [
        "DENY airflow:prod/etl/load read orders object /x",
        "  allowed by rule read-orders (team0.yaml)",
        "  rule description: ETL reads",
        "  but deployment prod may not act for dag etl (its dags: fin*), so no token would be "
        "minted",
    ]
    answer = explain(ps, "airflow:prod/etl/load", "orders", "read", "/x")
    assert answer.allowed and answer.verdict == "ALLOW"
    assert cmd_check(ps, "airflow:prod/etl/load", "read", "orders/x")[1] == answer.text


CONCRETE_OBJECTS = ["", "/a/1", "/a/1/2", "/b", "sales.orders", "/c"]


@settings(max_examples=200, deadline=None)
@given(policies, st.sampled_from(["airflow:prod/etl/load", "airflow:prod/etl/x1"]))
def test_what_the_shadows_claim_holds_in_the_engine(
    rules: tuple[dict[str, Any], ...], principal: str
) -> None:
    """A deny shown refusing all of an allow refuses every request the allow matches; an
    allow shown with no deny has no deny matching any request it matches."""
    ps = policy(rules)
    for grant in grants_for(ps, principal):
        if grant.effect != "allow":
            continue
        allow = ps.rule(grant.rule)
        assert allow is not None
        whole = {s.rule for s in grant.shadowed_by if s.whole}
        listed = {s.rule for s in grant.shadowed_by}
        for resource, action, obj in itertools.product(
            ["orders", "orders-v2", "pg"], ["read", "write", "admin", "run"], CONCRETE_OBJECTS
        ):
            if action not in grant.actions or not allow.matches(principal, resource, obj):
                continue
            denies = {
                r.id
                for r in ps.rules
                if r.effect == "deny"
                and (action in r.actions or "*" in r.actions)
                and r.matches(principal, resource, obj)
            }
            assert whole <= denies, (resource, action, obj)
            assert denies <= listed, (resource, action, obj)


@settings(max_examples=150, deadline=None)
@given(policies, st.sampled_from(["orders", "orders-v2", "pg"]))
def test_the_dags_a_rule_reaches_are_those_some_task_of_them_matches(
    rules: tuple[dict[str, Any], ...], resource: str
) -> None:
    ps = policy(rules)
    names = ["etl", "e", "x1", "xy", "other", "load", "x"]
    dags = [("prod", "etl"), ("prod", "e*"), ("prod", "x?"), ("dev", "other")]
    for reach in reachers_of(ps, resource, dags):
        rule_ = ps.rule(reach.grant.rule)
        assert rule_ is not None and rule_.resources(resource)
        expected = set()
        for deployment, dag in dags:
            tasks = [
                f"airflow:{deployment}/{d}/{t}"
                for d, t in itertools.product(names, names)
                if fnmatchcase(d, dag)
            ]
            if any(rule_.principals(p) for p in tasks):
                expected.add((deployment, dag))
        assert {(d.deployment, d.dag) for d in reach.dags} == expected
        for d in reach.dags:
            if d.whole:  # every task of every DAG the glob names
                dag_ids = [n for n in names if fnmatchcase(n, d.dag)]
                assert all(
                    rule_.principals(f"airflow:{d.deployment}/{n}/{t}")
                    for n, t in itertools.product(dag_ids, names)
                )
