# ruff: noqa: E501, S608  (the corpus is SQL, one statement a line)
"""The classifier against the real server's privilege checks (the oracle).

For each statement of a corpus, a fresh role is granted exactly what the classifier says
(read -> SELECT; write -> INSERT, UPDATE, DELETE on a table, USAGE, UPDATE on a sequence;
admin on ``function:`` -> EXECUTE) and runs the statement inside a transaction that is
rolled back: it must not fail with 42501 (else the classifier missed an object). Then each
access is withheld alone and the statement must fail with 42501 (else the access was not
real). Objects that do not exist (the classifier's safe supersets: every schema an
unqualified function may live in) and objects PUBLIC may use anyway (``pg_catalog``) are
not withheld. A hypothesis test builds random queries from tables, aliases and CTE names
that shadow tables, judged by the same oracle.
"""

from __future__ import annotations

import itertools
import os
from collections.abc import Iterator
from dataclasses import dataclass

import psycopg
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from psycopg import sql as pgsql

from lockgate.gateway.postgres.classify import Access, classify
from lockgate.gateway.postgres.scope import RelationCatalog, SessionScope
from tests.pgserver import PgServer

DATABASE = "classify_oracle"
SETUP = r"""
CREATE SCHEMA sales;
CREATE SCHEMA "Mixed";
CREATE SCHEMA "select";
CREATE TABLE public.orders (id int PRIMARY KEY, amount int, customer_id int, note text);
CREATE TABLE public.customers (id int PRIMARY KEY, name text);
CREATE TABLE public.items (id int PRIMARY KEY, order_id int, qty int);
CREATE TABLE public."Orders" (id int PRIMARY KEY, v int);
CREATE TABLE public."select" (id int, "from" int);
CREATE TABLE public.parent (id int);
CREATE TABLE public.child (extra int) INHERITS (public.parent);
CREATE TABLE sales.orders (id int PRIMARY KEY, amount int, region text);
CREATE TABLE sales.returns (id int, order_id int);
CREATE TABLE sales.only_sales (id int);
CREATE TABLE "Mixed"."Caps" (id int);
CREATE TABLE "select"."table" (id int);
CREATE TABLE public.t1 (id int, v int);
CREATE TABLE public.t2 (id int, v int);
CREATE TABLE public.t3 (id int, v int);
CREATE TABLE public.t4 (id int, v int);
CREATE VIEW public.order_totals AS
    SELECT customer_id, sum(amount) AS total FROM public.orders GROUP BY customer_id;
CREATE SEQUENCE public.order_seq;
CREATE FUNCTION public.f_secret(int) RETURNS int LANGUAGE sql AS 'SELECT $1 + 1';
REVOKE EXECUTE ON FUNCTION public.f_secret(int) FROM PUBLIC;
CREATE FUNCTION sales.f_region(text) RETURNS text LANGUAGE sql AS 'SELECT upper($1)';
REVOKE EXECUTE ON FUNCTION sales.f_region(text) FROM PUBLIC;
CREATE FUNCTION public.srf(int) RETURNS SETOF int LANGUAGE sql AS 'SELECT generate_series(1, $1)';
REVOKE EXECUTE ON FUNCTION public.srf(int) FROM PUBLIC;
INSERT INTO public.orders VALUES (1, 10, 1, 'a'), (2, 20, 2, 'b');
INSERT INTO public.customers VALUES (1, 'ann'), (2, 'bob');
INSERT INTO public.items VALUES (1, 1, 3), (2, 2, 4);
INSERT INTO sales.orders VALUES (1, 5, 'eu');
INSERT INTO public.t1 VALUES (1, 1); INSERT INTO public.t2 VALUES (1, 2);
INSERT INTO public.t3 VALUES (1, 3); INSERT INTO public.t4 VALUES (1, 4);
"""
SCHEMAS = ("public", "sales", '"Mixed"', '"select"')
P = ("public",)
SP = ("sales", "public")
PS = ("public", "sales")

