"""The prepared-statement registry cannot be poisoned: an id stands for the text and keyspace
the node prepared it under, for every connection, principal and keyspace.

Oracles: the node's prepared ids (Cassandra's ``computeId``, which the test node follows),
its data (``other.orders`` holds a row no etl task may read) and its PREPARED metadata,
which names the table the node resolved the statement against.
"""

from __future__ import annotations

import asyncio
import tracemalloc
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from cassandra import InvalidRequest
from cassandra.query import BatchStatement

from lockgate.gateway.cql import codec
from lockgate.gateway.cql.classify import Target
from lockgate.gateway.cql.holds import UseHold
from lockgate.gateway.cql.statements import (
    Plan,
    PreparedStatements,
    classify_statement,
    plan_for,
    tables_outside_plan,
)

from .engine_stack import (
    RESOURCE,
    UPSTREAM_PASSWORD,
    UPSTREAM_USER,
    RawClient,
    Stack,
    connect,
    cql_context,
    run_on_fake,
    stack_fixture,
)
from .test_pipelining import (
    EXTRA_SCHEMA,
    SELECT,
    etl_raw,
    execute_id,
    node_id,
    pipelined,
    send_together,
)


@pytest.fixture
async def stack(tmp_path: Path) -> AsyncIterator[Stack]:
    async for s in stack_fixture(tmp_path):
        for text in EXTRA_SCHEMA:
            run_on_fake(s.fake, text)
        yield s


def registry(stack: Stack) -> PreparedStatements:
    return cql_context(stack).prepared


