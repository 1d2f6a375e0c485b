# ruff: noqa: S608  (catalog relation names read from the server itself)
"""Attacks found by running PostgreSQL's own regression statements through the classifier.

Each statement was classified, then run by a role granted exactly what the classifier asked
policy for (see :mod:`.attack_corpus`); a 42501 from the server named an object the server
checks that policy never saw. Each hole category is reproduced here with minimal SQL; a
strict xfail marks a hole still open (it turns into a failure when the hole closes, so the
mark comes off with the fix).
"""

from __future__ import annotations

from collections.abc import Iterator

import psycopg
import pytest

from lockgate.gateway.postgres.classified import Access
from lockgate.gateway.postgres.judge import NOT_BUILTIN, NOT_BUILTIN_PREFIXES
from tests.pgserver import PgServer

from .attack_corpus import CorpusOracle

DATABASE = "attack_corpus"
SETUP = r"""
CREATE TABLE public.hidden (secret text);
INSERT INTO public.hidden VALUES ('the-upstream-only-secret');
CREATE TABLE public.serial_t (id serial, v int);
CREATE TABLE public.plain (v int);
CREATE FUNCTION public.reads_hidden() RETURNS SETOF text LANGUAGE plpgsql
    AS $$ BEGIN RETURN QUERY SELECT secret FROM public.hidden; END $$;
CREATE VIEW public.via_function AS SELECT * FROM public.reads_hidden() AS s(secret);
CREATE FUNCTION public.plain_secret(public.plain) RETURNS int LANGUAGE sql AS 'SELECT 42';
REVOKE EXECUTE ON FUNCTION public.plain_secret(public.plain) FROM PUBLIC;
CREATE FUNCTION public.index_key(int) RETURNS int LANGUAGE sql IMMUTABLE AS 'SELECT $1';
REVOKE EXECUTE ON FUNCTION public.index_key(int) FROM PUBLIC;
CREATE TABLE public.indexed (v int);
CREATE INDEX indexed_key ON public.indexed (public.index_key(v));
CREATE FUNCTION public.plain_text(public.plain) RETURNS text LANGUAGE sql AS 'SELECT 42::text';
REVOKE EXECUTE ON FUNCTION public.plain_text(public.plain) FROM PUBLIC;
CREATE CAST (public.plain AS text) WITH FUNCTION public.plain_text(public.plain);
CREATE FUNCTION public.positive(int) RETURNS bool LANGUAGE sql AS 'SELECT $1 > 0';
REVOKE EXECUTE ON FUNCTION public.positive(int) FROM PUBLIC;
CREATE DOMAIN public.positive_int AS int CHECK (public.positive(VALUE));
CREATE TABLE public.typed (v public.positive_int);
CREATE FUNCTION public.noop() RETURNS int LANGUAGE sql AS 'SELECT 1';
CREATE FUNCTION public.copies_to_hidden() RETURNS trigger LANGUAGE plpgsql
    AS $$ BEGIN INSERT INTO public.hidden VALUES ('planted'); RETURN NEW; END $$;
"""


@pytest.fixture(scope="module")
def corpus_db(pg_server: PgServer) -> str:
    pg_server.psql(f"DROP DATABASE IF EXISTS {DATABASE}")
    pg_server.psql(f"CREATE DATABASE {DATABASE}")
    pg_server.psql(SETUP, dbname=DATABASE)
    return pg_server.dsn(dbname=DATABASE)


@pytest.fixture
def oracle(corpus_db: str) -> Iterator[CorpusOracle]:
    with psycopg.connect(corpus_db, autocommit=True, prepare_threshold=None) as conn:
        yield CorpusOracle(conn)


def test_the_oracle_sees_a_plain_grant_is_enough_and_a_missing_one_is_not(
    oracle: CorpusOracle,
) -> None:
    # the oracle itself: the classifier's grants run a plain read, and a withheld
    # table is a 42501 the oracle reports
    assert oracle.accesses("SELECT * FROM plain") == [Access("read", "public.plain")]
    assert oracle.missed("SELECT * FROM plain") is None
    assert oracle.missed("SELECT * FROM plain WHERE v IN (SELECT 1 FROM hidden)") is None


@pytest.mark.xfail(
    strict=True,
    reason="a column default calls nextval: the server checks USAGE on the sequence,"
    " the classifier asks only for write on the table",
)
def test_an_insert_that_fills_a_serial_default_names_the_sequence(
    oracle: CorpusOracle,
) -> None:
    assert oracle.missed("INSERT INTO serial_t (v) VALUES (1)") is None


@pytest.mark.xfail(
    strict=True,
    reason="a view calling a function: the function runs as the reader and reads"
    " public.hidden, the classifier asks for the view and the function, not the table",
)
def test_a_view_over_a_function_names_what_the_function_reads(oracle: CorpusOracle) -> None:
    assert oracle.missed("SELECT * FROM via_function") is None


@pytest.mark.xfail(
    strict=True,
    reason="a function body runs as the caller: the server checks the tables it reads,"
    " the classifier asks only for the function",
)
def test_a_function_call_names_the_tables_its_body_reads(oracle: CorpusOracle) -> None:
    assert oracle.missed("SELECT reads_hidden()") is None


