# ruff: noqa: E501, S608  (tables of statements, one a line)
"""Classification of PostgreSQL statements: actions, objects, effects, refusals.

The oracle (test_classify_oracle.py) checks reads and writes against the real server; these
pin the rest: admin statements, function rules, session effects, adversarial texts.
"""

from __future__ import annotations

import pytest

from lockgate.gateway.postgres import classify as classify_module
from lockgate.gateway.postgres.classify import (
    MAX_STATEMENTS_PER_TEXT,
    MAX_TEXT_CHARS,
    Access,
    Effect,
    Unplaceable,
    classify,
)
from lockgate.gateway.postgres.scope import RelationCatalog, SessionScope

CATALOG = RelationCatalog(
    [
        ("public", "orders"),
        ("public", "customers"),
        ("public", "Orders"),
        ("public", "select"),
        ("public", "order_seq"),
        ("sales", "orders"),
        ("sales", "returns"),
        ("pg_catalog", "pg_class"),
        ("pg_catalog", "pg_tables"),
        ("information_schema", "tables"),
    ],
    ["public", "sales", "pg_catalog", "information_schema", "empty"],
)


def scope(path: tuple[str, ...] = ("public",), catalog: RelationCatalog | None = CATALOG):
    return SessionScope(path, catalog, user="gw")


def accesses(sql: str, path: tuple[str, ...] = ("public",), **kw: object) -> set[tuple[str, str]]:
    found: set[tuple[str, str]] = set()
    for stmt in classify(sql, scope(path, **kw)).statements:  # type: ignore[arg-type]
        found |= {(a.action, a.obj) for a in stmt.accesses}
    return found


def refused(sql: str, path: tuple[str, ...] = ("public",)) -> str:
    with pytest.raises(Unplaceable) as info:
        classify(sql, scope(path))
    return info.value.reason


R, W, A = "read", "write", "admin"


