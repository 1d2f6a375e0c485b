from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from lockgate.policy import Finding, PolicySet, cmd_lint, lint, load_policy_files
from lockgate.policy.globs import covers
from tests.policy.conftest import EXAMPLES, rule

Build = Callable[..., PolicySet]
KNOWN = {"orders-api", "orders-cosmos", "reports"}
FIN = "airflow:prod/finance_*/*"


def kinds(findings: list[Finding]) -> list[tuple[str, str | None, str]]:
    return [(f.kind, f.rule, f.severity) for f in findings]


def test_example_is_clean() -> None:
    ps = load_policy_files([EXAMPLES / "finance.yaml"], {"orders-api"})
    assert lint(ps, {"orders-api"}) == []
    code, text = cmd_lint(ps, {"orders-api"}, strict=True)
    assert code == 0 and "no problems found" in text


def test_narrow_rules_are_clean(build: Build) -> None:
    ps = build(
        [
            rule("a", principals=[FIN], actions=["read"], resources=["orders-api"]),
            rule(
                "b",
                principals=["airflow:prod/orders_load/*"],
                actions=["write"],
                resources=["orders-*"],
            ),
            rule("c", "deny", principals=["*"], actions=["admin"], resources=["*"]),
        ]
    )
    assert lint(ps, KNOWN) == []


@pytest.mark.parametrize("principal", ["*", "airflow:*", "airflow:*/*/*", "airflow:**"])
def test_overbroad_principal_is_error(build: Build, principal: str) -> None:
    ps = build([rule("wide", principals=[principal], actions=["write"], resources=["reports"])])
    assert kinds(lint(ps, KNOWN)) == [("overbroad", "wide", "error")]


def test_overbroad_resource_is_warning(build: Build) -> None:
    ps = build([rule("admin-all", principals=["airflow:prod/platform/*"], actions=["admin"])])
    found = lint(ps, KNOWN)
    assert kinds(found) == [("overbroad", "admin-all", "warning")]
    assert "grants admin on every resource" in found[0].message


def test_read_everywhere_is_not_overbroad(build: Build) -> None:
    ps = build([rule("read-all", actions=["read"])])
    assert lint(ps, KNOWN) == []


def test_deny_shadows_allow(build: Build) -> None:
    ps = build(
        (
            "a.yaml",
            [
                rule(
                    "fin-write",
                    principals=[FIN],
                    actions=["write"],
                    resources=["orders-api"],
                    objects=["/orders/*"],
                )
            ],
        ),
        (
            "b.yaml",
            [
                rule(
                    "no-writes",
                    "deny",
                    principals=["airflow:*"],
                    actions=["write", "admin"],
                    resources=["orders-*"],
                    objects=["/orders/**"],
                )
            ],
        ),
    )
    found = lint(ps, KNOWN)
    assert kinds(found) == [("shadowed", "fin-write", "warning")]
    assert "deny rule no-writes (b.yaml) covers it" in found[0].message
    assert found[0].file == "a.yaml"


def test_conditional_deny_does_not_shadow(build: Build) -> None:
    ps = build(
        [
            rule("fin", principals=[FIN], actions=["read"], resources=["reports"]),
            rule(
                "night",
                "deny",
                resources=["reports"],
                conditions={"time_window": {"start": "00:00", "end": "01:00"}},
            ),
        ]
    )
    assert lint(ps, KNOWN) == []


def test_partial_deny_does_not_shadow(build: Build) -> None:
    ps = build(
        [
            rule("fin", principals=[FIN], actions=["read"], resources=["orders-api"]),
            rule(
                "no-daily",
                "deny",
                principals=["airflow:prod/finance_daily/*"],
                resources=["orders-api"],
            ),
        ]
    )
    assert lint(ps, KNOWN) == []


