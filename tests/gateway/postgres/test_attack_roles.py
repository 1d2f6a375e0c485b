"""Attacks on dynamic PostgreSQL roles: does a role granted "exactly what policy allows" reach
rows policy does not allow? The oracle is the server's own permission system: the task logs
in directly as the role and reads.

The database here is this module's own (owned by the gateway's CREATEROLE login, as in
test_dynamic_roles), so its views and inheritance children change no other test's grants.
"""

# ruff: noqa: S608  (the setup builds SQL for the server around fixed names)
from __future__ import annotations

from pathlib import Path
from typing import Any

import psycopg
import pytest

from lockgate.gateway.postgres.dynamic_roles import PostgresRoles
from tests.pgserver import PgServer

from .test_dynamic_roles import GATEWAY_USER, mint, prepare, roles_for

DATABASE = "roles_attack"
SETUP = """\
CREATE SCHEMA sales;
CREATE TABLE sales.orders (id int PRIMARY KEY, item text);
INSERT INTO sales.orders VALUES (1, 'apple');
CREATE SCHEMA other;
CREATE TABLE other.secret (v text);
INSERT INTO other.secret VALUES ('view-base-secret');
CREATE VIEW sales.secret_view AS SELECT v FROM other.secret;
CREATE TABLE sales.ledger (note text);
CREATE TABLE other.ledger_private () INHERITS (sales.ledger);
INSERT INTO other.ledger_private VALUES ('child-row-secret');
CREATE SCHEMA "sales.x";
CREATE TABLE "sales.x".t (v text);
INSERT INTO "sales.x".t VALUES ('dotted-schema-row');
"""


@pytest.fixture
def pg(pg_server: PgServer) -> PgServer:
    prepare(pg_server)  # the CREATEROLE gateway login
    if not pg_server.psql(f"SELECT 1 FROM pg_database WHERE datname = '{DATABASE}';").strip():
        pg_server.psql(f"CREATE DATABASE {DATABASE} OWNER {GATEWAY_USER};")
        pg_server.psql(SETUP, user=GATEWAY_USER, dbname=DATABASE)
    return pg_server


def _roles(pg: PgServer) -> PostgresRoles:
    return roles_for(pg, [("read", "sales.*")], database=DATABASE)


def _read_as(pg: PgServer, user: str, password: str, sql: str) -> list[tuple[Any, ...]] | None:
    """Rows of ``sql`` run directly as the role, None when the server refuses it."""
    with psycopg.connect(pg.dsn(user, password, dbname=DATABASE), autocommit=True) as conn:
        try:
            return conn.execute(sql).fetchall()
        except psycopg.errors.InsufficientPrivilege:
            return None


async def test_the_role_reads_its_grant_and_not_the_forbidden_table(
    pg: PgServer, tmp_path: Path
) -> None:
    roles = _roles(pg)
    cred = await roles.issue(mint(tmp_path, try_number=11))
    try:
        assert _read_as(pg, cred.username, cred.password, "SELECT item FROM sales.orders") == [
            ("apple",)
        ]
        assert _read_as(pg, cred.username, cred.password, "SELECT v FROM other.secret") is None
    finally:
        await roles.revoke(cred.username)


async def test_a_granted_view_does_not_hand_the_role_a_forbidden_base_table(
    pg: PgServer, tmp_path: Path
) -> None:
    roles = _roles(pg)
    cred = await roles.issue(mint(tmp_path, try_number=12))
    try:
        rows = _read_as(pg, cred.username, cred.password, "SELECT v FROM sales.secret_view")
    finally:
        await roles.revoke(cred.username)
    assert rows is None or "view-base-secret" not in repr(rows), rows


async def test_a_granted_parent_does_not_hand_the_role_a_forbidden_child(
    pg: PgServer, tmp_path: Path
) -> None:
    roles = _roles(pg)
    cred = await roles.issue(mint(tmp_path, try_number=13))
    try:
        rows = _read_as(pg, cred.username, cred.password, "SELECT note FROM sales.ledger")
    finally:
        await roles.revoke(cred.username)
    assert rows is None or "child-row-secret" not in repr(rows), rows


async def test_a_dotted_schema_is_not_granted_as_part_of_the_schema_it_names(
    pg: PgServer, tmp_path: Path
) -> None:
    roles = _roles(pg)
    cred = await roles.issue(mint(tmp_path, try_number=14))
    try:
        rows = _read_as(pg, cred.username, cred.password, 'SELECT v FROM "sales.x".t')
    finally:
        await roles.revoke(cred.username)
    assert rows is None, rows
