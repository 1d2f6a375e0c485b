"""Attacks on the CQL engine's fast path: a prepared EXECUTE reusing its connection's judgement.

A session keeps what an EXECUTE asks of policy (:class:`lockgate.gateway.cql.judge.Judged`)
while the registry entry, the view catalog and the token's claims it was built from stand.
Each test here judges an EXECUTE once, then changes one thing the judgement rests on and
checks that the next EXECUTE is judged on the change: the connection's keyspace, the
registry entry behind the id, the view catalog, the token's expiry, a password literal kept
in the judged detail, a live change of the resource.

Oracles: the node's own logs (``fake.statements``, ``fake.executions``: what ran, with the
keyspace the node resolved names against) and the audit trail.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import time
import tracemalloc
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest
from cassandra import Unauthorized

from lockgate.demo.standins.cqlserver.client import execute_frame, prepare_frame, query_frame
from lockgate.gateway.cql import codec
from lockgate.gateway.cql.statements import PreparedStatements

from .engine_stack import (
    RESOURCE,
    Stack,
    connect,
    cql_context,
    run_on_fake,
    stack_fixture,
    stop_stack,
)
from .test_engine_statement_checks import PASSWORD, assert_no_password
from .test_oracle import Oracle
from .test_oracle_views import UNAUTHORIZED, VIEWS, VIEWS_POLICY
from .test_pipelining import EXTRA_SCHEMA, etl_raw

INSERT = "INSERT INTO orders (id, item) VALUES (?, ?)"
# Role statements that may run twice (an EXECUTE reuses the judged, redacted detail).
ROLE_STATEMENTS = [
    f"CREATE ROLE IF NOT EXISTS reporter WITH PASSWORD = '{PASSWORD}' AND LOGIN = true",
    f"ALTER ROLE reporter WITH PASSWORD = '{PASSWORD}'",
]
SET_KEYSPACE = 3


@pytest.fixture
async def stack(tmp_path: Path) -> AsyncIterator[Stack]:
    async for s in stack_fixture(tmp_path):
        for text in EXTRA_SCHEMA:
            run_on_fake(s.fake, text)
        yield s


@pytest.fixture
async def oracle(tmp_path: Path) -> AsyncIterator[Oracle]:
    o = await Oracle.start(tmp_path)
    try:
        yield o
    finally:
        await stop_stack(o.stack)


@pytest.fixture
async def views_oracle(oracle: Oracle, tmp_path: Path) -> Oracle:
    """The oracle's cluster with the views of :mod:`.test_oracle_views` and their policy."""
    run_on_fake(oracle.stack.fake, "INSERT INTO ks.secrets (id, v) VALUES (1, 'top secret')")
    for text in VIEWS:
        run_on_fake(oracle.stack.fake, text)
    (tmp_path / "policies" / "views.yaml").write_text(VIEWS_POLICY)
    assert oracle.stack.gw.policy.reload_if_changed(), oracle.stack.gw.policy.last_error
    return oracle


def _orders_ran(stack: Stack, since: int) -> list[str]:
    return [text for _, text in stack.fake.statements[since:] if "orders" in text]


# -- USE between two EXECUTEs ---------------------------------------------------------------------
async def test_a_use_between_executes_keeps_the_keyspace_the_id_was_prepared_under(
    oracle: Oracle,
) -> None:
    """The node binds an unqualified prepared statement to the keyspace of its PREPARE, so a
    USE between two EXECUTEs changes nothing the reused judgement named: both run on, and
    are audited as, ``ks.orders``."""
    client = await oracle.connect("oracle_keep")  # USE ks
    since = oracle.mark()
    prepared = await client.request(prepare_frame(client.stream(), "SELECT * FROM orders"))
    assert prepared is not None and prepared.prepared_id is not None, prepared
    first = await client.request(execute_frame(client.stream(), prepared.prepared_id))
    assert first is not None and not first.is_error, first
    use = await client.request(query_frame(client.stream(), "USE other"))
    assert use is not None and use.result_kind == SET_KEYSPACE, use
    again = await client.request(execute_frame(client.stream(), prepared.prepared_id))
    assert again is not None and not again.is_error, again
    assert oracle.executed(since) == [
        ("read", "ks.orders"),
        ("use", "other"),
        ("read", "ks.orders"),
    ]
    assert oracle.breaches(since, "oracle_keep") == []
    await client.close()