# (search path, statement). Every one must run with the classifier's grants.
CORPUS: list[tuple[tuple[str, ...], str]] = [
    # plain reads, joins, quoting, spacing
    (P, "SELECT * FROM orders"),
    (P, "SELECT id FROM public.orders"),
    (P, "SELECT id FROM public . orders"),
    (P, 'SELECT id FROM "public"."orders"'),
    (P, 'SELECT * FROM "Orders"'),
    (P, 'SELECT * FROM public."Orders" o JOIN orders p ON o.id = p.id'),
    (P, 'SELECT "from" FROM "select"'),
    (P, 'SELECT * FROM "select"."table"'),
    (P, 'SELECT * FROM "Mixed"."Caps"'),
    (P, 'SELECT * FROM U&"\\006Frders"'),
    (P, "SELECT * FROM U&\"!006Frders\" UESCAPE '!'"),
    (P, "SELECT * FROM ORDERS"),
    (P, "TABLE orders"),
    (P, "TABLE ONLY orders"),
    (P, "SELECT * FROM orders *"),
    (P, "SELECT * FROM ONLY orders"),
    (P, "SELECT * FROM parent"),
    (P, "SELECT * FROM ONLY parent"),
    (P, "SELECT * FROM child"),
    (P, "SELECT o.id, c.name FROM orders o JOIN customers c ON c.id = o.customer_id"),
    (P, "SELECT * FROM orders o LEFT JOIN items i ON i.order_id = o.id"),
    (P, "SELECT * FROM orders o RIGHT JOIN items i ON i.order_id = o.id"),
    (P, "SELECT * FROM orders o FULL JOIN items i ON i.order_id = o.id"),
    (P, "SELECT * FROM orders CROSS JOIN customers"),
    (P, "SELECT * FROM orders NATURAL JOIN items"),
    (P, "SELECT * FROM orders JOIN items USING (id)"),
    (P, "SELECT * FROM (orders JOIN items USING (id)) AS j"),
    (P, "SELECT * FROM orders, customers, items"),
    (P, "SELECT * FROM sales.orders s JOIN public.orders p ON s.id = p.id"),
    (SP, "SELECT * FROM orders"),
    (SP, "SELECT * FROM customers"),
    (SP, "SELECT * FROM orders JOIN customers ON true"),
    (PS, "SELECT * FROM orders"),
    (PS, "SELECT * FROM only_sales"),
    (PS, "SELECT * FROM returns r JOIN orders o ON o.id = r.order_id"),
    (("sales",), "SELECT * FROM orders"),
    (("sales",), "SELECT * FROM returns"),
    (("Mixed", "public"), 'SELECT * FROM "Caps"'),
    (("select", "public"), 'SELECT * FROM "table"'),
    (("$user", "public"), "SELECT * FROM orders"),
    (("nosuchschema", "public"), "SELECT * FROM orders"),
    # subqueries everywhere
    (P, "SELECT * FROM orders WHERE customer_id IN (SELECT id FROM customers)"),
    (P, "SELECT * FROM orders WHERE EXISTS (SELECT 1 FROM items WHERE items.order_id = orders.id)"),
    (P, "SELECT (SELECT name FROM customers c WHERE c.id = o.customer_id) FROM orders o"),
    (
        P,
        "SELECT customer_id FROM orders GROUP BY customer_id HAVING count(*) > (SELECT count(*) FROM items)",
    ),
    (P, "SELECT * FROM orders o JOIN customers c ON c.id = (SELECT min(id) FROM items)"),
    (P, "SELECT * FROM (SELECT * FROM orders) AS sub"),
    (P, "SELECT * FROM (SELECT * FROM (SELECT * FROM items) a) b"),
    (P, "SELECT * FROM orders ORDER BY (SELECT max(qty) FROM items)"),
    (P, "SELECT * FROM orders LIMIT (SELECT count(*) FROM customers)"),
    (P, "SELECT * FROM orders OFFSET (SELECT count(*) FROM items)"),
    (P, "VALUES ((SELECT count(*) FROM orders))"),
    (P, "SELECT * FROM (VALUES (1), ((SELECT max(id) FROM items))) v(x)"),
    (P, "SELECT * FROM orders o, LATERAL (SELECT * FROM items i WHERE i.order_id = o.id) l"),
    (P, "SELECT * FROM orders o CROSS JOIN LATERAL generate_series(1, o.amount) g"),
    (P, "SELECT * FROM generate_series(1, 3) g JOIN orders ON orders.id = g"),
    (P, "SELECT ARRAY(SELECT id FROM items)"),
    (P, "SELECT id = ANY(SELECT order_id FROM items) FROM orders"),
    (P, "SELECT CASE WHEN EXISTS (SELECT 1 FROM customers) THEN 1 END"),
    (P, "SELECT coalesce((SELECT max(amount) FROM orders), 0)"),
    (P, "SELECT count(*) FILTER (WHERE id IN (SELECT id FROM items)) FROM orders"),
    (P, "SELECT sum(amount) OVER (PARTITION BY customer_id) FROM orders"),
    (P, "SELECT row_number() OVER w FROM orders WINDOW w AS (ORDER BY id)"),
    (P, "SELECT * FROM orders TABLESAMPLE SYSTEM (50)"),
    (P, "SELECT * FROM orders WHERE id BETWEEN 1 AND (SELECT 2 FROM customers LIMIT 1)"),
    (P, "SELECT * FROM orders WHERE note LIKE 'a%' OR note ILIKE 'B%'"),
    (P, "SELECT * FROM orders WHERE note IS DISTINCT FROM (SELECT name FROM customers LIMIT 1)"),
    # set operations
    (P, "SELECT id FROM orders UNION SELECT id FROM items"),
    (P, "SELECT id FROM orders UNION ALL SELECT id FROM customers EXCEPT SELECT id FROM items"),
    (P, "(SELECT id FROM orders) INTERSECT (SELECT id FROM sales.orders)"),
    (P, "SELECT id FROM orders UNION (SELECT id FROM items ORDER BY id LIMIT 1)"),
    # CTEs and shadowing
    (P, "WITH x AS (SELECT * FROM orders) SELECT * FROM x"),
    (P, "WITH orders AS (SELECT * FROM customers) SELECT * FROM orders"),
    (P, "WITH orders AS (SELECT * FROM orders) SELECT * FROM orders"),
    (P, "WITH a AS (SELECT * FROM items), b AS (SELECT * FROM a) SELECT * FROM b"),
    (P, "WITH customers AS (SELECT 1 AS id) SELECT * FROM customers, items"),
    (P, "WITH x AS (SELECT 1) SELECT * FROM (SELECT * FROM x) s, orders"),
    (P, "SELECT * FROM (WITH orders AS (SELECT 1 AS id) SELECT * FROM orders) s, orders"),
    (P, "SELECT * FROM orders WHERE id IN (WITH items AS (SELECT 1 AS id) SELECT id FROM items)"),
    (
        P,
        "WITH RECURSIVE r(n) AS (SELECT 1 UNION ALL SELECT n + 1 FROM r WHERE n < 3) SELECT * FROM r",
    ),
    (
        P,
        "WITH RECURSIVE items(n) AS (SELECT 1 UNION ALL SELECT n + 1 FROM items WHERE n < 3) SELECT * FROM items",
    ),
    (
        P,
        "WITH RECURSIVE r AS (SELECT id FROM orders UNION SELECT o.id FROM orders o JOIN r ON o.id = r.id + 1) SELECT * FROM r",
    ),
    (
        P,
        "WITH a AS (SELECT * FROM customers) SELECT * FROM a WHERE id IN (WITH a AS (SELECT * FROM items) SELECT id FROM a)",
    ),
    (P, "WITH x AS MATERIALIZED (SELECT * FROM orders) SELECT * FROM x"),
    (P, "WITH x AS NOT MATERIALIZED (SELECT * FROM orders) SELECT * FROM x JOIN items USING (id)"),
    (P, "WITH x AS (SELECT * FROM orders) SELECT 1"),
    (P, "WITH x AS (SELECT 1 AS id) SELECT * FROM public.orders WHERE id IN (SELECT id FROM x)"),
    # views, sequences, functions
    (P, "SELECT * FROM order_totals"),
    (P, "SELECT * FROM order_totals t JOIN customers c ON c.id = t.customer_id"),
    (P, "SELECT nextval('order_seq')"),
    (P, "SELECT nextval('public.order_seq')"),
    (P, "SELECT nextval('\"order_seq\"')"),
    (P, "SELECT currval('order_seq') FROM (SELECT nextval('order_seq')) s"),
    (P, "SELECT setval('order_seq', 5)"),
    (P, "SELECT * FROM order_seq"),
    (P, "SELECT f_secret(1)"),
    (P, "SELECT public.f_secret(id) FROM orders"),
    (P, "SELECT sales.f_region(region) FROM sales.orders"),
    (SP, "SELECT f_region('x')"),
    (P, "SELECT * FROM srf(3)"),
    (P, "SELECT * FROM orders WHERE id IN (SELECT * FROM srf(2))"),
    (P, "SELECT lower(note), upper(note), length(note), count(*) FROM orders GROUP BY note"),
    (P, "SELECT now(), current_date, current_user, coalesce(null, 1), greatest(1, 2)"),
    (P, "SELECT json_agg(o) FROM orders o"),
    (P, "SELECT jsonb_build_object('a', id) FROM orders"),
    (P, "SELECT string_agg(note, ',') FROM orders"),
    (P, "SELECT array_agg(id ORDER BY id) FROM items"),
    (P, "SELECT date_trunc('day', now()), extract(year FROM now())"),
    (P, "SELECT substring(note FROM 1 FOR 1), position('a' IN note), trim(note) FROM orders"),
    (P, "SELECT id::text, CAST(amount AS bigint) FROM orders"),
    (P, "SELECT pg_sleep(0)"),
    (P, "SELECT pg_advisory_xact_lock(1)"),
    (P, "SELECT current_setting('search_path')"),
    (P, "SELECT 1 /* nested /* comment */ still */ FROM orders"),
    (P, "SELECT 1 -- comment\nFROM orders"),
    (P, "SELECT $$ ; SELECT * FROM items $$ FROM orders"),
    (P, "SELECT $a$ $b$ ; $b$ $a$ FROM orders"),
    (P, "SELECT E'\\' ; SELECT 1 FROM items' FROM orders"),
    (P, "SELECT ' ; DROP TABLE items' FROM orders"),
    (P, "SELECT * FROM orders; SELECT * FROM items"),
    (P, "SELECT 1; SELECT * FROM customers; SELECT * FROM sales.returns"),
    # FOR UPDATE / SHARE
    (P, "SELECT * FROM orders FOR UPDATE"),
    (P, "SELECT * FROM orders FOR SHARE"),
    (P, "SELECT * FROM orders FOR NO KEY UPDATE"),
    (P, "SELECT * FROM orders FOR KEY SHARE"),
    (P, "SELECT * FROM orders o JOIN items i ON i.order_id = o.id FOR UPDATE OF o"),
    (P, "SELECT * FROM orders o JOIN items i ON i.order_id = o.id FOR UPDATE"),
    (P, "SELECT * FROM orders o, customers c FOR SHARE OF c"),
    (P, "SELECT * FROM (SELECT * FROM orders) s FOR UPDATE"),
    (P, "SELECT * FROM orders WHERE id IN (SELECT order_id FROM items) FOR UPDATE"),
    # INSERT
    (P, "INSERT INTO orders VALUES (10, 1, 1, 'x')"),
    (P, "INSERT INTO orders (id, amount) VALUES (11, 2), (12, 3)"),
    (P, "INSERT INTO orders SELECT id + 100, qty, 1, 'x' FROM items"),
    (P, "INSERT INTO orders SELECT id + 100, amount, customer_id, note FROM orders"),
    (P, "INSERT INTO orders VALUES (13, 1, 1, 'x') RETURNING id"),
    (P, "INSERT INTO orders VALUES (1, 1, 1, 'x') ON CONFLICT DO NOTHING"),
    (P, "INSERT INTO orders VALUES (1, 1, 1, 'x') ON CONFLICT (id) DO NOTHING"),
    (
        P,
        "INSERT INTO orders VALUES (1, 1, 1, 'x') ON CONFLICT (id) DO UPDATE SET amount = excluded.amount",
    ),
    (
        P,
        "INSERT INTO orders VALUES (1, 1, 1, 'x') ON CONFLICT (id) DO UPDATE SET amount = orders.amount + 1",
    ),
    (P, "INSERT INTO orders VALUES (14, (SELECT max(qty) FROM items), 1, 'x')"),
    (P, "INSERT INTO orders VALUES (nextval('order_seq') + 100, 1, 1, 'x')"),
    (P, "INSERT INTO sales.returns SELECT id, id FROM sales.orders"),
    (SP, "INSERT INTO returns VALUES (1, 1)"),
    (P, 'INSERT INTO "Orders" VALUES (5, 5)'),
    (P, "WITH x AS (SELECT * FROM items) INSERT INTO orders SELECT id + 50, qty, 1, 'x' FROM x"),
    # UPDATE
    (P, "UPDATE orders SET amount = 1"),
    (P, "UPDATE orders SET amount = amount + 1"),
    (P, "UPDATE orders SET amount = 1 WHERE id = 1"),
    (P, "UPDATE orders SET amount = 1 WHERE true"),
    (P, "UPDATE orders SET amount = 1 RETURNING id"),
    (P, "UPDATE orders o SET amount = i.qty FROM items i WHERE i.order_id = o.id"),
    (P, "UPDATE orders SET amount = (SELECT max(qty) FROM items)"),
    (P, "UPDATE orders SET amount = 1 WHERE EXISTS (SELECT 1 FROM items i WHERE i.qty > 100)"),
    (P, "UPDATE orders SET note = c.name FROM customers c WHERE c.id = orders.customer_id"),
    (SP, "UPDATE orders SET region = 'us'"),
    (P, "UPDATE ONLY parent SET id = 1"),
    # DELETE
    (P, "DELETE FROM orders"),
    (P, "DELETE FROM orders WHERE id = 1"),
    (P, "DELETE FROM orders RETURNING *"),
    (P, "DELETE FROM orders o USING items i WHERE i.order_id = o.id"),
    (P, "DELETE FROM orders WHERE id IN (SELECT order_id FROM items)"),
    (P, "DELETE FROM items WHERE EXISTS (SELECT 1 FROM customers c WHERE c.id = 1)"),
    (PS, "DELETE FROM returns"),
    # data-modifying CTEs
    (P, "WITH d AS (DELETE FROM items RETURNING *) SELECT * FROM d"),
    (P, "WITH d AS (DELETE FROM items) SELECT 1"),
    (
        P,
        "WITH u AS (UPDATE orders SET amount = 0 RETURNING id) SELECT * FROM u JOIN customers ON true",
    ),
    (P, "WITH i AS (INSERT INTO items VALUES (9, 9, 9) RETURNING id) SELECT * FROM i"),
    (
        P,
        "WITH m AS (DELETE FROM orders RETURNING *) INSERT INTO sales.orders SELECT id + 100, amount, 'x' FROM m",
    ),
    # MERGE
    (
        P,
        "MERGE INTO orders o USING items i ON o.id = i.order_id WHEN MATCHED THEN UPDATE SET amount = i.qty",
    ),
    (
        P,
        "MERGE INTO orders o USING items i ON o.id = i.id WHEN NOT MATCHED THEN INSERT VALUES (i.id + 100, i.qty, 1, 'm')",
    ),
    (
        P,
        "MERGE INTO orders o USING (SELECT * FROM customers) c ON o.customer_id = c.id WHEN MATCHED THEN DELETE",
    ),
    (
        P,
        "MERGE INTO sales.orders s USING public.orders p ON s.id = p.id WHEN MATCHED THEN UPDATE SET amount = p.amount WHEN NOT MATCHED THEN INSERT VALUES (p.id, p.amount, 'eu')",
    ),
    # LOCK, EXPLAIN, COPY, cursors, PREPARE
    (P, "LOCK TABLE orders"),
    (P, "LOCK TABLE orders, items IN ROW EXCLUSIVE MODE"),
    (P, "EXPLAIN SELECT * FROM orders JOIN items USING (id)"),
    (P, "EXPLAIN ANALYZE DELETE FROM items"),
    (P, "EXPLAIN (COSTS OFF) UPDATE orders SET amount = amount"),
    (P, "COPY orders TO STDOUT"),
    (P, "COPY orders (id, amount) TO STDOUT WITH (FORMAT csv)"),
    (P, "COPY (SELECT * FROM orders JOIN items USING (id)) TO STDOUT"),
    (P, "COPY items FROM STDIN"),
    (P, "COPY sales.returns (id) FROM STDIN WITH (FORMAT csv)"),
    (P, "DECLARE c CURSOR FOR SELECT * FROM orders"),
    (P, "DECLARE c CURSOR FOR SELECT * FROM orders; FETCH 1 FROM c; CLOSE c"),
    (P, "SHOW search_path"),
    (P, "SET LOCAL application_name = 'x'; SELECT * FROM customers"),
    (P, "SET LOCAL search_path = sales; SELECT * FROM orders"),
    (P, "SET LOCAL search_path = sales, public; SELECT * FROM orders, customers"),
    (P, "SELECT 1; SET LOCAL search_path = sales; SELECT * FROM returns"),
    (P, "SET LOCAL search_path TO DEFAULT; SELECT * FROM orders"),
    (
        P,
        "SAVEPOINT s1; SET LOCAL search_path = sales; ROLLBACK TO SAVEPOINT s1; SELECT * FROM orders",
    ),
    (P, "SAVEPOINT s1; SET LOCAL search_path = sales; RELEASE s1; SELECT * FROM orders"),
    (P, "PREPARE p1 AS SELECT * FROM items; EXECUTE p1; DEALLOCATE p1"),
    (P, "PREPARE p2 (int) AS SELECT * FROM orders WHERE id = $1; EXECUTE p2(1); DEALLOCATE p2"),
    (P, "PREPARE p3 AS DELETE FROM items; EXECUTE p3; DEALLOCATE p3"),
    (
        P,
        "CREATE TEMP TABLE tmp_x (id int) ON COMMIT DROP; INSERT INTO tmp_x SELECT id FROM orders; SELECT * FROM tmp_x",
    ),
]

