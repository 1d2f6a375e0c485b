"""Attacks on what the server runs beyond a statement's own text, and on session state
over time, through the PostgreSQL engine.

* Beyond the text: a view's base tables and the functions it calls, an inheritance parent's
  children, rules on a written table, temporary relations, partitions attached by a schema
  owner.
* Over time: search_path through transactions, savepoints, PREPARE and implicit
  transactions; a cursor after its grant is withdrawn; relations and views created or
  redefined after the session's relation catalog was read.

Same stack and rules as test_attack_leaks: ``etl`` may read and write ``sales.*``;
``other.secret`` is forbidden; an xfail(strict=True) test is an open hole.
"""

# ruff: noqa: S608  (the setup builds SQL for the server around the stack's login name)
from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from pathlib import Path

import psycopg
import pytest

from tests.pgserver import PgServer

from .attack import connect, rows_or_refused
from .stack import PgStack, pg_stack

#: other.orders: a same-named table in a forbidden schema, for search_path tests.
SHADOW_ORDERS = """\
CREATE TABLE other.orders (id int, item text, amount int);
INSERT INTO other.orders VALUES (1, 'shadow-row-secret', 0);
GRANT SELECT ON other.orders TO "{login}";
"""


@pytest.fixture
async def stack(tmp_path: Path, pg_server: PgServer) -> AsyncIterator[PgStack]:
    async with pg_stack(tmp_path, pg_server) as s:
        yield s


async def test_a_view_in_a_granted_schema_does_not_open_a_forbidden_base_table(
    stack: PgStack,
) -> None:
    # A view someone with the rights made (a DBA, a migration, an admin DAG).
    stack.upstream_psql(
        "CREATE VIEW sales.secret_view AS SELECT * FROM other.secret;"
        f'GRANT SELECT ON sales.secret_view TO "{stack.login}";'
    )
    conn = await connect(stack)
    try:
        rows = await rows_or_refused(conn, "SELECT value FROM sales.secret_view")
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
    conn = await connect(stack)
    try:
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            await conn.execute("SELECT * FROM other.ledger_private")  # the grant is clear
        rows = await rows_or_refused(conn, "SELECT note FROM sales.ledger")
        only = await rows_or_refused(conn, "SELECT note FROM ONLY sales.ledger")
    finally:
        await conn.close()
    assert only == []  # ONLY reads the parent alone: that one is fine
    assert rows is None or "child-row-secret" not in repr(rows), rows


async def test_a_relation_created_after_login_cannot_shadow_a_granted_one(
    stack: PgStack,
) -> None:
    conn = await connect(stack)
    try:
        await conn.execute("SET search_path TO other, sales")  # needs no grant
        rows = await rows_or_refused(conn, "SELECT item FROM orders ORDER BY id")
        # sales.orders: allowed, rightly -- or refused by a gateway that cannot rule out a
        # later orders in schema other (the conservative way to close this hole)
        assert rows in (None, [("apple",), ("pear",)]), rows
        # Later, someone else (a migration, an admin DAG) creates other.orders.
        stack.upstream_psql(SHADOW_ORDERS.format(login=stack.login))
        rows = await rows_or_refused(conn, "SELECT item FROM orders ORDER BY id")
    finally:
        await conn.close()
    assert rows is None or "shadow-row-secret" not in repr(rows), rows


async def test_search_path_changes_are_followed_through_transactions_and_prepares(
    stack: PgStack,
) -> None:
    stack.upstream_psql(SHADOW_ORDERS.format(login=stack.login))
    conn = await connect(stack)
    try:
        # SET LOCAL and ROLLBACK TO SAVEPOINT undo a path change: the gateway follows.
        await conn.execute("BEGIN")
        await conn.execute("SAVEPOINT a")
        await conn.execute("SET search_path TO other, sales")
        assert await rows_or_refused(conn, "SELECT item FROM orders") is None
        await conn.execute("ROLLBACK")
        await conn.execute("SET search_path TO sales")
        await conn.execute("BEGIN")
        await conn.execute("SET LOCAL search_path TO other")
        assert await rows_or_refused(conn, "SELECT item FROM orders") is None
        await conn.execute("ROLLBACK")
        # A statement prepared under another path is parsed again under the current one
        # (server and gateway alike).
        await conn.execute("SET search_path TO other")
        await conn.execute("PREPARE p AS SELECT item FROM orders")
        assert await rows_or_refused(conn, "EXECUTE p") is None
        await conn.execute("SET search_path TO sales")
        rows = await rows_or_refused(conn, "EXECUTE p")
        assert rows is not None and "shadow-row-secret" not in repr(rows)
        # RESET ALL / DISCARD ALL go back to the resource's path.
        await conn.execute("SET search_path TO other")
        await conn.execute("DISCARD ALL")
        assert await rows_or_refused(conn, "SELECT item FROM orders") is None  # public: none
    finally:
        await conn.close()


