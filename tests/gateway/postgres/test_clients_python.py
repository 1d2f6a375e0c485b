"""Stock Python PostgreSQL clients through the gateway to a real PostgreSQL server.

psycopg2, psycopg 3 (autocommit, transactions, pipeline mode, server-side prepare), asyncpg
(extended protocol, binary types, its statement cache) and SQLAlchemy 2. Each client, as
``airflow:prod/warehouse_orders/<client>`` under examples/policies/warehouse.yaml (read and
write on ``sales.orders``, no DDL): granted reads and writes work; ``DROP TABLE`` and a read
of ``other.secret`` get SQLSTATE 42501 from the gateway and the session stays usable (the
next statement works); the audit has one record per statement, with rows affected.
"""

from __future__ import annotations

import asyncio
import io
from collections.abc import Iterator
from decimal import Decimal
from typing import TYPE_CHECKING, Any

import pytest

from tests.e2e.pg_stack import (
    RESOURCE,
    Judged,
    PgLocalStack,
    catalog_query,
    denied_but_executed,
    judged_statements,
    unaudited,
)

if TYPE_CHECKING:
    from sqlalchemy import Engine

    from tests.pgserver import PgServer

INSUFFICIENT_PRIVILEGE = "42501"
#: The INSERT as psycopg 3 and asyncpg send it (server-side parameters).
INSERT_SERVER_TEXT = "INSERT INTO sales.orders (order_id, customer, amount) VALUES ($1, $2, $3)"
#: A SELECT asyncpg runs three times: prepared once, then from its statement cache.
ASYNCPG_CACHED_SELECT = (
    "SELECT order_id, amount, amount::numeric / 4 AS quarter FROM sales.orders WHERE order_id = $1"
)
DAG = "warehouse_orders"


