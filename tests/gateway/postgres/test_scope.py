"""SessionScope follows search_path, temporary objects and PREPAREs as the server does."""

from __future__ import annotations

from lockgate.gateway.postgres.classify import Statement, classify
from lockgate.gateway.postgres.scope import RelationCatalog, SessionScope

CATALOG = RelationCatalog(
    [("public", "orders"), ("sales", "orders"), ("public", "t"), ("b", "t")],
    ["public", "sales", "b"],
)


def run(scope: SessionScope, sql: str, *, status: str | None = None, error_at: int = -1) -> None:
    """Complete ``sql``'s statements as the server would (an error stops the rest)."""
    statements: tuple[Statement, ...] = classify(sql, scope).statements
    for index, stmt in enumerate(statements):
        if index == error_at:
            scope.error()
            break
        scope.statement_done(stmt, stmt.command)
    if status is not None:
        scope.ready(status)


def test_set_takes_effect_when_it_completes() -> None:
    scope = SessionScope(("public",), CATALOG, user="gw")
    stmt = classify("SET search_path = sales", scope).statements[0]
    assert scope.search_paths == (("public",),)
    scope.statement_done(stmt, "SET")
    scope.ready("I")
    assert scope.search_paths == (("sales",),)


def test_user_and_temporary_schema_are_expanded() -> None:
    scope = SessionScope(("$user", "public", "pg_temp"), CATALOG, user="gw")
    assert scope.search_paths == (("gw", "public"),)
    run(scope, "CREATE TEMP TABLE x (a int)", status="I")
    assert scope.search_paths == (("gw", "public", "pg_temp"),)
    run(scope, "SET search_path = public", status="I")
    assert scope.search_paths == (("pg_temp", "public"),)


def test_set_local_ends_with_the_transaction() -> None:
    scope = SessionScope(("public",), CATALOG)
    run(scope, "BEGIN", status="T")
    run(scope, "SET LOCAL search_path = sales", status="T")
    assert scope.search_paths == (("sales",),)
    run(scope, "COMMIT", status="I")
    assert scope.search_paths == (("public",),)


def test_a_rolled_back_set_reverts_and_a_committed_one_stays() -> None:
    scope = SessionScope(("public",), CATALOG)
    run(scope, "BEGIN; SET search_path = sales", status="T")
    assert scope.search_paths == (("sales",),)
    run(scope, "ROLLBACK", status="I")
    assert scope.search_paths == (("public",),)
    run(scope, "BEGIN; SET search_path = sales; COMMIT", status="I")
    assert scope.search_paths == (("sales",),)


def test_commit_of_a_failed_block_is_a_rollback() -> None:
    scope = SessionScope(("public",), CATALOG)
    run(scope, "BEGIN; SET search_path = sales", status="T")
    scope.error()
    scope.ready("E")
    commit = classify("COMMIT", scope).statements[0]
    scope.statement_done(commit, "ROLLBACK")  # the server's tag for it
    scope.ready("I")
    assert scope.search_paths == (("public",),)


def test_an_error_undoes_the_sets_of_an_implicit_transaction() -> None:
    scope = SessionScope(("public",), CATALOG)
    run(scope, "SET search_path = sales; SELECT 1/0", error_at=1, status="I")
    assert scope.search_paths == (("public",),)
    run(scope, "SET search_path = sales; SELECT 1", status="I")
    assert scope.search_paths == (("sales",),)


def test_savepoints_restore_exactly() -> None:
    scope = SessionScope(("public",), CATALOG)
    run(scope, "BEGIN; SET search_path = a; SAVEPOINT s1; SET search_path = b", status="T")
    assert scope.search_paths == (("b",),)
    run(scope, "ROLLBACK TO SAVEPOINT s1", status="T")
    assert scope.search_paths == (("a",),)
    run(
        scope,
        "SET LOCAL search_path = c; SAVEPOINT s2; SET search_path = d; RELEASE s2",
        status="T",
    )
    assert scope.search_paths == (("d",),)
    run(scope, "ROLLBACK", status="I")
    assert scope.search_paths == (("public",),)


def test_an_unknown_savepoint_keeps_both_paths() -> None:
    scope = SessionScope(("public",), CATALOG)
    run(scope, "BEGIN; SET search_path = sales", status="T")
    scope.statement_done(classify("ROLLBACK TO nosuch", scope).statements[0], "ROLLBACK")
    assert set(scope.search_paths) == {("sales",), ("public",)}


def test_commit_and_chain_keeps_a_block_open() -> None:
    scope = SessionScope(("public",), CATALOG)
    run(scope, "BEGIN; SET search_path = sales; COMMIT AND CHAIN", status="T")
    run(scope, "SET search_path = b; ROLLBACK", status="I")
    assert scope.search_paths == (("sales",),)