ETL_NOTHING_POLICY = """\
rules:
  - id: ops-admin
    effect: allow
    principals: ["airflow:prod/ops/*"]
    actions: [read, write, admin]
    resources: [pg]
"""


async def test_a_cursor_serves_no_rows_once_its_grant_is_withdrawn(stack: PgStack) -> None:
    conn = await connect(stack)
    try:
        await conn.execute("DECLARE c CURSOR WITH HOLD FOR SELECT item FROM sales.orders")
        stack.write_policy(ETL_NOTHING_POLICY)  # etl may read nothing from now on
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            await conn.execute("SELECT item FROM sales.orders")  # the withdrawal is in force
        rows = await rows_or_refused(conn, "FETCH ALL FROM c")
    finally:
        await conn.close()
    assert rows is None, rows


async def test_a_view_redefined_after_login_is_judged_on_what_it_reads_now(
    stack: PgStack,
) -> None:
    stack.upstream_psql(
        "CREATE VIEW sales.items AS SELECT item FROM sales.orders;"
        f'GRANT SELECT ON sales.items TO "{stack.login}";'
    )
    conn = await connect(stack)
    try:
        assert await rows_or_refused(conn, "SELECT item FROM sales.items ORDER BY 1") == [
            ("apple",),
            ("pear",),
        ]
        # Later, someone else (a migration, an admin DAG) points the view elsewhere.
        stack.upstream_psql(
            "CREATE OR REPLACE VIEW sales.items AS SELECT value AS item FROM other.secret;"
        )
        rows = await rows_or_refused(conn, "SELECT item FROM sales.items ORDER BY 1")
    finally:
        await conn.close()
    assert rows is None or "the-upstream-only-secret" not in repr(rows), rows


async def test_a_view_over_a_user_function_is_judged_as_calling_it(stack: PgStack) -> None:
    stack.upstream_psql(
        "CREATE FUNCTION sales.peek() RETURNS text LANGUAGE sql"
        " AS 'SELECT value FROM other.secret WHERE id = 1';"
        "CREATE VIEW sales.peek_view AS SELECT sales.peek() AS v;"
        f'GRANT EXECUTE ON FUNCTION sales.peek() TO "{stack.login}";'
        f'GRANT SELECT ON sales.peek_view TO "{stack.login}";'
    )
    conn = await connect(stack)
    try:
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            await conn.execute("SELECT sales.peek()")  # calling it directly is admin
        rows = await rows_or_refused(conn, "SELECT v FROM sales.peek_view")
    finally:
        await conn.close()
    assert rows is None or "the-upstream-only-secret" not in repr(rows), rows


