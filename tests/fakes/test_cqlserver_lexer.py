"""The fake node lexes, splits and identifies statements as Cassandra does.

Expected outcomes come from Cassandra's grammar, rule by rule (Lexer.g ``COMMENT``,
``MULTILINE_COMMENT``, ``STRING_LITERAL``, ``QUOTED_NAME``, ``IDENT``, ``WS``; Cql.g
``query``; Parser.g ``batchStatement``), and prepared ids from ``QueryProcessor.computeId``,
recomputed here with hashlib. The execution log is checked over raw frames.
"""

from __future__ import annotations

import hashlib
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from lockgate.demo.standins.cqlserver import CqlServer, cql, start_cql_server
from lockgate.demo.standins.cqlserver.client import (
    RawCql,
    execute_frame,
    prepare_frame,
    query_frame,
)
from lockgate.demo.standins.cqlserver.execlog import ExecutionLog
from lockgate.demo.standins.cqlserver.grammar import parse
from lockgate.demo.standins.cqlserver.wire import CqlError

INS = "INSERT INTO ks.t (k, v) VALUES (1, 'a')"
UPD = "UPDATE ks.t SET v = 'b' WHERE k = 2"


@pytest.mark.parametrize(
    ("text", "table"),
    [
        ("SELECT * FROM ks.t -- c\r", "ks.t"),
        ("-- c\rSELECT * FROM ks.t", "ks.t"),
        ("// c\rSELECT * FROM ks.t", "ks.t"),
        ("-- SELECT * FROM ks.u\r\nSELECT * FROM ks.t", "ks.t"),
        ("/* a -- b \n */ SELECT * FROM ks.t /* /* not nested */", "ks.t"),
        ("SELECT * FROM ks.t;;;", "ks.t"),
        ("SELECT * FROM ks.t ;\r\n; \t", "ks.t"),
        ('SELECT * FROM "Ks"."T"', "Ks.T"),
        ('SELECT * FROM KS."a""b"', 'ks.a"b'),
        ("sElEcT * FrOm Ks.T", "ks.t"),
    ],
)
def test_statements_cassandra_accepts(text: str, table: str) -> None:
    stmt, _ = parse(text)
    assert isinstance(stmt, cql.Select)
    assert f"{stmt.table.keyspace}.{stmt.table.name}" == table


@pytest.mark.parametrize(
    ("text", "value"),
    [
        ("INSERT INTO ks.t (k, v) VALUES (1, 'it''s -- no /* comment')", "it's -- no /* comment"),
        ("INSERT INTO ks.t (k, v) VALUES (1, $$it's\r-- 'no' comment$$)", "it's\r-- 'no' comment"),
        ("INSERT INTO ks.t (k, v) VALUES (1, $$$$)", ""),
        ("INSERT INTO ks.t (k, v) VALUES (1, '')", ""),
    ],
)
def test_string_literals(text: str, value: str) -> None:
    stmt, _ = parse(text)
    assert isinstance(stmt, cql.Insert) and stmt.values[1] == value


@pytest.mark.parametrize(
    ("text", "children"),
    [
        (f"BEGIN BATCH {INS} {UPD} APPLY BATCH", 2),
        (f"BEGIN BATCH {INS}\r{UPD}; APPLY BATCH;", 2),
        (f"BEGIN UNLOGGED BATCH USING TIMESTAMP 5 {INS}; {UPD}; {INS} APPLY BATCH", 3),
        ("BEGIN COUNTER BATCH APPLY BATCH", 0),
        (f"begin batch {INS} -- x\r{UPD} apply batch", 2),
    ],
)
def test_batches_need_no_semicolons(text: str, children: int) -> None:
    stmt, _ = parse(text)
    assert isinstance(stmt, cql.Batch) and len(stmt.statements) == children


@pytest.mark.parametrize(
    "text",
    [
        "",
        ";",
        "SELECT * FROM ks.t -- no line end",
        "SELECT * FROM ks.t // no line end",
        "SELECT * FROM ks.t /* unterminated",
        "SELECT * FROM ks.t; SELECT * FROM ks.u",
        "SELECT * FROM ks.t -- c\rSELECT * FROM ks.u",
        "; SELECT * FROM ks.t",
        f"BEGIN BATCH ; {INS} APPLY BATCH",
        f"BEGIN BATCH {INS};; {UPD} APPLY BATCH",
        f"BEGIN LOGGED BATCH {INS} APPLY BATCH",
        "BEGIN BATCH SELECT * FROM ks.t APPLY BATCH",
        f"BEGIN BATCH {INS} APPLY BATCH {UPD}",
        "SELECT * FROM ks.t\x0b",
        "SELECT * FROM ks.t\x0c",
        "SELECT * FROM ks.t\u00a0",
        "SELECT * FROM _t",
        'SELECT * FROM ks.""',
        "SELECT * FROM select",
        "SELECT * FROM ks.t WHERE k = 'open",
        "SELECT * FROM ks.t WHERE k = $$open",
        "SELECT * FROM ks.t WHERE k = $x$",
        'SELECT * FROM "open',
        "SELECT * FROM ks.t # comment",
    ],
)
def test_statements_cassandra_rejects_as_syntax_errors(text: str) -> None:
    with pytest.raises(CqlError) as info:
        parse(text)
    assert info.value.code == 0x2000