def test_reset_and_discard_return_to_the_initial_path() -> None:
    scope = SessionScope(("public",), CATALOG)
    run(scope, "SET search_path = sales", status="I")
    run(scope, "RESET search_path", status="I")
    assert scope.search_paths == (("public",),)
    run(scope, "SET search_path = sales; PREPARE p AS SELECT 1", status="I")
    assert "p" in scope.prepared
    run(scope, "DISCARD ALL", status="I")
    assert scope.search_paths == (("public",),)
    assert scope.prepared == {}


def test_prepared_names_come_and_go() -> None:
    scope = SessionScope(("public",), CATALOG)
    run(scope, "PREPARE a AS SELECT * FROM orders; PREPARE b AS SELECT 1", status="I")
    assert dict(scope.prepared) == {"a": "SELECT * FROM orders", "b": "SELECT 1"}
    run(scope, "DEALLOCATE a", status="I")
    assert set(scope.prepared) == {"b"}
    run(scope, "DEALLOCATE ALL", status="I")
    assert scope.prepared == {}


def test_key_changes_with_everything_classification_depends_on() -> None:
    scope = SessionScope(("public",), CATALOG)
    keys = {scope.key()}
    run(scope, "SET search_path = sales", status="I")
    keys.add(scope.key())
    run(scope, "PREPARE p AS SELECT 1", status="I")
    keys.add(scope.key())
    run(scope, "CREATE TABLE sales.n (a int)", status="I")
    keys.add(scope.key())
    scope.set_catalog(RelationCatalog([("public", "orders")]))
    keys.add(scope.key())
    assert len(keys) == 5
    other = SessionScope(("public",), CATALOG)
    assert other.key() == SessionScope(("public",), CATALOG).key()  # shareable cache entries


def test_the_sessions_own_ddl_widens_resolution() -> None:
    scope = SessionScope(("public", "b"), CATALOG)
    # dropped here: the server would now find b.t, so both are checked
    run(scope, "DROP TABLE t", status="I")
    (select,) = classify("SELECT * FROM t", scope).statements
    assert {a.obj for a in select.accesses} == {"public.t", "b.t"}
    # created here: it may exist now
    run(scope, "CREATE TABLE fresh (a int)", status="I")
    (select,) = classify("SELECT * FROM fresh", scope).statements
    assert {a.obj for a in select.accesses} == {"public.fresh"}
    # a schema created here may receive new tables
    run(scope, "CREATE SCHEMA novel; SET search_path = novel, public", status="I")
    (create,) = classify("CREATE TABLE y (a int)", scope).statements
    assert {a.obj for a in create.accesses} == {"novel.y", "public.y"}


def test_the_catalog_query_lists_relations_and_schemas() -> None:
    catalog = RelationCatalog([("public", "orders"), ("empty", None)])
    assert catalog.schemas_of("orders") == frozenset({"public"})
    assert catalog.schema("empty") == "yes"
    assert catalog.schema("nosuch") == "no"
    assert "pg_class" in RelationCatalog.QUERY and "pg_namespace" in RelationCatalog.QUERY


class _Outer:
    """A flow-like scope: a settled SessionScope as ``base`` plus paths in flight."""

    def __init__(self, base: SessionScope, extra: tuple[str, ...]) -> None:
        self.base = base
        self.search_paths = (*base.search_paths, extra)
        self.catalog = base.catalog
        self.prepared = {"proto": "SELECT * FROM sales.orders", **base.prepared}


def objects(sql: str, scope: object) -> list[set[str]]:
    return [{a.obj for a in s.accesses} for s in classify(sql, scope).statements]  # type: ignore[arg-type]


def test_a_text_over_a_wrapping_scope_keeps_in_flight_paths_until_a_set_fixes_the_path() -> None:
    base = SessionScope(("public",), CATALOG)
    outer = _Outer(base, ("sales",))
    assert objects(
        "SELECT * FROM orders; SET search_path = sales; SELECT * FROM orders", outer
    ) == [
        {"public.orders", "sales.orders"},
        set(),
        {"sales.orders"},
    ]
    assert objects("SET search_path = sales; RESET search_path; SELECT * FROM orders", outer)[
        2
    ] == {"public.orders"}
    # a ROLLBACK may return to any path the outer scope knows
    assert objects("SET search_path = b; ROLLBACK; SELECT * FROM orders", outer)[2] == {
        "public.orders",
        "sales.orders",
    }
    # protocol-level names the outer scope shows can be EXECUTEd; DEALLOCATE hides them
    assert objects("EXECUTE proto", outer) == [{"sales.orders"}]
    (_, refused) = (None, None)
    try:
        classify("DEALLOCATE proto; EXECUTE proto", outer)  # type: ignore[arg-type]
    except Exception as exc:
        refused = exc
    assert getattr(refused, "reason", "") == "unknown_prepared_statement"


