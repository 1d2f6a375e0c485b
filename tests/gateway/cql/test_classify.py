"""Table tests for the CQL statement classifier, including comment/literal tricks."""

from __future__ import annotations

import pytest

from lockgate.gateway.cql.classify import (
    Target,
    classify,
    classify_with_keyspace,
    is_system_metadata_read,
    tokenize,
)

R, W, A = "read", "write", "admin"
DENY_ALL = [(A, "*")]

CASES: list[tuple[str, str | None, list[tuple[str, str]]]] = [
    # reads
    ("SELECT * FROM ks.t", None, [(R, "ks.t")]),
    ("select a, b from T where k = 1", "ks", [(R, "ks.t")]),
    ("SELECT JSON * FROM ks.t", None, [(R, "ks.t")]),
    ("SELECT DISTINCT k FROM ks.t", None, [(R, "ks.t")]),
    ("SELECT count(*) FROM ks.t", None, [(R, "ks.t")]),
    ("SELECT CAST(x AS text), writetime(v) FROM ks.t", None, [(R, "ks.t")]),
    ('SELECT "from" FROM ks.t', None, [(R, "ks.t")]),
    ("SELECT * FROM ks . t", None, [(R, "ks.t")]),
    ("SELECT * FROM t", None, [(R, ".t")]),
    ("SELECT * FROM system.local WHERE key='local'", None, [(R, "system.local")]),
    ("SELECT * FROM system.peers_v2", None, [(R, "system.peers_v2")]),
    ("SELECT * FROM system_schema.keyspaces", None, [(R, "system_schema.keyspaces")]),
    ("SELECT * FROM local", "system", [(R, "system.local")]),
    # tricks
    ("SELECT * FROM ks.t -- ; DROP TABLE x\n", None, [(R, "ks.t")]),
    ("SELECT * FROM ks.t // ; DROP TABLE x\n", None, [(R, "ks.t")]),
    ("/* DROP TABLE ks.t; */ SELECT * FROM ks.a", None, [(R, "ks.a")]),
    ("SELECT * FROM ks.t WHERE v = 'FROM other.t'", None, [(R, "ks.t")]),
    ("SELECT * FROM ks.t WHERE v = 'it''s; DROP TABLE x'", None, [(R, "ks.t")]),
    ("SELECT * FROM ks.t WHERE v = $$ ; DROP TABLE x $$", None, [(R, "ks.t")]),
    ('SELECT "a""b" FROM ks.t', None, [(R, "ks.t")]),
    ("SELECT 'x' FROM -- comment\n ks.t", None, [(R, "ks.t")]),
    ("SELECT * /* FROM other.x */ FROM ks.t", None, [(R, "ks.t")]),
    ('INSERT INTO "Ks"."T" (a) VALUES (1)', None, [(W, "Ks.T")]),
    ('SELECT * FROM "MyKs".mytable', None, [(R, "MyKs.mytable")]),
    ("SELECT * FROM MyKs.MyTable", None, [(R, "myks.mytable")]),
    # Parser.g query: cqlStatement (';')* EOF — the node refuses a second statement
    ("SELECT * FROM ks.a; DROP TABLE ks.b", None, DENY_ALL),
    ("SELECT * FROM ks.a;;", None, [(R, "ks.a")]),
    # unparseable / hostile → admin on *
    ("SELECT * FROM ks.t WHERE v = 'unterminated", None, DENY_ALL),
    ("SELECT * FROM ks.t /* unterminated", None, DENY_ALL),
    ('SELECT * FROM "ks.secret".t', None, DENY_ALL),
    ('SELECT * FROM ""', "ks", DENY_ALL),
    ("SELECT now()", None, DENY_ALL),
    ("", None, DENY_ALL),
    ("-- only a comment", None, DENY_ALL),
    # Lexer.g COMMENT needs its \n or \r: running into the end of the text is an error
    ("SELECT * FROM ks.t -- ; DROP TABLE x", None, DENY_ALL),
    ("SELECT * FROM ks.t // trailing", None, DENY_ALL),
    ("FROBNICATE ks.t", None, DENY_ALL),
    ("SELECT * FROM ks.t; EXPLODE", None, DENY_ALL),
    # writes
    # a conditional write (LWT) answers with the row it found: Cassandra wants SELECT too
    ("INSERT INTO ks.t (k, v) VALUES (1, 'x') IF NOT EXISTS", None, [(W, "ks.t"), (R, "ks.t")]),
    ("UPDATE t SET v = 1 WHERE k = 1 IF v = 0", "ks", [(W, "ks.t"), (R, "ks.t")]),
    ("DELETE FROM ks.t WHERE k = 1 IF EXISTS", None, [(W, "ks.t"), (R, "ks.t")]),
    ('UPDATE ks.t SET "if" = 1 WHERE k = 1', None, [(W, "ks.t")]),
    ("INSERT INTO t JSON '{\"k\": 1}'", "ks", [(W, "ks.t")]),
    ("UPDATE ks.t USING TTL 10 SET v = 1 WHERE k = 1", None, [(W, "ks.t")]),
    ("DELETE FROM ks.t WHERE k = 1", None, [(W, "ks.t")]),
    ("DELETE v, m['from'] FROM ks.t USING TIMESTAMP 5 WHERE k = 1", None, [(W, "ks.t")]),
    # batches
    (
        "BEGIN BATCH INSERT INTO a (k) VALUES (1); UPDATE ks.b SET v = 1 WHERE k = 1; APPLY BATCH",
        "ks",
        [(W, "ks.a"), (W, "ks.b")],
    ),
    (
        "BEGIN UNLOGGED BATCH USING TIMESTAMP 5 DELETE FROM ks.a WHERE k=1 APPLY BATCH;",
        None,
        [(W, "ks.a")],
    ),
    (
        "BEGIN COUNTER BATCH UPDATE ks.c SET n = n + 1 WHERE k = 1; APPLY BATCH;",
        None,
        [(W, "ks.c")],
    ),
    ("BEGIN BATCH INSERT INTO ks.a (k) VALUES (1);", None, DENY_ALL),
    ("BEGIN BATCH SELECT * FROM ks.a; APPLY BATCH", None, DENY_ALL),
    ("BEGIN BATCH APPLY BATCH", None, DENY_ALL),
    # admin: schema
    (
        "CREATE KEYSPACE IF NOT EXISTS Ks2 WITH replication = {'class': 'SimpleStrategy'}",
        None,
        [(A, "ks2")],
    ),
    ("ALTER KEYSPACE ks WITH durable_writes = false", None, [(A, "ks")]),
    ("DROP KEYSPACE IF EXISTS ks", None, [(A, "ks")]),
    ("CREATE TABLE IF NOT EXISTS t (k int PRIMARY KEY)", "ks", [(A, "ks.t")]),
    ("CREATE COLUMNFAMILY ks.t (k int PRIMARY KEY)", None, [(A, "ks.t")]),
    ("ALTER TABLE ks.t ADD v text", None, [(A, "ks.t")]),
    ("DROP TABLE ks.t", None, [(A, "ks.t")]),
    ("TRUNCATE ks.t", None, [(A, "ks.t")]),
    ("TRUNCATE TABLE t", "ks", [(A, "ks.t")]),
    # Cassandra's CreateIndexStatement.authorize: ALTER on the indexed table
    ("CREATE INDEX idx ON ks.t (v)", None, [(A, "ks.idx"), (A, "ks.t")]),
    ("CREATE INDEX IF NOT EXISTS idx ON t (v)", "ks", [(A, "ks.idx"), (A, "ks.t")]),
    ("CREATE CUSTOM INDEX IF NOT EXISTS ON ks.t (v) USING 'x'", None, [(A, "ks.t")]),
    ("DROP INDEX ks.idx", None, [(A, "ks.idx")]),
    ("CREATE TYPE ks.addr (street text)", None, [(A, "ks.addr")]),
    (
        "CREATE OR REPLACE FUNCTION ks.f (a int) RETURNS NULL ON NULL INPUT RETURNS int "
        "LANGUAGE java AS $$ return a; $$",
        None,
        [(A, "ks.f")],
    ),
    ("DROP AGGREGATE IF EXISTS ks.agg", None, [(A, "ks.agg")]),
    (
        "CREATE MATERIALIZED VIEW ks.v AS SELECT * FROM ks.base WHERE k IS NOT NULL "
        "PRIMARY KEY (k)",
        None,
        [(A, "ks.v"), (R, "ks.base"), (A, "ks.base")],  # CreateViewStatement: ALTER on base
    ),
    ("DROP MATERIALIZED VIEW ks.v", None, [(A, "ks.v")]),
    ("CREATE TRIGGER trig ON ks.t USING 'Cls'", None, [(A, "ks.t")]),
    # admin: roles and permissions
    ("CREATE ROLE IF NOT EXISTS bob WITH PASSWORD = 'x' AND LOGIN = true", None, [(A, "role:bob")]),
    ('ALTER ROLE "Bob" WITH SUPERUSER = true', None, [(A, "role:Bob")]),
    ("DROP USER alice", None, [(A, "role:alice")]),
    ("GRANT SELECT ON KEYSPACE ks TO bob", None, [(A, "ks"), (A, "role:bob")]),
    ("GRANT ALL PERMISSIONS ON ALL KEYSPACES TO bob", None, [(A, "*"), (A, "role:bob")]),
    ("REVOKE MODIFY ON TABLE ks.t FROM bob", None, [(A, "ks.t"), (A, "role:bob")]),
    ("GRANT admin TO bob", None, [(A, "role:admin"), (A, "role:bob")]),
    ("REVOKE admin FROM bob", None, [(A, "role:admin"), (A, "role:bob")]),
    ("LIST ROLES", None, [(A, "role:*")]),
    ("LIST ALL PERMISSIONS OF bob", None, [(A, "role:bob")]),
]


