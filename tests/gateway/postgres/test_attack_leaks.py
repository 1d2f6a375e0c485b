"""Attacks on what a DAG can read through the PostgreSQL engine beyond its grant: the
system catalogs (statistics, other sessions' statements, user mappings, sequences), object
names that could cross a policy glob, and statements that reach beyond the grant in any
clause.

Each test goes through the real path: the test stack (``pg_stack``) in front of the real
server (``pg_server``), with psycopg. The DAG ``etl`` may read and write ``sales.*`` only;
``other.secret`` is the table it must never see. The upstream login may read everything on
the server, so whatever stops the DAG is the gateway.

A test marked ``xfail(strict=True)`` reproduces a hole: it passes (and so fails the suite)
once the hole is closed, which is when the mark comes off. The others show a defence holding.
"""

# ruff: noqa: S608  (the setup builds SQL for the server around the stack's login name)
from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import psycopg
import pytest

from tests.pgserver import PgServer

from .attack import connect, executed, rows_or_refused
from .stack import PgStack, pg_stack


@pytest.fixture
async def stack(tmp_path: Path, pg_server: PgServer) -> AsyncIterator[PgStack]:
    async with pg_stack(tmp_path, pg_server) as s:
        yield s


SECRET_PREFIX = "secret-value-"


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


async def test_pg_stats_does_not_hand_out_values_of_a_forbidden_table(stack: PgStack) -> None:
    _more_secrets(stack)
    conn = await connect(stack)
    try:
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            await conn.execute("SELECT * FROM other.secret")  # the grant is clear
        rows = await rows_or_refused(
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
    ops = await connect(stack, "ops")
    etl = await connect(stack, "etl")
    try:
        running = asyncio.create_task(ops.execute(f"SELECT pg_sleep(3), '{literal}'"))
        for _ in range(100):  # until the server shows it running
            if literal in stack.upstream_psql("SELECT query FROM pg_stat_activity"):
                break
            await asyncio.sleep(0.03)
        rows = await rows_or_refused(
            etl, f"SELECT query FROM pg_stat_activity WHERE query LIKE '%{literal[:9]}%'"
        )
        await running
    finally:
        await ops.close()
        await etl.close()
    leaked = [r for r in rows or [] if literal in str(r[0]) and "pg_stat_activity" not in str(r[0])]
    assert not leaked, leaked


async def test_a_schema_whose_name_has_a_dot_is_not_inside_the_granted_schema(
    stack: PgStack,
) -> None:
    stack.upstream_psql(
        'CREATE SCHEMA "sales.x"; CREATE TABLE "sales.x".t (v text);'
        "INSERT INTO \"sales.x\".t VALUES ('dotted-schema-row');"
        f'GRANT USAGE ON SCHEMA "sales.x" TO "{stack.login}";'
        f'GRANT SELECT ON "sales.x".t TO "{stack.login}";'
    )
    conn = await connect(stack)
    try:
        rows = await rows_or_refused(conn, 'SELECT v FROM "sales.x".t')
    finally:
        await conn.close()
    assert rows is None, rows


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
    conn = await connect(stack)
    position = stack.server.log_position()
    try:
        assert await rows_or_refused(conn, sql) is None, sql
    finally:
        await conn.close()
    assert sql not in executed(stack, position)


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
    conn = await connect(stack)
    try:
        rows = await rows_or_refused(conn, sql)
    finally:
        await conn.close()
    assert rows is not None and len(rows) == 1


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
    conn = await connect(stack)
    try:
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            await conn.execute("SELECT * FROM other.secret")  # the deny is in force
        rows = await rows_or_refused(conn, 'SELECT v FROM other."x/y"')
    finally:
        await conn.close()
    assert rows is None, rows


async def test_the_upstream_logins_user_mapping_password_is_not_served(stack: PgStack) -> None:
    _user_mapping(stack)
    conn = await connect(stack)
    try:
        rows = await rows_or_refused(conn, "SELECT umoptions FROM pg_user_mappings")
    finally:
        await conn.close()
    assert rows is None or "fdw-password-of-the-gateway" not in repr(rows), rows


async def test_the_user_mapping_password_is_not_served_by_information_schema(
    stack: PgStack,
) -> None:
    _user_mapping(stack)
    conn = await connect(stack)
    try:
        rows = await rows_or_refused(
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
    conn = await connect(stack)
    try:
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            await conn.execute("SELECT last_value FROM other.invoice_seq")  # the grant is clear
        rows = await rows_or_refused(
            conn, "SELECT last_value FROM pg_sequences WHERE sequencename = 'invoice_seq'"
        )
    finally:
        await conn.close()
    assert rows is None or rows == [(None,)], rows


async def test_a_schema_named_like_the_catalog_gets_no_free_read(stack: PgStack) -> None:
    """Reads of information_schema are builtin; a schema called "information_schema.x" must
    not borrow that."""
    stack.upstream_psql(
        'CREATE SCHEMA "information_schema.x"; CREATE TABLE "information_schema.x".t (v text);'
        "INSERT INTO \"information_schema.x\".t VALUES ('catalog-lookalike-secret');"
        f'GRANT USAGE ON SCHEMA "information_schema.x" TO "{stack.login}";'
        f'GRANT SELECT ON "information_schema.x".t TO "{stack.login}";'
    )
    conn = await connect(stack)
    try:
        rows = await rows_or_refused(conn, 'SELECT v FROM "information_schema.x".t')
        with_path = await rows_or_refused(
            conn, 'SET search_path TO "information_schema.x"; SELECT v FROM t'
        )
    finally:
        await conn.close()
    assert rows is None, rows
    assert with_path is None, with_path
