"""Keyspace parity under pipelining: a statement sent behind an unanswered USE is judged
against the keyspace the node runs it under, never the one the gateway knew before.

The node's own data is the oracle: ``other.orders`` holds a row that no test principal may
read; a gateway that judged a pipelined ``SELECT * FROM orders`` against ``ks`` would hand it
out (and the node's statement log would show the SELECT ran after ``USE other``).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from cassandra import Unauthorized
from cassandra.cluster import Session

from lockgate.demo.standins.cqlserver import session as fake_session
from lockgate.demo.standins.cqlserver.session import prepared_id
from lockgate.demo.standins.cqlserver.wire import RESULT_SET_KEYSPACE, int32, string
from lockgate.gateway.cql import codec

from .engine_stack import RawClient, Stack, connect, cql_context, run_on_fake, stack_fixture

SECRET_ITEM = "other-keyspace-secret"
SELECT = "SELECT * FROM orders"
EXTRA_SCHEMA = [
    "CREATE KEYSPACE other WITH replication = {'class': 'SimpleStrategy', 'replication_factor': 1}",
    "CREATE TABLE other.orders (id int PRIMARY KEY, item text)",
    "INSERT INTO other.orders (id, item) VALUES (1, '" + SECRET_ITEM + "')",  # noqa: S608
    "CREATE KEYSPACE blackhole WITH replication = "
    "{'class': 'SimpleStrategy', 'replication_factor': 1}",
]


@pytest.fixture
async def stack(tmp_path: Path) -> AsyncIterator[Stack]:
    async for s in stack_fixture(tmp_path):
        for text in EXTRA_SCHEMA:
            run_on_fake(s.fake, text)
        yield s


async def etl_raw(stack: Stack, keyspace: str | None = "ks") -> RawClient:
    """A raw v4 connection logged in as the etl DAG, with ``keyspace`` set (and answered)."""
    raw = await RawClient.open(stack.port)
    assert isinstance(await raw.login(stack.token("etl")), codec.AuthSuccess)
    if keyspace is not None:
        raw.send(codec.Query(stream=2, query=f"USE {keyspace}"))
        answer = await raw.recv()
        assert isinstance(answer, codec.SetKeyspace) and answer.keyspace == keyspace
    return raw


def send_together(raw: RawClient, *events: codec.Event) -> None:
    """One write: the gateway sees every frame before the node has answered any."""
    raw.writer.write(b"".join(raw.conn.send(e) for e in events))


async def pipelined(stack: Stack, *events: codec.Event) -> dict[int, codec.Event]:
    """Send ``events`` together on a fresh connection of the etl principal; their answers."""
    raw = await etl_raw(stack)
    try:
        send_together(raw, *events)
        return await answers(raw, len(events))
    finally:
        raw.close()


async def answers(raw: RawClient, count: int, timeout: float = 5.0) -> dict[int, codec.Event]:
    found: dict[int, codec.Event] = {}
    while len(found) < count:
        event = await raw.recv(timeout)
        assert event is not None, f"connection closed after {len(found)} answers"
        found[event.stream] = event
    return found


def ran_after_use(stack: Stack, keyspace: str, text: str) -> bool:
    """True when the node executed ``text`` after ``USE keyspace`` (its own statement log)."""
    texts = [t for _, t in stack.fake.user_statements()]
    seen_use = False
    for t in texts:
        if t == f"USE {keyspace}":
            seen_use = True
        elif seen_use and t == text:
            return True
    return False


def node_id(keyspace: str | None, text: str) -> bytes:
    """The id the node gives ``text`` prepared under ``keyspace`` (Cassandra 4's rule: a
    fully qualified single-table statement is hashed without the keyspace)."""
    qualified = " ks." in text or " other." in text
    return prepared_id(text, None if qualified else keyspace)


async def execute_id(stack: Stack, query_id: bytes) -> codec.Event | None:
    """EXECUTE ``query_id`` on a fresh etl connection whose keyspace is ks."""
    raw = await etl_raw(stack)
    try:
        raw.send(codec.Execute(stream=9, query_id=query_id))
        return await raw.recv()
    finally:
        raw.close()


def leaked(event: codec.Event) -> bool:
    return isinstance(event, codec.Rows) and any(
        SECRET_ITEM.encode() in (cell or b"") for row in event.rows for cell in row
    )


async def test_select_pipelined_behind_use_is_judged_on_the_new_keyspace(stack: Stack) -> None:
    raw = await etl_raw(stack)
    try:
        send_together(
            raw,
            codec.Query(stream=3, query="USE other"),
            codec.Query(stream=4, query="SELECT * FROM orders"),
        )
        got = await answers(raw, 2)
        assert isinstance(got[3], codec.SetKeyspace) and got[3].keyspace == "other"
        select = got[4]
        assert not leaked(select)
        assert isinstance(select, codec.Error) and select.code == codec.ERR_UNAUTHORIZED
        assert "other.orders" in select.message
        # the connection is usable and now judged under `other` for unqualified names
        raw.send(codec.Query(stream=5, query="SELECT * FROM ks.orders"))
        assert isinstance(await raw.recv(), codec.Rows)
    finally:
        raw.close()
    assert not ran_after_use(stack, "other", "SELECT * FROM orders")
    denied = stack.audit("denied")
    assert [(r.action, r.object) for r in denied] == [("read", "other.orders")]
    assert denied[0].detail.get("keyspace_name") == "other"


async def test_statements_behind_a_use_run_in_order_under_it(stack: Stack) -> None:
    """Held frames are released in order: a write and a read behind USE ks see each other."""
    raw = await etl_raw(stack, keyspace="other")
    try:
        send_together(
            raw,
            codec.Query(stream=3, query="USE ks"),
            codec.Query(stream=4, query="INSERT INTO orders (id, item) VALUES (41, 'held')"),
            codec.Options(stream=5),
            codec.Query(stream=6, query="SELECT item FROM orders WHERE id = 41"),
            codec.Query(stream=7, query="USE other"),
            codec.Query(stream=8, query="SELECT item FROM orders WHERE id = 41"),
        )
        got = await answers(raw, 6)
    finally:
        raw.close()
    assert isinstance(got[3], codec.SetKeyspace) and isinstance(got[4], codec.Void)
    assert isinstance(got[5], codec.Supported)
    rows = got[6]
    assert isinstance(rows, codec.Rows) and rows.rows == [[b"held"]]
    assert isinstance(got[7], codec.SetKeyspace) and got[7].keyspace == "other"
    last = got[8]
    assert isinstance(last, codec.Error) and last.code == codec.ERR_UNAUTHORIZED
    allowed = {(r.action, r.object) for r in stack.audit("allowed")}
    assert {("write", "ks.orders"), ("read", "ks.orders")} <= allowed
    assert ("read", "other.orders") not in allowed


async def test_execute_of_a_prepared_use_holds_what_follows(stack: Stack) -> None:
    raw = await etl_raw(stack)
    try:
        raw.send(codec.Prepare(stream=3, query="USE other"))
        prepared = await raw.recv()
        assert isinstance(prepared, codec.Prepared)
        send_together(
            raw,
            codec.Execute(stream=4, query_id=prepared.query_id),
            codec.Query(stream=5, query=SELECT),
        )
        got = await answers(raw, 2)
    finally:
        raw.close()
    assert isinstance(got[4], codec.SetKeyspace) and got[4].keyspace == "other"
    assert not leaked(got[5])
    assert isinstance(got[5], codec.Error) and got[5].code == codec.ERR_UNAUTHORIZED
    assert not ran_after_use(stack, "other", SELECT)


async def test_failed_use_keeps_the_keyspace_for_held_frames(stack: Stack) -> None:
    got = await pipelined(
        stack,
        codec.Query(stream=3, query="USE nosuchkeyspace"),
        codec.Query(stream=4, query="SELECT item FROM orders WHERE id = 1"),
    )
    assert isinstance(got[3], codec.Error)
    assert isinstance(got[4], codec.Rows)  # judged and run under ks, as on the node
    assert ("read", "ks.orders") in {(r.action, r.object) for r in stack.audit("allowed")}


@pytest.fixture
def use_other_answered_late(monkeypatch: pytest.MonkeyPatch) -> None:
    """The node runs ``USE other`` at once but its answer leaves 0.3 s later, so whatever the
    driver sends meanwhile reaches the gateway before the answer does."""
    late = int32(RESULT_SET_KEYSPACE) + string("other")
    send = fake_session.Session._send

    def delay(self: fake_session.Session, stream: int, opcode: int, body: bytes) -> None:
        if body == late:
            asyncio.get_running_loop().call_later(0.3, send, self, stream, opcode, body)
        else:
            send(self, stream, opcode, body)

    monkeypatch.setattr(fake_session.Session, "_send", delay)


@pytest.mark.usefixtures("use_other_answered_late")
async def test_real_driver_use_then_select_without_waiting(stack: Stack) -> None:
    """The stock driver's execute_async pipelines on its one connection per host."""

    def race(session: Session) -> tuple[object, object]:
        use = session.execute_async("USE other")
        select = session.execute_async("SELECT * FROM orders")
        outcomes: list[object] = []
        for future in (use, select):
            try:
                outcomes.append(list(future.result()))
            except Exception as exc:  # the outcome is what is compared
                outcomes.append(exc)
        return outcomes[0], outcomes[1]

    session = await asyncio.to_thread(connect, stack.port, stack.token("etl"), "ks")
    try:
        _, select = await asyncio.to_thread(race, session)
    finally:
        await asyncio.to_thread(session.cluster.shutdown)
    assert isinstance(select, Unauthorized), select
    assert "other.orders" in str(select)
    assert not ran_after_use(stack, "other", "SELECT * FROM orders")


