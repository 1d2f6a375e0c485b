"""Attacks on what a DAG can read through the PostgreSQL engine beyond its grant.

Each test goes through the real path: the test stack (``pg_stack``) in front of the real
server (``pg_server``), with psycopg. The DAG ``etl`` may read and write ``sales.*`` only;
``other.secret`` is the table it must never see. The upstream login may read everything on
the server, so whatever stops the DAG is the gateway.

Tests marked ``xfail(strict=True)`` reproduce a hole: they pass (and so fail the suite) once
the hole is closed, which is when the mark comes off. The others show a defence holding.
"""

# ruff: noqa: S608  (the setup builds SQL for the server around the stack's login name)
from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from pathlib import Path

import psycopg
import pytest

from tests.pgserver import PgServer

from .stack import PgStack, pg_stack

Conn = psycopg.AsyncConnection[tuple[object, ...]]

#: What other.secret holds after :func:`_more_secrets` (a value per row, distinct).
SECRET_PREFIX = "secret-value-"


@pytest.fixture
async def stack(tmp_path: Path, pg_server: PgServer) -> AsyncIterator[PgStack]:
    async with pg_stack(tmp_path, pg_server) as s:
        yield s


async def _connect(stack: PgStack, dag: str = "etl") -> Conn:
    return await psycopg.AsyncConnection.connect(stack.dsn(stack.token(dag)), autocommit=True)


async def _rows_or_refused(conn: Conn, sql: str) -> list[tuple[object, ...]] | None:
    """The rows of ``sql``, or None when the gateway refused it."""
    try:
        cur = await conn.execute(sql)
    except psycopg.errors.InsufficientPrivilege:
        return None
    return await cur.fetchall()


def _more_secrets(stack: PgStack) -> None:
    """Enough distinct rows in other.secret for the planner's statistics to keep values
    (as autovacuum's ANALYZE would on any table of real size)."""
    stack.upstream_psql(
        f"INSERT INTO other.secret SELECT g, '{SECRET_PREFIX}' || g"
        " FROM generate_series(2, 200) g; ANALYZE other.secret;"
    )


def _user_mapping(stack: PgStack) -> None:
    """A foreign server the upstream login may use, with its password in the mapping."""
    stack.upstream_psql(
        "CREATE FOREIGN DATA WRAPPER lg_attack_fdw;"
        "CREATE SERVER lg_attack_remote FOREIGN DATA WRAPPER lg_attack_fdw;"
        f'CREATE USER MAPPING FOR "{stack.login}" SERVER lg_attack_remote'
        " OPTIONS (user 'remote', password 'fdw-password-of-the-gateway');"
        f'GRANT USAGE ON FOREIGN SERVER lg_attack_remote TO "{stack.login}";'
    )


# -- reads beyond the grant (a hole stays marked xfail until it is closed) -------------------
async def test_pg_stats_does_not_hand_out_values_of_a_forbidden_table(stack: PgStack) -> None:
    _more_secrets(stack)
    conn = await _connect(stack)
    try:
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            await conn.execute("SELECT * FROM other.secret")  # the grant is clear
        rows = await _rows_or_refused(
            conn,
            "SELECT histogram_bounds::text FROM pg_stats"
            " WHERE schemaname = 'other' AND tablename = 'secret' AND attname = 'value'",
        )
    finally:
        await conn.close()
    assert rows is None or SECRET_PREFIX not in repr(rows), rows


async def test_one_dag_cannot_read_another_dags_statements_in_pg_stat_activity(
    stack: PgStack,
) -> None:
    literal = "card-4111-1111-1111-1111"
    ops = await _connect(stack, "ops")
    etl = await _connect(stack, "etl")
    try:
        running = asyncio.create_task(ops.execute(f"SELECT pg_sleep(3), '{literal}'"))
        for _ in range(100):  # until the server shows it running
            if literal in stack.upstream_psql("SELECT query FROM pg_stat_activity"):
                break
            await asyncio.sleep(0.03)
        rows = await _rows_or_refused(
            etl, f"SELECT query FROM pg_stat_activity WHERE query LIKE '%{literal[:9]}%'"
        )
        await running
    finally:
        await ops.close()
        await etl.close()
    leaked = [r for r in rows or [] if literal in str(r[0]) and "pg_stat_activity" not in str(r[0])]
    assert not leaked, leaked