@pytest.mark.parametrize(
    ("sql", "expected"),
    [
        ("SELECT 1", set()),
        ("SELECT * FROM orders", {(R, "public.orders")}),
        ("SELECT * FROM pg_class", {(R, "pg_catalog.pg_class")}),
        ("SELECT * FROM information_schema.tables", {(R, "information_schema.tables")}),
        ('SELECT * FROM "Orders"', {(R, "public.Orders")}),
        ("SELECT * FROM public . orders", {(R, "public.orders")}),
        ('SELECT * FROM "select"', {(R, "public.select")}),
        ("SELECT * FROM ONLY orders", {(R, "public.orders")}),
        ("SELECT * FROM orders *", {(R, "public.orders")}),
        (
            "WITH x AS (DELETE FROM orders RETURNING *) SELECT * FROM x",
            {(W, "public.orders"), (R, "public.orders")},
        ),
        ("SELECT * FROM orders FOR UPDATE", {(R, "public.orders"), (W, "public.orders")}),
        (
            "INSERT INTO orders VALUES (1) ON CONFLICT (id) DO UPDATE SET a = 1",
            {(W, "public.orders"), (R, "public.orders")},
        ),
        ("TRUNCATE orders", {(A, "public.orders")}),
        ("LOCK TABLE orders", {(W, "public.orders")}),
        ("COPY orders FROM STDIN", {(W, "public.orders")}),
        ("COPY orders TO STDOUT", {(R, "public.orders")}),
        ("COPY orders FROM '/etc/passwd'", {(A, "public.orders"), (A, "database")}),
        ("COPY (SELECT 1) TO PROGRAM 'id'", {(A, "database")}),
        ("EXPLAIN ANALYZE DELETE FROM orders", {(W, "public.orders")}),
        ("CREATE TABLE t (a int)", {(A, "public.t")}),
        (
            "CREATE TABLE sales.t (a int REFERENCES customers)",
            {(A, "sales.t"), (A, "public.customers")},
        ),
        ("CREATE TEMP TABLE t (a int)", {(A, "pg_temp.t")}),
        ("CREATE TABLE t AS SELECT * FROM orders", {(A, "public.t"), (R, "public.orders")}),
        ("SELECT * INTO t FROM orders", {(A, "public.t"), (R, "public.orders")}),
        ("CREATE VIEW v AS SELECT * FROM sales.returns", {(A, "public.v"), (R, "sales.returns")}),
        ("CREATE MATERIALIZED VIEW mv AS SELECT 1", {(A, "public.mv")}),
        ("REFRESH MATERIALIZED VIEW orders", {(A, "public.orders")}),
        ("ALTER TABLE orders OWNER TO bob", {(A, "public.orders")}),
        (
            "ALTER TABLE orders ADD COLUMN x int DEFAULT f()",
            {(A, "public.orders"), (A, "function:pg_catalog.f"), (A, "function:public.f")},
        ),
        ("DROP TABLE orders", {(A, "public.orders")}),
        ("DROP TABLE IF EXISTS nowhere", {(A, "public.nowhere")}),
        ("DROP VIEW sales.v", {(A, "sales.v")}),
        ("DROP SCHEMA sales CASCADE", {(A, "schema:sales")}),
        ("CREATE SCHEMA s", {(A, "schema:s")}),
        ("DROP FUNCTION sales.f(int)", {(A, "function:sales.f")}),
        (
            "CREATE FUNCTION f() RETURNS int LANGUAGE sql SECURITY DEFINER AS 'SELECT 1'",
            {(A, "function:public.f")},
        ),
        ("CREATE INDEX ON orders (id)", {(A, "public.orders")}),
        (
            "CREATE TRIGGER tr AFTER INSERT ON orders FOR EACH ROW EXECUTE FUNCTION sales.trg()",
            {(A, "public.orders"), (A, "function:sales.trg")},
        ),
        (
            "CREATE RULE r AS ON INSERT TO orders DO ALSO DELETE FROM sales.returns",
            {(A, "public.orders"), (W, "sales.returns")},
        ),
        ("COMMENT ON TABLE orders IS 'x'", {(A, "public.orders")}),
        ("COMMENT ON COLUMN orders.id IS 'x'", {(A, "public.orders")}),
        ("SECURITY LABEL ON TABLE orders IS 'x'", {(A, "public.orders")}),
        ("GRANT SELECT ON orders TO bob", {(A, "public.orders")}),
        ("GRANT ALL ON ALL TABLES IN SCHEMA sales TO bob", {(A, "schema:sales")}),
        ("REVOKE USAGE ON SCHEMA sales FROM bob", {(A, "schema:sales")}),
        ("GRANT admin TO bob", {(A, "role:admin")}),
        ("CREATE ROLE bob LOGIN PASSWORD 'x'", {(A, "role:bob")}),
        ("ALTER ROLE bob SUPERUSER", {(A, "role:bob")}),
        ("DROP ROLE bob, carol", {(A, "role:bob"), (A, "role:carol")}),
        ("SET ROLE admin", {(A, "role:admin")}),
        ("RESET ROLE", {(A, "role:default")}),
        ("SET SESSION AUTHORIZATION bob", {(A, "role:bob")}),
        ("ALTER SYSTEM SET work_mem = '1GB'", {(A, "setting:work_mem")}),
        ("DO $$ BEGIN EXECUTE 'DROP TABLE orders'; END $$", {(A, "database")}),
        ("LISTEN jobs", {(A, "channel:jobs")}),
        ("NOTIFY jobs, 'x'", {(A, "channel:jobs")}),
        ("UNLISTEN *", {(A, "channel:*")}),
        ("LOAD 'plugin'", {(A, "database")}),
        ("CHECKPOINT", {(A, "database")}),
        ("CREATE DATABASE x", {(A, "database")}),
        ("ALTER DATABASE x SET work_mem = 1", {(A, "database")}),
        ("CREATE EXTENSION dblink", {(A, "extension:dblink")}),
        ("VACUUM orders", {(A, "public.orders")}),
        ("ANALYZE", {(A, "database")}),
        ("REINDEX TABLE orders", {(A, "public.orders")}),
        ("CLUSTER orders USING orders_pkey", {(A, "public.orders")}),
        ("CALL sales.proc(1)", {(A, "function:sales.proc")}),
        ("CALL proc()", {(A, "function:pg_catalog.proc"), (A, "function:public.proc")}),
        ("SET work_mem = '64MB'", set()),
        ("SET application_name = 'dag'", set()),
        ("SET TIME ZONE 'UTC'", set()),
        ("SET client_encoding = 'UTF8'", set()),
        ("SET standard_conforming_strings = on", set()),
        ("RESET client_encoding", set()),
        ("SET standard_conforming_strings TO DEFAULT", set()),
        ("SET session_replication_role = replica", {(A, "setting:session_replication_role")}),
        ("SHOW ALL", set()),
        ("BEGIN; COMMIT", set()),
        ("SET TRANSACTION ISOLATION LEVEL SERIALIZABLE", set()),
    ],
)
def test_actions_and_objects(sql: str, expected: set[tuple[str, str]]) -> None:
    assert accesses(sql) == expected