async def test_prepare_behind_use_cannot_file_an_id_under_the_old_keyspace(stack: Stack) -> None:
    got = await pipelined(
        stack,
        codec.Query(stream=3, query="USE other"),
        codec.Prepare(stream=4, query=SELECT),
    )
    prepare = got[4]
    assert isinstance(prepare, codec.Error) and prepare.code == codec.ERR_UNAUTHORIZED
    assert "other.orders" in prepare.message
    # whatever the node holds under that id, no connection may run it as a read of ks.orders
    answer = await execute_id(stack, node_id("other", SELECT))
    assert answer is not None and not leaked(answer)
    assert isinstance(answer, codec.Error) and answer.code == codec.ERR_UNPREPARED
    assert not any(r.object == "ks.orders" and r.action == "read" for r in stack.audit("allowed"))


# -- bounds and failure of the hold --------------------------------------------------------------
@pytest.fixture
def use_never_answered(monkeypatch: pytest.MonkeyPatch) -> None:
    """The node runs ``USE blackhole`` but its answer never leaves it."""
    lost = int32(RESULT_SET_KEYSPACE) + string("blackhole")
    send = fake_session.Session._send

    def drop(self: fake_session.Session, stream: int, opcode: int, body: bytes) -> None:
        if body != lost:
            send(self, stream, opcode, body)

    monkeypatch.setattr(fake_session.Session, "_send", drop)