# Statements whose run may fail for a reason unrelated to privileges (still no 42501).
_MAY_FAIL = {"SELECT * FROM orders WHERE id IN (SELECT order_id FROM items) FOR UPDATE"}
# Accesses the classifier asks for though this server would not check them: a safe
# superset, each for a reason the classifier cannot see without running the planner or
# knowing columns.
_SUPERSET = {
    # a CTE nobody references is planned away (and with it its privilege check)
    ("WITH x AS (SELECT * FROM orders) SELECT 1", Access("read", "public.orders")),
    # nextval's USAGE also lets currval through
    (
        "SELECT currval('order_seq') FROM (SELECT nextval('order_seq')) s",
        Access("read", "public.order_seq"),
    ),
    # an unqualified column in a subquery may be the target's (no column catalog here)
    ("UPDATE orders SET amount = (SELECT max(qty) FROM items)", Access("read", "public.orders")),
}

_OPEN = frozenset({"pg_catalog", "information_schema", "pg_temp"})


@dataclass
class Oracle:
    conn: psycopg.Connection[tuple[object, ...]]
    catalog: RelationCatalog
    counter: Iterator[int]
    rows: list[tuple[str, str | None]]

    def classify(self, path: tuple[str, ...], sql: str, *, catalog: bool = True) -> list[Access]:
        scope = SessionScope(path, self.catalog if catalog else None, user="postgres")
        accesses: list[Access] = []
        for stmt in classify(sql, scope).statements:
            accesses.extend(a for a in stmt.accesses if a not in accesses)
            scope.statement_done(stmt, stmt.command)
        return accesses

    def run(self, path: tuple[str, ...], sql: str, grants: list[Access]) -> psycopg.Error | None:
        role = f"clsor_{os.getpid()}_{next(self.counter)}"
        cur = self.conn.cursor()
        cur.execute("BEGIN")
        try:
            cur.execute(pgsql.SQL("CREATE ROLE {} NOLOGIN").format(pgsql.Identifier(role)))
            for schema in SCHEMAS:
                cur.execute(f"GRANT USAGE ON SCHEMA {schema} TO {role}")
            for access in grants:
                for statement in self._grant(access, role):
                    cur.execute(statement)
            cur.execute(f"SET LOCAL ROLE {role}")
            path_sql = ", ".join(pgsql.Identifier(s).as_string(self.conn) for s in path)
            cur.execute(f"SET LOCAL search_path = {path_sql}")
            try:
                _execute(cur, sql)
            except psycopg.Error as exc:
                return exc
            return None
        finally:
            cur.execute("ROLLBACK")
            cur.execute("DEALLOCATE ALL")  # PREPARE outlives a rolled-back transaction

    def _grant(self, access: Access, role: str) -> list[str]:
        obj = access.obj
        if obj.startswith("function:"):
            assert access.action == "admin", access
            schema, _, name = obj.removeprefix("function:").partition(".")
            rows = self.conn.execute(
                "SELECT p.oid::regprocedure::text FROM pg_proc p JOIN pg_namespace n"
                " ON n.oid = p.pronamespace WHERE n.nspname = %s AND p.proname = %s",
                (schema, name),
            ).fetchall()
            return [f"GRANT EXECUTE ON FUNCTION {sig} TO {role}" for (sig,) in rows]
        schema, _, name = obj.partition(".")
        if schema == "pg_temp":
            return []  # the session's own temporary objects: PUBLIC may create them
        assert ":" not in obj and access.action in ("read", "write"), access
        ident = f"{pgsql.Identifier(schema).as_string(self.conn)}." + pgsql.Identifier(
            name
        ).as_string(self.conn)
        kind = self.conn.execute(
            "SELECT c.relkind FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace"
            " WHERE n.nspname = %s AND c.relname = %s",
            (schema, name),
        ).fetchone()
        if kind is None:
            return []  # a candidate that does not exist: nothing to grant
        if access.action == "read":
            return [f"GRANT SELECT ON {ident} TO {role}"]
        if kind[0] == "S":
            return [f"GRANT USAGE, UPDATE ON SEQUENCE {ident} TO {role}"]
        return [f"GRANT INSERT, UPDATE, DELETE ON {ident} TO {role}"]

    def derived(self, path: tuple[str, ...], sql: str) -> set[Access]:
        """Accesses asked for a view's relations or a parent's children: policy wants them
        (the server reads them), the server checks only the view's owner or the parent."""
        plain = RelationCatalog(
            (s, r)
            for s, r in self.rows
            if not s.startswith((RelationCatalog.VIEW_MARK, RelationCatalog.CHILD_MARK))
        )
        scope = SessionScope(path, plain, user="postgres")
        seen: set[Access] = set()
        for stmt in classify(sql, scope).statements:
            seen.update(stmt.accesses)
            scope.statement_done(stmt, stmt.command)
        return set(self.classify(path, sql)) - seen

    def withholdable(self, access: Access) -> bool:
        """Whether withholding ``access`` can change anything (it exists, PUBLIC lacks it)."""
        obj = access.obj.removeprefix("function:")
        schema = obj.partition(".")[0]
        return schema not in _OPEN and bool(self._grant(access, "nobody"))

    def check(self, path: tuple[str, ...], sql: str) -> list[Access]:
        accesses = self.classify(path, sql)
        failure = self.run(path, sql, accesses)
        if failure is not None:
            assert failure.sqlstate != "42501", (
                f"{sql!r} with {accesses} missed an object: {failure}"
            )
            assert sql in _MAY_FAIL, f"{sql!r} failed: {failure.sqlstate} {failure}"
        derived = self.derived(path, sql)
        for access in accesses:
            if not self.withholdable(access) or (sql, access) in _SUPERSET or access in derived:
                continue
            others = [a for a in accesses if a != access]
            failure = self.run(path, sql, others)
            assert failure is not None and failure.sqlstate == "42501", (
                f"{sql!r}: {access} withheld, yet {failure or 'it ran'}"
            )
        return accesses