@pytest.mark.parametrize(
    ("sql", "expected"),
    [
        ("SELECT pg_read_file('/etc/passwd')", {(A, "function:pg_catalog.pg_read_file")}),
        ("SELECT pg_catalog.pg_read_file('x')", {(A, "function:pg_catalog.pg_read_file")}),
        ("SELECT public.pg_read_file('x')", {(A, "function:public.pg_read_file")}),
        ("SELECT lo_import('/etc/passwd')", {(A, "function:pg_catalog.lo_import")}),
        ("SELECT lo_export(1, '/tmp/x')", {(A, "function:pg_catalog.lo_export")}),
        ("SELECT dblink_exec('host=x', 'DROP TABLE t')", {(A, "function:pg_catalog.dblink_exec")}),
        ("SELECT pg_terminate_backend(1)", {(A, "function:pg_catalog.pg_terminate_backend")}),
        (
            "SELECT set_config('search_path', 'sales', false)",
            {(A, "function:pg_catalog.set_config")},
        ),
        (
            "SELECT query_to_xml('select * from orders', true, true, '')",
            {(A, "function:pg_catalog.query_to_xml")},
        ),
        (
            "SELECT pg_logical_emit_message(true, 'x', 'y')",
            {(A, "function:pg_catalog.pg_logical_emit_message")},
        ),
        ("SELECT * FROM pg_ls_dir('.')", {(A, "function:pg_catalog.pg_ls_dir")}),
        ("SELECT nextval('order_seq')", {(W, "public.order_seq")}),
        ("SELECT nextval('sales.s'::regclass)", {(W, "sales.s")}),
        ("SELECT currval('order_seq')", {(R, "public.order_seq")}),
        (
            "SELECT nextval(name) FROM orders",
            {(A, "function:pg_catalog.nextval"), (R, "public.orders")},
        ),
        ("SELECT count(*), max(1), lower('A'), now(), coalesce(1, 2)", set()),
        ("SELECT pg_catalog.lower('A')", set()),
        ("SELECT sales.lower('A')", {(A, "function:sales.lower")}),
        ("SELECT pg_sleep(1), pg_advisory_lock(1), current_setting('x')", set()),
        ("SELECT myfunc()", {(A, "function:pg_catalog.myfunc"), (A, "function:public.myfunc")}),
        (
            "SELECT * FROM myfunc() AS f",
            {(A, "function:pg_catalog.myfunc"), (A, "function:public.myfunc")},
        ),
        (
            "SELECT sum(myagg(x)) OVER () FROM orders",
            {(R, "public.orders"), (A, "function:pg_catalog.myagg"), (A, "function:public.myagg")},
        ),
        ("SELECT 1 OPERATOR(sales.+) 2", {(A, "operator:sales.+")}),
        ("SELECT 1 + 2, 'a' || 'b', 1 BETWEEN 0 AND 2, 'a' LIKE 'b'", set()),
        (
            "SELECT a <~> b FROM orders",
            {(R, "public.orders"), (A, "operator:pg_catalog.<~>"), (A, "operator:public.<~>")},
        ),
    ],
)
def test_functions_and_operators(sql: str, expected: set[tuple[str, str]]) -> None:
    assert accesses(sql) == expected


def test_unqualified_function_is_checked_in_every_schema_of_every_path() -> None:
    found = accesses("SELECT f()", ("sales", "public"))
    assert found == {(A, f"function:{s}.f") for s in ("pg_catalog", "sales", "public")}


def test_without_a_catalog_every_candidate_schema_is_an_access() -> None:
    assert accesses("SELECT * FROM orders", ("sales", "public"), catalog=None) == {
        (R, "pg_catalog.orders"),
        (R, "sales.orders"),
        (R, "public.orders"),
    }


def test_the_first_schema_holding_the_name_wins() -> None:
    assert accesses("SELECT * FROM orders", ("sales", "public")) == {(R, "sales.orders")}
    assert accesses("SELECT * FROM customers", ("sales", "public")) == {(R, "public.customers")}
    assert accesses("SELECT * FROM orders", ("$user", "public")) == {(R, "public.orders")}


def test_pg_catalog_is_searched_first_unless_the_path_names_it() -> None:
    catalog = RelationCatalog([("public", "pg_class"), ("pg_catalog", "pg_class")])
    assert accesses("SELECT * FROM pg_class", catalog=catalog) == {(R, "pg_catalog.pg_class")}
    assert accesses("SELECT * FROM pg_class", ("public", "pg_catalog"), catalog=catalog) == {
        (R, "public.pg_class")
    }


