"""Calls a statement makes without a function-call syntax: attribute notation and casts.

``t.f`` is ``f(t)`` when ``t`` has no column ``f``; a cast to a domain runs the domain's
CHECK functions; a cast of a value may run a user cast function. The classifier knows no
columns, so every user function of that name the path reaches is judged.
"""

from __future__ import annotations

from lockgate.gateway.postgres.classify import classify
from lockgate.gateway.postgres.scope import RelationCatalog, SessionScope

F = RelationCatalog.FUNCTIONS_MARK
D = RelationCatalog.DOMAIN_CHECKS_MARK
K = RelationCatalog.CAST_CALLS_MARK
W = RelationCatalog.WRITE_CALLS_MARK
CATALOG = RelationCatalog(
    [
        ("public", "plain"),
        ("public", "typed"),
        ("sales", "orders"),
        (F + "pg_catalog", "row_to_json"),
        (F + "pg_catalog", "lower"),
        (F + "public", "steal"),
        (F + "other", "steal"),
        (F + "public", "positive"),
        (F + "public", "plain_text"),
        (D + "public.positive_int", "public.positive"),
        (D + "public.wider", "public.positive"),  # over positive_int: its checks too
        (K + "pg_catalog.text", "public.plain_text"),
        (W + "public.typed", "public.positive"),
    ],
    ["public", "sales", "other", "pg_catalog"],
)


def accesses(sql: str, path: tuple[str, ...] = ("public",)) -> set[tuple[str, str]]:
    found: set[tuple[str, str]] = set()
    for stmt in classify(sql, SessionScope(path, CATALOG, user="gw")).statements:
        found |= {(a.action, a.obj) for a in stmt.accesses}
    return found


def test_a_function_in_attribute_notation_is_admin_on_every_schema_of_the_path_holding_it() -> None:
    read = ("read", "sales.orders")
    steal = ("admin", "function:public.steal")
    for sql in (
        "SELECT o.steal FROM sales.orders o",
        "SELECT (o).steal FROM sales.orders o",
        "SELECT orders.steal FROM sales.orders",
        "SELECT sales.orders.steal FROM sales.orders",
        "SELECT 1 FROM sales.orders o WHERE o.steal > 0",
    ):
        assert accesses(sql) == {read, steal}, sql
    assert accesses("SELECT o.steal FROM sales.orders o", ("other", "public")) == {
        read,
        ("admin", "function:other.steal"),
        steal,
    }


def test_columns_stars_and_built_ins_in_attribute_notation_are_no_calls() -> None:
    read = {("read", "sales.orders")}
    assert accesses("SELECT o.id, o.*, (o).*, o.row_to_json, o.lower FROM sales.orders o") == read
    assert accesses("SELECT (o).id FROM sales.orders o") == read
    assert accesses("SELECT steal FROM sales.orders") == read  # a bare name is a column


def test_a_cast_to_a_domain_is_admin_on_its_check_functions() -> None:
    positive = {("admin", "function:public.positive")}
    assert accesses("SELECT 1::positive_int") == positive
    assert accesses("SELECT CAST(1 AS public.positive_int)") == positive
    assert accesses("SELECT '1'::wider") == positive
    assert accesses("SELECT 1::other.positive_int") == set()  # no such domain there
    assert accesses("INSERT INTO typed VALUES (1)") == {("write", "public.typed"), *positive}


def test_a_cast_of_a_value_is_admin_on_the_user_cast_functions_into_its_type() -> None:
    plain_text = ("admin", "function:public.plain_text")
    assert accesses("SELECT p::text FROM plain p") == {("read", "public.plain"), plain_text}
    assert accesses("SELECT CAST(p AS pg_catalog.text) FROM plain p") == {
        ("read", "public.plain"),
        plain_text,
    }
    assert accesses("SELECT 'x'::text, 1::int") == set()  # a literal: the input function


def done(scope: SessionScope, sql: str) -> None:
    for stmt in classify(sql, scope).statements:
        scope.statement_done(stmt, stmt.command)


def test_a_temporary_view_is_judged_on_what_its_query_needs() -> None:
    scope = SessionScope(("public",), CATALOG, user="gw")
    done(scope, "CREATE TEMP VIEW scratch AS SELECT o.steal FROM sales.orders o")
    found = {
        (a.action, a.obj)
        for s in classify("SELECT * FROM scratch", scope).statements
        for a in s.accesses
    }
    assert found == {
        ("read", "pg_temp.scratch"),
        ("read", "sales.orders"),
        ("admin", "function:public.steal"),
    }


def test_a_trigger_on_a_temporary_table_is_judged_on_writes() -> None:
    scope = SessionScope(("public",), CATALOG, user="gw")
    done(scope, "CREATE TEMP TABLE scratch (v int)")
    done(scope, "CREATE TRIGGER t AFTER INSERT ON scratch FOR EACH ROW EXECUTE FUNCTION steal()")

    def accesses_in_session(sql: str) -> set[tuple[str, str]]:
        return {(a.action, a.obj) for s in classify(sql, scope).statements for a in s.accesses}

    assert accesses_in_session("INSERT INTO scratch VALUES (1)") == {
        ("write", "pg_temp.scratch"),
        ("admin", "function:public.steal"),
    }
    assert accesses_in_session("SELECT v FROM scratch") == {("read", "pg_temp.scratch")}