@pytest.mark.parametrize(("text", "keyspace", "want"), CASES, ids=[c[0][:50] for c in CASES])
def test_classify_table(text: str, keyspace: str | None, want: list[tuple[str, str]]) -> None:
    got = classify(text, keyspace)
    assert [(t.action, t.object) for t in got] == want


def test_mv_base_is_read_not_admin() -> None:
    got = classify("CREATE MATERIALIZED VIEW ks.v AS SELECT * FROM ks.base PRIMARY KEY (k)", None)
    assert got[1] == Target("read", "ks.base", "create_materialized_view")


def test_use_returns_and_applies_the_new_keyspace() -> None:
    targets, ks = classify_with_keyspace('USE "Sales"', "old")
    assert targets == [Target("use", "Sales", "use")] and ks == "Sales"
    targets, ks = classify_with_keyspace("USE ks2;;", "old")
    assert targets == [Target("use", "ks2", "use")] and ks == "ks2"
    # Two statements in one text: the node refuses it, so does the gateway, keyspace kept.
    targets, ks = classify_with_keyspace("USE ks2; SELECT * FROM t", "old")
    assert targets == [Target("admin", "*", "unknown")] and ks == "old"
    targets, ks = classify_with_keyspace("USE ks2 extra", "old")
    assert targets == [Target("admin", "*", "unknown")] and ks == "old"
    targets, ks = classify_with_keyspace("USE 'bad'", "old")
    assert targets == [Target("admin", "*", "unknown")] and ks == "old"