# -- the registry entry behind the id -------------------------------------------------------------
async def test_an_id_evicted_and_filed_again_for_another_statement_is_judged_anew(
    stack: Stack,
) -> None:
    """The judgement is kept for the registry entry it was made on, not for the id: once the
    entry is evicted and the id filed again (for another text), the next EXECUTE on the
    connection that judged it is judged on the new entry (here: a write to ks.secrets, which
    a deny rule refuses) and nothing runs."""
    session = await asyncio.to_thread(connect, stack.port, stack.token("etl"), "ks")
    try:
        insert = await asyncio.to_thread(session.prepare, INSERT)
        await asyncio.to_thread(session.execute, insert, (1, "a"))
        registry = cql_context(stack).prepared
        for i in range(registry._max):  # evict every entry, the INSERT's with them
            registry.remember(RESOURCE, i.to_bytes(16, "big"), "SELECT * FROM ks.orders", "ks")
        assert registry.lookup(RESOURCE, insert.query_id) is None
        registry.remember(RESOURCE, insert.query_id, "DELETE FROM ks.secrets WHERE id = 1", "ks")
        seen = len(stack.fake.statements)
        with pytest.raises(Unauthorized, match="etl-no-secrets"):
            await asyncio.to_thread(session.execute, insert, (2, "b"))
    finally:
        await asyncio.to_thread(session.cluster.shutdown)
    assert _orders_ran(stack, seen) == []
    denied = [r for r in stack.audit("denied") if r.rule == "etl-no-secrets"]
    assert [(r.action, r.object) for r in denied] == [("write", "ks.secrets")]


# -- the view catalog -----------------------------------------------------------------------------
async def test_a_reloaded_view_catalog_rejudges_an_execute_judged_before(
    views_oracle: Oracle,
) -> None:
    """``ks.stats_by_day`` is a table (granted by ``ks.*_by_*``) when a live connection
    prepares and runs a read of it; then it is dropped and made a view of ``ks.secrets``.
    Once the catalog is read again, the EXECUTE judged before on that connection is judged
    with the view's base, which is not granted: refused, nothing runs."""
    oracle = views_oracle
    fake = oracle.stack.fake
    run_on_fake(fake, "CREATE TABLE ks.stats_by_day (id int PRIMARY KEY, v text)")
    cql_context(oracle.stack).views.invalidate(RESOURCE)
    viewer = await oracle.connect("viewer_late")  # the catalog is read at this login
    prepared = await viewer.request(prepare_frame(viewer.stream(), "SELECT * FROM stats_by_day"))
    assert prepared is not None and prepared.prepared_id is not None, prepared
    first = await viewer.request(execute_frame(viewer.stream(), prepared.prepared_id))
    assert first is not None and not first.is_error, first
    run_on_fake(fake, "DROP TABLE ks.stats_by_day")
    run_on_fake(
        fake,
        "CREATE MATERIALIZED VIEW ks.stats_by_day AS SELECT * FROM ks.secrets "
        "WHERE v IS NOT NULL AND id IS NOT NULL PRIMARY KEY (v, id)",
    )
    cql_context(oracle.stack).views.invalidate(RESOURCE)
    other = await oracle.connect("viewops")  # this login reads the catalog again
    since = oracle.mark()
    again = await viewer.request(execute_frame(viewer.stream(), prepared.prepared_id))
    assert again is not None and again.error_code == UNAUTHORIZED, again
    assert "ks.secrets" in again.message
    assert oracle.executed(since) == []
    await viewer.close()
    await other.close()


# -- the token ------------------------------------------------------------------------------------
async def test_an_expired_token_stops_an_execute_judged_before(stack: Stack) -> None:
    raw = await etl_raw(stack)
    try:
        raw.send(codec.Prepare(stream=3, query="SELECT * FROM orders"))
        prepared = await raw.recv()
        assert isinstance(prepared, codec.Prepared), prepared
        for stream in (4, 5):
            raw.send(codec.Execute(stream=stream, query_id=prepared.query_id))
            assert isinstance(await raw.recv(), codec.Rows)
        verifier = cql_context(stack).verifier
        verifier._clock = lambda: time.time() + 3600  # type: ignore[attr-defined]
        seen = len(stack.fake.statements)
        raw.send(codec.Execute(stream=6, query_id=prepared.query_id))
        answer = await raw.recv()
    finally:
        raw.close()
    assert isinstance(answer, codec.Error) and answer.code == codec.ERR_UNAUTHORIZED, answer
    assert "(expired)" in answer.message
    assert _orders_ran(stack, seen) == []
    assert any(r.reason == "expired" for r in stack.audit("auth_failed"))


# -- secrets in the judged detail -----------------------------------------------------------------
async def test_a_password_literal_in_a_prepared_statement_is_never_recorded(
    stack: Stack, caplog: pytest.LogCaptureFixture
) -> None:
    """The judged detail (statement text) is reused by every EXECUTE: it is the redacted text,
    in the admitted and the outcome records alike."""
    caplog.set_level(logging.DEBUG)
    session = await asyncio.to_thread(connect, stack.port, stack.token("ops"))
    try:
        for text in ROLE_STATEMENTS:
            statement = await asyncio.to_thread(session.prepare, text)
            for _ in range(2):
                await asyncio.to_thread(session.execute, statement)
    finally:
        await asyncio.to_thread(session.cluster.shutdown)
    executes = [r for r in stack.audit() if r.detail and r.detail.get("op") == "execute"]
    assert len(executes) == 2 * 2 * len(ROLE_STATEMENTS)  # admitted + allowed, twice each
    assert all(r.detail.get("statement") for r in executes)
    assert_no_password(stack, caplog)
    assert any(PASSWORD in t for _, t in stack.fake.statements)  # the node did get it