@pytest.fixture(scope="module")
def pg_stack(
    pg_server: PgServer, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[PgLocalStack]:
    with PgLocalStack(tmp_path_factory.mktemp("lockgate-pg-clients"), pg_server) as s:
        yield s


def outcomes(judged: list[Judged]) -> list[tuple[str, str | None, str | None, str]]:
    """(decision, action, object, text) per judged statement, in order."""
    return [(j.decision, j.action, j.object, j.text) for j in judged]


def rows_affected(judged: list[Judged], text: str) -> list[int | None]:
    """The rows the server reported for every allowed execution of ``text``."""
    return [j.rows for j in judged if j.text == text and j.decision == "allow"]


def assert_denied(
    judged: list[Judged], text: str, action: str, obj: str, *, times: int = 1
) -> None:
    denied = [o for o in outcomes(judged) if o[0] == "deny" and o[3] == text]
    assert [(a, o) for _, a, o, _ in denied] == [(action, obj)] * times, outcomes(judged)


def assert_refusal_message(message: str, task: str, action: str, obj: str) -> None:
    assert f"airflow:prod/{DAG}/{task}" in message, message
    assert action in message and obj in message, message


# -- psycopg2 ------------------------------------------------------------------------------------
def test_psycopg2_autocommit_and_transactions(pg_stack: PgLocalStack) -> None:
    import psycopg2  # type: ignore[import-untyped]
    import psycopg2.errors  # type: ignore[import-untyped]

    task = "psycopg2"
    conn = psycopg2.connect(**pg_stack.connect_kwargs(pg_stack.mint(DAG, task)))
    try:
        conn.autocommit = True
        cur = conn.cursor()
        cur.execute(
            "INSERT INTO sales.orders (order_id, customer, amount) VALUES (%s, %s, %s)",
            ("p2-1", "acme", 11),
        )
        assert cur.rowcount == 1
        with pytest.raises(psycopg2.errors.InsufficientPrivilege) as drop:
            cur.execute("DROP TABLE sales.orders")
        assert drop.value.pgcode == INSUFFICIENT_PRIVILEGE
        assert_refusal_message(str(drop.value), task, "admin", "sales.orders")
        cur.execute("SELECT amount FROM sales.orders WHERE order_id = 'p2-1'")
        assert cur.fetchall() == [(11,)]
        with pytest.raises(psycopg2.errors.InsufficientPrivilege):
            cur.execute("SELECT * FROM other.secret")
        cur.execute("SELECT 1")
        assert cur.fetchone() == (1,)

        # A transaction: the refusal is an error inside it, as any server error would be.
        conn.autocommit = False
        cur.execute("UPDATE sales.orders SET amount = 12 WHERE order_id = 'p2-1'")
        assert cur.rowcount == 1
        conn.commit()
        cur.execute("UPDATE sales.orders SET amount = 13 WHERE order_id = 'p2-1'")
        with pytest.raises(psycopg2.errors.InsufficientPrivilege):
            cur.execute("SELECT value FROM other.secret")
        conn.rollback()
        cur.execute("SELECT amount FROM sales.orders WHERE order_id = 'p2-1'")
        assert cur.fetchone() == (12,)
        conn.commit()
    finally:
        conn.close()

    rows = pg_stack.judged(task)
    assert_denied(rows, "DROP TABLE sales.orders", "admin", "sales.orders")
    assert_denied(rows, "SELECT * FROM other.secret", "read", "other.secret")
    assert_denied(rows, "SELECT value FROM other.secret", "read", "other.secret")
    assert rows_affected(
        rows, "INSERT INTO sales.orders (order_id, customer, amount) VALUES ('p2-1', 'acme', 11)"
    ) == [1]
    assert rows_affected(rows, "UPDATE sales.orders SET amount = 12 WHERE order_id = 'p2-1'") == [1]
    assert pg_stack.superuser_query("SELECT amount FROM sales.orders WHERE order_id = 'p2-1'") == [
        (12,)
    ]


# -- psycopg 3 -----------------------------------------------------------------------------------
def test_psycopg3_autocommit_transactions_and_server_side_prepare(pg_stack: PgLocalStack) -> None:
    import psycopg
    import psycopg.errors

    task = "psycopg3"
    kwargs = pg_stack.connect_kwargs(pg_stack.mint(DAG, task))
    with psycopg.connect(**kwargs, autocommit=True, prepare_threshold=0) as conn:
        insert = "INSERT INTO sales.orders (order_id, customer, amount) VALUES (%s, %s, %s)"
        for i in range(3):  # prepared server side from the first execution (named statement)
            assert conn.execute(insert, (f"p3-{i}", "globex", 30 + i)).rowcount == 1
        with pytest.raises(psycopg.errors.InsufficientPrivilege) as drop:
            conn.execute("DROP TABLE sales.orders")
        assert drop.value.sqlstate == INSUFFICIENT_PRIVILEGE
        assert_refusal_message(str(drop.value), task, "admin", "sales.orders")
        select = "SELECT amount FROM sales.orders WHERE order_id = %s"
        assert conn.execute(select, ("p3-1",)).fetchall() == [(31,)]
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            conn.execute("SELECT * FROM other.secret WHERE id = %s", (1,))
        assert conn.execute(select, ("p3-2",)).fetchall() == [(32,)]

    with psycopg.connect(**kwargs) as conn:  # transactions
        with conn.transaction():
            conn.execute("UPDATE sales.orders SET amount = 300 WHERE order_id = %s", ("p3-0",))
        with pytest.raises(psycopg.errors.InsufficientPrivilege), conn.transaction():
            conn.execute("UPDATE sales.orders SET amount = 301 WHERE order_id = %s", ("p3-0",))
            conn.execute("DELETE FROM other.secret")
        assert conn.execute(select, ("p3-0",)).fetchone() == (300,)
        conn.commit()

    rows = pg_stack.judged(task)
    assert rows_affected(rows, INSERT_SERVER_TEXT) == [1, 1, 1]
    assert_denied(rows, "DROP TABLE sales.orders", "admin", "sales.orders")
    assert_denied(rows, "SELECT * FROM other.secret WHERE id = $1", "read", "other.secret")
    assert_denied(rows, "DELETE FROM other.secret", "write", "other.secret")
    assert pg_stack.superuser_query("SELECT amount FROM sales.orders WHERE order_id = 'p3-0'") == [
        (300,)
    ]
    assert pg_stack.superuser_query("SELECT count(*) FROM other.secret") == [(1,)]


def test_psycopg3_automatic_server_side_prepare(pg_stack: PgLocalStack) -> None:
    """With psycopg's default threshold a query is prepared server side on its sixth run;
    every execution, unnamed or named, is judged and recorded."""
    import psycopg

    task = "psycopg3_auto_prepare"
    since = pg_stack.server.log_position()
    kwargs = pg_stack.connect_kwargs(pg_stack.mint(DAG, task))
    text = "SELECT amount FROM sales.orders WHERE order_id = %s AND amount > -7"
    with psycopg.connect(**kwargs, autocommit=True) as conn:
        for _ in range(8):
            assert conn.execute(text, ("seed-1",)).fetchall() == [(1,)]
    server_text = text.replace("%s", "$1")
    names = [
        s.prepared_name
        for s in pg_stack.server.statements(since)
        if s.user == pg_stack.upstream_user and s.text == server_text
    ]
    assert len(names) == 8 and names[0] == "<unnamed>" and names[-1].startswith("_pg3_")
    assert rows_affected(pg_stack.judged(task), server_text) == [1] * 8


def test_psycopg3_pipeline_with_a_denied_statement_in_the_middle(pg_stack: PgLocalStack) -> None:
    import psycopg
    import psycopg.errors

    task = "psycopg3_pipeline"
    kwargs = pg_stack.connect_kwargs(pg_stack.mint(DAG, task))
    insert = "INSERT INTO sales.orders (order_id, customer, amount) VALUES (%s, %s, %s)"
    with psycopg.connect(**kwargs, autocommit=True) as conn:
        with conn.pipeline() as pipeline:
            first = conn.execute(insert, ("pp-1", "initech", 41))
            second = conn.execute("SELECT amount FROM sales.orders WHERE order_id = %s", ("pp-1",))
            pipeline.sync()  # the earlier results complete before the refused statement
            with pytest.raises(psycopg.errors.InsufficientPrivilege) as refused:
                conn.execute("SELECT value FROM other.secret WHERE id = %s", (1,))
                pipeline.sync()
            assert refused.value.sqlstate == INSUFFICIENT_PRIVILEGE
        assert first.rowcount == 1
        assert second.fetchall() == [(41,)]
        # The connection stays usable, in and out of pipeline mode.
        with conn.pipeline():
            after = conn.execute("SELECT count(*) FROM sales.orders WHERE order_id = %s", ("pp-1",))
        assert after.fetchone() == (1,)
        assert conn.execute("SELECT 2").fetchone() == (2,)

    rows = pg_stack.judged(task)
    assert_denied(rows, "SELECT value FROM other.secret WHERE id = $1", "read", "other.secret")
    assert rows_affected(rows, INSERT_SERVER_TEXT) == [1]
    # Nothing of the refused statement reached the server.
    assert not any("other.secret" in s for s in pg_stack.upstream_statements())


def test_psycopg3_pipeline_refusal_rolls_back_its_implicit_transaction(
    pg_stack: PgLocalStack,
) -> None:
    """Parity: in one pipeline batch (up to one Sync) the server runs the statements as one
    implicit transaction and an error rolls all of it back; a refusal by the gateway in the
    middle of such a batch must not commit the statements before it."""
    import psycopg
    import psycopg.errors

    task = "psycopg3_pipeline_batch"
    kwargs = pg_stack.connect_kwargs(pg_stack.mint(DAG, task))
    insert = "INSERT INTO sales.orders (order_id, customer, amount) VALUES (%s, %s, %s)"
    with psycopg.connect(**kwargs, autocommit=True) as conn:
        with pytest.raises(psycopg.errors.InsufficientPrivilege), conn.pipeline():
            conn.execute(insert, ("pb-1", "initech", 42))
            conn.execute("SELECT value FROM other.secret WHERE id = %s", (1,))
            conn.execute("SELECT 1")
        assert conn.execute("SELECT 3").fetchone() == (3,)
    # A server error at that point would have rolled the INSERT back; so must the refusal.
    assert pg_stack.superuser_query(
        "SELECT count(*) FROM sales.orders WHERE order_id = 'pb-1'"
    ) == [(0,)]


# -- asyncpg -------------------------------------------------------------------------------------
async def _asyncpg_session(stack: PgLocalStack, task: str) -> dict[str, Any]:
    import asyncpg  # type: ignore[import-untyped]

    conn = await stack.asyncpg_connect(stack.mint(DAG, task))
    seen: dict[str, Any] = {}
    try:
        insert = await conn.prepare(INSERT_SERVER_TEXT)
        for i in range(3):
            await insert.fetch(f"ap-{i}", "hooli", 50 + i)
        # The statement cache: the same text again runs the cached named statement.
        select = ASYNCPG_CACHED_SELECT
        for _ in range(3):
            row = await conn.fetchrow(select, "ap-1")
        assert row is not None
        seen["row"] = (row["order_id"], row["amount"], row["quarter"])
        seen["binary"] = await conn.fetchrow(
            "SELECT $1::int8 AS big, $2::float8 AS f, $3::bytea AS b, $4::bool AS t",
            2**40,
            0.5,
            b"\x00\xff",
            True,
        )
        with pytest.raises(asyncpg.exceptions.InsufficientPrivilegeError) as drop:
            await conn.execute("DROP TABLE sales.orders")
        seen["drop"] = (drop.value.sqlstate, str(drop.value))
        seen["after_drop"] = await conn.fetchval(
            "SELECT amount FROM sales.orders WHERE order_id = $1", "ap-2"
        )
        with pytest.raises(asyncpg.exceptions.InsufficientPrivilegeError):
            await conn.fetch("SELECT value FROM other.secret WHERE id = $1", 1)
        seen["after_secret"] = await conn.fetchval(
            "SELECT count(*) FROM sales.orders WHERE amount >= $1", 50
        )
        async with conn.transaction():
            seen["update"] = await conn.execute(
                "UPDATE sales.orders SET amount = amount + 1 WHERE order_id LIKE 'ap-%'"
            )
    finally:
        await conn.close()
    return seen


def test_asyncpg_prepared_binary_cache_and_denials(pg_stack: PgLocalStack) -> None:
    task = "asyncpg"
    seen = asyncio.run(_asyncpg_session(pg_stack, task))
    assert seen["row"] == ("ap-1", 51, Decimal("12.75"))
    assert tuple(seen["binary"]) == (2**40, 0.5, b"\x00\xff", True)
    assert seen["drop"][0] == INSUFFICIENT_PRIVILEGE
    assert_refusal_message(seen["drop"][1], task, "admin", "sales.orders")
    assert seen["after_drop"] == 52
    assert seen["after_secret"] >= 3
    assert seen["update"] == "UPDATE 3"

    rows = pg_stack.judged(task)
    assert_denied(rows, "DROP TABLE sales.orders", "admin", "sales.orders")
    assert_denied(rows, "SELECT value FROM other.secret WHERE id = $1", "read", "other.secret")
    assert rows_affected(rows, INSERT_SERVER_TEXT) == [1, 1, 1]
    # asyncpg's statement cache: the server ran the repeated SELECT three times under one
    # named statement, and the audit has a record for each execution.
    select = ASYNCPG_CACHED_SELECT
    runs = [
        s
        for s in pg_stack.server.statements(pg_stack.log_start)
        if s.user == pg_stack.upstream_user and s.text == select
    ]
    assert len(runs) == 3 and len({s.prepared_name for s in runs}) == 1
    assert runs[0].prepared_name.startswith("__asyncpg_stmt_")
    assert len(rows_affected(rows, select)) == 3
    assert rows_affected(
        rows, "UPDATE sales.orders SET amount = amount + 1 WHERE order_id LIKE 'ap-%'"
    ) == [3]


async def _asyncpg_executemany_and_cursor(stack: PgLocalStack, task: str) -> dict[str, Any]:
    conn = await stack.asyncpg_connect(stack.mint(DAG, task))
    seen: dict[str, Any] = {}
    try:
        await conn.executemany(  # pipelined Bind/Execute of one prepared statement
            INSERT_SERVER_TEXT, [(f"ab-{i}", "bulk", i) for i in range(100)]
        )
        await conn.executemany(
            "UPDATE sales.orders SET amount = amount + $2 WHERE order_id = $1",
            [(f"ab-{i}", 1000) for i in range(5)],
        )
        # A cursor: a portal executed a few rows at a time (PortalSuspended in between).
        async with conn.transaction():
            seen["cursor"] = [
                r["order_id"]
                async for r in conn.cursor(
                    "SELECT order_id FROM sales.orders WHERE customer = 'bulk' ORDER BY amount",
                    prefetch=7,
                )
            ]
        seen["after"] = await conn.fetchval(
            "SELECT count(*) FROM sales.orders WHERE customer = 'bulk' AND amount >= 1000"
        )
    finally:
        await conn.close()
    return seen


def test_asyncpg_executemany_and_cursor(pg_stack: PgLocalStack) -> None:
    task = "asyncpg_bulk"
    seen = asyncio.run(_asyncpg_executemany_and_cursor(pg_stack, task))
    assert len(seen["cursor"]) == 100 and seen["cursor"][:2] == ["ab-5", "ab-6"]
    assert seen["after"] == 5
    rows = pg_stack.judged(task)
    assert rows_affected(rows, INSERT_SERVER_TEXT) == [1] * 100
    updates = "UPDATE sales.orders SET amount = amount + $2 WHERE order_id = $1"
    assert rows_affected(rows, updates) == [1] * 5


async def _asyncpg_copy_session(stack: PgLocalStack, task: str) -> dict[str, Any]:
    import asyncpg

    conn = await stack.asyncpg_connect(stack.mint(DAG, task))
    seen: dict[str, Any] = {}
    try:
        # asyncpg sends the rows right behind the COPY query, before CopyInResponse.
        seen["copy"] = await conn.copy_records_to_table(
            "orders",
            schema_name="sales",
            columns=["order_id", "customer", "amount"],
            records=[(f"ac-{i}", "copied", i) for i in range(100)],
        )
        with pytest.raises(asyncpg.exceptions.InsufficientPrivilegeError):
            await conn.copy_to_table(
                "secret", schema_name="other", source=io.BytesIO(b"9\tplanted\n")
            )
        # The server drops the CopyData of a COPY that failed; so must the gateway.
        seen["after"] = await conn.fetchval("SELECT count(*) FROM sales.orders")
    finally:
        await conn.close()
    return seen


def test_asyncpg_copy_in_ahead_of_the_server_and_after_a_refusal(pg_stack: PgLocalStack) -> None:
    task = "asyncpg_copy"
    seen = asyncio.run(_asyncpg_copy_session(pg_stack, task))
    assert seen["copy"] == "COPY 100"
    assert seen["after"] >= 100
    assert pg_stack.superuser_query("SELECT count(*) FROM other.secret") == [(1,)]
    judged = outcomes(pg_stack.judged(task))
    assert [(a, o) for d, a, o, _ in judged if d == "deny"] == [("write", "other.secret")]


def test_psycopg3_named_cursor_and_executemany(pg_stack: PgLocalStack) -> None:
    import psycopg
    import psycopg.errors

    task = "psycopg3_cursor"
    kwargs = pg_stack.connect_kwargs(pg_stack.mint(DAG, task))
    with psycopg.connect(**kwargs) as conn:
        with conn.cursor() as cur:  # executemany: pipelined when libpq supports it
            cur.executemany(
                "INSERT INTO sales.orders (order_id, customer, amount) VALUES (%s, %s, %s)",
                [(f"pc-{i}", "cursor", i) for i in range(20)],
            )
        conn.commit()
        with conn.cursor(name="orders_by_amount") as cur:  # DECLARE ... CURSOR; FETCH
            cur.itersize = 6
            cur.execute("SELECT order_id FROM sales.orders WHERE customer = 'cursor'")
            assert len(list(cur)) == 20
        conn.commit()
        with (
            pytest.raises(psycopg.errors.InsufficientPrivilege),
            conn.cursor(name="peek") as cur,
        ):
            cur.execute("SELECT value FROM other.secret")
        conn.rollback()
        assert conn.execute(
            "SELECT count(*) FROM sales.orders WHERE customer = 'cursor'"
        ).fetchone() == (20,)

    judged = outcomes(pg_stack.judged(task))
    denied = [(a, o) for d, a, o, _ in judged if d == "deny"]
    assert denied == [("read", "other.secret")]
    declares = [t for d, _, _, t in judged if d == "allow" and t.startswith("DECLARE")]
    assert declares and all("sales.orders" in t for t in declares)


def test_catalog_reads_for_client_libraries_but_not_column_statistics(
    pg_stack: PgLocalStack,
) -> None:
    """Drivers read the catalogs of names and types without a rule; pg_stats needs one (it
    shows sampled values of every table the gateway's own login may read): none here."""
    import psycopg
    import psycopg.errors

    kwargs = pg_stack.connect_kwargs(pg_stack.mint(DAG, "catalog"))
    with psycopg.connect(**kwargs, autocommit=True) as conn:
        oid = conn.execute("SELECT oid FROM pg_type WHERE typname = %s", ("int4",)).fetchone()
        assert oid == (23,)
        for text in (
            "SELECT most_common_vals::text FROM pg_stats WHERE tablename = 'secret'",
            "SELECT * FROM pg_catalog.pg_stats",
        ):
            with pytest.raises(psycopg.errors.InsufficientPrivilege):
                conn.execute(text)
        assert conn.execute("SELECT 1").fetchone() == (1,)
    judged = pg_stack.judged("catalog")
    assert {(j.decision, j.object) for j in judged if j.object} == {
        ("allow", "pg_catalog.pg_type"),
        ("deny", "pg_catalog.pg_stats"),
    }


# -- SQLAlchemy 2 --------------------------------------------------------------------------------
def sqlalchemy_engine(stack: PgLocalStack, task: str) -> Engine:
    """An engine (psycopg 3 driver, no pool) to the gateway with a token for ``task``."""
    import sqlalchemy as sa

    kwargs = stack.connect_kwargs(stack.mint(DAG, task))
    url = sa.URL.create(
        "postgresql+psycopg",
        username=kwargs["user"],
        password=kwargs["password"],
        host=kwargs["host"],
        port=kwargs["port"],
        database=kwargs["dbname"],
        query={"sslmode": "verify-full", "sslrootcert": kwargs["sslrootcert"]},
    )
    return sa.create_engine(url, poolclass=sa.pool.NullPool)


def test_sqlalchemy_core_select_insert_and_denials(pg_stack: PgLocalStack) -> None:
    import psycopg.errors
    import sqlalchemy as sa
    from sqlalchemy import exc as sa_exc

    task = "sqlalchemy"
    orders = sa.Table(
        "orders",
        sa.MetaData(schema="sales"),
        sa.Column("order_id", sa.Text, primary_key=True),
        sa.Column("customer", sa.Text),
        sa.Column("amount", sa.Integer),
    )
    engine = sqlalchemy_engine(pg_stack, task)
    try:
        with engine.begin() as conn:
            # (SQLAlchemy reports no rowcount for an INSERT; the audit has the server's)
            conn.execute(
                orders.insert(), {"order_id": "sa-1", "customer": "umbrella", "amount": 61}
            )
        with engine.connect() as conn:
            amounts = conn.execute(
                sa.select(orders.c.amount).where(orders.c.order_id == "sa-1")
            ).scalars()
            assert list(amounts) == [61]
            with pytest.raises(sa_exc.ProgrammingError) as drop:
                conn.execute(sa.text("DROP TABLE sales.orders"))
            assert isinstance(drop.value.orig, psycopg.errors.InsufficientPrivilege)
            conn.rollback()
            with pytest.raises(sa_exc.ProgrammingError):
                conn.execute(sa.text("SELECT * FROM other.secret"))
            conn.rollback()
            count = conn.execute(sa.select(sa.func.count()).select_from(orders)).scalar_one()
            assert count >= 1
    finally:
        engine.dispose()

    rows = pg_stack.judged(task)
    assert_denied(rows, "DROP TABLE sales.orders", "admin", "sales.orders")
    assert_denied(rows, "SELECT * FROM other.secret", "read", "other.secret")
    inserts = [o for o in outcomes(rows) if o[3].startswith("INSERT INTO sales.orders")]
    assert len(inserts) == 1 and inserts[0][:3] == ("allow", "write", "sales.orders")
    assert rows_affected(rows, inserts[0][3]) == [1]
    assert pg_stack.superuser_query("SELECT amount FROM sales.orders WHERE order_id = 'sa-1'") == [
        (61,)
    ]


def test_sqlalchemy_orm_session_add_query_and_denial(pg_stack: PgLocalStack) -> None:
    import sqlalchemy as sa
    from sqlalchemy import exc as sa_exc
    from sqlalchemy.orm import DeclarativeBase, Session, mapped_column

    class Base(DeclarativeBase):
        pass

    class Order(Base):
        __tablename__ = "orders"
        __table_args__ = {"schema": "sales"}
        order_id = mapped_column(sa.Text, primary_key=True)
        customer = mapped_column(sa.Text, nullable=False)
        amount = mapped_column(sa.Integer, nullable=False)

    class Secret(Base):
        __tablename__ = "secret"
        __table_args__ = {"schema": "other"}
        id = mapped_column(sa.Integer, primary_key=True)
        value = mapped_column(sa.Text, nullable=False)

    task = "sqlalchemy_orm"
    engine = sqlalchemy_engine(pg_stack, task)
    try:
        with Session(engine) as session:
            session.add_all(
                [Order(order_id=f"orm-{i}", customer="tyrell", amount=70 + i) for i in (1, 2)]
            )
            session.commit()
            got = session.scalars(
                sa.select(Order).where(Order.customer == "tyrell").order_by(Order.order_id)
            ).all()
            assert [(o.order_id, o.amount) for o in got] == [("orm-1", 71), ("orm-2", 72)]
            with pytest.raises(sa_exc.ProgrammingError) as refused:
                session.scalars(sa.select(Secret)).all()
            assert getattr(refused.value.orig, "sqlstate", None) == INSUFFICIENT_PRIVILEGE
            session.rollback()
            got[0].amount = 700
            session.commit()
            assert session.get(Order, "orm-1") is not None
    finally:
        engine.dispose()

    outcomes_ = outcomes(pg_stack.judged(task))
    denied = [o for o in outcomes_ if o[0] == "deny"]
    assert [(a, o) for _, a, o, _ in denied] == [("read", "other.secret")]
    updates = [o for o in outcomes_ if o[3].startswith("UPDATE sales.orders")]
    assert [o[:3] for o in updates] == [("allow", "write", "sales.orders")]
    assert pg_stack.superuser_query(
        "SELECT order_id, amount FROM sales.orders WHERE customer = 'tyrell' ORDER BY 1"
    ) == [("orm-1", 700), ("orm-2", 72)]


def test_every_client_statement_has_one_record(pg_stack: PgLocalStack) -> None:
    """Over every client above: each statement the server ran for the gateway's login has
    exactly one allowed record (the oracle of test_statement_log_oracle.py), nothing denied
    reached it, and every refusal names the resource and its principal."""
    logged = pg_stack.upstream_statements()
    judged = judged_statements(pg_stack.audit_rows())
    assert unaudited(logged, judged, exempt=[catalog_query()]) == []
    assert denied_but_executed(logged, judged) == []
    rows = [r for r in pg_stack.audit_rows() if r.event == "denied"]
    assert rows and {r.resource for r in rows} == {RESOURCE}
    assert all(r.decision == "deny" and r.principal for r in rows)