def test_duplicate_allow_reported_once(build: Build) -> None:
    r = rule("one", principals=[FIN], actions=["read"], resources=["reports"])
    ps = build([r, {**r, "id": "two"}])
    found = lint(ps, KNOWN)
    assert kinds(found) == [("shadowed", "two", "warning")]
    assert "duplicates allow rule one" in found[0].message


def test_subset_allow(build: Build) -> None:
    ps = build(
        [
            rule(
                "daily",
                principals=["airflow:prod/finance_daily/*"],
                actions=["read"],
                resources=["orders-api"],
                objects=["/orders/1"],
            ),
            rule(
                "all-fin",
                principals=[FIN],
                actions=["read", "run"],
                resources=["orders-*"],
                objects=["/orders/**"],
            ),
        ]
    )
    found = lint(ps, KNOWN)
    assert kinds(found) == [("shadowed", "daily", "warning")]
    assert "is covered by allow rule all-fin" in found[0].message


def test_conditional_allow_does_not_cover_unconditional(build: Build) -> None:
    ps = build(
        [
            rule(
                "daily",
                principals=["airflow:prod/finance_daily/*"],
                actions=["read"],
                resources=["reports"],
            ),
            rule(
                "fin-day",
                principals=[FIN],
                actions=["read"],
                resources=["reports"],
                conditions={"time_window": {"start": "06:00", "end": "20:00"}},
            ),
        ]
    )
    assert lint(ps, KNOWN) == []


def test_unknown_resource(build: Build) -> None:
    ps = build(
        [rule("typo", principals=[FIN], actions=["read"], resources=["orderz-api", "report*"])]
    )
    found = lint(ps, KNOWN)
    assert kinds(found) == [("unknown-resource", "typo", "error")]
    assert "'orderz-api'" in found[0].message


def test_no_effect(build: Build) -> None:
    ps = build([rule("empty", principals=[FIN], actions=[], resources=["reports"], objects=[])])
    found = lint(ps, KNOWN)
    assert kinds(found) == [("no-effect", "empty", "warning")]
    assert "actions, objects" in found[0].message


def test_cmd_lint_exit_codes(build: Build) -> None:
    warn = build([rule("admin-all", principals=["airflow:prod/platform/*"], actions=["admin"])])
    code, text = cmd_lint(warn, KNOWN)
    assert code == 0 and "warning: team0.yaml: rule admin-all:" in text and "1 warning" in text
    assert cmd_lint(warn, KNOWN, strict=True)[0] == 1
    err = build([rule("typo", principals=[FIN], actions=["read"], resources=["nope"])])
    code, text = cmd_lint(err, KNOWN)
    assert code == 1 and "error: team0.yaml: rule typo:" in text


@pytest.mark.parametrize(
    ("wide", "narrow", "kind", "expected"),
    [
        ("*", "anything*", "name", True),
        ("airflow:prod/*", "airflow:prod/finance_*/*", "name", True),
        ("airflow:prod/finance_*/*", "airflow:prod/*", "name", False),
        ("a?c", "abc", "name", True),
        ("a?c", "a*c", "name", False),  # conservative: glob vs glob is only covered when obvious
        ("/orders/**", "/orders/*/items", "object", True),
        ("/orders/*", "/orders/1/items", "object", False),
        ("/orders/*", "/orders/**", "object", False),
        ("**", "/x/**", "object", True),
        ("/x/**", "*", "object", False),
    ],
)
def test_covers(wide: str, narrow: str, kind: str, expected: bool) -> None:
    assert covers(wide, narrow, kind) is expected  # type: ignore[arg-type]


def test_lint_on_files(tmp_path: Path) -> None:
    p = tmp_path / "bad.yaml"
    p.write_text(
        "rules:\n"
        "  - {id: everyone-writes, effect: allow, principals: ['*'], actions: ['*'],"
        " resources: ['*']}\n"
    )
    found = lint(load_policy_files([p]), KNOWN)
    assert ("overbroad", "everyone-writes", "error") in kinds(found)
    assert ("overbroad", "everyone-writes", "warning") in kinds(found)
