"""Shadow policy files (``mode: shadow``): loaded beside the enforced set, never into it; a
broken one leaves enforcement untouched."""

from __future__ import annotations

from pathlib import Path

import pytest

from lockgate.errors import ConfigError
from lockgate.policy import PolicyStore, Request, load_policy_files, load_policy_texts

P = "airflow:prod/finance_daily/load"
ENFORCED = """rules:
  - id: finance-orders
    effect: allow
    principals: ["airflow:prod/finance_*/*"]
    actions: [read, write]
    resources: [orders-api]
"""
# Tightened: the same rule id, read only; and a new deny on /orders/secret/**.
SHADOW = """mode: shadow
rules:
  - id: finance-orders
    effect: allow
    principals: ["airflow:prod/finance_*/*"]
    actions: [read]
    resources: [orders-api]
  - id: no-secrets
    effect: deny
    principals: ["*"]
    actions: ["*"]
    resources: [orders-api]
    objects: ["/secret/**"]
"""


def req(action: str, obj: str = "/orders/1") -> Request:
    return Request(P, action, "orders-api", obj)


def test_shadow_rules_never_enter_the_enforced_set() -> None:
    loaded = load_policy_texts([("team.yaml", ENFORCED), ("team.shadow.yaml", SHADOW)])
    assert loaded.enforced.decide(req("write")).allowed
    assert loaded.enforced.decide(req("read", "/secret/x")).allowed
    assert loaded.enforced.sources == ("team.yaml",)
    assert loaded.shadow is not None and loaded.shadow_error is None
    # same id replaced in place, new rule added
    assert [r.id for r in loaded.shadow] == ["finance-orders", "no-secrets"]
    assert not loaded.shadow.decide(req("write")).allowed
    assert loaded.shadow.decide(req("read")).allowed
    denied = loaded.shadow.decide(req("read", "/secret/x"))
    assert (denied.allowed, denied.rule) == (False, "no-secrets")


def test_without_shadow_files_there_is_no_shadow_set() -> None:
    loaded = load_policy_texts([("team.yaml", ENFORCED)])
    assert loaded.shadow is None and loaded.shadow_error is None


def test_shadow_rules_keep_enforced_rules_they_do_not_name() -> None:
    only_deny = "mode: shadow\nrules:\n" + SHADOW.split("  - id: no-secrets\n")[1]
    only_deny = only_deny.replace("rules:\n", "rules:\n  - id: no-secrets\n")
    loaded = load_policy_texts([("team.yaml", ENFORCED), ("s.yaml", only_deny)])
    assert loaded.shadow is not None
    assert [r.id for r in loaded.shadow] == ["finance-orders", "no-secrets"]
    assert loaded.shadow.decide(req("write")).allowed


@pytest.mark.parametrize(
    ("broken", "where"),
    [
        (SHADOW.replace("effect: deny", "effect: deny\n    colour: red"), "s.yaml:10"),
        (SHADOW + "  - [unclosed\n", "s.yaml"),
        (SHADOW + "quotas:\n  - id: q\n    rate: 1/s\n", "s.yaml"),
        (SHADOW.replace("id: no-secrets", "id: finance-orders"), "s.yaml"),
        (SHADOW.replace("[orders-api]\n    objects", "[nowhere]\n    objects"), "s.yaml"),
    ],
)
def test_a_broken_shadow_file_leaves_enforcement_alone(broken: str, where: str) -> None:
    loaded = load_policy_texts([("team.yaml", ENFORCED), ("s.yaml", broken)], {"orders-api"})
    assert loaded.enforced.decide(req("write")).allowed
    assert loaded.shadow is None
    assert loaded.shadow_error is not None and loaded.shadow_error.startswith(where)


def test_a_broken_enforced_file_is_still_an_error() -> None:
    with pytest.raises(ConfigError, match="mode"):
        load_policy_texts([("team.yaml", "mode: shadw\n" + ENFORCED)])


def test_load_policy_files_and_the_cli_see_enforced_rules_only(tmp_path: Path) -> None:
    (tmp_path / "a.yaml").write_text(ENFORCED)
    (tmp_path / "b.yaml").write_text(SHADOW)
    loaded = load_policy_files([tmp_path / "a.yaml", tmp_path / "b.yaml"])
    assert [r.id for r in loaded] == ["finance-orders"] and loaded.decide(req("write")).allowed


def test_store_follows_a_shadow_file_and_survives_it_breaking(tmp_path: Path) -> None:
    enforced, shadow = tmp_path / "team.yaml", tmp_path / "team.shadow.yaml"
    enforced.write_text(ENFORCED)
    store = PolicyStore(lambda: sorted(tmp_path.glob("*.yaml")))
    assert store.shadow is None
    shadow.write_text(SHADOW)
    assert store.reload_if_changed()
    assert store.shadow is not None and not store.shadow.decide(req("write")).allowed
    assert store.current.decide(req("write")).allowed
    shadow.write_text(SHADOW.replace("effect: deny", "effect: maybe"))
    assert store.reload_if_changed()  # the enforced set reloads; the shadow set is off
    assert store.last_error is None and store.current.decide(req("write")).allowed
    assert store.shadow is None
    assert store.shadow_error is not None and "team.shadow.yaml" in store.shadow_error
