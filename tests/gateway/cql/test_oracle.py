"""CQL enforcement judged by an independent oracle: the node's execution log vs. the audit.

The fake node lexes and splits statements like Cassandra (its own lexer, written from
Lexer.g and Parser.g, sharing nothing with the gateway's classifier) and logs what it
actually executed, with the keyspace it resolved names against. Each test sends raw frames
through the real gateway, then ``oracle.judge`` checks that every executed request is
covered by an ``allow`` audit record of the same principal, action and object, and that
nothing outside the grant ran. The harness here is shared with ``test_oracle_property``.

The attacks pinned here: a ``--``/``//`` comment ended by CR (Cassandra ends it at CR or LF),
a ``BEGIN BATCH`` whose children have no ``;``, a USE pipelined ahead of an unqualified
statement, and a PREPARE pipelined behind a USE whose id is executed on another connection.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from lockgate.demo.standins.cqlserver.client import (
    RawCql,
    batch_frame,
    execute_frame,
    prepare_frame,
    query_frame,
)
from lockgate.demo.standins.cqlserver.execlog import Execution
from lockgate.demo.standins.cqlserver.oracle import judge

from .engine_stack import RESOURCE, Stack, run_on_fake, start_stack, stop_stack

ORACLE_POLICY = """\
rules:
  - id: oracle-read
    effect: allow
    principals: ["airflow:prod/oracle*/*"]
    actions: [read]
    resources: [cass]
    objects: ["ks.orders", "ks.items"]
  - id: oracle-write-items
    effect: allow
    principals: ["airflow:prod/oracle*/*"]
    actions: [write]
    resources: [cass]
    objects: ["ks.items"]
  - id: no-schema-for-hidden
    effect: deny
    principals: ["airflow:prod/hidden*/*"]
    actions: [read]
    resources: [cass]
    objects: ["system_schema.*"]
  - id: oracle-write-only
    effect: allow
    principals: ["airflow:prod/writer*/*"]
    actions: [write]
    resources: [cass]
    objects: ["ks.items"]
"""
# What ORACLE_POLICY grants, as the node's log names it: the oracle's second rule.
GRANT = {("read", "ks.orders"), ("read", "ks.items"), ("write", "ks.items")}
# What it grants to the writer* DAGs.
WRITE_ONLY = {("write", "ks.items")}
EXTRA_SCHEMA = [
    "CREATE TABLE ks.items (id int PRIMARY KEY, v text)",
    "CREATE KEYSPACE other WITH replication = {'class': 'SimpleStrategy', 'replication_factor': 1}",
    "CREATE TABLE other.orders (id int PRIMARY KEY, item text)",
    "CREATE TABLE other.items (id int PRIMARY KEY, v text)",
]
SET_KEYSPACE = 3


class Oracle:
    """The gateway stack, its clients' principals by node connection, and the judge."""

    def __init__(self, stack: Stack) -> None:
        self.stack = stack
        self.principal_of: dict[int, str] = {}

    @classmethod
    async def start(cls, tmp: Path) -> Oracle:
        stack = await start_stack(tmp)
        for text in EXTRA_SCHEMA:
            run_on_fake(stack.fake, text)
        (tmp / "policies" / "team.yaml").write_text(ORACLE_POLICY)
        assert stack.gw.policy.reload_if_changed(), stack.gw.policy.last_error
        return cls(stack)

    async def connect(self, dag: str, keyspace: str | None = "ks") -> RawCql:
        """A logged-in raw client; the node connection(s) it opened are mapped to its principal."""
        fake = self.stack.fake
        before = fake.sessions
        client = await RawCql.open(self.stack.port)
        assert RawCql.logged_in(await client.login(RESOURCE, self.stack.token(dag)))
        assert fake.sessions > before, "the gateway opened no upstream connection"
        for connection in range(before + 1, fake.sessions + 1):
            self.principal_of[connection] = f"airflow:prod/{dag}/load"
        if keyspace is not None:
            answer = await client.request(query_frame(client.stream(), f"USE {keyspace}"))
            assert answer is not None and answer.result_kind == SET_KEYSPACE, answer
        return client

    def mark(self) -> int:
        return len(self.stack.fake.executions)

    def breaches(
        self, since: int, dag: str, grant: set[tuple[str, str]] | None = None
    ) -> list[str]:
        """What the node executed since ``since`` that the audit of ``dag`` does not explain."""
        executed = self.stack.fake.executions.records[since:]
        return judge(executed, self.principal_of, self.audit(dag), grant or GRANT)

    def audit(self, dag: str) -> list[Any]:
        self.stack.gw.audit.flush(2.0)
        return self.stack.gw.audit.search(dag=dag, limit=100_000)

    def executed(self, since: int) -> list[tuple[str, str]]:
        return [(e.action, e.object) for e in self.stack.fake.executions.records[since:]]