# -- over the wire: prepared ids and the execution log -------------------------------------------
@pytest.fixture
async def node(tmp_path: Path) -> AsyncIterator[CqlServer]:
    srv = await start_cql_server(execution_log=tmp_path / "executions.jsonl")
    yield srv
    await srv.close()


async def _client(node: CqlServer, keyspace: str | None = None) -> RawCql:
    c = await RawCql.open(node.port)
    assert RawCql.logged_in(await c.login("cassandra", "cassandra"))
    if keyspace is not None:
        await _ok(c, f"USE {keyspace}")
    return c


async def _ok(c: RawCql, text: str) -> None:
    answer = await c.request(query_frame(c.stream(), text))
    assert answer is not None and not answer.is_error, (text, answer and answer.message)


async def _schema(c: RawCql) -> None:
    for ks in ("a", "b"):
        await _ok(c, f"CREATE KEYSPACE {ks} WITH replication = {{'class': 'SimpleStrategy'}}")
        await _ok(c, f"CREATE TABLE {ks}.t (k int PRIMARY KEY, v text)")


def _md5(text: str) -> bytes:
    return hashlib.md5(text.encode(), usedforsecurity=False).digest()


async def test_prepared_ids_are_computed_like_cassandra(node: CqlServer) -> None:
    setup = await _client(node)
    await _schema(setup)
    on_a, on_b = await _client(node, "a"), await _client(node, "b")
    text, qualified = "SELECT * FROM t", "SELECT * FROM a.t"

    async def prepare(c: RawCql, q: str) -> bytes:
        answer = await c.request(prepare_frame(c.stream(), q))
        assert answer is not None and answer.prepared_id is not None, answer
        return answer.prepared_id

    id_a, id_b = await prepare(on_a, text), await prepare(on_b, text)
    assert id_a == _md5("a" + text)
    assert id_b == _md5("b" + text)
    # A fully qualified text has one id whatever the connection's keyspace (Cassandra 4).
    assert await prepare(on_a, qualified) == await prepare(on_b, qualified)
    assert await prepare(on_b, qualified) == _md5(qualified)
    # An id runs under the keyspace it was prepared in, on any connection.
    since = len(node.executions)
    answer = await on_b.request(execute_frame(on_b.stream(), id_a))
    assert answer is not None and answer.result_kind == 2
    [e] = node.executions.records[since:]
    assert (e.opcode, e.action, e.object, e.keyspace) == ("EXECUTE", "read", "a.t", "a")
    for c in (setup, on_a, on_b):
        await c.close()


async def test_execution_log_follows_the_node_keyspace_and_batches(
    node: CqlServer, tmp_path: Path
) -> None:
    c = await _client(node)
    await _schema(c)
    await _ok(c, "USE a")
    since = len(node.executions)
    use, select = c.stream(), c.stream()
    await c.send(query_frame(use, "USE b"), query_frame(select, "SELECT * FROM t"))
    assert len(await c.answers(2)) == 2
    await _ok(c, "BEGIN BATCH INSERT INTO t (k, v) VALUES (1, 'x') DELETE FROM a.t WHERE k = 1 "
                 "APPLY BATCH")  # fmt: skip
    refused = await c.request(query_frame(c.stream(), "SELECT * FROM missing"))
    assert refused is not None and refused.error_code == 0x2200
    records = node.executions.records[since:]
    assert [(e.opcode, e.op, e.action, e.object) for e in records] == [
        ("QUERY", "use", "use", "b"),
        ("QUERY", "select", "read", "b.t"),
        ("QUERY", "insert", "write", "b.t"),
        ("QUERY", "delete", "write", "a.t"),
    ]
    assert records[2].request == records[3].request != records[1].request
    assert {e.role for e in records} == {"cassandra"}
    assert ExecutionLog.read(tmp_path / "executions.jsonl") == node.executions.records
    await c.close()
