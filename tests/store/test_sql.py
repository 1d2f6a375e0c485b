"""The portable SQL subset's translation to PostgreSQL."""

from __future__ import annotations

from lockgate.store.sql import split_statements, to_postgres_ddl, to_postgres_params


def test_placeholders_and_percent_outside_quotes() -> None:
    assert to_postgres_params("SELECT * FROM t WHERE a = ? AND b LIKE 'x%?'") == (
        "SELECT * FROM t WHERE a = %s AND b LIKE 'x%%?'"
    )
    assert to_postgres_params('SELECT "odd?col" FROM t WHERE n % 2 = ?') == (
        'SELECT "odd?col" FROM t WHERE n %% 2 = %s'
    )
    assert to_postgres_params("SELECT 'it''s ?'") == "SELECT 'it''s ?'"


def test_ddl_types_only_where_they_are_types() -> None:
    ddl = "CREATE TABLE t (blob BLOB, n INTEGER NOT NULL, real REAL, note TEXT DEFAULT 'INTEGER')"
    assert to_postgres_ddl(ddl) == (
        "CREATE TABLE t (blob BYTEA, n BIGINT NOT NULL, real DOUBLE PRECISION, "
        "note TEXT DEFAULT 'INTEGER')"
    )


def test_split_keeps_semicolons_in_quotes_and_triggers() -> None:
    script = """
        -- a comment
        CREATE TABLE a (x TEXT DEFAULT ';');
        CREATE TRIGGER t AFTER INSERT ON a BEGIN DELETE FROM a WHERE x = 'y'; END;
        INSERT INTO a VALUES ('z')
    """
    parts = split_statements(script)
    assert len(parts) == 3
    assert parts[0].endswith("DEFAULT ';')")
    assert parts[1].endswith("END")
    assert parts[2] == "INSERT INTO a VALUES ('z')"


def test_comments_and_dollar_quotes_are_not_code() -> None:
    assert to_postgres_params("SELECT ? /* ? /* ? */ ? */ -- ?\n, $f$?$f$, a$b, $1") == (
        "SELECT %s /* ? /* ? */ ? */ -- ?\n, $f$?$f$, a$b, $1"
    )
    assert to_postgres_ddl("-- INTEGER here is a word\nCREATE TABLE t (n INTEGER)") == (
        "-- INTEGER here is a word\nCREATE TABLE t (n BIGINT)"
    )