def test_statement_kinds() -> None:
    assert classify("DELETE FROM ks.t WHERE k=1", None)[0].statement_kind == "delete"
    assert classify("DROP TABLE ks.t", None)[0].statement_kind == "drop_table"
    assert classify("garbage", None)[0].statement_kind == "unknown"


@pytest.mark.parametrize(
    ("obj", "action", "expected"),
    [
        ("system.local", "read", True),
        ("system.peers", "read", True),
        ("system.peers_v2", "read", True),
        ("system_schema.tables", "read", True),
        ("system_virtual_schema.columns", "read", True),
        ("system_auth.roles", "read", False),
        ("system.local", "write", False),
        ("system.paxos", "read", False),
        ("ks.local", "read", False),
    ],
)
def test_system_metadata_reads(obj: str, action: str, expected: bool) -> None:
    assert is_system_metadata_read(Target(action, obj, "select")) is expected


def test_tokenizer_details() -> None:
    toks = tokenize("SELECT \"Mixed\"\"Q\", 'it''s', $$a'b$$, 1.5e3 FROM Ks.T; -- x\n")
    assert ("qid", 'Mixed"Q') in toks
    assert ("str", "it's") in toks and ("str", "a'b") in toks
    assert ("id", "ks") in toks and ("id", "t") in toks
    assert toks[-1] == ("p", ";")