@pytest.fixture
async def oracle(tmp_path: Path) -> AsyncIterator[Oracle]:
    o = await Oracle.start(tmp_path)
    try:
        yield o
    finally:
        await stop_stack(o.stack)


# -- the oracle itself can fail ------------------------------------------------------------------
async def test_oracle_sees_allowed_statements_and_flags_nothing(oracle: Oracle) -> None:
    client = await oracle.connect("oracle_ok")
    since = oracle.mark()
    for text in ("SELECT * FROM orders", "SELECT * FROM ks.items", "INSERT INTO items (id, v) "
                 "VALUES (1, 'x')"):  # fmt: skip
        answer = await client.request(query_frame(client.stream(), text))
        assert answer is not None and not answer.is_error, answer
    assert oracle.executed(since) == [
        ("read", "ks.orders"),
        ("read", "ks.items"),
        ("write", "ks.items"),
    ]
    assert oracle.breaches(since, "oracle_ok") == []
    # The same executions judged against an empty audit are all breaches: the check can fail.
    assert len(judge(oracle.stack.fake.executions.records[since:], oracle.principal_of, [])) == 3
    await client.close()


def test_the_judge_wants_each_execution_audited_with_its_own_action() -> None:
    def ran(action: str, obj: str) -> Execution:
        return Execution(1, "lockgate", 1, "QUERY", "op", action, obj, "ks", "text")

    def allowed(action: str, obj: str) -> SimpleNamespace:
        return SimpleNamespace(principal="p", action=action, object=obj, decision="allow")

    who = {1: "p"}
    conditional = [ran("write", "ks.items"), ran("read", "ks.items")]
    assert judge(conditional, who, [allowed("write", "ks.items")]) == []
    # a read the audit calls a write, a read of another table, an unaudited USE: breaches
    assert judge([ran("read", "ks.items")], who, [allowed("write", "ks.items")])
    assert judge([*conditional, ran("read", "ks.other")], who, [allowed("write", "ks.items")])
    assert judge([ran("use", "other")], who, [])
    # USE and metadata reads are outside any grant, but never outside the audit
    builtin = [ran("use", "other"), ran("read", "system_schema.tables")]
    records = [allowed("use", "other"), allowed("read", "system_schema.tables")]
    assert judge(builtin[:1], who, records[:1], grant=set()) == []
    assert judge(builtin[1:], who, records[1:], grant=set()) == []
    assert judge([ran("read", "system_auth.roles")], who, [allowed("read", "system_auth.roles")],
                 grant=set())  # fmt: skip


# -- comment ends: CR ends a line comment in Cassandra -------------------------------------------
@pytest.mark.parametrize(
    "text",
    [
        "-- x\rDELETE FROM ks.secrets WHERE id = 1 /*\nSELECT * FROM ks.orders -- */",
        "// x\rSELECT * FROM ks.secrets /*\nSELECT * FROM ks.orders // */",
        "SELECT * FROM ks.secrets -- \r/*\n*/",
        "-- c\r\nSELECT * FROM other.orders /* \n SELECT * FROM orders -- */",
    ],
)
async def test_carriage_return_ends_a_line_comment(oracle: Oracle, text: str) -> None:
    client = await oracle.connect("oracle_cr")
    since = oracle.mark()
    await client.request(query_frame(client.stream(), text))
    assert oracle.breaches(since, "oracle_cr") == []
    await client.close()