@pytest.mark.parametrize(
    ("sql", "expected"),
    [
        ("WITH orders AS (SELECT 1) SELECT * FROM orders", set()),
        ("WITH orders AS (SELECT * FROM orders) SELECT * FROM orders", {(R, "public.orders")}),
        ("WITH a AS (SELECT 1), orders AS (SELECT * FROM a) SELECT * FROM orders", set()),
        (
            "WITH a AS (SELECT * FROM customers) SELECT * FROM (SELECT * FROM a) s",
            {(R, "public.customers")},
        ),
        (
            "SELECT * FROM (WITH orders AS (SELECT 1) SELECT * FROM orders) s, orders",
            {(R, "public.orders")},
        ),
        ("WITH x AS (SELECT 1) SELECT * FROM public.x", "unresolved"),
        (
            "WITH RECURSIVE orders AS (SELECT 1 UNION ALL SELECT 1 FROM orders) SELECT * FROM orders",
            set(),
        ),
        (
            "SELECT * FROM orders WHERE id IN (WITH orders AS (SELECT 1) SELECT * FROM orders)",
            {(R, "public.orders")},
        ),
    ],
)
def test_cte_names_shadow_only_inside_their_with(sql: str, expected: object) -> None:
    if expected == "unresolved":
        assert accesses(sql) == {(R, "public.x")}  # qualified: never a CTE
    else:
        assert accesses(sql) == expected


@pytest.mark.parametrize(
    ("sql", "count", "expected"),
    [
        (
            "SELECT * FROM orders; DROP TABLE customers",
            2,
            {(R, "public.orders"), (A, "public.customers")},
        ),
        ("SELECT 1 /* ; DROP TABLE orders */", 1, set()),
        ("SELECT 1 /* nested /* ; DROP TABLE orders */ ; */", 1, set()),
        ("SELECT 1 -- ; DROP TABLE orders", 1, set()),
        ("SELECT '; DROP TABLE orders'", 1, set()),
        ("SELECT $$; DROP TABLE orders$$", 1, set()),
        ("SELECT $a$ $b$; DROP TABLE orders $b$ $a$", 1, set()),
        ("SELECT E'\\'; DROP TABLE orders; --'", 1, set()),
        ("SELECT 'it''s'; DROP TABLE orders", 2, {(A, "public.orders")}),
        ("SELECT 1;;; SELECT * FROM customers", 2, {(R, "public.customers")}),
        ('SELECT * FROM U&"\\006Frders"', 1, {(R, "public.orders")}),
    ],
)
def test_adversarial_texts_split_as_the_server_splits(
    sql: str, count: int, expected: set[tuple[str, str]]
) -> None:
    assert len(classify(sql, scope()).statements) == count
    assert accesses(sql) == expected


@pytest.mark.parametrize(
    ("sql", "reason"),
    [
        ("SELEC 1", "parse_error"),
        ("SELECT 'unterminated", "parse_error"),
        ("SELECT * FROM nowhere", "unresolved_relation"),
        ("SELECT * FROM orders; SELECT * FROM nowhere", "unresolved_relation"),
        ('SELECT * FROM "ORDERS"', "unresolved_relation"),
        ("SELECT * FROM otherdb.public.orders", "cross_database_reference"),
        ("EXECUTE nosuch", "unknown_prepared_statement"),
        ("CREATE TABLE t (a int)", "empty_search_path"),
    ],
)
def test_what_cannot_be_placed_is_refused(sql: str, reason: str) -> None:
    path = ("nosuchschema",) if reason == "empty_search_path" else ("public",)
    assert refused(sql, path) == reason


def test_create_resolves_to_the_first_existing_schema() -> None:
    assert accesses("CREATE TABLE t (a int)", ("nosuch", "sales", "public")) == {(A, "sales.t")}


def test_statement_texts_are_their_own_and_redacted() -> None:
    stmts = classify(
        "SELECT 1;  CREATE ROLE bob PASSWORD 'hunter2' ; ALTER USER bob PASSWORD 'x'", scope()
    ).statements
    assert [s.text for s in stmts] == [
        "SELECT 1",
        "CREATE ROLE bob PASSWORD '***'",
        "ALTER USER bob PASSWORD '***'",
    ]
    assert "hunter2" not in repr(stmts)