async def test_a_view_in_a_granted_schema_does_not_open_a_forbidden_base_table(
    stack: PgStack,
) -> None:
    # A view someone with the rights made (a DBA, a migration, an admin DAG).
    stack.upstream_psql(
        "CREATE VIEW sales.secret_view AS SELECT * FROM other.secret;"
        f'GRANT SELECT ON sales.secret_view TO "{stack.login}";'
    )
    conn = await _connect(stack)
    try:
        rows = await _rows_or_refused(conn, "SELECT value FROM sales.secret_view")
    finally:
        await conn.close()
    assert rows is None or "the-upstream-only-secret" not in repr(rows), rows


async def test_reading_a_parent_does_not_read_a_child_in_a_forbidden_schema(
    stack: PgStack,
) -> None:
    stack.upstream_psql(
        "CREATE TABLE sales.ledger (id int, note text);"
        "CREATE TABLE other.ledger_private () INHERITS (sales.ledger);"
        "INSERT INTO other.ledger_private VALUES (1, 'child-row-secret');"
        f'GRANT SELECT ON sales.ledger, other.ledger_private TO "{stack.login}";'
    )
    conn = await _connect(stack)
    try:
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            await conn.execute("SELECT * FROM other.ledger_private")  # the grant is clear
        rows = await _rows_or_refused(conn, "SELECT note FROM sales.ledger")
        only = await _rows_or_refused(conn, "SELECT note FROM ONLY sales.ledger")
    finally:
        await conn.close()
    assert only == []  # ONLY reads the parent alone: that one is fine
    assert rows is None or "child-row-secret" not in repr(rows), rows


async def test_a_schema_whose_name_has_a_dot_is_not_inside_the_granted_schema(
    stack: PgStack,
) -> None:
    stack.upstream_psql(
        'CREATE SCHEMA "sales.x"; CREATE TABLE "sales.x".t (v text);'
        "INSERT INTO \"sales.x\".t VALUES ('dotted-schema-row');"
        f'GRANT USAGE ON SCHEMA "sales.x" TO "{stack.login}";'
        f'GRANT SELECT ON "sales.x".t TO "{stack.login}";'
    )
    conn = await _connect(stack)
    try:
        rows = await _rows_or_refused(conn, 'SELECT v FROM "sales.x".t')
    finally:
        await conn.close()
    assert rows is None, rows


@pytest.mark.xfail(
    strict=True,
    reason="the relation catalog is read once at login: a relation created later elsewhere "
    "in an earlier schema of the path is not seen, and the statement is judged on the "
    "schema the catalog knew while the server reads the new one",
)
async def test_a_relation_created_after_login_cannot_shadow_a_granted_one(
    stack: PgStack,
) -> None:
    conn = await _connect(stack)
    try:
        await conn.execute("SET search_path TO other, sales")  # needs no grant
        rows = await _rows_or_refused(conn, "SELECT item FROM orders ORDER BY id")
        assert rows == [("apple",), ("pear",)]  # sales.orders: allowed, rightly
        # Later, someone else (a migration, an admin DAG) creates other.orders.
        stack.upstream_psql(
            "CREATE TABLE other.orders (id int, item text, amount int);"
            "INSERT INTO other.orders VALUES (1, 'shadow-row-secret', 0);"
            f'GRANT SELECT ON other.orders TO "{stack.login}";'
        )
        rows = await _rows_or_refused(conn, "SELECT item FROM orders ORDER BY id")
    finally:
        await conn.close()
    assert rows is None or "shadow-row-secret" not in repr(rows), rows