def _execute(cur: psycopg.Cursor[tuple[object, ...]], sql: str) -> None:
    if sql.startswith("COPY") and "STDIN" in sql:
        with cur.copy(sql.encode()):
            pass
    elif sql.startswith("COPY") and "STDOUT" in sql:
        with cur.copy(sql.encode()) as copy:
            for _ in copy:
                pass
    else:
        cur.execute(sql.encode())  # bytes: no client-side placeholder handling


@pytest.fixture(scope="module")
def oracle(pg_server: PgServer) -> Iterator[Oracle]:
    pg_server.psql(f"DROP DATABASE IF EXISTS {DATABASE}")
    pg_server.psql(f"CREATE DATABASE {DATABASE}")
    pg_server.psql(SETUP, dbname=DATABASE)
    dsn = pg_server.dsn(dbname=DATABASE)
    with psycopg.connect(dsn, autocommit=True, prepare_threshold=None) as conn:
        rows = [
            (str(s), None if r is None else str(r))
            for s, r in conn.execute(RelationCatalog.QUERY).fetchall()
        ]
        yield Oracle(conn, RelationCatalog(rows), itertools.count(), rows)


def test_corpus_is_large_enough() -> None:
    assert len(CORPUS) >= 150


@pytest.mark.parametrize(("path", "sql"), CORPUS, ids=[f"{i:03d}" for i in range(len(CORPUS))])
def test_classifier_grants_are_exactly_what_the_server_checks(
    oracle: Oracle, path: tuple[str, ...], sql: str
) -> None:
    oracle.check(path, sql)