def test_session_effects() -> None:
    def effects(sql: str) -> list[Effect]:
        return [e for s in classify(sql, scope()).statements for e in s.effects]

    assert effects("SET search_path TO sales, \"Public\", '$user'") == [
        Effect("search_path", ("sales", "Public", "$user"))
    ]
    assert effects("SET LOCAL search_path = sales") == [
        Effect("search_path", ("sales",), local=True)
    ]
    assert effects("SET search_path = DEFAULT") == [Effect("reset_search_path")]
    assert effects("RESET search_path") == [Effect("reset_search_path")]
    assert effects("RESET ALL") == [Effect("reset_search_path")]
    assert effects("DISCARD ALL") == [Effect("discard_all")]
    assert effects("BEGIN") == [Effect("begin")]
    assert effects("START TRANSACTION READ ONLY") == [Effect("begin")]
    assert effects("COMMIT AND CHAIN") == [Effect("commit", local=True)]
    assert effects("END") == [Effect("commit")]
    assert effects("ABORT") == [Effect("rollback")]
    assert effects("SAVEPOINT a") == [Effect("savepoint", name="a")]
    assert effects("ROLLBACK TO a") == [Effect("rollback_to", name="a")]
    assert effects("RELEASE SAVEPOINT a") == [Effect("release", name="a")]
    assert effects("DEALLOCATE p") == [Effect("deallocate", name="p")]
    assert effects("DEALLOCATE ALL") == [Effect("deallocate", name="")]
    assert effects("CREATE TEMP TABLE t (a int)") == [Effect("temp_schema", ("t",))]


def test_prepare_and_execute_judge_the_prepared_text() -> None:
    session = scope()
    prepare = classify("PREPARE p (int) AS DELETE FROM orders WHERE id = $1", session)
    (stmt,) = prepare.statements
    assert stmt.accesses == ()
    assert stmt.prepared_name == "p"
    assert stmt.effects == (Effect("prepare", ("DELETE FROM orders WHERE id = $1",), name="p"),)
    session.statement_done(stmt, "PREPARE")
    (execute,) = classify("EXECUTE p(f())", session).statements
    assert set(execute.accesses) == {
        Access(W, "public.orders"),
        Access(R, "public.orders"),
        Access(A, "function:pg_catalog.f"),
        Access(A, "function:public.f"),
    }
    assert execute.prepared_name == "p"
    with pytest.raises(Unplaceable):
        classify("PREPARE q AS SELECT * FROM nowhere", session)


def test_later_statements_of_one_text_see_the_earlier_ones() -> None:
    session = scope()
    result = classify(
        "SET search_path = sales; SELECT * FROM orders; PREPARE p AS SELECT * FROM returns;"
        " EXECUTE p; CREATE TEMP TABLE customers (a int); SELECT * FROM customers",
        session,
    )
    reads = [{(a.action, a.obj) for a in s.accesses} for s in result.statements]
    assert reads[1] == {(R, "sales.orders")}
    assert reads[3] == {(R, "sales.returns")}
    # the temporary table may exist: it and whatever it would hide are both checked
    assert reads[5] == {(R, "pg_temp.customers")}
    # the session itself moves only when statements complete
    assert session.search_paths == (("public",),)
    assert session.prepared == {}


def test_the_sessions_temporary_schema_comes_before_pg_catalog() -> None:
    catalog = RelationCatalog([("pg_catalog", "pg_class"), ("public", "x")])
    session = SessionScope(("public",), catalog)
    (create,) = classify("CREATE TEMP TABLE pg_class (a int)", session).statements
    session.statement_done(create, "CREATE TABLE")
    assert session.search_paths == (("pg_temp", "public"),)
    (select,) = classify("SELECT * FROM pg_class", session).statements
    assert set(select.accesses) == {Access(R, "pg_temp.pg_class"), Access(R, "pg_catalog.pg_class")}


@pytest.mark.parametrize(
    ("sql", "command", "objects", "effects"),
    [
        (
            "ALTER TABLE orders RENAME TO o2",
            "ALTER TABLE",
            {"public.orders", "public.o2"},
            [
                Effect("dropped_relation", ("public", "orders")),
                Effect("created_relation", ("public", "o2")),
            ],
        ),
        ("ALTER TABLE orders RENAME COLUMN a TO b", "ALTER TABLE", {"public.orders"}, []),
        (
            "ALTER TABLE orders SET SCHEMA sales",
            "ALTER TABLE",
            {"public.orders", "schema:sales"},
            [
                Effect("dropped_relation", ("public", "orders")),
                Effect("created_relation", ("sales", "orders")),
            ],
        ),
        (
            "DROP TABLE orders",
            "DROP TABLE",
            {"public.orders"},
            [Effect("dropped_relation", ("public", "orders"))],
        ),
        ("CREATE SCHEMA s", "CREATE SCHEMA", {"schema:s"}, [Effect("created_schema", ("s",))]),
    ],
)
def test_ddl_tells_the_session_what_it_changed(
    sql: str, command: str, objects: set[str], effects: list[Effect]
) -> None:
    (stmt,) = classify(sql, scope()).statements
    assert stmt.command == command
    assert {a.obj for a in stmt.accesses} == objects
    assert list(stmt.effects) == effects


