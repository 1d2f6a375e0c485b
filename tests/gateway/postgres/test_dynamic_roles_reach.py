"""Dynamic PostgreSQL roles against a real server: a grant the server would carry beyond
policy (a view calling a function, a write rule, a trigger, a partition in another schema,
a cascading foreign key) is skipped and said why; the plain grants beside them still work.
The oracle is the server's own permission check, logged in as the role."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from lockgate.gateway.postgres.dynamic_roles import PostgresRoles
from tests.pgserver import PgServer

from .test_dynamic_roles import mint, own_database, roles_for, run_as

DATABASE = "roles_reach"
SETUP = """\
CREATE SCHEMA sales;
CREATE SCHEMA other;
CREATE TABLE other.secret (v text);
INSERT INTO other.secret VALUES ('reach-secret');
CREATE TABLE other.copies (id int);
CREATE TABLE sales.orders (id int PRIMARY KEY, item text);
INSERT INTO sales.orders VALUES (1, 'apple');
CREATE VIEW sales.order_items AS SELECT id, item FROM sales.orders WHERE id > 0;
CREATE FUNCTION sales.same(a int, b int) RETURNS bool LANGUAGE sql AS $$ SELECT a = b $$;
CREATE OPERATOR sales.=== (LEFTARG = int, RIGHTARG = int, FUNCTION = sales.same);
CREATE VIEW sales.odd_items AS SELECT item FROM sales.orders WHERE id OPERATOR(sales.===) 1;
CREATE FUNCTION sales.peek() RETURNS text LANGUAGE sql SECURITY DEFINER
  AS $$ SELECT v FROM other.secret LIMIT 1 $$;
CREATE VIEW sales.peek_view AS SELECT sales.peek() AS v;
CREATE TABLE sales.audited (id int);
CREATE RULE copy_out AS ON INSERT TO sales.audited DO ALSO INSERT INTO other.copies VALUES (NEW.id);
CREATE FUNCTION sales.touch() RETURNS trigger LANGUAGE plpgsql SECURITY DEFINER
  AS $$ BEGIN INSERT INTO other.copies VALUES (NEW.id); RETURN NEW; END $$;
CREATE TABLE sales.triggered (id int);
CREATE TRIGGER touch AFTER INSERT ON sales.triggered FOR EACH ROW EXECUTE FUNCTION sales.touch();
CREATE TABLE sales.events (at date, note text) PARTITION BY RANGE (at);
CREATE TABLE sales.events_2025 PARTITION OF sales.events
  FOR VALUES FROM ('2025-01-01') TO ('2026-01-01');
CREATE TABLE other.events_2026 PARTITION OF sales.events
  FOR VALUES FROM ('2026-01-01') TO ('2027-01-01');
INSERT INTO sales.events VALUES ('2025-05-01', 'in-sales'), ('2026-05-01', 'partition-secret');
CREATE TABLE sales.products (id int PRIMARY KEY);
CREATE TABLE other.stock (product int REFERENCES sales.products ON DELETE CASCADE);
INSERT INTO sales.products VALUES (1);
INSERT INTO other.stock VALUES (1);
"""


@pytest.fixture
def pg(pg_server: PgServer) -> PgServer:
    return own_database(pg_server, DATABASE, SETUP)


def _roles(pg: PgServer) -> PostgresRoles:
    return roles_for(pg, [("read", "sales.*"), ("write", "sales.*")], database=DATABASE)


async def test_grants_reaching_beyond_policy_are_skipped_and_the_rest_work(
    pg: PgServer, tmp_path: Path
) -> None:
    roles = _roles(pg)
    cred = await roles.issue(mint(tmp_path, try_number=21), require_grants=True)
    try:
        granted = {(perm, obj.replace('"', "")) for perm, obj in cred.grants}
        assert {
            ("SELECT", "TABLE sales.orders"),
            ("INSERT", "TABLE sales.orders"),
            ("SELECT", "TABLE sales.order_items"),
            ("UPDATE", "TABLE sales.order_items"),
            ("SELECT", "TABLE sales.audited"),
            ("SELECT", "TABLE sales.triggered"),
            ("SELECT", "TABLE sales.events_2025"),
            ("DELETE", "TABLE sales.events_2025"),
            ("SELECT", "TABLE sales.products"),
        } <= granted
        for absent in (
            ("SELECT", "TABLE sales.peek_view"),
            ("SELECT", "TABLE sales.odd_items"),
            ("INSERT", "TABLE sales.audited"),
            ("INSERT", "TABLE sales.triggered"),
            ("SELECT", "TABLE sales.events"),
            ("INSERT", "TABLE sales.events"),
            ("DELETE", "TABLE sales.products"),
        ):
            assert absent not in granted
        skipped = "\n".join(roles.skipped_grants(cred.username))
        for why in (
            "SELECT ON sales.peek_view: runs function:sales.peek, outside the allow-list",
            "INSERT, UPDATE, DELETE ON sales.audited: its rules write other.copies, where policy"
            " does not allow write",
            "INSERT, UPDATE, DELETE ON sales.triggered: runs function:sales.touch, outside the"
            " allow-list",
            "SELECT ON sales.odd_items: sales.odd_items uses operator:sales.===",
            "SELECT ON sales.events: reaches other.events_2026, where policy does not allow read",
            "INSERT, UPDATE, DELETE ON sales.products: other.stock references sales.products",
        ):
            assert why in skipped, skipped
        # what the task is handed (and the token_issued record names) carries them too
        assert cred.skipped == roles.skipped_grants(cred.username)

        def run(sql: str) -> list[tuple[Any, ...]] | None:
            return run_as(pg, cred.username, cred.password, sql, dbname=DATABASE)

        # the plain grants: the server lets the role do them
        assert run("SELECT item FROM sales.order_items") == [("apple",)]
        assert run("UPDATE sales.order_items SET item = 'apple' WHERE id = 1") == []
        assert run("SELECT note FROM sales.events_2025") == [("in-sales",)]
        assert run("SELECT count(*) FROM sales.audited") == [(0,)]
        # the skipped ones: refused by the server, nothing reached
        assert run("SELECT v FROM sales.peek_view") is None
        assert run("INSERT INTO sales.audited VALUES (7)") is None
        assert run("INSERT INTO sales.triggered VALUES (7)") is None
        assert run("SELECT note FROM sales.events") is None
        assert run("DELETE FROM sales.products") is None
        assert run("SELECT v FROM other.secret") is None
    finally:
        await roles.revoke(cred.username)
    assert roles.skipped_grants(cred.username) == ()
    assert pg.psql("SELECT count(*) FROM other.copies;", dbname=DATABASE).strip() == "0"
    assert pg.psql("SELECT count(*) FROM other.stock;", dbname=DATABASE).strip() == "1"