@pytest.mark.xfail(
    strict=True,
    reason="a trigger on a temporary table: its function is judged (admin), but what its"
    " body writes as the caller (public.hidden) never reaches policy",
)
def test_a_write_to_a_temporary_table_names_its_trigger_and_what_it_writes(
    oracle: CorpusOracle,
) -> None:
    oracle.setup(
        "CREATE TEMP TABLE scratch (v int);"
        " CREATE TRIGGER plant AFTER INSERT ON scratch"
        " FOR EACH ROW EXECUTE FUNCTION public.copies_to_hidden()"
    )
    assert oracle.missed("INSERT INTO scratch VALUES (1)") is None


@pytest.mark.parametrize(
    "sql",
    [
        "SELECT p.plain_secret FROM plain p",
        "SELECT (p).plain_secret FROM plain p",
        "SELECT plain.plain_secret FROM plain",
    ],
)
def test_a_function_called_in_attribute_notation_is_judged(oracle: CorpusOracle, sql: str) -> None:
    assert oracle.missed(sql) is None


@pytest.mark.xfail(
    strict=True,
    reason="a temporary view over a function: the view's function is judged (admin), but"
    " the table its body reads as the caller (public.hidden) never reaches policy",
)
def test_a_temporary_view_over_a_function_names_the_function_and_what_it_reads(
    oracle: CorpusOracle,
) -> None:
    oracle.setup("CREATE TEMP VIEW scratch_view AS SELECT * FROM public.reads_hidden() s")
    assert oracle.missed("SELECT * FROM scratch_view") is None


def test_a_write_names_the_functions_of_its_tables_expression_indexes(
    oracle: CorpusOracle,
) -> None:
    assert oracle.missed("INSERT INTO indexed VALUES (1)") is None


@pytest.mark.parametrize(
    "sql", ["SELECT p::text FROM plain p", "SELECT CAST(p AS text) FROM plain p"]
)
def test_a_user_cast_names_its_function(oracle: CorpusOracle, sql: str) -> None:
    assert oracle.missed(sql) is None


@pytest.mark.parametrize(
    "sql",
    ["SELECT 1::positive_int", "SELECT CAST(1 AS positive_int)", "INSERT INTO typed VALUES (1)"],
)
def test_a_domain_check_names_its_function(oracle: CorpusOracle, sql: str) -> None:
    assert oracle.missed(sql) is None


# What the session did to a schema before naming a relation the relation catalog does not
# hold yet (made by another session or a function body after the catalog was read).
_SCHEMA_CHANGES = {
    "dropped_then_on_the_path": [
        "CREATE SCHEMA gone",
        "DROP SCHEMA gone",
        "SET search_path = gone, public",
    ],
    "dropped_then_a_call": ["CREATE SCHEMA gone", "DROP SCHEMA gone", "SELECT noop()"],
    "renamed_then_a_call": [
        "CREATE SCHEMA gone",
        "ALTER SCHEMA gone RENAME TO gone_too",
        "SELECT noop()",
    ],
}


@pytest.mark.parametrize("changes", list(_SCHEMA_CHANGES.values()), ids=list(_SCHEMA_CHANGES))
def test_a_name_new_to_the_catalog_after_a_schema_change_is_not_misplaced(
    oracle: CorpusOracle, changes: list[str]
) -> None:
    oracle.conn.execute("DROP SCHEMA IF EXISTS gone, gone_too")
    oracle.conn.execute("DROP TABLE IF EXISTS public.fresh_secret")
    for text in changes:
        oracle.setup(text)
    # created behind the gateway's relation catalog
    oracle.conn.execute("CREATE TABLE public.fresh_secret (s text)")
    try:
        assert oracle.missed("SELECT * FROM fresh_secret") is None
    finally:
        oracle.conn.execute("DROP TABLE public.fresh_secret")
        oracle.conn.execute("DROP SCHEMA IF EXISTS gone, gone_too")


def test_a_system_view_over_a_superuser_function_is_not_a_builtin_catalog_read(
    oracle: CorpusOracle,
) -> None:
    # the classifier names only the view; the judge keeps it out of builtin:catalog-read
    assert oracle.accesses("SELECT count(*) FROM pg_hba_file_rules") == [
        Access("read", "pg_catalog.pg_hba_file_rules")
    ]
    assert oracle.missed("SELECT count(*) FROM pg_hba_file_rules") is not None
    assert "pg_catalog.pg_hba_file_rules" in NOT_BUILTIN


def test_every_catalog_relation_the_server_refuses_to_public_needs_a_grant(
    oracle: CorpusOracle,
) -> None:
    relations = oracle.conn.execute(
        "SELECT n.nspname || '.' || c.relname FROM pg_class c"
        " JOIN pg_namespace n ON n.oid = c.relnamespace"
        " WHERE n.nspname IN ('pg_catalog', 'information_schema')"
        " AND c.relkind IN ('r', 'v', 'm')"
    ).fetchall()
    admitted = {
        str(name)
        for (name,) in relations
        if str(name) not in NOT_BUILTIN and not str(name).startswith(NOT_BUILTIN_PREFIXES)
    }
    refused = {name for name in admitted if oracle.refusal(f"SELECT count(*) FROM {name}", [])}
    assert refused == set()