def test_set_schema_is_set_search_path() -> None:
    (stmt,) = classify("SET SCHEMA 'sales'", scope()).statements
    assert stmt.effects == (Effect("search_path", ("sales",)),)
    (names,) = classify("SET NAMES 'UTF8'", scope()).statements
    assert names.accesses == ()
    assert refused("SET NAMES 'LATIN1'", ("public",)) == "lexing_setting"


@pytest.mark.parametrize(
    "sql",
    [
        "SET client_encoding = 'SJIS'",
        "SET client_encoding TO 'utf8', 'sjis'",
        "SET LOCAL client_encoding = 'BIG5'",
        "SET standard_conforming_strings = off",
        "SET SESSION standard_conforming_strings TO false",
        "SET standard_conforming_strings = 0",
        "SET standard_conforming_strings = 'o'",
        "SELECT set_config('client_encoding', 'SJIS', false)",
        "SELECT pg_catalog.set_config('Standard_Conforming_Strings', 'off', true)",
        "SELECT 1 FROM set_config('standard_conforming_strings', 'off', false)",
        "SELECT set_config('client_encoding', current_setting('x'), false)",
        "SELECT set_config(current_setting('x'), 'off', false)",
        "SELECT set_config(setting_name => 'client_encoding', new_value => 'SJIS', is_local => false)",
        "SELECT 1; SET standard_conforming_strings = off",
    ],
)
def test_a_change_of_how_the_server_lexes_is_refused_whatever_policy_says(sql: str) -> None:
    # An Unplaceable, not an access: a grant on setting:* or function:* cannot allow it.
    assert refused(sql, ("public",)) == "lexing_setting"


def test_settings_that_keep_the_lexing_are_not_refused() -> None:
    assert accesses("SELECT set_config('client_encoding', 'UTF8', false)") == {
        (A, "function:pg_catalog.set_config")
    }
    assert accesses("SELECT set_config('work_mem', '64MB', false)") == {
        (A, "function:pg_catalog.set_config")
    }
    assert (
        accesses("SET standard_conforming_strings = true; SET client_encoding = 'unicode'") == set()
    )


@pytest.mark.parametrize(
    "sql",
    [
        "SELECT " + "1+" * 3000 + "1",
        "SELECT 1 " + "UNION ALL SELECT * FROM orders " * 3000,
        "SELECT " + "||".join(["'x'"] * 3000),
        "SELECT * FROM orders WHERE " + " OR ".join(["id = 1"] * 3000),
        "INSERT INTO orders VALUES " + ",".join(["(1, 'a', 2.5)"] * 3000),
    ],
)
def test_long_generated_statements_are_placed(sql: str) -> None:
    assert classify(sql, scope()).statements