# -- defences that hold --------------------------------------------------------------------------
@pytest.mark.parametrize(
    "sql",
    [
        "SELECT * FROM other.secret",
        "TABLE other.secret",
        "SELECT (SELECT value FROM other.secret LIMIT 1)",
        "SELECT * FROM sales.orders o, LATERAL (SELECT value FROM other.secret s"
        " WHERE s.id = o.id) x",
        "SELECT * FROM sales.orders WHERE id IN (TABLE other.secret)",
        "WITH x AS (DELETE FROM other.secret RETURNING *) SELECT 1",
        "MERGE INTO sales.orders o USING other.secret s ON o.id = s.id"
        " WHEN MATCHED THEN UPDATE SET item = s.value",
        "INSERT INTO sales.orders SELECT id + 100, value, 1 FROM other.secret",
        "SELECT * INTO sales.stolen FROM other.secret",
        "CREATE TABLE sales.stolen AS SELECT * FROM other.secret",
        "EXPLAIN ANALYZE SELECT * FROM other.secret",
        "COPY (SELECT * FROM other.secret) TO STDOUT",
        "SELECT row_to_json(s) FROM other.secret s",
        "DECLARE c CURSOR FOR SELECT * FROM other.secret",
        "SELECT E'\\\\'; SELECT value FROM other.secret; --'",
        "SELECT pg_read_file('/etc/passwd')",
        "SELECT \"pg_read_file\"('/etc/passwd')",
        "SELECT x FROM sales.orders WHERE pg_read_file('x') IS NULL",
        "SELECT lo_import('/etc/passwd')",
        "SELECT query_to_xml('select * from other.secret', true, true, '')",
        "SELECT set_config('search_path', 'other', false)",
        "SET client_encoding = 'SJIS'",
        "SET NAMES 'GBK'",
        "SET standard_conforming_strings = off",
        "SET ROLE postgres",
        "SET SESSION AUTHORIZATION postgres",
        "ALTER ROLE CURRENT_USER SET search_path = other",
        "DO $$BEGIN PERFORM 1; END$$",
        "LISTEN chan",
        "CREATE TEMP TABLE orders (id int)",
        "SELECT id FROM sales.orders UNION SELECT id FROM other.secret",
        "UPDATE sales.orders o SET item = s.value FROM other.secret s WHERE s.id = o.id",
        "INSERT INTO sales.orders VALUES (50, 'x', 1) ON CONFLICT (id) DO UPDATE"
        " SET item = (SELECT value FROM other.secret LIMIT 1)",
        "INSERT INTO sales.orders VALUES (60, 'x', 1)"
        " RETURNING (SELECT value FROM other.secret LIMIT 1)",
        "SELECT * FROM sales.orders LIMIT (SELECT count(*) FROM other.secret)",
        "SELECT * FROM sales.orders TABLESAMPLE SYSTEM ((SELECT count(*) FROM other.secret))",
        "SELECT * FROM XMLTABLE('/a' PASSING (SELECT xmlelement(name a, value)"
        " FROM other.secret LIMIT 1) COLUMNS v text PATH '.')",
        "SELECT * FROM sales.orders GROUP BY GROUPING SETS ((id),"
        " ((SELECT 1 FROM other.secret LIMIT 1)))",
        "SELECT count(*) FILTER (WHERE EXISTS (SELECT 1 FROM other.secret)) FROM sales.orders",
        "COPY sales.orders FROM PROGRAM 'id'",
        "COPY sales.orders TO '/tmp/lockgate-attack-copy'",
        "SELECT 1 OPERATOR(other.+) 1",
        "SELECT pg_stat_get_backend_activity(s) FROM pg_stat_get_backend_idset() s",
        "PREPARE TRANSACTION 'x'",
    ],
)
async def test_statements_reaching_beyond_the_grant_are_refused_and_never_run(
    stack: PgStack, sql: str
) -> None:
    conn = await _connect(stack)
    position = stack.server.log_position()
    try:
        assert await _rows_or_refused(conn, sql) is None, sql
    finally:
        await conn.close()
    executed = [s.text for s in stack.server.statements(position) if s.user == stack.login]
    assert sql not in executed