@pytest.mark.parametrize(("path", "sql"), CORPUS, ids=[f"{i:03d}" for i in range(len(CORPUS))])
def test_without_a_catalog_every_candidate_is_granted_and_nothing_is_missed(
    oracle: Oracle, path: tuple[str, ...], sql: str
) -> None:
    accesses = oracle.classify(path, sql, catalog=False)
    # (what views read and parents' children come from the catalog alone)
    assert set(oracle.classify(path, sql)) - oracle.derived(path, sql) <= set(accesses)
    failure = oracle.run(path, sql, accesses)
    assert failure is None or (failure.sqlstate != "42501" and sql in _MAY_FAIL), failure


_TABLES = ("t1", "t2", "t3", "t4")
_NAMES = st.sampled_from((*_TABLES, "x", "y"))


@st.composite
def _queries(draw: st.DrawFn) -> str:
    """A random query: CTEs (some named like tables), joins, subqueries, set operations."""
    aliases = itertools.count()

    def source(depth: int, visible: list[str]) -> str:
        choice = draw(st.integers(0, 3 if depth < 2 else 0))
        if choice == 0:
            name = draw(st.sampled_from(visible + list(_TABLES)))
            return f"{name} q{next(aliases)}"
        if choice == 1:
            return f"({select(depth + 1, visible)}) q{next(aliases)}"
        if choice == 2:
            return f"{source(depth + 1, visible)} CROSS JOIN {source(depth + 1, visible)}"
        return f"{source(depth + 1, visible)} JOIN {source(depth + 1, visible)} ON true"

    def select(depth: int, visible: list[str]) -> str:
        ctes: dict[str, str] = {}
        inner_visible = list(visible)
        if depth < 2 and draw(st.booleans()):
            recursive_ok = inner_visible  # a CTE sees only the ones before it
            for _ in range(draw(st.integers(1, 2))):
                name = draw(_NAMES)
                if name not in ctes:
                    ctes[name] = select(depth + 1, list(recursive_ok))
                    inner_visible = [*inner_visible, name]
                    recursive_ok = inner_visible
        body = f"SELECT 1 AS id FROM {source(depth, inner_visible)}"
        for name in ctes:  # an unreferenced CTE is planned away, unchecked: use each one
            body += f" CROSS JOIN {name} q{next(aliases)}"
        if depth < 2 and draw(st.booleans()):
            body += f" WHERE EXISTS ({select(depth + 1, inner_visible)})"
        if depth < 2 and draw(st.booleans()):
            body = f"({body}) UNION ALL ({select(depth + 1, inner_visible)})"
        with_clause = ", ".join(f"{n} AS ({q})" for n, q in ctes.items())
        return (f"WITH {with_clause} " if ctes else "") + body

    return select(0, [])


