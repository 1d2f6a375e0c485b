"""Least privilege from use: the suggested rules cover exactly what the evidence supports,
load through the real loader and pass their own policy tests."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from lockgate.policy import Request, lint, parse_policy_texts, run_policy_tests
from lockgate.policy.suggest import Suggestion, generalise, looks_like_id, suggest

DAY = 86400.0
T0 = 1_796_000_000.0  # 2026-11-30


def row(
    task: str,
    obj: str,
    *,
    action: str = "read",
    event: str = "admitted",
    decision: str = "allow",
    resource: str = "api",
    dag: str = "finance",
    run: str = "r1",
    ts: float = T0,
    detail: dict[str, Any] | None = None,
) -> dict[str, Any]:
    return {
        "event": event, "ts": ts, "deployment": "prod", "dag_id": dag, "task_id": task,
        "run_id": run, "principal": f"airflow:prod/{dag}/{task}", "resource": resource,
        "action": action, "object": obj, "decision": decision, "detail": detail or {},
    }  # fmt: skip


def checked(found: Suggestion, tmp_path: Path) -> None:
    """The suggestion loads with the real loader, lints clean and passes its own tests."""
    policy_set = parse_policy_texts([("suggested.yaml", found.policy_yaml())], {"api", "db"})
    assert [str(f) for f in lint(policy_set, {"api", "db"})] == []
    tests = tmp_path / "suggested.tests.yaml"
    tests.write_text(found.tests_yaml())
    results = run_policy_tests(policy_set, tests)
    assert results and all(r.passed for r in results), [str(r) for r in results if not r.passed]


@pytest.mark.parametrize(
    ("segment", "is_id"),
    [
        ("123", True),
        ("0f8fad5b-d9cb-469f-a165-70867728950e", True),
        ("2026-12-04", True),
        ("20261204", True),
        ("9f86d081884c7d659a2feaa0c55ad015", True),
        ("orders", False),
        ("v2", False),
        ("job:123", False),
        ("", False),
    ],
)
def test_id_segments(segment: str, is_id: bool) -> None:
    assert looks_like_id(segment) is is_id


def test_siblings_differing_in_an_id_segment_become_one_glob() -> None:
    grants = generalise(["/orders/1", "/orders/2", "/orders/3", "/health"])
    assert [(g.pattern, len(g.objects)) for g in grants] == [("/health", 1), ("/orders/*", 3)]
    assert "3 objects differing in one id segment" in grants[1].why


def test_exact_objects_stay_without_enough_evidence() -> None:
    assert [g.pattern for g in generalise(["/orders/1"])] == ["/orders/1"]
    # siblings differing in a name, not an id: no glob
    assert [g.pattern for g in generalise(["/orders/eu", "/orders/us"])] == [
        "/orders/eu",
        "/orders/us",
    ]
    assert [g.pattern for g in generalise(["/o/1", "/o/2"], min_siblings=3)] == ["/o/1", "/o/2"]


def test_a_glob_never_covers_a_denied_ask() -> None:
    grants = generalise(["/orders/1", "/orders/2"], denied=["/orders/3"])
    assert [g.pattern for g in grants] == ["/orders/1", "/orders/2"]


def test_double_star_only_after_enough_depths() -> None:
    three = ["/files/a", "/files/a/b", "/files/a/b/c"]
    assert "/files/**" not in [g.pattern for g in generalise(three)]
    four = [*three, "/files/a/b/c/d"]
    assert [g.pattern for g in generalise(four)] == ["/files/**"]
    assert [g.pattern for g in generalise(four, denied=["/files/x"])] != ["/files/**"]


def test_glob_characters_in_an_object_are_matched_literally() -> None:
    (grant,) = generalise(["/a*b"])
    policy = parse_policy_texts(
        [("p.yaml", f"rules: [{{id: r, effect: allow, principals: ['*'], actions: [read], "
                    f"resources: [api], objects: ['{grant.pattern}']}}]")]
    )  # fmt: skip
    assert policy.decide(Request("airflow:p/d/t", "read", "api", "/a*b")).allowed
    assert not policy.decide(Request("airflow:p/d/t", "read", "api", "/axb")).allowed


def test_per_task_rules_and_never_wider_actions(tmp_path: Path) -> None:
    rows = [row("load", f"/orders/{i}", run=f"r{i % 3}", ts=T0 + i * DAY) for i in range(6)]
    rows += [row("load", "/orders/1", action="write"), row("report", "/summary")]
    found = suggest(rows, "finance")
    specs = found.policy()["rules"]
    assert [(s["principals"], s["actions"], s["objects"]) for s in specs] == [
        (["airflow:prod/finance/load"], ["read"], ["/orders/*"]),
        (["airflow:prod/finance/load"], ["write"], ["/orders/1"]),
        (["airflow:prod/finance/report"], ["read"], ["/summary"]),
    ]
    assert [s["id"] for s in specs] == [f"suggested-finance-{n}" for n in (1, 2, 3)]
    assert specs[0]["description"].startswith("seen 6 times across 3 runs, 2026-11-30..2026-12-05")
    checked(found, tmp_path)


def test_the_same_grant_for_every_task_becomes_dag_wide(tmp_path: Path) -> None:
    rows = [row("a", "/orders/1"), row("a", "/orders/2"), row("b", "/orders/7")]
    rows += [row("b", "/orders/8"), row("a", "/x", action="write"), row("b", "/x", action="write")]
    found = suggest(rows, "finance")
    specs = found.policy()["rules"]
    assert [(s["principals"], s["actions"], s["objects"]) for s in specs] == [
        (["airflow:prod/finance/*"], ["read"], ["/orders/*"]),
        (["airflow:prod/finance/*"], ["write"], ["/x"]),
    ]
    assert "4 objects differing" in specs[0]["description"]
    checked(found, tmp_path)


def test_a_task_seen_only_being_denied_keeps_grants_per_task(tmp_path: Path) -> None:
    rows = [row("a", "/x"), row("b", "/x"), row("c", "/x", event="denied", decision="deny")]
    found = suggest(rows, "finance")
    assert [s["principals"] for s in found.policy()["rules"]] == [
        ["airflow:prod/finance/a"],
        ["airflow:prod/finance/b"],
    ]
    checked(found, tmp_path)


def test_denied_asks_are_listed_and_tested_never_granted(tmp_path: Path) -> None:
    rows = [row("a", "/orders/1"), row("a", "/orders/2")]
    rows += [row("a", "/orders/3", event="denied", decision="deny")] * 2
    found = suggest(rows, "finance")
    assert found.policy()["rules"][0]["objects"] == ["/orders/1", "/orders/2"]
    text = found.policy_yaml()
    assert "# Asked but denied" in text and "'/orders/3': seen 2 times" in text
    deny = [t for t in found.tests() if t["expect"] == "deny"]
    assert [(t["principal"], t["object"]) for t in deny] == [
        ("airflow:prod/finance/a", "/orders/3")
    ]
    checked(found, tmp_path)


def test_what_is_not_evidence_is_ignored() -> None:
    rows = [
        row("a", "/x", dag="other"),  # another DAG
        row("a", "/x", event="token_issued"),
        row("a", "", action="connect", event="allowed"),  # session, not a policy action
        row("a", "/t", event="throttled", decision="deny"),  # policy allowed, quota refused
        row("a", "/x", event="allowed", detail={"ref": "abc"}),  # outcome of an admitted one
    ]
    found = suggest(rows, "finance")
    assert found.rules == [] and found.evidence.denied == {}
    assert "no rule to suggest" in found.policy_yaml()
    assert parse_policy_texts([("s.yaml", found.policy_yaml())]).rules == ()


def test_allowed_without_admitted_counts_once(tmp_path: Path) -> None:
    rows = [row("a", "/x"), row("a", "/x", event="allowed", detail={"ref": "r"})]
    rows.append(row("a", "ks.t", event="allowed", resource="db"))  # a CQL/PG statement
    found = suggest(rows, "finance")
    counts = {key[2:]: seen.count for key, seen in found.evidence.used.items()}
    assert counts == {("api", "read", "/x"): 1, ("db", "read", "ks.t"): 1}
    checked(found, tmp_path)


def test_rows_are_streamed_not_held() -> None:
    made = 0

    def rows() -> Iterator[dict[str, Any]]:
        nonlocal made
        for i in range(20_000):
            made += 1
            yield row("a", f"/orders/{i % 50}", run=f"r{i % 7}")

    found = suggest(rows(), "finance")
    assert made == 20_000 and len(found.evidence.used) == 50
    (rule,) = found.rules
    assert rule.to_spec()["objects"] == ["/orders/*"]
    assert "seen 20,000 times across 7 runs" in rule.description


def test_tests_file_keeps_every_value_exact(tmp_path: Path) -> None:
    odd = ['/a"b', "/ü/x: y", "/tab\there", "/#not-a-comment", 'ks."T"']
    found = suggest([row("a", o) for o in odd], "finance")
    cases = yaml.safe_load(found.tests_yaml())["tests"]
    assert sorted(c["object"] for c in cases) == sorted(odd)
    checked(found, tmp_path)
    assert yaml.safe_load(suggest([], "finance").tests_yaml()) == {"tests": []}


def test_an_ask_also_allowed_at_another_time_is_a_use(tmp_path: Path) -> None:
    rows = [row("a", "/orders/1"), row("a", "/orders/2")]
    rows.append(row("a", "/orders/1", event="denied", decision="deny"))  # e.g. token revoked
    found = suggest(rows, "finance")
    assert found.policy()["rules"][0]["objects"] == ["/orders/*"]
    assert found.denied_asks() == [] and "Asked but denied" not in found.policy_yaml()
    checked(found, tmp_path)
