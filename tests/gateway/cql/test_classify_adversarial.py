"""Adversarial CQL texts: what the gateway judges must be what Cassandra would execute.

Each expectation is derived from Cassandra's grammar (Lexer.g / Parser.g), noted beside the
case: the statement the node would run and its target, or a refusal (admin on ``*``) where
the node would refuse the text too.
"""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from lockgate.gateway.cql.classify import classify, classify_with_keyspace

R, W, A = "read", "write", "admin"
DENY_ALL = [(A, "*")]
INS_A = "INSERT INTO ks.a (k, v) VALUES (1, 'x')"
DEL_B = "DELETE FROM ks.b WHERE k = 1"
UPD_C = "UPDATE ks.c SET v = 2 WHERE k = 3"

CASES: list[tuple[str, list[tuple[str, str]]]] = [
    # -- comment terminators: COMMENT ends at \n or \r -------------------------------------
    # The node sees DELETE ks.secret; the SELECT of the granted table is inside /* ... */.
    (
        "-- x\rDELETE FROM ks.secret WHERE k = 1 /*\nSELECT * FROM ks.granted -- */",
        [(W, "ks.secret")],
    ),
    (
        "// x\rDELETE FROM ks.secret WHERE k = 1 /*\nSELECT * FROM ks.granted // */",
        [(W, "ks.secret")],
    ),
    ("-- x\r\nSELECT * FROM ks.a", [(R, "ks.a")]),
    ("SELECT * FROM ks.a -- \r; DROP TABLE ks.b\n", DENY_ALL),  # two statements
    # \u2028, \x85, \f, \v do not end a comment: the DROP stays inside it
    ("-- x\u2028DROP TABLE ks.b\nSELECT * FROM ks.a", [(R, "ks.a")]),
    ("-- x\x85DROP TABLE ks.b\nSELECT * FROM ks.a", [(R, "ks.a")]),
    ("-- x\x0cDROP TABLE ks.b\rSELECT * FROM ks.a", [(R, "ks.a")]),
    ("-- x\x0bDROP TABLE ks.b\rSELECT * FROM ks.a", [(R, "ks.a")]),
    # -- block comments are not nested ------------------------------------------------------
    ("/* /* */ SELECT * FROM ks.a /* */", [(R, "ks.a")]),
    ("/* /* */ DELETE FROM ks.b WHERE k = 1 /* */ */", [(W, "ks.b")]),
    ("/* -- */ DELETE FROM ks.b WHERE k = 1", [(W, "ks.b")]),
    ("/*/ SELECT * FROM ks.a /*/ DELETE FROM ks.b WHERE k = 1 -- */\n", [(W, "ks.b")]),
    # -- quotes inside comments, comments inside quotes --------------------------------------
    ("SELECT * FROM ks.a -- it's\n WHERE k = 'x'", [(R, "ks.a")]),
    ("/* ' */ DELETE FROM ks.b WHERE k = 1 -- '\n", [(W, "ks.b")]),
    ('/* " */ DELETE FROM ks.b WHERE k = 1 -- "\n', [(W, "ks.b")]),
    ("SELECT * FROM ks.a WHERE v = '-- '; DROP TABLE ks.b", DENY_ALL),
    ("SELECT * FROM ks.a WHERE v = '/*'; SELECT * FROM ks.b WHERE v = '*/'", DENY_ALL),
    ("SELECT * FROM ks.a WHERE v = '/* ; DROP TABLE ks.b */'", [(R, "ks.a")]),
    # -- $$ strings ---------------------------------------------------------------------------
    ("SELECT * FROM ks.a WHERE v = $$it's$$ AND w = 'x'", [(R, "ks.a")]),
    ("SELECT * FROM ks.a WHERE v = $$ ' $$; DROP TABLE ks.b --'\n", DENY_ALL),
    ("SELECT * FROM ks.a WHERE v = $$ -- $$ AND w = 1", [(R, "ks.a")]),
    ("SELECT * FROM ks.a WHERE v = $$x$", DENY_ALL),
    ("SELECT * FROM ks.a WHERE v = $x$", DENY_ALL),
    # -- quoted names, "" escapes, case folding ---------------------------------------------
    ('SELECT * FROM "ks"".x".t', DENY_ALL),
    ('SELECT * FROM ks."a""b"', DENY_ALL),
    ('SELECT "a""b" FROM ks.t', [(R, "ks.t")]),
    ("SeLeCt * FrOm KS.Tbl", [(R, "ks.tbl")]),
    ('select * from "KS".tbl', [(R, "KS.tbl")]),
    ('SELECT * FROM ks."select"', [(R, "ks.select")]),
    ("SELECT * FROM ks.select", DENY_ALL),  # reserved keyword is not a name
    ("SELECT * FROM ks.user", [(R, "ks.user")]),  # unreserved keyword is
    ('SELECT * FROM ks.""', DENY_ALL),
    # -- one statement per text (query: cqlStatement (';')* EOF) ------------------------------
    ("SELECT * FROM ks.a; SELECT * FROM ks.b", DENY_ALL),
    ("SELECT * FROM ks.a;;;", [(R, "ks.a")]),
    (";SELECT * FROM ks.a", DENY_ALL),
    (";", DENY_ALL),
    ("USE ks; DROP TABLE t", DENY_ALL),
    # -- batches --------------------------------------------------------------------------------
    (f"BEGIN BATCH {INS_A} {DEL_B} {UPD_C} APPLY BATCH", [(W, "ks.a"), (W, "ks.b"), (W, "ks.c")]),
    (
        f"BEGIN BATCH {INS_A}; {DEL_B} {UPD_C}; APPLY BATCH;;",
        [(W, "ks.a"), (W, "ks.b"), (W, "ks.c")],
    ),
    (f"begin unlogged batch {DEL_B}\napply batch", [(W, "ks.b")]),
    (f"BEGIN COUNTER BATCH USING TIMESTAMP ? {UPD_C} APPLY BATCH", [(W, "ks.c")]),
    (f"BEGIN BATCH USING TIMESTAMP :ts AND TTL 5 {INS_A} APPLY BATCH", [(W, "ks.a")]),
    (
        "BEGIN BATCH UPDATE ks.a SET v = 1 WHERE k = 1 IF v = 0 "
        "INSERT INTO ks.b (k) VALUES (2) IF NOT EXISTS USING TTL 9 APPLY BATCH",
        [(W, "ks.a"), (R, "ks.a"), (W, "ks.b"), (R, "ks.b")],
    ),
    (f"BEGIN BATCH {INS_A} -- x\r{DEL_B}\nAPPLY BATCH", [(W, "ks.a"), (W, "ks.b")]),
    (
        "BEGIN BATCH INSERT INTO ks.a (k, v) VALUES (1, 'APPLY BATCH; DROP TABLE x') APPLY BATCH",
        [(W, "ks.a")],
    ),
    ('BEGIN BATCH INSERT INTO ks."delete" (k) VALUES (1) APPLY BATCH', [(W, "ks.delete")]),
    (f"BEGIN BATCH {INS_A} APPLY BATCH; DROP TABLE ks.x", DENY_ALL),
    (f"BEGIN BATCH {INS_A} APPLY BATCH DROP TABLE ks.x", DENY_ALL),
    (f"BEGIN BATCH {INS_A} APPLY BATCH; SELECT * FROM ks.a", DENY_ALL),  # noqa: S608
    (f"BEGIN BATCH {INS_A} APPLY BATCH BEGIN BATCH {DEL_B} APPLY BATCH", DENY_ALL),
    (f"BEGIN BATCH {INS_A};; {DEL_B} APPLY BATCH", DENY_ALL),  # one ';' per child
    (f"BEGIN BATCH ; {INS_A} APPLY BATCH", DENY_ALL),
    (f"BEGIN BATCH {INS_A} SELECT * FROM ks.b APPLY BATCH", DENY_ALL),  # noqa: S608
    (f"{DEL_B} SELECT * FROM ks.a", DENY_ALL),  # noqa: S608 — a second statement without ';'
    (f"SELECT * FROM ks.a {DEL_B}", DENY_ALL),  # noqa: S608
    (f"{INS_A} DROP TABLE ks.a", DENY_ALL),
    ("BEGIN BATCH SELECT * FROM ks.b APPLY BATCH", DENY_ALL),
    (f"BEGIN BATCH {INS_A} APPLY", DENY_ALL),
    (f"BEGIN BATCH {INS_A}", DENY_ALL),
    ("BEGIN BATCH APPLY BATCH", DENY_ALL),
    (f"BEGIN BATCH USING TTL {INS_A} APPLY BATCH", DENY_ALL),
    (f"BEGIN BATCH USE ks {INS_A} APPLY BATCH", DENY_ALL),
    (f"{INS_A} APPLY BATCH", DENY_ALL),
    # -- characters Lexer.g has no token for ------------------------------------------------
    ("SELECT * FROM ks.a\uff1b DROP TABLE ks.b", DENY_ALL),  # fullwidth semicolon
    ("SELECT\u00a0* FROM ks.a", DENY_ALL),  # no-break space
    ("SELECT\u200b* FROM ks.a", DENY_ALL),  # zero-width space
    ("S\u0415LECT * FROM ks.a", DENY_ALL),  # Cyrillic capital IE
    ("SELECT * FROM ks.a\x0c", DENY_ALL),  # form feed is not WS
    ("SELECT * FROM ks.a\x00", DENY_ALL),
    ("\ufeffSELECT * FROM ks.a", DENY_ALL),  # byte order mark
    ("SELECT * FROM ks.a WHERE v = 'h\u00e9llo\uff1b\u200b'", [(R, "ks.a")]),  # fine in strings
    ('SELECT * FROM ks."t\u00e0ble"', DENY_ALL),  # a quoted name, but not a table name
    # -- statement shapes -------------------------------------------------------------------
    ("CREATE SCHEMA ks2 WITH replication = {'class': 'SimpleStrategy'}", [(A, "ks2")]),
    ("CREATE TABLE ks.n LIKE ks.o", [(A, "ks.n"), (R, "ks.o")]),
    ("CREATE USER Alice WITH PASSWORD 'x'", [(A, "role:Alice")]),
    ("ALTER USER 'Bob' WITH PASSWORD 'y' SUPERUSER", [(A, "role:Bob")]),
    ("DROP USER IF EXISTS alice", [(A, "role:alice")]),
    ("CREATE ROLE Alice", [(A, "role:alice")]),
    ("CREATE ROLE 'Alice' WITH LOGIN = true", [(A, "role:Alice")]),
    ("GRANT SELECT ON ks.t TO 'Bob'", [(A, "ks.t"), (A, "role:Bob")]),
    ("GRANT SELECT ON ALL TABLES IN KEYSPACE ks TO bob", [(A, "ks"), (A, "role:bob")]),
    (
        "GRANT EXECUTE ON FUNCTION ks.f(int, frozen<list<text>>) TO bob",
        [(A, "ks.f"), (A, "role:bob")],
    ),
    ("GRANT EXECUTE ON ALL FUNCTIONS IN KEYSPACE ks TO bob", [(A, "ks"), (A, "role:bob")]),
    ("GRANT SELECT ON ALL MBEANS TO bob", [(A, "*"), (A, "role:bob")]),
    ("TRUNCATE COLUMNFAMILY ks.t", [(A, "ks.t")]),
    ("LIST SUPERUSERS", [(A, "role:*")]),
]