# -- batches whose children have no ';' ----------------------------------------------------------
@pytest.mark.parametrize(
    "text",
    [
        "BEGIN BATCH INSERT INTO ks.items (id, v) VALUES (1, 'a') "
        "INSERT INTO ks.secrets (id, v) VALUES (1, 'b') APPLY BATCH",
        "BEGIN UNLOGGED BATCH UPDATE items SET v = 'a' WHERE id = 1\n"
        "DELETE FROM secrets WHERE id = 1 APPLY BATCH;",
        "BEGIN BATCH INSERT INTO items (id, v) VALUES (2, 'a'); "
        "INSERT INTO other.items (id, v) VALUES (2, 'b') APPLY BATCH",
    ],
)
async def test_batch_children_without_semicolons(oracle: Oracle, text: str) -> None:
    client = await oracle.connect("oracle_batch")
    since = oracle.mark()
    await client.request(query_frame(client.stream(), text))
    assert oracle.breaches(since, "oracle_batch") == []
    await client.close()


# -- keyspace parity under pipelining ------------------------------------------------------------
async def test_pipelined_use_then_unqualified_select(oracle: Oracle) -> None:
    client = await oracle.connect("oracle_use")
    since = oracle.mark()
    use, select = client.stream(), client.stream()
    await client.send(query_frame(use, "USE other"), query_frame(select, "SELECT * FROM orders"))
    answers = await client.answers(2)
    assert answers[use].result_kind == SET_KEYSPACE
    assert oracle.breaches(since, "oracle_use") == []
    await client.close()


async def test_prepare_behind_inflight_use_then_execute_on_another_connection(
    oracle: Oracle,
) -> None:
    first = await oracle.connect("oracle_prep")
    second = await oracle.connect("oracle_prep")
    since = oracle.mark()
    use, prep = first.stream(), first.stream()
    await first.send(query_frame(use, "USE other"), prepare_frame(prep, "SELECT * FROM orders"))
    answers = await first.answers(2)
    query_id = answers[prep].prepared_id if prep in answers else None
    if query_id is not None:  # the gateway may refuse to prepare while the USE is in flight
        await second.request(execute_frame(second.stream(), query_id))
        await first.request(execute_frame(first.stream(), query_id))
    assert oracle.breaches(since, "oracle_prep") == []
    await first.close()
    await second.close()


# -- conditional writes read: a failed IF answers with the row it found ---------------------------
@pytest.mark.parametrize(
    "send",
    [
        "INSERT INTO ks.items (id, v) VALUES (7, 'mine') IF NOT EXISTS",
        "BEGIN BATCH INSERT INTO items (id, v) VALUES (7, 'mine') IF NOT EXISTS APPLY BATCH",
        "UPDATE items SET v = 'mine' WHERE id = 7 IF EXISTS",
        "batch frame",
        "prepared",
    ],
)
async def test_a_write_only_grant_cannot_read_through_a_conditional_write(
    oracle: Oracle, send: str
) -> None:
    run_on_fake(oracle.stack.fake, "INSERT INTO ks.items (id, v) VALUES (7, 'secret')")
    client = await oracle.connect("writer_lwt")
    lwt = "INSERT INTO ks.items (id, v) VALUES (7, 'mine') IF NOT EXISTS"
    since = oracle.mark()
    if send == "batch frame":
        answer = await client.request(batch_frame(client.stream(), [lwt]))
    elif send == "prepared":
        answer = await client.request(prepare_frame(client.stream(), lwt))
        if answer is not None and answer.prepared_id is not None:
            answer = await client.request(execute_frame(client.stream(), answer.prepared_id))
    else:
        answer = await client.request(query_frame(client.stream(), send))
    assert answer is not None and answer.error_code == 0x2100, answer  # Unauthorized
    assert oracle.breaches(since, "writer_lwt", WRITE_ONLY) == []
    # A plain write is still the writer's to make.
    since = oracle.mark()
    plain = "UPDATE items SET v = 'mine' WHERE id = 8"
    answer = await client.request(query_frame(client.stream(), plain))
    assert answer is not None and not answer.is_error, answer
    assert oracle.executed(since) == [("write", "ks.items")]
    assert oracle.breaches(since, "writer_lwt", WRITE_ONLY) == []
    await client.close()


async def test_a_read_write_grant_runs_a_conditional_write_audited(oracle: Oracle) -> None:
    client = await oracle.connect("oracle_lwt")
    since = oracle.mark()
    lwt = "INSERT INTO items (id, v) VALUES (9, 'x') IF NOT EXISTS"
    answer = await client.request(query_frame(client.stream(), lwt))
    assert answer is not None and not answer.is_error, answer
    assert oracle.executed(since) == [("write", "ks.items"), ("read", "ks.items")]
    assert oracle.breaches(since, "oracle_lwt") == []
    await client.close()