# -- a live change of the resource ----------------------------------------------------------------
async def test_executes_sent_as_the_resource_changes_do_not_run(stack: Stack) -> None:
    """A session on a resource changed live is closed before it reads another frame: the
    EXECUTEs already on their way (judged before, under the old resource) never run."""
    raw = await etl_raw(stack)
    engine = stack.gw.engines["cql"]
    try:
        raw.send(codec.Prepare(stream=3, query=INSERT))
        prepared = await raw.recv()
        assert isinstance(prepared, codec.Prepared), prepared
        values: list[codec.Value] = [b"\x00\x00\x00\x01", b"a"]
        raw.send(codec.Execute(stream=4, query_id=prepared.query_id, values=values))
        assert isinstance(await raw.recv(), codec.Void)
        seen = len(stack.fake.statements)
        frames = [
            raw.conn.send(codec.Execute(stream=s, query_id=prepared.query_id, values=values))
            for s in range(10, 20)
        ]
        raw.writer.write(b"".join(frames))
        (resource,) = cql_context(stack).resources.values()
        changed = resource.model_copy(update={"idle_timeout": resource.idle_timeout + 1})
        engine.update_resources([changed])
        assert await raw.closed()
    finally:
        raw.close()
    assert _orders_ran(stack, seen) == []


# -- memory kept per connection -------------------------------------------------------------------
def _rows_frame(size: int) -> bytes:
    """An upstream RESULT Rows frame of ``size`` body bytes (split, never decoded)."""
    body = (2).to_bytes(4, "big") + b"x" * (size - 4)
    return bytes([0x84, 0, 0, 5, codec.RESULT]) + len(body).to_bytes(4, "big") + body


def _query_frame(size: int) -> bytes:
    """A client QUERY frame of about ``size`` body bytes (decoded by next_event)."""
    text = f"SELECT * FROM ks.orders /* {'x' * (size - 40)} */".encode()  # noqa: S608
    body = len(text).to_bytes(4, "big") + text + b"\x00\x01\x00"
    return bytes([0x04, 0, 0, 5, codec.QUERY]) + len(body).to_bytes(4, "big") + body


@pytest.mark.parametrize(
    ("role", "split", "build"),
    [
        (codec.Role.CLIENT, "next_frame", _rows_frame),  # the upstream answers' splitter
        (codec.Role.SERVER, "next_event", _query_frame),  # the client requests' parser
    ],
)
def test_a_frame_returned_is_not_kept_while_the_connection_idles(
    role: codec.Role, split: str, build: Callable[[int], bytes]
) -> None:
    """A relayed frame must not stay pinned in the codec's buffer while the connection
    waits for its next read: an idle pooled connection would keep its largest answer
    (upstream frames may be 256 MiB) or request until its next heartbeat. Before the frame
    splitter moved into the codec the relay dropped each frame's bytes at once."""
    size = 8 << 20
    tracemalloc.start()
    try:
        conn = codec.Connection(role, max_frame_bytes=size + 64)
        data = build(size)
        conn.receive_data(data)
        del data
        got = getattr(conn, split)()
        assert got is not codec.NEED_DATA
        del got
        assert getattr(conn, split)() is codec.NEED_DATA and conn.buffered == 0
        gc.collect()
        kept, _ = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert kept < size // 8, f"{kept} bytes kept after the frame was returned"


async def test_judged_executes_do_not_pin_texts_the_registry_let_go(stack: Stack) -> None:
    """The registry bounds the memory of prepared texts (64 MiB, see PreparedStatements) so
    that a reader of one table cannot pin a frame's worth of text per id. A session's judged
    EXECUTEs must not undo that: here 40 texts of 60 KB are prepared and executed on one
    connection while the registry keeps about 200 KB of them; what the gateway still holds
    afterwards must be about the registry's share, not all 2.4 MB (with the default 16 MiB
    frame limit and 1,024 judgements per session that is up to 16 GiB per connection)."""
    ctx = cql_context(stack)
    ctx.prepared = PreparedStatements(max_bytes=200_000)
    raw = await etl_raw(stack)
    try:
        gc.collect()
        tracemalloc.start()
        before = tracemalloc.take_snapshot()
        for i in range(40):
            text = f"SELECT * FROM ks.orders /* {i} {'x' * 60_000} */"  # noqa: S608
            raw.send(codec.Prepare(stream=3, query=text))
            prepared = await raw.recv()
            assert isinstance(prepared, codec.Prepared), prepared
            raw.send(codec.Execute(stream=4, query_id=prepared.query_id))
            assert isinstance(await raw.recv(), codec.Rows)
            del prepared
        gc.collect()
        after = tracemalloc.take_snapshot()
    finally:
        tracemalloc.stop()
        raw.close()
    # The Cassandra stand-in (lockgate/demo/standins) keeps its own execution log: not the gateway.
    gateway_only = [
        tracemalloc.Filter(True, "*/lockgate/*"),
        tracemalloc.Filter(False, "*/lockgate/demo/*"),
    ]
    grown = sum(
        stat.size_diff
        for stat in after.filter_traces(gateway_only).compare_to(
            before.filter_traces(gateway_only), "filename"
        )
    )
    assert grown < 1_000_000, f"the gateway holds {grown} bytes more after 40 statements"