@pytest.mark.parametrize(
    "sql",
    [
        "SELECT " + "1+" * 100_000 + "1",
        "SELECT 1 " + "UNION SELECT 1 " * 40_000,
        "SELECT * FROM " + "(SELECT * FROM " * 20_000 + "orders" + ") s" * 20_000,
        "SELECT " + "f(" * 20_000 + "1" + ")" * 20_000,
        "SELECT " + "ARRAY[" * 5_000 + "1" + "]" * 5_000,
    ],
)
def test_statements_nested_beyond_reason_are_refused_without_harm(
    sql: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A tree this deep overflows the parser's C stack on a normal thread: it must be
    # refused (or placed), never end the process. (The size limit, which refuses the
    # longest of these before their parse, is lifted to reach the parser.)
    monkeypatch.setattr(classify_module, "MAX_TEXT_CHARS", 10 * len(sql))
    try:
        classify(sql, scope())
    except Unplaceable as exc:
        assert exc.reason in ("parse_error", "too_complex")


def test_with_the_functions_of_the_catalog_a_call_resolves_where_the_name_lives() -> None:
    F = RelationCatalog.FUNCTIONS_MARK
    catalog = RelationCatalog(
        [
            ("public", "orders"),
            (F + "pg_catalog", "lower"),
            (F + "pg_catalog", "nextval"),
            (F + "public", "lower"),  # an overload in the path can win over the built-in
            (F + "sales", "only_in_sales"),
            (F + "public", "mine"),
            (F + "sales", "mine"),
        ]
    )
    assert catalog.knows_functions and catalog.function_schemas("mine") == {"public", "sales"}
    assert accesses("SELECT lower('x')", catalog=catalog) == {(A, "function:public.lower")}
    assert accesses("SELECT pg_catalog.lower('x')", catalog=catalog) == set()
    # in no schema yet: wherever it may be created (not pg_catalog: that takes a superuser)
    assert accesses("SELECT upper('x')", catalog=catalog) == {(A, "function:public.upper")}
    assert accesses("SELECT mine()", ("sales", "public"), catalog=catalog) == {
        (A, "function:sales.mine"),
        (A, "function:public.mine"),
    }
    assert accesses("SELECT only_in_sales()", ("sales",), catalog=catalog) == {
        (A, "function:sales.only_in_sales")
    }
    assert accesses("SELECT nextval('orders')", catalog=catalog) == {(W, "public.orders")}


@pytest.mark.parametrize(
    ("sql", "expected"),
    [
        ('SELECT * FROM "sales.x".t', {(R, "sales%2Ex.t")}),
        ('SELECT * FROM other."x/y"', {(R, "other.x%2Fy")}),
        ('SELECT * FROM "function:a".b', {(R, "function%3Aa.b")}),
        ('SELECT * FROM "100%".t', {(R, "100%25.t")}),
        ('SELECT "a.b"."c.d"()', {(A, "function:a%2Eb.c%2Ed")}),
        ('CREATE SCHEMA "sales.x"', {(A, "schema:sales%2Ex")}),
        ('LISTEN "a/b"', {(A, "channel:a%2Fb")}),
    ],
)
def test_names_cannot_move_the_boundaries_a_policy_glob_sees(
    sql: str, expected: set[tuple[str, str]]
) -> None:
    assert accesses(sql) == expected


def test_a_view_is_judged_on_what_it_reads_and_a_parent_on_its_children() -> None:
    V, C = RelationCatalog.VIEW_MARK, RelationCatalog.CHILD_MARK
    catalog = RelationCatalog(
        [
            ("sales", "v"),
            ("sales", "v2"),
            ("other", "secret"),
            ("sales", "ledger"),
            ("other", "Ledger.Private"),
            ("sales", "part_2024"),
            (V + "sales.v", "other.secret"),
            (V + "sales.v2", "sales.v"),  # a view over a view
            (V + "sales.v2", "sales.ledger"),
            (C + "sales.ledger", 'other."Ledger.Private"'),
            (C + 'other."Ledger.Private"', "sales.part_2024"),
        ]
    )
    assert accesses("SELECT * FROM sales.v", catalog=catalog) == {
        (R, "sales.v"),
        (R, "other.secret"),
    }
    assert accesses("SELECT * FROM sales.ledger", catalog=catalog) == {
        (R, "sales.ledger"),
        (R, "other.Ledger%2EPrivate"),
        (R, "sales.part_2024"),
    }
    assert accesses("SELECT * FROM ONLY sales.ledger", catalog=catalog) == {(R, "sales.ledger")}
    assert accesses("DELETE FROM sales.ledger", catalog=catalog) == {
        (W, "sales.ledger"),
        (W, "other.Ledger%2EPrivate"),
        (W, "sales.part_2024"),
    }
    assert accesses("SELECT * FROM sales.v2", catalog=catalog) == {
        (R, "sales.v2"),
        (R, "sales.v"),
        (R, "other.secret"),
        (R, "sales.ledger"),
        (R, "other.Ledger%2EPrivate"),
        (R, "sales.part_2024"),
    }
    # a marker row never names a schema (longer than any schema name may be)
    assert all(len(m) > 63 for m in (V, C, RelationCatalog.FUNCTIONS_MARK))


def test_views_triggers_and_rules_set_off_what_they_run() -> None:
    VC, WC, WT = (
        RelationCatalog.VIEW_CALLS_MARK,
        RelationCatalog.WRITE_CALLS_MARK,
        RelationCatalog.WRITE_TOUCHES_MARK,
    )
    catalog = RelationCatalog(
        [
            ("sales", "fv"),
            ("sales", "t"),
            (VC + "sales.fv", "other.peek"),
            (VC + "sales.fv", "pg_catalog.lower"),  # a safe built-in stays free
            (WC + "sales.t", "other.trg"),
            (WT + "sales.t", "other.log"),
        ]
    )
    assert accesses("SELECT * FROM sales.fv", catalog=catalog) == {
        (R, "sales.fv"),
        (A, "function:other.peek"),
    }
    assert accesses("SELECT * FROM sales.t", catalog=catalog) == {(R, "sales.t")}
    assert accesses("DELETE FROM sales.t", catalog=catalog) == {
        (W, "sales.t"),
        (A, "function:other.trg"),
        (W, "other.log"),
    }

    # A foreign key with a cascading action on a written table changes the referencing one;
    # the catalog files it apart (a role grant plan explains it in its own terms).
    catalog = RelationCatalog(
        [
            ("sales", "customers"),
            ("other", "invoices"),
            (RelationCatalog.WRITE_CASCADES_MARK + "sales.customers", "other.invoices"),
        ]
    )
    assert accesses("DELETE FROM sales.customers", catalog=catalog) == {
        (W, "sales.customers"),
        (W, "other.invoices"),
    }
    assert accesses("SELECT * FROM sales.customers", catalog=catalog) == {(R, "sales.customers")}
    assert catalog.sets_off("sales", "customers", writing=True) == ([], [])


def test_a_text_too_large_to_classify_quickly_is_refused_before_its_parse() -> None:
    assert len(classify("SELECT 1;" * MAX_STATEMENTS_PER_TEXT, scope()).statements) == 1000
    assert refused("END;" * (MAX_STATEMENTS_PER_TEXT + 1)) == "too_many_statements"
    assert refused("SELECT 1;" * 50000) == "text_too_large"
    big_insert = "INSERT INTO orders VALUES " + ",".join(["(1)"] * (MAX_TEXT_CHARS // 4))
    assert refused(big_insert) == "text_too_large"
    # empty statements are no statements; an unterminated string is the parser's to refuse
    assert classify(";" * (MAX_TEXT_CHARS - 1), scope()).statements == ()
    assert refused("SELECT '" + "x;" * 3000) == "parse_error"


def test_what_rests_on_catalog_facts_others_may_change_is_marked() -> None:
    catalog = RelationCatalog(
        [
            ("sales", "orders"),
            ("sales", "items"),
            ("other", "secret"),
            (RelationCatalog.VIEW_MARK + "sales.items", "sales.orders"),
        ],
        schemas=("other", "sales", "public"),
    )

    def sensitive(sql: str, path: tuple[str, ...] = ("sales",)) -> bool:
        return classify(sql, scope(path, catalog)).catalog_sensitive

    assert not sensitive("SELECT * FROM orders")  # found in the first schema
    assert not sensitive("SELECT * FROM sales.orders, pg_catalog.pg_class")
    assert not sensitive("SELECT 1; SET search_path = other")
    # resolved past "other", which holds no "orders" yet (one created there would win)
    assert sensitive("SELECT * FROM orders", ("other", "sales"))
    assert not sensitive("SELECT * FROM orders", ("nosuch", "sales"))  # no such schema
    assert sensitive("SELECT * FROM sales.items")  # a view: it may have been redefined
    assert sensitive("SELECT 1; SELECT * FROM sales.items")
    prepared = classify("PREPARE p AS SELECT * FROM sales.items", scope(("sales",), catalog))
    session = scope(("sales",), catalog)
    session.statement_done(prepared.statements[0], "PREPARE")
    assert classify("EXECUTE p", session).catalog_sensitive


def test_a_name_only_maybe_in_a_dropped_schema_is_not_placed_there() -> None:
    # The session dropped "gone": any name may or may not be there; "fresh" is nowhere in
    # the catalog (made since it was read, perhaps in public): refused, not gone.fresh.
    session = scope(("gone", "public"), RelationCatalog([("public", "t")], schemas=("public",)))
    for text, tag in (("CREATE SCHEMA gone", "CREATE SCHEMA"), ("DROP SCHEMA gone", "DROP SCHEMA")):
        session.statement_done(classify(text, session).statements[0], tag)
    session.ready("I")
    with pytest.raises(Unplaceable) as info:
        classify("SELECT * FROM fresh", session)
    assert info.value.reason == "unresolved_relation"
    assert {a.obj for a in classify("SELECT * FROM t", session).statements[0].accesses} >= {
        "public.t"
    }