@pytest.mark.parametrize(
    "sql",
    [
        "SELECT $$ ; SELECT * FROM other.secret $$",
        "SELECT 'a' /* ; SELECT * FROM other.secret */",
        "SELECT 1 /* nested /* comment */ SELECT * FROM other.secret */",
        "SELECT U&'\\0041'",
    ],
)
async def test_text_that_only_looks_like_a_forbidden_statement_runs(
    stack: PgStack, sql: str
) -> None:
    conn = await _connect(stack)
    try:
        rows = await _rows_or_refused(conn, sql)
    finally:
        await conn.close()
    assert rows is not None and len(rows) == 1


async def test_search_path_changes_are_followed_through_transactions_and_prepares(
    stack: PgStack,
) -> None:
    stack.upstream_psql(
        "CREATE TABLE other.orders (id int, item text, amount int);"
        "INSERT INTO other.orders VALUES (1, 'shadow-row-secret', 0);"
        f'GRANT SELECT ON other.orders TO "{stack.login}";'
    )
    conn = await _connect(stack)
    try:
        # SET LOCAL and ROLLBACK TO SAVEPOINT undo a path change: the gateway follows.
        await conn.execute("BEGIN")
        await conn.execute("SAVEPOINT a")
        await conn.execute("SET search_path TO other, sales")
        assert await _rows_or_refused(conn, "SELECT item FROM orders") is None
        await conn.execute("ROLLBACK")
        await conn.execute("SET search_path TO sales")
        await conn.execute("BEGIN")
        await conn.execute("SET LOCAL search_path TO other")
        assert await _rows_or_refused(conn, "SELECT item FROM orders") is None
        await conn.execute("ROLLBACK")
        # A statement prepared under another path is parsed again under the current one
        # (server and gateway alike).
        await conn.execute("SET search_path TO other")
        await conn.execute("PREPARE p AS SELECT item FROM orders")
        assert await _rows_or_refused(conn, "EXECUTE p") is None
        await conn.execute("SET search_path TO sales")
        rows = await _rows_or_refused(conn, "EXECUTE p")
        assert rows is not None and "shadow-row-secret" not in repr(rows)
        # RESET ALL / DISCARD ALL go back to the resource's path.
        await conn.execute("SET search_path TO other")
        await conn.execute("DISCARD ALL")
        assert await _rows_or_refused(conn, "SELECT item FROM orders") is None  # public: none
    finally:
        await conn.close()


DENY_OTHER_POLICY = """\
rules:
  - id: etl-reads-all
    effect: allow
    principals: ["airflow:prod/etl/*"]
    actions: [read]
    resources: [pg]
    objects: ["*"]
  - id: nobody-reads-other
    effect: deny
    principals: ["*"]
    actions: [read, write, admin]
    resources: [pg]
    objects: ["other.*"]
"""


async def test_a_slash_in_a_table_name_does_not_escape_an_explicit_deny(stack: PgStack) -> None:
    stack.write_policy(DENY_OTHER_POLICY)
    stack.upstream_psql(
        'CREATE TABLE other."x/y" (v text);'
        "INSERT INTO other.\"x/y\" VALUES ('slash-table-secret');"
        f'GRANT SELECT ON other."x/y" TO "{stack.login}";'
    )
    conn = await _connect(stack)
    try:
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            await conn.execute("SELECT * FROM other.secret")  # the deny is in force
        rows = await _rows_or_refused(conn, 'SELECT v FROM other."x/y"')
    finally:
        await conn.close()
    assert rows is None, rows