@pytest.mark.parametrize(("text", "want"), CASES, ids=[repr(c[0])[:60] for c in CASES])
def test_adversarial(text: str, want: list[tuple[str, str]]) -> None:
    assert [(t.action, t.object) for t in classify(text, "ks")] == want


def test_use_in_a_two_statement_text_changes_no_keyspace() -> None:
    targets, keyspace = classify_with_keyspace("USE other; SELECT * FROM orders", "ks")
    assert [(t.action, t.object) for t in targets] == DENY_ALL and keyspace == "ks"


# -- batches as the grammar generates them -------------------------------------------------------
_table = st.sampled_from(["a", "b", "Orders", '"Mixed"', "ks.c", "user"])
_child = st.one_of(
    st.builds(lambda t: (f"INSERT INTO {t} (k, v) VALUES (1, 'x')", t, [W]), _table),  # noqa: S608
    # conditional: also a read of the table (the answer shows the row found)
    st.builds(
        lambda t: (f"UPDATE {t} USING TTL 5 SET v = 1 WHERE k = 1 IF EXISTS", t, [W, R]),  # noqa: S608
        _table,
    ),
    st.builds(lambda t: (f"DELETE v FROM {t} WHERE k = 1", t, [W]), _table),
)
_gap = st.sampled_from([" ", "\n", "\r", ";", " ; ", "\r\n", " -- c\r", " // c\n", " /* ; */ "])


def _object(table: str) -> str:
    if table.startswith('"'):
        return "ks." + table.strip('"')
    return table.lower() if "." in table else f"ks.{table.lower()}"


@given(
    st.sampled_from(["BEGIN BATCH", "BEGIN UNLOGGED BATCH", "begin counter batch"]),
    st.sampled_from(["", " USING TIMESTAMP 7", " USING TTL ? AND TIMESTAMP 1"]),
    st.lists(st.tuples(_child, _gap), min_size=1, max_size=6),
    st.sampled_from(["", ";", ";;", " ; \n"]),
)
@settings(max_examples=200, deadline=None)
def test_every_batch_child_is_judged(
    begin: str, using: str, children: list[tuple[tuple[str, str, list[str]], str]], end: str
) -> None:
    text = begin + using + " " + "".join(c + g for (c, _, _), g in children) + " APPLY BATCH" + end
    got = [(t.action, t.object) for t in classify(text, "ks")]
    want = [(a, _object(table)) for (_, table, actions), _ in children for a in actions]
    assert got == want, text
