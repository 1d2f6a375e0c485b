from __future__ import annotations

from pathlib import Path

import pytest

from lockgate.errors import ConfigError
from lockgate.policy import load_policy_files
from tests.policy.conftest import EXAMPLES

GOOD_RULE = """
  - id: finance-read
    effect: allow
    principals: ["airflow:prod/finance_*/*"]
    actions: [read]
    resources: [orders-api]
"""


def write(tmp_path: Path, name: str, text: str) -> Path:
    p = tmp_path / name
    p.write_text(text)
    return p


def load_error(tmp_path: Path, text: str, known: set[str] | None = None) -> str:
    p = write(tmp_path, "finance.yaml", text)
    with pytest.raises(ConfigError) as info:
        load_policy_files([p], known)
    return str(info.value)


def test_example_loads() -> None:
    ps = load_policy_files([EXAMPLES / "finance.yaml"], {"orders-api"})
    assert [r.id for r in ps] == [
        "finance-read-orders",
        "orders-load-write",
        "orders-no-admin",
        "finance-no-refunds-write",
    ]
    assert ps.rule("finance-read-orders").max_token_ttl == 900  # "15m"


def test_bad_action_names_file_index_rule_and_field(tmp_path: Path) -> None:
    text = "rules:" + GOOD_RULE * 0 + GOOD_RULE.replace("[read]", "[delete]")
    msg = load_error(tmp_path, text)
    where = f"{tmp_path / 'finance.yaml'}:5: rules[0].actions[0] (rule finance-read)"
    assert msg.startswith(where), msg
    assert "expected one of read, write, admin, run, * (got 'delete')" in msg


def test_error_points_at_the_right_rule_index(tmp_path: Path) -> None:
    second = GOOD_RULE.replace("finance-read", "finance-write").replace(
        "effect: allow", "effect: maybe"
    )
    msg = load_error(tmp_path, "rules:" + GOOD_RULE + second)
    assert "rules[1].effect (rule finance-write): expected one of allow, deny (got 'maybe')" in msg


def test_unknown_field_is_an_error(tmp_path: Path) -> None:
    msg = load_error(tmp_path, "rules:" + GOOD_RULE + "    principal: x\n")
    assert "rules[0].principal (rule finance-read): unknown field" in msg
    assert "principals" in msg  # the message lists what is allowed


def test_unknown_condition_is_an_error(tmp_path: Path) -> None:
    msg = load_error(tmp_path, "rules:" + GOOD_RULE + "    conditions: {max_ttl: 60}\n")
    assert "rules[0].conditions.max_ttl (rule finance-read): unknown field" in msg
    assert "max_token_ttl" in msg


def test_missing_field(tmp_path: Path) -> None:
    msg = load_error(tmp_path, "rules:" + GOOD_RULE.replace("    resources: [orders-api]\n", ""))
    assert "rules[0].resources (rule finance-read): required field is missing" in msg


def test_string_instead_of_list(tmp_path: Path) -> None:
    msg = load_error(tmp_path, "rules:" + GOOD_RULE.replace("[orders-api]", "orders-api"))
    assert "rules[0].resources (rule finance-read): expected a list (got 'orders-api')" in msg


def test_unquoted_time_gets_a_hint(tmp_path: Path) -> None:
    # YAML 1.1 reads an unquoted 20:00 as the base-60 number 1200.
    text = "rules:" + GOOD_RULE + "    conditions: {time_window: {start: '06:00', end: 20:00}}\n"
    msg = load_error(tmp_path, text)
    assert "rules[0].conditions.time_window.end" in msg
    assert "quoted" in msg


def test_equal_window_bounds_rejected(tmp_path: Path) -> None:
    text = "rules:" + GOOD_RULE + "    conditions: {time_window: {start: '06:00', end: '06:00'}}\n"
    assert "start and end must differ" in load_error(tmp_path, text)