async def test_the_upstream_logins_user_mapping_password_is_not_served(stack: PgStack) -> None:
    _user_mapping(stack)
    conn = await _connect(stack)
    try:
        rows = await _rows_or_refused(conn, "SELECT umoptions FROM pg_user_mappings")
    finally:
        await conn.close()
    assert rows is None or "fdw-password-of-the-gateway" not in repr(rows), rows


async def test_the_user_mapping_password_is_not_served_by_information_schema(
    stack: PgStack,
) -> None:
    _user_mapping(stack)
    conn = await _connect(stack)
    try:
        rows = await _rows_or_refused(
            conn, "SELECT option_name, option_value FROM information_schema.user_mapping_options"
        )
    finally:
        await conn.close()
    assert rows is None or "fdw-password-of-the-gateway" not in repr(rows), rows


async def test_a_forbidden_sequences_value_is_not_served_by_pg_sequences(stack: PgStack) -> None:
    stack.upstream_psql(
        "CREATE SEQUENCE other.invoice_seq START 7000;"
        "SELECT nextval('other.invoice_seq') FROM generate_series(1, 42);"
        f'GRANT ALL ON SEQUENCE other.invoice_seq TO "{stack.login}";'
    )
    conn = await _connect(stack)
    try:
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            await conn.execute("SELECT last_value FROM other.invoice_seq")  # the grant is clear
        rows = await _rows_or_refused(
            conn, "SELECT last_value FROM pg_sequences WHERE sequencename = 'invoice_seq'"
        )
    finally:
        await conn.close()
    assert rows is None or rows == [(None,)], rows


ETL_NOTHING_POLICY = """\
rules:
  - id: ops-admin
    effect: allow
    principals: ["airflow:prod/ops/*"]
    actions: [read, write, admin]
    resources: [pg]
"""


async def test_a_cursor_serves_no_rows_once_its_grant_is_withdrawn(stack: PgStack) -> None:
    conn = await _connect(stack)
    try:
        await conn.execute("DECLARE c CURSOR WITH HOLD FOR SELECT item FROM sales.orders")
        stack.write_policy(ETL_NOTHING_POLICY)  # etl may read nothing from now on
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            await conn.execute("SELECT item FROM sales.orders")  # the withdrawal is in force
        rows = await _rows_or_refused(conn, "FETCH ALL FROM c")
    finally:
        await conn.close()
    assert rows is None, rows


async def test_a_schema_named_like_the_catalog_gets_no_free_read(stack: PgStack) -> None:
    """Reads of information_schema are builtin; a schema called "information_schema.x" must
    not borrow that."""
    stack.upstream_psql(
        'CREATE SCHEMA "information_schema.x"; CREATE TABLE "information_schema.x".t (v text);'
        "INSERT INTO \"information_schema.x\".t VALUES ('catalog-lookalike-secret');"
        f'GRANT USAGE ON SCHEMA "information_schema.x" TO "{stack.login}";'
        f'GRANT SELECT ON "information_schema.x".t TO "{stack.login}";'
    )
    conn = await _connect(stack)
    try:
        rows = await _rows_or_refused(conn, 'SELECT v FROM "information_schema.x".t')
        with_path = await _rows_or_refused(
            conn, 'SET search_path TO "information_schema.x"; SELECT v FROM t'
        )
    finally:
        await conn.close()
    assert rows is None, rows
    assert with_path is None, with_path


@pytest.mark.xfail(
    strict=True,
    reason="the relation catalog is read once at login: a view redefined later over a "
    "forbidden table is still judged on what it read at login",
)
async def test_a_view_redefined_after_login_is_judged_on_what_it_reads_now(
    stack: PgStack,
) -> None:
    stack.upstream_psql(
        "CREATE VIEW sales.items AS SELECT item FROM sales.orders;"
        f'GRANT SELECT ON sales.items TO "{stack.login}";'
    )
    conn = await _connect(stack)
    try:
        assert await _rows_or_refused(conn, "SELECT item FROM sales.items ORDER BY 1") == [
            ("apple",),
            ("pear",),
        ]
        # Later, someone else (a migration, an admin DAG) points the view elsewhere.
        stack.upstream_psql(
            "CREATE OR REPLACE VIEW sales.items AS SELECT value AS item FROM other.secret;"
        )
        rows = await _rows_or_refused(conn, "SELECT item FROM sales.items ORDER BY 1")
    finally:
        await conn.close()
    assert rows is None or "the-upstream-only-secret" not in repr(rows), rows