def test_a_text_over_an_unknown_scope_refuses_what_follows_a_path_change() -> None:
    class Plain:
        search_paths = (("public",),)
        catalog = CATALOG
        prepared: dict[str, str] = {}

    assert objects("BEGIN; SELECT * FROM orders; COMMIT", Plain()) == [
        set(),
        {"public.orders"},
        set(),
    ]
    try:
        classify("SET search_path = sales; SELECT * FROM orders", Plain())  # type: ignore[arg-type]
        raise AssertionError("not refused")
    except Exception as exc:
        assert getattr(exc, "reason", "") == "ambiguous_search_path"


def test_a_path_moved_out_of_sight_takes_every_schema_holding_the_name() -> None:
    scope = SessionScope(("public",), CATALOG)
    # set_config or a function may have moved the path: every holder is checked
    run(scope, "SELECT my_function()", status="I")
    (select,) = classify("SELECT * FROM orders", scope).statements
    assert {a.obj for a in select.accesses} == {"public.orders", "sales.orders"}
    try:
        classify("CREATE TABLE fresh (a int)", scope)
        raise AssertionError("not refused")
    except Exception as exc:
        assert getattr(exc, "reason", "") == "ambiguous_search_path"
    # a SET puts the path back in sight
    run(scope, "SET search_path = sales", status="I")
    (select,) = classify("SELECT * FROM orders", scope).statements
    assert {a.obj for a in select.accesses} == {"sales.orders"}
    # as do DO blocks and CALL; allow-listed functions do not
    run(scope, "DO $$ BEGIN PERFORM set_config('search_path', 'public', false); END $$", status="I")
    assert ("*", "sales") in scope.search_paths
    run(scope, "RESET search_path; SELECT lower('x')", status="I")
    assert scope.search_paths == (("public",),)


def test_a_path_moved_out_of_sight_without_a_catalog_is_refused() -> None:
    scope = SessionScope(("public",), None)
    run(scope, "CALL proc()", status="I")
    try:
        classify("SELECT * FROM orders", scope)
        raise AssertionError("not refused")
    except Exception as exc:
        assert getattr(exc, "reason", "") == "ambiguous_search_path"
    # a SET rolled back returns to the path out of sight
    run(scope, "BEGIN; SET search_path = sales; ROLLBACK", status="I")
    assert scope.search_paths == (("*", "public"),)


def test_a_fetch_is_judged_on_what_its_cursor_reads() -> None:
    scope = SessionScope(("public",), CATALOG)
    run(scope, "BEGIN; DECLARE c CURSOR FOR SELECT * FROM sales.orders", status="T")
    (fetch,) = classify("FETCH 10 FROM c", scope).statements
    assert {(a.action, a.obj) for a in fetch.accesses} == {("read", "sales.orders")}
    (move,) = classify("MOVE 1 IN c", scope).statements
    assert move.command == "MOVE" and {a.obj for a in move.accesses} == {"sales.orders"}
    run(scope, "CLOSE c", status="T")
    try:
        classify("FETCH c", scope)
        raise AssertionError("not refused")
    except Exception as exc:
        assert getattr(exc, "reason", "") == "unknown_cursor"
    # in one text: the cursor declared first is known to the FETCH after it
    (_declare, fetch) = classify(
        "DECLARE d CURSOR WITH HOLD FOR SELECT * FROM orders; FETCH ALL IN d", scope
    ).statements
    assert {a.obj for a in fetch.accesses} == {"public.orders"}
    run(scope, "DECLARE d CURSOR WITH HOLD FOR SELECT 1; CLOSE ALL", status="T")
    assert scope.cursors == {}


def test_a_dropped_or_renamed_schema_no_longer_hides_what_follows_it_in_the_path() -> None:
    scope = SessionScope(("sales", "public"), CATALOG)
    run(scope, "DROP SCHEMA sales CASCADE", status="I")
    (select,) = classify("SELECT * FROM orders", scope).statements
    assert {a.obj for a in select.accesses} == {"sales.orders", "public.orders"}
    renamed = SessionScope(("s2", "public"), CATALOG)
    run(renamed, "ALTER SCHEMA sales RENAME TO s2", status="I")
    (select,) = classify("SELECT * FROM orders", renamed).statements
    assert {a.obj for a in select.accesses} == {"s2.orders", "public.orders"}
