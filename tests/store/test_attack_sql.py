"""Attacks on the portable SQL subset and its translation to PostgreSQL.

Stores write SQL in SQLite's flavour; :func:`lockgate.store.sql.to_postgres_params` turns
``?`` into ``%s`` and doubles ``%``. What an attacker controls are *values* (a jti, a DAG id,
a reason, an audit detail): they travel as bound parameters and must come back byte for byte,
whatever they hold -- ``%s``, ``?``, quotes, a NUL-free mix of anything, bytes, None. The
statement texts are the code's own constants; how the translator reads the rarer corners of
SQL (comments, dollar quoting) decides only whether a statement runs at all.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from lockgate.errors import StoreUnavailable
from lockgate.store import PostgresDatabase
from lockgate.store.sql import UnplaceableSQL, to_postgres_params
from tests.pgserver.fixtures import SharedStateFactory

NASTY_TEXT = [
    "%s",
    "%(name)s",
    "%%",
    "?",
    "'; DROP TABLE attack; --",
    '"quoted" ?, %s',
    "$$ ? $$",
    "\\' ? \\",
    "ü ☃ \u202e",
    "",
]


@pytest.fixture
def pg(pg_state: SharedStateFactory) -> Iterator[PostgresDatabase]:
    db = PostgresDatabase(pg_state(), replica_id="sql")
    with db.transaction() as cur:
        cur.execute("CREATE TABLE attack (k TEXT PRIMARY KEY, v TEXT, b BYTEA, n BIGINT)")
    try:
        yield db
    finally:
        db.close()


@pytest.mark.parametrize("value", NASTY_TEXT)
def test_values_that_look_like_placeholders_round_trip(pg: PostgresDatabase, value: str) -> None:
    """What holds: a value is data, never SQL and never a placeholder."""
    with pg.transaction() as cur:
        cur.execute(
            "INSERT INTO attack (k, v, b, n) VALUES (?, ?, ?, ?) "
            "ON CONFLICT (k) DO UPDATE SET v = excluded.v",
            (value, value, value.encode(), None),
        )
    with pg.read() as cur:
        row = cur.execute("SELECT v, b, n FROM attack WHERE k = ?", (value,)).fetchone()
        assert cur.execute("SELECT count(*) FROM attack").fetchone() == (1,)
    assert row is not None
    assert (row[0], bytes(row[1]), row[2]) == (value, value.encode(), None)


def test_question_marks_and_percents_inside_quotes_are_kept(pg: PostgresDatabase) -> None:
    """What holds: '?' and '%' inside a literal or a quoted identifier are text."""
    with pg.read() as cur:
        row = cur.execute(
            "SELECT 'a?b%c' AS \"what?%\", ? AS p, 'it''s ?' AS q", ("%s",)
        ).fetchone()
    assert row == ("a?b%c", "%s", "it's ?")


def test_bytes_of_every_value_round_trip(pg: PostgresDatabase) -> None:
    """What holds: key material and ciphertexts (BYTEA) come back exactly."""
    blob = bytes(range(256)) * 4
    with pg.transaction() as cur:
        cur.execute("INSERT INTO attack (k, b) VALUES (?, ?)", ("blob", blob))
    with pg.read() as cur:
        row = cur.execute("SELECT b FROM attack WHERE k = ?", ("blob",)).fetchone()
    assert row is not None and bytes(row[0]) == blob


def test_a_nul_in_text_is_refused_not_truncated(pg: PostgresDatabase) -> None:
    """What holds: PostgreSQL text cannot hold NUL; the write fails as StoreUnavailable (the
    caller fails closed) rather than storing a shortened value that would match another."""
    with pytest.raises(StoreUnavailable), pg.transaction() as cur:
        cur.execute("INSERT INTO attack (k, v) VALUES (?, ?)", ("nul", "jti\x00suffix"))
    with pg.read() as cur:
        assert cur.execute("SELECT count(*) FROM attack").fetchone() == (0,)


def test_a_question_mark_in_a_comment_is_not_a_placeholder(pg: PostgresDatabase) -> None:
    """What holds: '?' in a -- comment or a (nested) /* */ comment is comment text."""
    with pg.read() as cur:
        row = cur.execute("SELECT ? -- why not?\n", (1,)).fetchone()
        assert row == (1,)
        row = cur.execute("SELECT /* a? /* b? */ c? */ ? AS n", (2,)).fetchone()
    assert row == (2,)


def test_escape_and_dollar_quoted_text_is_kept(pg: PostgresDatabase) -> None:
    """What holds: E'' strings (backslash escapes) and $tag$ quoting are text, as
    PostgreSQL reads them."""
    assert to_postgres_params("SELECT E'it\\'s ?', $$ ? $$, ?") == (
        "SELECT E'it\\'s ?', $$ ? $$, %s"
    )
    with pg.read() as cur:
        row = cur.execute("SELECT E'it\\'s ?%', $t$ ? $$ '? $t$, ?", ("v",)).fetchone()
    assert row == ("it's ?%", " ? $$ '? ", "v")


@pytest.mark.parametrize(
    "sql", ["SELECT 'open ?", 'SELECT "open ?', "SELECT /* /* ? */", "SELECT $q$ ?", "E'\\'"]
)
def test_text_that_cannot_be_placed_is_refused_not_guessed(sql: str) -> None:
    """What holds: an unterminated quote or comment raises; nothing is translated."""
    with pytest.raises(UnplaceableSQL):
        to_postgres_params(sql)