@pytest.mark.xfail(
    strict=True,
    reason="a view is judged on the relations it reads but not on the functions it calls: a "
    "view over a user function (admin when called directly) runs it, and the function "
    "reads a forbidden table",
)
async def test_a_view_over_a_user_function_is_judged_as_calling_it(stack: PgStack) -> None:
    stack.upstream_psql(
        "CREATE FUNCTION sales.peek() RETURNS text LANGUAGE sql"
        " AS 'SELECT value FROM other.secret WHERE id = 1';"
        "CREATE VIEW sales.peek_view AS SELECT sales.peek() AS v;"
        f'GRANT EXECUTE ON FUNCTION sales.peek() TO "{stack.login}";'
        f'GRANT SELECT ON sales.peek_view TO "{stack.login}";'
    )
    conn = await _connect(stack)
    try:
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            await conn.execute("SELECT sales.peek()")  # calling it directly is admin
        rows = await _rows_or_refused(conn, "SELECT v FROM sales.peek_view")
    finally:
        await conn.close()
    assert rows is None or "the-upstream-only-secret" not in repr(rows), rows


@pytest.mark.xfail(
    strict=True,
    reason="a write is judged on its target only: a rule (or trigger) on a granted table "
    "that writes a forbidden one runs with the write",
)
async def test_a_rule_on_a_granted_table_does_not_write_a_forbidden_one(stack: PgStack) -> None:
    stack.upstream_psql(
        "CREATE RULE copy_out AS ON INSERT TO sales.orders"
        " DO ALSO INSERT INTO other.secret VALUES (NEW.id + 1000, 'written-by-rule');"
    )
    conn = await _connect(stack)
    try:
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            await conn.execute("INSERT INTO other.secret VALUES (999, 'x')")  # the grant is clear
        with contextlib.suppress(psycopg.errors.InsufficientPrivilege):
            await conn.execute("INSERT INTO sales.orders VALUES (77, 'fig', 1)")
    finally:
        await conn.close()
    assert "written-by-rule" not in stack.upstream_psql("SELECT value FROM other.secret")


SCRATCH_POLICY = """\
rules:
  - id: etl-sales
    effect: allow
    principals: ["airflow:prod/etl/*"]
    actions: [read, write]
    resources: [pg]
    objects: ["sales.*"]
  - id: etl-scratch
    effect: allow
    principals: ["airflow:prod/etl/*"]
    actions: [read, write, admin]
    resources: [pg]
    objects: ["pg_temp.*"]
"""


@pytest.mark.parametrize(
    "create",
    [
        "CREATE TEMP VIEW scratch AS SELECT value FROM other.secret",
        "CREATE TEMP TABLE scratch AS SELECT value FROM other.secret",
        "SELECT value INTO TEMP scratch FROM other.secret",
        "CREATE TEMP VIEW scratch AS SELECT value FROM other.secret WHERE false;"
        " CREATE OR REPLACE TEMP VIEW scratch AS SELECT value FROM other.secret",
    ],
)
async def test_scratch_space_in_pg_temp_does_not_open_a_forbidden_table(
    stack: PgStack, create: str
) -> None:
    """A policy may give DAGs their own temporary relations (admin on pg_temp.*): what they
    put there must still be judged on what it reads."""
    stack.write_policy(SCRATCH_POLICY)
    conn = await _connect(stack)
    try:
        with contextlib.suppress(psycopg.errors.InsufficientPrivilege):
            await conn.execute(create)
        rows = await _rows_or_refused(conn, "SELECT value FROM scratch")
    except psycopg.errors.UndefinedTable:
        rows = None
    finally:
        await conn.close()
    assert rows is None or "the-upstream-only-secret" not in repr(rows), rows