async def test_a_rule_on_a_granted_table_does_not_write_a_forbidden_one(stack: PgStack) -> None:
    stack.upstream_psql(
        "CREATE RULE copy_out AS ON INSERT TO sales.orders"
        " DO ALSO INSERT INTO other.secret VALUES (NEW.id + 1000, 'written-by-rule');"
    )
    conn = await connect(stack)
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
    conn = await connect(stack)
    try:
        with contextlib.suppress(psycopg.errors.InsufficientPrivilege):
            await conn.execute(create)
        rows = await rows_or_refused(conn, "SELECT value FROM scratch")
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
    conn = await connect(stack)
    try:
        with contextlib.suppress(psycopg.errors.InsufficientPrivilege):
            await conn.execute(attach)
        rows = [
            await rows_or_refused(conn, "SELECT v FROM sales.parted"),
            await rows_or_refused(conn, "SELECT v FROM sales.plain_parent"),
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
    stack.upstream_psql(SHADOW_ORDERS.format(login=stack.login))
    conn = await connect(stack)
    try:
        await conn.execute("SET search_path TO other")
        with contextlib.suppress(psycopg.Error):
            await conn.execute(text)
        with contextlib.suppress(psycopg.Error):
            await conn.execute("ROLLBACK")  # leave any failed block
        shown = await rows_or_refused(conn, "SHOW search_path")
        rows = await rows_or_refused(conn, "SELECT item FROM orders")
    finally:
        await conn.close()
    assert shown == [(path_after,)]
    if path_after == "other":
        assert rows is None  # other.orders: refused
    else:
        assert rows is not None and "shadow-row-secret" not in repr(rows)


@pytest.mark.parametrize(
    "action",
    ["ON DELETE CASCADE", "ON DELETE SET NULL", "ON UPDATE CASCADE"],
)
async def test_a_cascading_foreign_key_does_not_write_a_forbidden_table(
    stack: PgStack, action: str
) -> None:
    """A write on a granted table whose key a forbidden table references with a cascading
    action changes the forbidden table's rows (the server runs the cascade as the owner)."""
    stack.upstream_psql(
        "CREATE TABLE sales.customers (id int PRIMARY KEY);"
        "INSERT INTO sales.customers VALUES (1);"
        f"CREATE TABLE other.invoices (id int, customer int REFERENCES sales.customers {action});"
        "INSERT INTO other.invoices VALUES (10, 1);"
        f'GRANT ALL ON sales.customers, other.invoices TO "{stack.login}";'
    )
    conn = await connect(stack)
    try:
        for write in (
            "DELETE FROM sales.customers WHERE id = 1",
            "UPDATE sales.customers SET id = 2 WHERE id = 1",
        ):
            with contextlib.suppress(psycopg.Error):
                await conn.execute(write)
    finally:
        await conn.close()
    assert stack.upstream_psql("SELECT id, customer FROM other.invoices").split() == ["10|1"]


SIDE_EFFECTS = {
    "trigger": (
        "CREATE FUNCTION sales.copy_out() RETURNS trigger LANGUAGE plpgsql AS $$"
        " BEGIN INSERT INTO other.secret VALUES (NEW.id + 1000, 'written-by-side-effect');"
        " RETURN NEW; END $$;"
        "CREATE TRIGGER copy_out AFTER INSERT ON sales.orders"
        " FOR EACH ROW EXECUTE FUNCTION sales.copy_out();"
    ),
    "column_default": (
        "CREATE FUNCTION sales.stamp() RETURNS text LANGUAGE plpgsql AS $$"
        " BEGIN INSERT INTO other.secret VALUES (4242, 'written-by-side-effect');"
        " RETURN 'x'; END $$;"
        "ALTER TABLE sales.orders ADD COLUMN note text;"
        "ALTER TABLE sales.orders ALTER COLUMN note SET DEFAULT sales.stamp();"
    ),
    "check_constraint": (
        "CREATE FUNCTION sales.audit_ok(n int) RETURNS boolean LANGUAGE plpgsql AS $$"
        " BEGIN INSERT INTO other.secret VALUES (n + 2000, 'written-by-side-effect');"
        " RETURN true; END $$;"
        "ALTER TABLE sales.orders ADD CONSTRAINT audited CHECK (sales.audit_ok(id)) NOT VALID;"
    ),
}


@pytest.mark.parametrize(
    "kind",
    [
        "trigger",
        "check_constraint",
        "column_default",
    ],
)
async def test_server_side_code_run_by_a_write_is_judged(stack: PgStack, kind: str) -> None:
    """A trigger or a column default on a granted table runs a user function with the
    write; the function writes a forbidden table. (Also: CHECK constraints, generated
    columns and domain checks call functions the same way.)"""
    stack.upstream_psql(SIDE_EFFECTS[kind])
    conn = await connect(stack)
    try:
        with contextlib.suppress(psycopg.errors.InsufficientPrivilege):
            await conn.execute("INSERT INTO sales.orders (id, item, amount) VALUES (77, 'fig', 1)")
    finally:
        await conn.close()
    assert "written-by-side-effect" not in stack.upstream_psql("SELECT value FROM other.secret")