async def test_metadata_check_alone_refuses_a_prepare_resolved_elsewhere(
    stack: Stack, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Second line: with holds switched off the race reaches the node, and the PREPARED
    metadata (other.orders) betrays it; the id is not remembered."""
    monkeypatch.setattr(UseHold, "must_wait", lambda self, event: False)
    got = await pipelined(
        stack,
        codec.Query(stream=3, query="USE other"),
        codec.Prepare(stream=4, query=SELECT),
    )
    prepare = got[4]
    assert isinstance(prepare, codec.Error) and prepare.code == codec.ERR_INVALID
    assert "other.orders" in prepare.message
    assert registry(stack).lookup(RESOURCE, node_id("other", SELECT)) is None
    refusals = [r for r in stack.audit("denied") if r.reason == "prepared_mismatch"]
    assert len(refusals) == 1 and refusals[0].detail["prepared_on"] == ["other.orders"]
    answer = await execute_id(stack, node_id("other", SELECT))
    assert isinstance(answer, codec.Error) and answer.code == codec.ERR_UNPREPARED


async def test_node_metadata_names_the_table_the_node_resolved(stack: Stack) -> None:
    """tables_outside_plan against a PREPARED result straight from the node."""
    raw = await RawClient.open(stack.fake.port)
    try:
        assert isinstance(await raw.login(UPSTREAM_PASSWORD, user=UPSTREAM_USER), codec.AuthSuccess)
        raw.send(codec.Query(stream=3, query="USE other"))
        assert isinstance(await raw.recv(), codec.SetKeyspace)
        raw.send(codec.Prepare(stream=4, query="SELECT item FROM orders WHERE id = ?"))
        prepared = await raw.recv()
    finally:
        raw.close()
    assert isinstance(prepared, codec.Prepared)
    text = "SELECT item FROM orders WHERE id = ?"
    judged_on_ks = Plan("prepare", text, classify_statement(text, "ks"), "ks")
    judged_on_other = Plan("prepare", text, classify_statement(text, "other"), "other")
    assert tables_outside_plan(judged_on_ks, prepared) == ["other.orders"]
    assert tables_outside_plan(judged_on_other, prepared) == []


# -- one id, one statement -----------------------------------------------------------------------
def test_registry_never_overwrites_an_id_with_another_statement() -> None:
    reg = PreparedStatements()
    qid = b"\x07" * 16
    assert reg.remember("cass", qid, SELECT, "ks")
    assert reg.remember("cass", qid, SELECT, "ks")  # the same statement again: fine
    # another keyspace changes what an unqualified name means: the id becomes ambiguous
    assert not reg.remember("cass", qid, SELECT, "other")
    entry = reg.lookup("cass", qid)
    assert entry is not None and entry.ambiguous
    # and stays so, even when the first statement is prepared again
    assert not reg.remember("cass", qid, SELECT, "ks")
    assert reg.lookup("cass", qid).ambiguous  # type: ignore[union-attr]
    # another text under a known id: ambiguous too
    other_id = b"\x08" * 16
    reg.remember("cass", other_id, "SELECT * FROM ks.orders", None)
    assert not reg.remember("cass", other_id, "SELECT * FROM ks.secrets", None)
    # ids are per resource
    assert reg.remember("other-cluster", qid, SELECT, "other")
    assert not reg.lookup("other-cluster", qid).ambiguous  # type: ignore[union-attr]


def test_qualified_statement_prepared_under_two_keyspaces_is_one_statement() -> None:
    reg = PreparedStatements()
    qid = b"\x09" * 16
    text = "SELECT * FROM ks.orders WHERE id = ?"
    assert reg.remember("cass", qid, text, "ks")
    assert reg.remember("cass", qid, text, "other")  # same targets under either keyspace
    entry = reg.lookup("cass", qid)
    assert entry is not None and not entry.ambiguous and entry.keyspace == "ks"


def test_registry_is_bounded() -> None:
    reg = PreparedStatements(max_entries=3)
    for i in range(5):
        reg.remember("cass", bytes([i]) * 16, f"SELECT * FROM ks.t{i}", None)  # noqa: S608
    assert len(reg) == 3
    assert reg.lookup("cass", b"\x00" * 16) is None


def test_registry_memory_is_bounded_whatever_the_text_sizes() -> None:
    """A reader of one table can PREPARE texts as long as a frame; 200 distinct 1 MiB texts
    must not stay pinned (measured by tracemalloc, not by the registry's own count)."""
    reg = PreparedStatements()
    filler = "0," * (512 * 1024)  # ~1 MiB of IN-list per text
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        for i in range(200):
            text = f"SELECT * FROM ks.orders WHERE id IN ({filler}{i})"  # noqa: S608
            reg.remember("cass", i.to_bytes(16, "big"), text, None)
            del text
        held = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    assert held < 96 * 2**20, f"{held / 2**20:.0f} MiB held"  # the budget is 64 MiB
    assert reg.lookup("cass", (199).to_bytes(16, "big")) is not None  # the newest stays
    assert reg.lookup("cass", (0).to_bytes(16, "big")) is None  # the oldest went


def test_execute_and_batch_plans_of_an_ambiguous_id_are_refused() -> None:
    reg = PreparedStatements()
    qid = b"\x0a" * 16
    reg.remember("cass", qid, "INSERT INTO orders (id) VALUES (?)", "ks")
    reg.remember("cass", qid, "INSERT INTO orders (id) VALUES (?)", "other")
    execute = plan_for(codec.Execute(query_id=qid), "cass", "ks", reg)
    assert execute is not None and execute.ambiguous == qid and execute.targets == []
    batch = plan_for(
        codec.Batch(statements=[codec.BatchStatement(kind=1, query_id=qid)]), "cass", "ks", reg
    )
    assert batch is not None and batch.ambiguous == qid and batch.targets == []


async def test_ambiguous_id_is_refused_on_every_connection(stack: Stack) -> None:
    session = await asyncio.to_thread(connect, stack.port, stack.token("etl"), "ks")
    try:
        text = "SELECT item FROM orders WHERE id = ?"
        select = await asyncio.to_thread(session.prepare, text)
        insert = await asyncio.to_thread(
            session.prepare, "INSERT INTO orders (id, item) VALUES (?, ?)"
        )
        # what an attacker would need: the same id filed for the text under `other`
        assert not registry(stack).remember(RESOURCE, select.query_id, text, "other")
        seen = len(stack.fake.statements)
        with pytest.raises(InvalidRequest, match="more than one statement"):
            await asyncio.to_thread(session.execute, select, (1,))
        batch = BatchStatement()
        batch.add(insert, (5, "x"))
        batch.add(select, (1,))
        with pytest.raises(InvalidRequest, match="more than one statement"):
            await asyncio.to_thread(session.execute, batch)
    finally:
        await asyncio.to_thread(session.cluster.shutdown)
    assert stack.fake.statements[seen:] == []
    refusals = [r for r in stack.audit("denied") if r.reason == "prepared_ambiguous"]
    assert len(refusals) == 2 and all(r.decision == "deny" for r in refusals)


async def test_request_reusing_a_stream_in_flight_is_refused(stack: Stack) -> None:
    raw = await etl_raw(stack)
    try:
        send_together(
            raw,
            codec.Query(stream=3, query="USE other"),
            codec.Prepare(stream=4, query="SELECT * FROM ks.orders"),
            codec.Prepare(stream=4, query="SELECT * FROM ks.secrets"),
        )
        got: list[codec.Event] = []
        while len(got) < 3:
            event = await raw.recv()
            assert event is not None
            got.append(event)
    finally:
        raw.close()
    refused = [e for e in got if isinstance(e, codec.Error) and e.code == codec.ERR_PROTOCOL]
    assert len(refused) == 1 and "already in use" in refused[0].message
    # the id of ks.secrets never stands for the ks.orders text, nor the reverse
    orders = registry(stack).lookup(RESOURCE, node_id("other", "SELECT * FROM ks.orders"))
    assert orders is not None and orders.text == "SELECT * FROM ks.orders"
    assert registry(stack).lookup(RESOURCE, node_id("other", "SELECT * FROM ks.secrets")) is None
    assert [r.reason for r in stack.audit("denied")] == ["stream_in_use"]


def test_plan_targets_shape() -> None:
    """The metadata check only looks at reads and writes."""
    plan = Plan("prepare", "DROP TABLE t", [Target("admin", "ks.t", "drop_table")], "ks")
    assert tables_outside_plan(plan, codec.Prepared()) == []