@settings(
    max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(query=_queries())
def test_random_queries_against_the_server(oracle: Oracle, query: str) -> None:
    oracle.check(P, query)


@st.composite
def _writes(draw: st.DrawFn) -> str:
    """A random write whose sources are random queries (CTEs may shadow the target)."""
    target = draw(st.sampled_from(_TABLES))
    source = draw(_queries())
    kind = draw(st.sampled_from(["insert", "update", "delete", "cte", "merge"]))
    if kind == "insert":
        return f"INSERT INTO {target} (id) {source}"
    if kind == "update":
        return f"UPDATE {target} SET v = 1 WHERE EXISTS ({source})"
    if kind == "delete":
        return f"DELETE FROM {target} WHERE EXISTS ({source})"
    if kind == "merge":
        return f"MERGE INTO {target} m USING ({source}) s ON false WHEN NOT MATCHED THEN INSERT (id) VALUES (s.id)"
    shadow = draw(st.sampled_from(_TABLES))
    return f"WITH {shadow} AS (DELETE FROM {target} RETURNING id) SELECT * FROM {shadow}"


@settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(statement=_writes())
def test_random_writes_against_the_server(oracle: Oracle, statement: str) -> None:
    oracle.check(P, statement)


# Sequences of texts (each run alone, in order); the last statement of a text marked "!"
# fails. After each, the session's path must be the server's own.
SCOPE_RUNS: list[list[str]] = [
    ["SET search_path = sales"],
    ["SET search_path = 'sales, public'"],
    ['SET search_path = "Mixed", public'],
    ["SET search_path TO sales, public", "RESET search_path"],
    ["SET search_path = sales", "SET search_path = DEFAULT"],
    ["SET search_path = sales", "RESET ALL"],
    ["SET search_path = sales", "DISCARD ALL"],
    ["BEGIN", "SET search_path = sales", "ROLLBACK"],
    ["BEGIN", "SET search_path = sales", "COMMIT"],
    ["BEGIN", "SET LOCAL search_path = sales", "SELECT 1", "COMMIT"],
    ["SET LOCAL search_path = sales"],
    ["SET LOCAL search_path = sales; SELECT 1"],
    [
        "BEGIN",
        "SET search_path = sales",
        "SAVEPOINT a",
        "SET search_path = public",
        "ROLLBACK TO a",
    ],
    [
        "BEGIN",
        "SET search_path = sales",
        "SAVEPOINT a",
        'SET search_path = "Mixed"',
        "RELEASE a",
        "ROLLBACK",
    ],
    ["BEGIN", "SAVEPOINT a", "SET LOCAL search_path = sales", "ROLLBACK TO SAVEPOINT a", "COMMIT"],
    [
        "BEGIN",
        "SET search_path = sales",
        "COMMIT AND CHAIN",
        "SET search_path = public",
        "ROLLBACK",
    ],
    ["BEGIN", "SET search_path = sales", "SELECT 1/0!", "COMMIT"],
    ["BEGIN", "SET search_path = sales", "SELECT 1/0!", "ROLLBACK"],
    ["SET search_path = sales; SELECT 1/0!"],
    ["SET search_path = sales; SELECT 1", "SET search_path = public; SELECT 1/0!"],
    ["START TRANSACTION", "SET search_path = sales", "END"],
    ["BEGIN", "SET search_path = sales", "ABORT"],
]


@pytest.mark.parametrize("texts", SCOPE_RUNS, ids=[f"{i:02d}" for i in range(len(SCOPE_RUNS))])
def test_session_scope_follows_the_servers_search_path(
    oracle: Oracle, pg_server: PgServer, texts: list[str]
) -> None:
    with psycopg.connect(
        pg_server.dsn(dbname=DATABASE), autocommit=True, prepare_threshold=None
    ) as conn:
        scope = SessionScope(("public",), oracle.catalog, user="postgres")
        conn.execute("SET search_path = public")
        for text in texts:
            failing = text.endswith("!")
            text = text.removesuffix("!")
            statements = classify(text, scope).statements
            cur = conn.cursor()
            try:
                cur.execute(text.encode())
            except psycopg.Error:
                assert failing, text
                for stmt in statements[:-1]:
                    scope.statement_done(stmt, stmt.command)
                scope.error()
            else:
                assert not failing, text
                for stmt in statements:
                    scope.statement_done(stmt, cur.statusmessage or "")
                    cur.nextset()
            status = conn.info.transaction_status
            scope.ready({0: "I", 2: "T", 3: "E"}[int(status)])
            if status == psycopg.pq.TransactionStatus.INERROR:
                continue  # the server answers nothing until the block ends
            (server,) = conn.execute("SELECT current_schemas(false)").fetchone() or ((),)
            ours = [
                s
                for s in scope.search_paths[0]
                if oracle.catalog.schema(s) != "no" and s not in ("pg_catalog", "pg_temp")
            ]
            assert (len(scope.search_paths), ours) == (1, list(server)), texts


_FRAGMENTS = (
    "SELECT 1",
    "SELECT ';'",
    "SELECT 'a''b;c'",
    "SELECT E'\\';'",
    "SELECT E'\\\\'",
    "SELECT $$;$$",
    "SELECT $a$ $b$; $b$ ; $a$",
    "SELECT $_1$;$_1$",
    'SELECT 1 AS "x;y"',
    "SELECT U&'\\0041;'",
    "SELECT 1 /* ; /* ; */ ; */",
    "SELECT 1 -- ;\n",
    "SELECT * FROM orders",
    "SELECT 2 FROM customers WHERE name <> ';'",
    "/* only ; a comment */",
)


@settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(parts=st.lists(st.sampled_from(_FRAGMENTS), min_size=1, max_size=6))
def test_texts_split_into_the_statements_the_server_runs(oracle: Oracle, parts: list[str]) -> None:
    text = ";\n".join(parts)
    statements = classify(text, SessionScope(P, oracle.catalog)).statements
    cur = oracle.conn.cursor()
    cur.execute(text.encode())
    results = 0
    while True:
        if cur.pgresult is not None and cur.pgresult.status in (
            psycopg.pq.ExecStatus.TUPLES_OK,
            psycopg.pq.ExecStatus.COMMAND_OK,
        ):
            results += 1
        if not cur.nextset():
            break
    assert len(statements) == results, text
    assert all(s.command == "SELECT" for s in statements)


def test_the_catalog_query_reads_relations_functions_views_and_children(oracle: Oracle) -> None:
    catalog = oracle.catalog
    assert catalog.schemas_of("orders") == {"public", "sales"}
    assert catalog.schema("Mixed") == "yes"
    assert catalog.knows_functions
    assert catalog.function_schemas("f_secret") == {"public"}
    assert "pg_catalog" in catalog.function_schemas("lower")
    assert catalog.reads_through("public", "order_totals") == [("public", "orders")]
    assert catalog.reads_through("public", "parent") == [("public", "child")]
    assert catalog.reads_through("public", "parent", children=False) == []