SCHEMA_OWNER_POLICY = """\
rules:
  - id: etl-owns-sales
    effect: allow
    principals: ["airflow:prod/etl/*"]
    actions: [read, write, admin]
    resources: [pg]
    objects: ["sales.*"]
"""


@pytest.mark.parametrize(
    "attach",
    [
        "ALTER TABLE sales.parted ATTACH PARTITION other.part FOR VALUES FROM (0) TO (1000)",
        "ALTER TABLE other.part INHERIT sales.plain_parent",
    ],
)
async def test_a_schema_owner_cannot_attach_a_forbidden_table_under_its_own(
    stack: PgStack, attach: str
) -> None:
    """A DAG that administers its own schema must not make a forbidden table a child of one
    of its tables and read it through the parent."""
    stack.upstream_psql(
        "CREATE TABLE sales.parted (id int, v text) PARTITION BY RANGE (id);"
        "CREATE TABLE sales.plain_parent (id int, v text);"
        "CREATE TABLE other.part (id int, v text);"
        "INSERT INTO other.part VALUES (1, 'attached-partition-secret');"
        f'GRANT ALL ON sales.parted, sales.plain_parent, other.part TO "{stack.login}";'
        f'ALTER TABLE sales.parted OWNER TO "{stack.login}";'
        f'ALTER TABLE sales.plain_parent OWNER TO "{stack.login}";'
        f'ALTER TABLE other.part OWNER TO "{stack.login}";'
    )
    stack.write_policy(SCHEMA_OWNER_POLICY)
    conn = await _connect(stack)
    try:
        with contextlib.suppress(psycopg.errors.InsufficientPrivilege):
            await conn.execute(attach)
        rows = [
            await _rows_or_refused(conn, "SELECT v FROM sales.parted"),
            await _rows_or_refused(conn, "SELECT v FROM sales.plain_parent"),
        ]
    finally:
        await conn.close()
    assert "attached-partition-secret" not in repr(rows), rows


@pytest.mark.parametrize(
    ("text", "path_after"),
    [
        # an error ends the implicit transaction of a multi-statement text: its SET is undone
        ("SET search_path TO sales; SELECT 1/0", "other"),
        # ROLLBACK inside the implicit transaction undoes the SET before it (with a warning)
        ("SET search_path TO sales; ROLLBACK", "other"),
        # COMMIT inside it keeps the SET even though a later statement fails
        ("SET search_path TO sales; COMMIT; SELECT 1/0", "sales"),
        # COMMIT of a failed block is a ROLLBACK
        ("BEGIN; SET search_path TO sales; SELECT 1/0; COMMIT", "other"),
    ],
)
async def test_the_gateway_follows_the_servers_path_through_implicit_transactions(
    stack: PgStack, text: str, path_after: str
) -> None:
    stack.upstream_psql(
        "CREATE TABLE other.orders (id int, item text, amount int);"
        "INSERT INTO other.orders VALUES (1, 'shadow-row-secret', 0);"
        f'GRANT SELECT ON other.orders TO "{stack.login}";'
    )
    conn = await _connect(stack)
    try:
        await conn.execute("SET search_path TO other")
        with contextlib.suppress(psycopg.Error):
            await conn.execute(text)
        with contextlib.suppress(psycopg.Error):
            await conn.execute("ROLLBACK")  # leave any failed block
        shown = await _rows_or_refused(conn, "SHOW search_path")
        rows = await _rows_or_refused(conn, "SELECT item FROM orders")
    finally:
        await conn.close()
    assert shown == [(path_after,)]
    if path_after == "other":
        assert rows is None  # other.orders: refused
    else:
        assert rows is not None and "shadow-row-secret" not in repr(rows)
