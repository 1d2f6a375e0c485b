"""The grant plan of dynamic PostgreSQL roles on catalog facts alone: a grant policy allows by
name is skipped when the server would carry it beyond policy (views, inheritance, functions,
operators, rules, triggers, foreign keys), with the engine's object names."""

from __future__ import annotations

import fnmatch
from collections.abc import Sequence

from lockgate.gateway.postgres.relation_catalog import RelationCatalog
from lockgate.gateway.postgres.role_grants import Allows, GrantFacts, plan_grants

VIEW, CHILD = RelationCatalog.VIEW_MARK, RelationCatalog.CHILD_MARK
CALLS = RelationCatalog.VIEW_CALLS_MARK
WRITE_CALLS, WRITE_TOUCHES = RelationCatalog.WRITE_CALLS_MARK, RelationCatalog.WRITE_TOUCHES_MARK


def _allows(*patterns: tuple[str, str]) -> Allows:
    def allows(action: str, obj: str) -> bool:
        return any(
            fnmatch.fnmatchcase(action, a) and fnmatch.fnmatchcase(obj, p) for a, p in patterns
        )

    return allows


def _plan(
    candidates: list[tuple[str, tuple[str, str]]],
    catalog_rows: Sequence[tuple[str, str | None]] = (),
    facts: Sequence[tuple[str, str, str, str, str]] = (),
    allow: tuple[tuple[str, str], ...] = (("read", "sales.*"), ("write", "sales.*")),
) -> tuple[set[tuple[str, tuple[str, str]]], dict[str, str]]:
    plan = plan_grants(
        candidates, RelationCatalog(catalog_rows), GrantFacts.of(facts), _allows(*allow)
    )
    return set(plan.grants), {f"{s.action} {s.obj}": s.reason for s in plan.skipped}


def test_a_view_is_granted_only_when_policy_allows_what_it_reads_through_views() -> None:
    rows = [
        (VIEW + "sales.v", "sales.orders"),
        (VIEW + "sales.outer_v", "sales.inner_v"),
        (VIEW + "sales.inner_v", "other.secret"),
    ]
    grants, skipped = _plan([("read", ("sales", "v")), ("read", ("sales", "outer_v"))], rows)
    assert grants == {("read", ("sales", "v"))}
    assert skipped == {
        "read sales.outer_v": "reaches other.secret, where policy does not allow read"
    }


def test_a_parent_needs_every_descendant_and_a_child_alone_is_fine() -> None:
    rows = [
        (CHILD + "sales.ledger", "sales.ledger_2025"),
        (CHILD + "sales.ledger_2025", "other.ledger_private"),
    ]
    grants, skipped = _plan(
        [
            ("read", ("sales", "ledger")),
            ("write", ("sales", "ledger")),
            ("read", ("sales", "ledger_2025")),
            ("read", ("other", "ledger_private")),
        ],
        rows,
        allow=(("read", "sales.*"), ("read", "other.ledger_private"), ("write", "sales.*")),
    )
    assert grants == {
        ("read", ("sales", "ledger")),
        ("read", ("sales", "ledger_2025")),
        ("read", ("other", "ledger_private")),
    }
    assert skipped == {
        "write sales.ledger": "reaches other.ledger_private, where policy does not allow write"
    }


def test_functions_and_operators_a_view_uses_must_be_the_engines_safe_built_ins() -> None:
    rows = [
        (CALLS + "sales.totals", "pg_catalog.count"),
        (CALLS + "sales.peek_view", "sales.peek"),
        (CALLS + "sales.files", "pg_catalog.pg_read_file"),
        (VIEW + "sales.outer", "sales.inner"),
        (CALLS + "sales.inner", "sales.peek"),
    ]
    facts = [
        ("operator", "sales", "totals", "pg_catalog", "="),
        ("operator", "sales", "odd", "sales", "==="),
    ]
    names = ["totals", "peek_view", "files", "odd", "outer"]
    grants, skipped = _plan([("read", ("sales", n)) for n in names], rows, facts)
    assert grants == {("read", ("sales", "totals"))}
    assert skipped == {
        "read sales.peek_view": "runs function:sales.peek, outside the allow-list",
        "read sales.files": "runs function:pg_catalog.pg_read_file, outside the allow-list",
        "read sales.odd": "sales.odd uses operator:sales.===",
        "read sales.outer": "runs function:sales.peek, outside the allow-list",
    }


def test_triggers_and_rules_judge_the_write_grant_not_the_read() -> None:
    rows = [
        (WRITE_TOUCHES + "sales.orders", "other.copies"),
        (WRITE_TOUCHES + "sales.logged", "sales.log"),
        (WRITE_CALLS + "sales.items", "sales.audit_items"),
        (VIEW + "sales.base_view", "sales.base"),
        (WRITE_CALLS + "sales.base", "sales.t"),
    ]
    facts = [("write-operator", "sales", "odd_rule", "sales", "===")]
    names = ("orders", "logged", "items", "base_view", "odd_rule")
    candidates = [(action, ("sales", name)) for name in names for action in ("read", "write")]
    grants, skipped = _plan(candidates, rows, facts)
    assert grants == {("read", ("sales", name)) for name in names} | {
        ("write", ("sales", "logged"))  # its rule writes only what policy allows writing
    }
    assert skipped == {
        "write sales.orders": "its rules write other.copies, where policy does not allow write",
        "write sales.items": "runs function:sales.audit_items, outside the allow-list",
        "write sales.base_view": "runs function:sales.t, outside the allow-list",
        "write sales.odd_rule": "sales.odd_rule uses operator:sales.===",
    }


def test_foreign_keys_need_read_on_what_is_referenced_and_the_key_action_on_referrers() -> None:
    facts = [
        ("references", "sales", "orders", "other", "customers"),
        ("referenced-by-write", "sales", "products", "other", "stock"),
        ("referenced-by-read", "sales", "regions", "other", "depots"),
        ("references", "sales", "lines", "sales", "products"),
    ]
    candidates = [("write", ("sales", name)) for name in ("orders", "products", "regions", "lines")]
    grants, skipped = _plan(candidates, facts=facts)
    assert grants == {("write", ("sales", "lines"))}
    assert skipped == {
        "write sales.orders": "sales.orders references other.customers, not readable by policy",
        "write sales.products": "other.stock references sales.products"
        " and policy does not allow write on it",
        "write sales.regions": "other.depots references sales.regions"
        " and policy does not allow read on it",
    }
    grants, _ = _plan(
        candidates,
        facts=facts,
        allow=(("*", "sales.*"), ("read", "other.*"), ("write", "other.stock")),
    )
    assert {name for _, (_, name) in grants} == {"orders", "products", "regions", "lines"}


def test_names_are_the_engines_escaped_objects() -> None:
    rows = [(VIEW + "sales.v", '"sales.x".t')]
    grants, skipped = _plan(
        [("read", ("sales.x", "t")), ("read", ("sales", "v")), ("read", ("sales", "x/y"))],
        rows,
        allow=(("read", "sales.*"),),
    )
    # "sales.x".t is object sales%2Ex.t: not inside sales.*, neither alone nor behind a view
    assert ("read", ("sales", "v")) not in grants
    assert skipped["read sales.v"] == "reaches sales%2Ex.t, where policy does not allow read"
    assert ("read", ("sales", "x/y")) in grants  # object sales.x%2Fy: inside sales.*