# -- USE and driver metadata reads are served audited ---------------------------------------------
async def test_use_and_driver_metadata_reads_are_audited(oracle: Oracle) -> None:
    client = await oracle.connect("oracle_meta", keyspace=None)
    since = oracle.mark()
    texts = [
        "USE other",
        "SELECT * FROM system.local WHERE key = 'local'",
        "SELECT * FROM system.peers",
        "SELECT * FROM system_schema.tables",
        'USE "ks"',
        "SELECT * FROM orders",
    ]
    for text in texts:
        answer = await client.request(query_frame(client.stream(), text))
        assert answer is not None and not answer.is_error, (text, answer)
    stream = client.stream()
    answer = await client.request(prepare_frame(stream, "USE other"))
    assert answer is not None and answer.prepared_id is not None, answer
    answer = await client.request(execute_frame(client.stream(), answer.prepared_id))
    assert answer is not None and answer.result_kind == SET_KEYSPACE, answer
    executed = oracle.executed(since)
    assert executed == [
        ("use", "other"),
        ("read", "system.local"),
        ("read", "system.peers"),
        ("read", "system_schema.tables"),
        ("use", "ks"),
        ("read", "ks.orders"),
        ("use", "other"),
    ]
    assert oracle.breaches(since, "oracle_meta") == []
    audit = oracle.audit("oracle_meta")
    admitted = [r for r in audit if r.event == "admitted"]
    rules = {(r.action, r.object): r.rule for r in admitted}
    assert rules[("use", "other")] == "builtin:use"
    assert rules[("read", "system.local")] == "builtin:driver-metadata"
    assert rules[("read", "ks.orders")] == "oracle-read"
    # The same executions judged without the built-in records are breaches: the check can fail.
    ruled = [r for r in audit if r.action != "use" and not str(r.object).startswith("system")]
    records = oracle.stack.fake.executions.records[since:]
    assert len(judge(records, oracle.principal_of, ruled)) == len(executed) - 1
    await client.close()


# -- system keyspaces: only driver metadata is everyone's ------------------------------------------
@pytest.mark.parametrize(
    "text",
    [
        "SELECT * FROM system_auth.roles",
        "SELECT salted_hash FROM system_auth.roles WHERE role = 'cassandra'",
        "SELECT * FROM system.paxos",
        "SELECT * FROM system_views.settings",
        "SELECT * FROM system_traces.sessions",
        "DELETE FROM system_schema.tables WHERE keyspace_name = 'ks'",
        "INSERT INTO system.local (key) VALUES ('x')",
        "UPDATE system_schema.keyspaces SET durable_writes = false WHERE keyspace_name = 'ks'",
    ],
)
async def test_system_keyspaces_beyond_driver_metadata_need_a_grant(
    oracle: Oracle, text: str
) -> None:
    client = await oracle.connect("oracle_sys")
    since = oracle.mark()
    answer = await client.request(query_frame(client.stream(), text))
    assert answer is not None and answer.error_code == 0x2100, answer  # Unauthorized
    assert oracle.executed(since) == []
    assert oracle.breaches(since, "oracle_sys") == []
    await client.close()


async def test_an_explicit_deny_withdraws_a_builtin_allowance(oracle: Oracle) -> None:
    client = await oracle.connect("hidden_meta")  # USE ks: still everyone's
    since = oracle.mark()
    schema = await client.request(
        query_frame(client.stream(), "SELECT * FROM system_schema.tables")
    )
    assert schema is not None and schema.error_code == 0x2100, schema
    assert "no-schema-for-hidden" in schema.message
    local = await client.request(query_frame(client.stream(), "SELECT * FROM system.local"))
    assert local is not None and not local.is_error, local
    assert oracle.executed(since) == [("read", "system.local")]
    assert oracle.breaches(since, "hidden_meta") == []
    denied = [r for r in oracle.audit("hidden_meta") if r.event == "denied"]
    assert [(r.object, r.rule) for r in denied] == [
        ("system_schema.tables", "no-schema-for-hidden")
    ]
    await client.close()