@pytest.mark.usefixtures("use_never_answered")
async def test_unanswered_use_refuses_held_frames_and_closes(stack: Stack) -> None:
    ctx = cql_context(stack)
    ctx.use_answer_timeout = 0.5
    raw = await etl_raw(stack)
    try:
        t0 = time.monotonic()
        send_together(
            raw,
            codec.Query(stream=3, query="USE blackhole"),
            codec.Query(stream=4, query="SELECT * FROM ks.orders"),
            codec.Options(stream=5),  # no statement: passes the hold
        )
        first = await raw.recv()
        assert isinstance(first, codec.Supported) and first.stream == 5
        refused = await raw.recv()
        assert isinstance(refused, codec.Error) and refused.stream == 4
        assert refused.code == codec.ERR_SERVER
        assert "did not confirm the keyspace" in refused.message
        assert 0.4 <= time.monotonic() - t0 < 3.0
        assert await raw.closed()
    finally:
        raw.close()
    assert not ran_after_use(stack, "blackhole", "SELECT * FROM ks.orders")
    refusals = [r for r in stack.audit("denied") if r.reason == "use_unanswered"]
    assert len(refusals) == 1 and refusals[0].decision == "deny"
    assert refusals[0].detail["statement"] == "SELECT * FROM ks.orders"


@pytest.mark.usefixtures("use_never_answered")
async def test_hold_is_bounded_and_stops_reading_the_client(stack: Stack) -> None:
    ctx = cql_context(stack)
    ctx.use_answer_timeout = 1.0
    ctx.max_held_frames = 4
    raw = await etl_raw(stack)
    try:
        frames = [codec.Query(stream=3, query="USE blackhole")]
        frames += [
            codec.Query(stream=10 + i, query=f"SELECT * FROM ks.orders WHERE id = {i}")  # noqa: S608
            for i in range(40)
        ]
        send_together(raw, *frames)
        refused: list[codec.Event] = []
        while (event := await raw.recv()) is not None:
            refused.append(event)
    finally:
        raw.close()
    # only what was held is answered (the rest was never read): the bound held
    assert 1 <= len(refused) <= 4
    assert all(isinstance(e, codec.Error) and e.code == codec.ERR_SERVER for e in refused)
    assert [e.stream for e in refused] == list(range(10, 10 + len(refused)))
    assert not any("WHERE id =" in t for _, t in stack.fake.user_statements())


async def test_use_hold_releases_in_order_and_expires() -> None:
    # Imported here: the attack tests above import nothing new, so they also run (and fail)
    # against a gateway without holds.
    from lockgate.gateway.cql.holds import UseHold

    expired: list[list[codec.Event]] = []
    hold = UseHold(max_frames=2, max_bytes=1 << 20, timeout=0.2, on_expired=expired.append)
    use = codec.Query(stream=1, query="USE other")
    select = codec.Query(stream=2, query=SELECT, raw=b"x" * 10)
    heartbeat, same_stream = codec.Options(stream=3), codec.Options(stream=1)
    assert not hold.must_wait(select)
    hold.started(use.stream)
    assert hold.must_wait(select) and hold.must_wait(same_stream)
    assert not hold.must_wait(heartbeat)
    hold.hold(select)
    assert not hold.full and hold.release_next() is None  # the USE is still in flight
    hold.hold(same_stream)
    assert hold.full
    hold.answered()
    assert [hold.release_next(), hold.release_next(), hold.release_next()] == [
        select,
        same_stream,
        None,
    ]
    await asyncio.wait_for(hold.wait_for_room(), 0.1)  # room again once released
    hold.started(use.stream)
    hold.hold(select)
    await asyncio.sleep(0.4)
    assert expired == [[select]] and len(hold) == 0