@pytest.mark.parametrize(
    ("ttl", "seconds"), [("900", 900), ("15m", 900), ("1h30m", 5400), ("90s", 90), ("60", 60)]
)
def test_durations(tmp_path: Path, ttl: str, seconds: int) -> None:
    p = write(
        tmp_path, "f.yaml", "rules:" + GOOD_RULE + f"    conditions: {{max_token_ttl: {ttl}}}\n"
    )
    assert load_policy_files([p]).rule("finance-read").max_token_ttl == seconds


@pytest.mark.parametrize("ttl", ["0", "-5", "soon", "true"])
def test_bad_durations(tmp_path: Path, ttl: str) -> None:
    msg = load_error(tmp_path, "rules:" + GOOD_RULE + f"    conditions: {{max_token_ttl: {ttl}}}\n")
    assert "rules[0].conditions.max_token_ttl (rule finance-read)" in msg


def test_duplicate_ids_across_files_name_both(tmp_path: Path) -> None:
    a = write(tmp_path, "a.yaml", "rules:" + GOOD_RULE)
    b = write(tmp_path, "b.yaml", "rules:" + GOOD_RULE)
    with pytest.raises(ConfigError) as info:
        load_policy_files([a, b])
    msg = str(info.value)
    assert str(a) in msg and str(b) in msg and "finance-read" in msg


def test_duplicate_yaml_key_is_an_error(tmp_path: Path) -> None:
    msg = load_error(tmp_path, "rules:" + GOOD_RULE + "    effect: deny\n")
    assert "duplicate key 'effect'" in msg and "finance.yaml" in msg and "line" in msg


def test_unknown_literal_resource_with_catalog(tmp_path: Path) -> None:
    msg = load_error(tmp_path, "rules:" + GOOD_RULE, known={"orders-cosmos"})
    assert "rules[0].resources[0] (rule finance-read): unknown resource 'orders-api'" in msg


def test_glob_resource_not_checked_by_loader(tmp_path: Path) -> None:
    p = write(tmp_path, "f.yaml", "rules:" + GOOD_RULE.replace("[orders-api]", "['orders-*']"))
    assert len(load_policy_files([p], {"customers"})) == 1


@pytest.mark.parametrize("text", ["", "- a\n- b\n", "rules: nope\n"])
def test_wrong_top_level(tmp_path: Path, text: str) -> None:
    msg = load_error(tmp_path, text)
    assert "finance.yaml" in msg and ("rules" in msg)


def test_bad_yaml_names_line(tmp_path: Path) -> None:
    msg = load_error(tmp_path, "rules:\n  - id: [unclosed\n")
    assert "finance.yaml: line" in msg and "not valid YAML" in msg


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"nope\.yaml: cannot read"):
        load_policy_files([tmp_path / "nope.yaml"])


def test_empty_pattern_rejected(tmp_path: Path) -> None:
    msg = load_error(tmp_path, "rules:" + GOOD_RULE.replace("[orders-api]", "['']"))
    assert "rules[0].resources (rule finance-read): expected a non-empty pattern" in msg


def test_deny_with_max_token_ttl_refused(tmp_path: Path) -> None:
    """A deny's max_token_ttl said when it denies: tokens at most that long. A task holding a
    longer-lived token escaped the deny and was allowed by any matching allow; ambiguous
    conditions on a deny are refused at load, never guessed."""
    deny = """
  - id: no-long-reads
    effect: deny
    principals: ["airflow:prod/*"]
    actions: [read]
    resources: [orders-api]
    conditions: {max_token_ttl: 15m}
"""
    msg = load_error(tmp_path, "rules:" + GOOD_RULE + deny)
    assert "finance.yaml:8: rules[1] (rule no-long-reads):" in msg, msg
    assert "max_token_ttl" in msg and "deny" in msg


def test_unknown_field_names_its_line(tmp_path: Path) -> None:
    """A typo'd field fails with the file, the line it is on and the field path."""
    text = "rules:" + GOOD_RULE + "    objets: ['/orders/**']\n"
    msg = load_error(tmp_path, text)
    assert "finance.yaml:7: rules[0].objets (rule finance-read): unknown field" in msg, msg
