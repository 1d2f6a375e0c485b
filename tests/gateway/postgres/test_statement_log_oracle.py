"""Oracles: the server's own statement log, and its own table statistics, against the audit.

The server runs with ``log_statement = all``, so it writes down every statement it executes.
Through the gateway, each of those must have an audit record allowing it (matched by text,
redacted literals aside, one record per execution), except the gateway's own relation-catalog
query at login (identified by its exact text, ``RelationCatalog.QUERY``); and no denied
statement's text may ever appear in the server's log. The session below mixes what clients
do: simple and extended protocol, multi-statement queries with a denied part, SQL-level
PREPARE / EXECUTE, ``search_path`` changes, CTEs, COPY, function calls, a password literal.

The log cannot tell where an unqualified name resolved; the server's ``pg_stat_user_tables``
counters can: schema ``other`` (granted to nobody, readable by the gateway's own login) must
show no scan and no change from anything sent through the gateway, whatever the session's
search_path, prepared statements or transaction state. Random sessions close the module.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
from collections.abc import Iterator
from typing import TYPE_CHECKING

import pytest

from lockgate.gateway.postgres.redact import MASK
from tests.e2e.pg_stack import (
    Judged,
    PgLocalStack,
    catalog_query,
    denied_but_executed,
    judged_statements,
    logged_statements,
    matches_audited,
    qualified_relations,
    unaudited,
)

if TYPE_CHECKING:
    from tests.pgserver import PgServer

DAG = "warehouse_orders"
#: Statements the policy denies; none of them may reach the server.
DENIED_SIMPLE = [
    "DROP TABLE sales.orders",
    "SELECT * FROM other.secret",
    "SELECT count(*) FROM sales.orders; SELECT value FROM other.secret",
    "WITH s AS (SELECT value FROM other.secret) SELECT order_id FROM sales.orders, s",
    "SELECT pg_read_file('/etc/passwd')",
    "COPY other.secret TO STDOUT",
    "ALTER ROLE CURRENT_USER PASSWORD 'new-password-not-for-logs'",
    "TRUNCATE sales.orders",
    "INSERT INTO other.secret VALUES (2, 'planted')",
    # the same relation, spelled and reached every other way
    'SELECT * FROM "other"."secret"',
    "SELECT * FROM OTHER.SECRET",
    'SELECT * FROM U&"\\006fther".secret',
    "SELECT * FROM other/**/.secret",
    "TABLE other.secret",
    "SELECT (SELECT value FROM other.secret LIMIT 1)",
    "SELECT o.order_id FROM sales.orders o, LATERAL (SELECT value FROM other.secret) s",
    "COPY (SELECT value FROM other.secret) TO STDOUT",
    "WITH gone AS (DELETE FROM other.secret RETURNING id) SELECT count(*) FROM sales.orders",
    "EXPLAIN ANALYZE DELETE FROM other.secret",
    "DO $$ BEGIN DELETE FROM other.secret; END $$",
    "SELECT lo_import('/etc/passwd')",
    "PREPARE wipe AS DELETE FROM other.secret; EXECUTE wipe",
]


# -- the oracle's own rules (no server) ----------------------------------------------------------
def test_logged_entries_split_into_statements() -> None:
    assert logged_statements("SELECT 1; SELECT 2") == ["SELECT 1", "SELECT 2"]
    assert logged_statements("SELECT ';'  ;\n INSERT INTO t VALUES ($1)") == [
        "SELECT ';'",
        "INSERT INTO t VALUES ($1)",
    ]
    assert logged_statements("BEGIN") == ["BEGIN"]
    assert logged_statements("not sql at all ((") == ["not sql at all (("]


def test_unaudited_counts_executions_and_honours_redaction() -> None:
    judged = [
        Judged("SELECT 1", "allow", None, None),
        Judged(f"ALTER ROLE x PASSWORD {MASK}", "allow", "admin", "role:x"),
        Judged("SELECT * FROM other.secret", "deny", "read", "other.secret"),
    ]
    assert unaudited(["SELECT 1"], judged) == []
    # a second execution needs a second record
    assert unaudited(["SELECT 1", "SELECT 1"], judged) == ["SELECT 1"]
    assert unaudited(["ALTER ROLE x PASSWORD 'p'"], judged) == []
    assert unaudited(["ALTER ROLE y PASSWORD 'p'"], judged) == ["ALTER ROLE y PASSWORD 'p'"]
    assert unaudited(["SELECT * FROM other.secret"], judged) == ["SELECT * FROM other.secret"]
    assert unaudited(["CATALOG"], judged, exempt=["CATALOG"]) == []
    assert denied_but_executed(["SELECT * FROM other.secret"], judged) == [
        "SELECT * FROM other.secret"
    ]
    assert denied_but_executed(["SELECT 1"], judged) == []


def test_unaudited_wants_the_record_to_name_what_the_text_names() -> None:
    text = "SELECT o.id FROM sales.orders o JOIN other.secret s ON true"
    both = Judged(text, "allow", "read", "sales.orders", objects=("sales.orders", "other.secret"))
    one = Judged(text, "allow", "read", "sales.orders", objects=("sales.orders",))
    assert unaudited([text], [both]) == []
    assert unaudited([text], [one]) == [text]
    assert qualified_relations(text) == {"sales.orders", "other.secret"}
    # CTE names are not relations; a PREPARE names relations but reads nothing
    assert qualified_relations("WITH x AS (SELECT 1) SELECT * FROM x, sales.orders") == {
        "sales.orders"
    }
    assert qualified_relations("PREPARE p AS SELECT * FROM other.secret") == frozenset()


# -- through the gateway, to the real server -----------------------------------------------------
@pytest.fixture(scope="module")
def pg_stack(
    pg_server: PgServer, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[PgLocalStack]:
    with PgLocalStack(tmp_path_factory.mktemp("lockgate-pg-oracle"), pg_server) as s:
        yield s


def _simple_session(stack: PgLocalStack) -> None:
    import psycopg2  # type: ignore[import-untyped]
    import psycopg2.errors  # type: ignore[import-untyped]

    conn = psycopg2.connect(**stack.connect_kwargs(stack.mint(DAG, "oracle_simple")))
    conn.autocommit = True
    try:
        cur = conn.cursor()
        cur.execute("SELECT count(*) FROM sales.orders")
        cur.execute("INSERT INTO sales.orders VALUES ('or-1', 'oracle', 1), ('or-2', 'oracle', 2)")
        cur.execute("UPDATE sales.orders SET amount = amount * 10 WHERE customer = 'oracle'")
        cur.execute("SELECT 1; SELECT order_id FROM sales.orders WHERE amount > 5")
        cur.execute(  # two objects: the record names both
            "SELECT o.order_id FROM sales.orders o"
            " JOIN pg_catalog.pg_namespace n ON n.nspname = o.customer"
        )
        cur.execute("PREPARE totals AS SELECT sum(amount) FROM sales.orders")
        cur.execute("EXECUTE totals")
        cur.execute("EXECUTE totals")
        cur.execute("DEALLOCATE totals")
        cur.execute("SET search_path TO sales")
        cur.execute("SELECT count(*) FROM orders")
        for text in DENIED_SIMPLE:
            with pytest.raises(psycopg2.errors.InsufficientPrivilege):
                cur.execute(text)
                pytest.fail(f"not refused: {text}")
        # PREPARE reads nothing (it is admitted); its EXECUTE is judged on the prepared text.
        cur.execute("PREPARE peek AS SELECT value FROM other.secret")
        with pytest.raises(psycopg2.errors.InsufficientPrivilege):
            cur.execute("EXECUTE peek")
        cur.execute("DEALLOCATE peek")
        cur.execute("SET search_path TO other, public")
        with pytest.raises(psycopg2.errors.InsufficientPrivilege):
            cur.execute("SELECT value FROM secret")
        cur.execute("RESET search_path")
        cur.execute("BEGIN")
        cur.execute("DELETE FROM sales.orders WHERE order_id = 'or-2'")
        with pytest.raises(psycopg2.errors.InsufficientPrivilege):
            cur.execute("DELETE FROM other.secret")
        cur.execute("COMMIT")
    finally:
        conn.close()


def _extended_session(stack: PgLocalStack) -> None:
    import psycopg
    import psycopg.errors

    kwargs = stack.connect_kwargs(stack.mint(DAG, "oracle_extended"))
    with psycopg.connect(**kwargs, autocommit=True, prepare_threshold=0) as conn:
        select = "SELECT amount FROM sales.orders WHERE order_id = %s"
        for order in ("or-1", "seed-1", "or-1"):
            conn.execute(select, (order,))
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            conn.execute("SELECT value FROM other.secret WHERE id = %s", (1,))
        with conn.pipeline() as pipeline:
            conn.execute("INSERT INTO sales.orders VALUES (%s, %s, %s)", ("or-3", "oracle", 3))
            conn.execute(select, ("or-3",))
            pipeline.sync()
            with pytest.raises(psycopg.errors.InsufficientPrivilege):
                conn.execute("UPDATE other.secret SET value = %s", ("x",))
                pipeline.sync()
        with conn.cursor() as cur, cur.copy("COPY sales.orders FROM STDIN") as copy:
            copy.write_row(("or-4", "oracle", 4))
        with conn.cursor() as cur, cur.copy("COPY sales.orders TO STDOUT") as copy:
            dumped = b"".join(bytes(chunk) for chunk in copy)
        assert b"or-4\toracle\t4\n" in dumped


def test_every_executed_statement_is_audited_as_allowed(pg_stack: PgLocalStack) -> None:
    untouched = pg_stack.table_activity("other")
    _simple_session(pg_stack)
    _extended_session(pg_stack)
    # The server's own counters: nothing scanned or changed a table of schema "other".
    assert pg_stack.table_activity_since("other", untouched) == {}
    logged = pg_stack.upstream_statements()
    judged = judged_statements(pg_stack.audit_rows())
    # The session reached the server at all, and the audit saw both kinds of decision.
    assert any("or-1" in s for s in logged)
    assert {j.decision for j in judged} >= {"allow", "deny"}
    assert unaudited(logged, judged, exempt=[catalog_query()]) == []
    assert denied_but_executed(logged, judged) == []
    # Belt and braces: nothing of a denied statement is in the server's log, and the
    # password literal is in neither the log nor the audit.
    prepare = "PREPARE peek AS SELECT value FROM other.secret"
    assert not [
        s
        for s in logged
        if ("secret" in s and s != prepare) or "pg_read_file" in s or "TRUNCATE" in s
    ]
    assert "EXECUTE peek" not in logged
    assert not [s for s in logged if "new-password-not-for-logs" in s]
    assert not [j for j in judged if "new-password-not-for-logs" in j.text]
    # The refusals did nothing on the server; the one inside BEGIN ... COMMIT failed that
    # transaction as a server error would, so its DELETE of or-2 was rolled back.
    assert pg_stack.superuser_query("SELECT id, value FROM other.secret") == [
        (1, "the-upstream-only-secret")
    ]
    assert pg_stack.superuser_query(
        "SELECT order_id, amount FROM sales.orders WHERE customer = 'oracle' ORDER BY 1"
    ) == [("or-1", 10), ("or-2", 20), ("or-3", 3), ("or-4", 4)]


def test_denied_statements_are_each_audited(pg_stack: PgLocalStack) -> None:
    judged = judged_statements(pg_stack.audit_rows())
    denied = {j.text for j in judged if j.decision == "deny"}
    for text in DENIED_SIMPLE:
        # (a multi-statement query is refused whole: a part of it is recorded as denied;
        # literals may be masked in the record)
        parts = logged_statements(text)
        assert any(matches_audited(p, d) for p in parts for d in denied), (text, denied)
    assert "SELECT value FROM secret" in denied
    assert "EXECUTE peek" in denied


# -- names resolve where the server resolves them ------------------------------------------------
# ``orders`` is sales.orders (granted) or other.orders (not), by the session's search_path.
# Besides the audit, the server's own counters must show other.orders untouched.
def test_search_path_changes_the_server_rolls_back_are_rolled_back_too(
    pg_stack: PgLocalStack,
) -> None:
    """The session stands on ``other`` (where ``orders`` is other.orders, not granted). A SET
    to ``sales`` that the server undoes (failed implicit transaction, ROLLBACK, ROLLBACK TO
    SAVEPOINT, SET LOCAL at commit) must be undone in the gateway's view too: else it would
    judge ``orders`` as sales.orders while the server reads other.orders."""
    import psycopg2
    import psycopg2.errors

    task = "search_path_rollback"
    since = pg_stack.server.log_position()
    untouched = pg_stack.table_activity("other")
    conn = psycopg2.connect(**pg_stack.connect_kwargs(pg_stack.mint(DAG, task)))
    conn.autocommit = True
    peek = "SELECT order_id FROM orders"
    leaked: list[str] = []

    def peek_is_refused(when: str) -> None:
        try:
            cur.execute(peek)
        except psycopg2.errors.InsufficientPrivilege:
            return
        leaked.append(f"{when}: {cur.fetchall()}")

    try:
        cur = conn.cursor()
        cur.execute("SET search_path TO other")
        peek_is_refused("on other")
        with pytest.raises(psycopg2.errors.DivisionByZero):
            cur.execute("SET search_path TO sales; SELECT 1/0")
        peek_is_refused("after a failed implicit transaction")
        cur.execute("BEGIN")
        cur.execute("SET search_path TO sales")
        cur.execute("ROLLBACK")
        peek_is_refused("after ROLLBACK")
        cur.execute("BEGIN")
        cur.execute("SAVEPOINT before_sales")
        cur.execute("SET search_path TO sales")
        cur.execute("ROLLBACK TO SAVEPOINT before_sales")
        cur.execute("COMMIT")
        peek_is_refused("after ROLLBACK TO SAVEPOINT")
        cur.execute("BEGIN")
        cur.execute("SET LOCAL search_path TO sales")
        cur.execute("SELECT count(*) FROM orders")  # sales.orders, inside the block
        cur.execute("COMMIT")
        peek_is_refused("after SET LOCAL ended")
        with pytest.raises(psycopg2.errors.InsufficientPrivilege):
            cur.execute("SELECT set_config('search_path', 'sales', false)")
        peek_is_refused("after set_config")
        cur.execute("SET search_path TO sales")
        cur.execute(peek)  # and a SET that stands is followed
        assert all(r[0] != "hidden-1" for r in cur.fetchall())
    finally:
        conn.close()
    assert leaked == []
    # Only the last peek, under a path that stood, reached the server.
    assert pg_stack.upstream_statements(since).count(peek) == 1
    assert pg_stack.table_activity_since("other", untouched) == {}


def test_psycopg3_prepared_statement_is_judged_under_the_current_search_path(
    pg_stack: PgLocalStack,
) -> None:
    """psycopg 3 keeps ``SELECT ... FROM orders`` prepared by its text; after a SET
    search_path the server re-plans it against ``other.orders``, so the gateway must judge
    that execution under the new path, not the one the Parse was judged under."""
    import psycopg
    import psycopg.errors

    task = "psycopg3_search_path"
    since = pg_stack.server.log_position()
    untouched = pg_stack.table_activity("other")
    kwargs = pg_stack.connect_kwargs(pg_stack.mint(DAG, task))
    unqualified = "SELECT count(*) FROM orders WHERE amount > %s"
    with psycopg.connect(**kwargs, autocommit=True, prepare_threshold=0) as conn:
        conn.execute("SET search_path TO sales")
        assert conn.execute(unqualified, (-1,)).fetchone() is not None
        conn.execute("SET search_path TO other")
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            conn.execute(unqualified, (-1,))  # the same named statement: Bind + Execute only
        conn.execute("SET search_path TO sales")
        assert conn.execute(unqualified, (-1,)).fetchone() is not None
    reads = [
        (j.decision, j.object)
        for j in pg_stack.judged(task)
        if j.text == "SELECT count(*) FROM orders WHERE amount > $1"
    ]
    assert ("deny", "other.orders") in reads and ("allow", "sales.orders") in reads
    assert not any(o == "other.orders" for d, o in reads if d == "allow")
    # The server ran the statement twice, both times under the one name psycopg prepared.
    runs = [
        s
        for s in pg_stack.server.statements(since)
        if s.user == pg_stack.upstream_user
        and s.text == "SELECT count(*) FROM orders WHERE amount > $1"
    ]
    assert len(runs) == 2 and len({s.prepared_name for s in runs}) == 1
    assert runs[0].prepared_name.startswith("_pg3_")
    assert pg_stack.table_activity_since("other", untouched) == {}


async def _asyncpg_cached_statement_across_search_paths(
    stack: PgLocalStack, task: str
) -> list[str]:
    import asyncpg  # type: ignore[import-untyped]

    conn = await stack.asyncpg_connect(stack.mint(DAG, task))
    outcomes_: list[str] = []
    try:
        for path in ("sales", "other", "sales"):
            await conn.execute(f"SET search_path TO {path}")
            try:  # asyncpg's cache holds the statement by its text: Bind + Execute only
                count = await conn.fetchval("SELECT count(*) FROM orders WHERE amount > $1", -1)
                outcomes_.append(f"{path}: {count}")
            except asyncpg.exceptions.InsufficientPrivilegeError:
                outcomes_.append(f"{path}: refused")
    finally:
        await conn.close()
    return outcomes_


def test_asyncpg_cached_statement_is_judged_under_the_current_search_path(
    pg_stack: PgLocalStack,
) -> None:
    untouched = pg_stack.table_activity("other")
    seen = asyncio.run(_asyncpg_cached_statement_across_search_paths(pg_stack, "asyncpg_path"))
    assert [s.split(": ")[1] == "refused" for s in seen] == [False, True, False], seen
    assert pg_stack.table_activity_since("other", untouched) == {}


#: Statements a random session draws from: granted, refused, and ones whose verdict depends
#: on the session (search_path, transaction state); ``SELECT 1/0`` is a server error.
SESSION_STATEMENTS = [
    "SELECT count(*) FROM sales.orders",
    "UPDATE sales.orders SET amount = amount WHERE order_id = 'seed-1'",
    "SELECT count(*) FROM orders",
    "SET search_path TO sales",
    "SET search_path TO other",
    "SET search_path TO other, sales",
    "SET LOCAL search_path TO other",
    "RESET search_path",
    "BEGIN",
    "COMMIT",
    "ROLLBACK",
    "SAVEPOINT s",
    "ROLLBACK TO SAVEPOINT s",
    "RELEASE SAVEPOINT s",
    "SELECT 1/0",
    "SET search_path TO sales; SELECT 1/0",
    "SELECT value FROM other.secret",
    "DELETE FROM other.secret",
    "SELECT count(*) FROM other.orders",
    "DROP TABLE sales.orders",
]


@pytest.mark.slow
def test_random_sessions_keep_both_oracles(pg_stack: PgLocalStack) -> None:
    """Random sequences of the statements above, over simple and extended protocol: the
    server ran nothing the audit does not allow, and its counters show nothing in schema
    ``other`` scanned or changed (whatever the search_path or transaction state)."""
    import psycopg
    import psycopg2

    since = pg_stack.server.log_position()
    untouched = pg_stack.table_activity("other")
    token = pg_stack.mint(DAG, "oracle_random")

    def session(statements: list[str], extended: bool) -> None:
        if extended:  # psycopg 3: Parse/Bind/Execute, named statements from the first run
            with psycopg.connect(
                **pg_stack.connect_kwargs(token), autocommit=True, prepare_threshold=0
            ) as conn:
                for text in statements:
                    if ";" not in text:  # one statement per Parse
                        with contextlib.suppress(psycopg.Error):
                            conn.execute(text, ())
            return
        conn2 = psycopg2.connect(**pg_stack.connect_kwargs(token))
        conn2.autocommit = True
        try:
            cur = conn2.cursor()
            for text in statements:
                with contextlib.suppress(psycopg2.Error):
                    cur.execute(text)
        finally:
            conn2.close()

    draw = random.Random(20261205)  # the same sessions every run
    for _ in range(40):
        length = draw.randint(2, 14)
        session([draw.choice(SESSION_STATEMENTS) for _ in range(length)], draw.random() < 0.5)
    # The draw reached both verdicts for the name that depends on the path.
    verdicts = {
        (j.decision, j.object)
        for j in pg_stack.judged("oracle_random")
        if j.text == "SELECT count(*) FROM orders"
    }
    assert {("allow", "sales.orders"), ("deny", "other.orders")} <= verdicts, verdicts
    logged = pg_stack.upstream_statements(since)
    judged = judged_statements(pg_stack.audit_rows())
    assert logged
    assert unaudited(logged, judged, exempt=[catalog_query()]) == []
    assert pg_stack.table_activity_since("other", untouched) == {}
    assert pg_stack.superuser_query("SELECT count(*) FROM other.secret") == [(1,)]


def test_the_oracle_sees_a_statement_that_bypassed_the_gateway(pg_stack: PgLocalStack) -> None:
    """The oracle is not vacuous: a statement run on the server with the gateway's own login
    but not through the gateway (as a leaked credential would) has no record, and is named.
    (Last in this module: it leaves such a statement in the stack's log.)"""
    import psycopg

    since = pg_stack.server.log_position()
    untouched = pg_stack.table_activity("other")
    direct = pg_stack.server.dsn(
        pg_stack.upstream_user, pg_stack.upstream_password, dbname=pg_stack.database
    )
    with psycopg.connect(direct, autocommit=True) as conn:
        conn.execute("SELECT value FROM other.secret")
    logged = pg_stack.upstream_statements(since)
    judged = judged_statements(pg_stack.audit_rows())
    assert unaudited(logged, judged, exempt=[catalog_query()]) == ["SELECT value FROM other.secret"]
    # and the server's own counters saw the scan
    assert set(pg_stack.table_activity_since("other", untouched)) == {"secret"}
