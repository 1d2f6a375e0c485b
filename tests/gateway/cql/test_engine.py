"""The CQL engine end to end: the real cassandra-driver → a real Gateway → the fake node."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import cast

import pytest
from cassandra import AuthenticationFailed, Unauthorized
from cassandra.cluster import NoHostAvailable, Session
from cassandra.query import BatchStatement

from lockgate.errors import AuditUnavailable
from lockgate.gateway.cql import codec
from lockgate.gateway.cql.engine import CqlEngine

from .engine_stack import (
    RESOURCE,
    UPSTREAM_USER,
    RawClient,
    Stack,
    connect,
    stack_fixture,
)


@pytest.fixture
async def stack(tmp_path: Path) -> AsyncIterator[Stack]:
    async for s in stack_fixture(tmp_path):
        yield s


@pytest.fixture
async def etl(stack: Stack) -> AsyncIterator[Session]:
    session = await asyncio.to_thread(connect, stack.port, stack.token("etl"), "ks")
    yield session
    await asyncio.to_thread(session.cluster.shutdown)


def run(session: Session, query: object, *args: object) -> list[object]:
    return list(session.execute(query, *args))


async def execute(session: Session, query: object, *args: object) -> list[object]:
    return await asyncio.to_thread(run, session, query, *args)


# -- login ---------------------------------------------------------------------------------------
async def test_token_login_downgrades_to_v4_and_relays_as_gateway_user(
    stack: Stack, etl: Session
) -> None:
    assert etl.cluster.protocol_version == 4
    await execute(etl, "INSERT INTO orders (id, item) VALUES (1, 'apple')")
    rows = await execute(etl, "SELECT id, item FROM ks.orders WHERE id = 1")
    assert [(r.id, r.item) for r in rows] == [(1, "apple")]
    assert stack.upstream_users() == {UPSTREAM_USER}
    texts = [t for _, t in stack.fake.user_statements()]
    assert "INSERT INTO orders (id, item) VALUES (1, 'apple')" in texts
    # first contact point is dead: failover reached the live node, and nothing failed
    assert stack.audit("upstream_error") == []
    allowed = stack.audit("allowed")
    objects = {(r.action, r.object) for r in allowed}
    assert ("write", "ks.orders") in objects and ("read", "ks.orders") in objects
    insert = next(r for r in allowed if r.action == "write")
    assert insert.detail["statement"].startswith("INSERT INTO orders")
    assert insert.principal == "airflow:prod/etl/load"
    assert insert.dag_id == "etl" and insert.jti
    assert insert.status == 1  # RESULT Void
    # driver metadata reads and USE are audited too, allowed by the built-in rules
    admitted = stack.audit("admitted")
    metadata = {r.object for r in admitted if r.rule == "builtin:driver-metadata"}
    assert "system.local" in metadata and all(
        o.startswith(("system.", "system_schema.", "system_virtual_schema.")) for o in metadata
    )
    assert all(r.action == "read" for r in admitted if r.rule == "builtin:driver-metadata")
    assert [(r.action, r.object) for r in admitted if r.rule == "builtin:use"] == [("use", "ks")]
    # ... each with its outcome record, as for any other allowed statement
    assert "system.local" in {r.object for r in allowed if r.action == "read"}
    assert [r.status for r in allowed if r.action == "use"] == [3]  # SetKeyspace


@pytest.mark.parametrize(
    ("which", "reason"),
    [("garbage", "malformed"), ("expired", "expired"), ("wrong_resource", "unknown_resource")],
)
async def test_bad_tokens_fail_authentication(stack: Stack, which: str, reason: str) -> None:
    token = {
        "garbage": "not-a-token",
        "expired": stack.token("etl", ttl=60, age=3600),
        "wrong_resource": stack.token("etl"),
    }[which]
    user = "other" if which == "wrong_resource" else RESOURCE
    with pytest.raises(NoHostAvailable) as info:
        await asyncio.to_thread(connect, stack.port, token, user=user)
    errors = list(info.value.errors.values())
    assert errors and all(isinstance(e, AuthenticationFailed) for e in errors)
    assert f"Lockgate authentication failed ({reason})" in str(errors[0])
    failed = stack.audit("auth_failed")
    assert failed and {r.reason for r in failed} == {reason}
    assert all("not-a-token" not in str(r.to_dict()) for r in stack.audit())
    assert stack.fake.user_statements() == []


# -- policy --------------------------------------------------------------------------------------
async def test_ddl_denied_with_reason_and_session_stays_usable(stack: Stack, etl: Session) -> None:
    with pytest.raises(Unauthorized) as info:
        await execute(etl, "DROP TABLE ks.orders")
    message = str(info.value)
    assert "airflow:prod/etl/load" in message and "admin" in message and "ks.orders" in message
    assert "no rule allows" in message
    assert await execute(etl, "SELECT * FROM orders") == []
    denied = stack.audit("denied")
    assert [(r.action, r.object, r.status) for r in denied] == [("admin", "ks.orders", 0x2100)]
    assert denied[0].detail["statement"] == "DROP TABLE ks.orders"
    assert not any("DROP" in t for _, t in stack.fake.statements)


async def test_principal_without_grant_cannot_select(stack: Stack) -> None:
    session = await asyncio.to_thread(connect, stack.port, stack.token("marketing"))
    try:
        with pytest.raises(Unauthorized, match="no rule allows"):
            await execute(session, "SELECT * FROM ks.orders")
        # an explicit deny beats the allow for etl too
    finally:
        await asyncio.to_thread(session.cluster.shutdown)
    assert stack.fake.user_statements() == []


async def test_prepared_statements_are_enforced(stack: Stack, etl: Session) -> None:
    insert = await asyncio.to_thread(etl.prepare, "INSERT INTO orders (id, item) VALUES (?, ?)")
    await execute(etl, insert, (7, "pear"))
    select = await asyncio.to_thread(etl.prepare, "SELECT item FROM orders WHERE id = ?")
    assert [r.item for r in await execute(etl, select, (7,))] == ["pear"]
    with pytest.raises(Unauthorized, match=r"ks\.secrets"):
        await asyncio.to_thread(etl.prepare, "INSERT INTO secrets (id, v) VALUES (?, ?)")
    # the gateway forgot its prepared map (restart): EXECUTE → Unprepared → driver re-prepares
    cast(CqlEngine, stack.gw.engines["cql"]).ctx.prepared._entries.clear()
    assert [r.item for r in await execute(etl, select, (7,))] == ["pear"]
    writes = [r for r in stack.audit("allowed") if r.action == "write"]
    assert any(r.detail.get("op") == "execute" for r in writes)


async def test_execute_of_statement_prepared_by_someone_else_is_checked(stack: Stack) -> None:
    ops = await asyncio.to_thread(connect, stack.port, stack.token("ops"), "ks")
    try:
        truncate = await asyncio.to_thread(ops.prepare, "TRUNCATE orders")
    finally:
        await asyncio.to_thread(ops.cluster.shutdown)
    seen = len(stack.fake.statements)
    # etl replays the id ops prepared, on a raw connection: EXECUTE is decided on its text
    raw = await RawClient.open(stack.port)
    try:
        assert isinstance(await raw.login(stack.token("etl")), codec.AuthSuccess)
        raw.send(codec.Execute(stream=3, query_id=truncate.query_id))
        answer = await raw.recv()
        assert isinstance(answer, codec.Error) and answer.code == codec.ERR_UNAUTHORIZED
        assert "admin on ks.orders" in answer.message
        # an id the gateway never saw is answered Unprepared, so a driver re-prepares
        raw.send(codec.Execute(stream=4, query_id=b"\x01" * 16))
        answer = await raw.recv()
        assert isinstance(answer, codec.Error) and answer.code == codec.ERR_UNPREPARED
        assert answer.unprepared_id == b"\x01" * 16
    finally:
        raw.close()
    assert not any(t.startswith("TRUNCATE") for _, t in stack.fake.statements[seen:])


async def test_batch_with_one_denied_statement_is_denied_whole(stack: Stack, etl: Session) -> None:
    batch = BatchStatement()
    batch.add("INSERT INTO ks.orders (id, item) VALUES (2, 'kiwi')")
    batch.add("INSERT INTO ks.secrets (id, v) VALUES (2, 'x')")
    with pytest.raises(Unauthorized, match=r"ks\.secrets"):
        await execute(etl, batch)
    assert not any("kiwi" in t for _, t in stack.fake.statements)
    ok = BatchStatement()
    ok.add("INSERT INTO ks.orders (id, item) VALUES (3, 'fig')")
    ok.add("INSERT INTO orders (id, item) VALUES (4, 'lime')")
    await execute(etl, ok)
    assert len(await execute(etl, "SELECT * FROM orders")) == 2


async def test_use_and_unqualified_names(stack: Stack) -> None:
    session = await asyncio.to_thread(connect, stack.port, stack.token("etl"))
    try:
        with pytest.raises(Unauthorized, match=r"\.orders"):
            await execute(session, "SELECT * FROM orders")  # no keyspace yet: denied
        await asyncio.to_thread(session.set_keyspace, "ks")
        await execute(session, "INSERT INTO orders (id, item) VALUES (9, 'plum')")
    finally:
        await asyncio.to_thread(session.cluster.shutdown)
    assert ("write", "ks.orders") in {(r.action, r.object) for r in stack.audit("allowed")}


async def test_driver_sees_only_the_gateway(stack: Stack, etl: Session) -> None:
    hosts = etl.cluster.metadata.all_hosts()
    assert len(hosts) == 1
    host = hosts[0]
    assert (host.endpoint.address, host.endpoint.port) == ("127.0.0.1", stack.port)
    assert "ks" in etl.cluster.metadata.keyspaces  # schema metadata still flows
    local = await execute(etl, "SELECT rpc_address, broadcast_address FROM system.local")
    assert str(local[0].rpc_address) == "127.0.0.1"
    assert await execute(etl, "SELECT * FROM system.peers") == []


async def test_ddl_through_gateway_with_schema_agreement(stack: Stack) -> None:
    ops = await asyncio.to_thread(connect, stack.port, stack.token("ops"), "ks")
    try:
        await execute(ops, "CREATE TABLE ks.events (id int PRIMARY KEY, kind text)")
        assert "events" in ops.cluster.metadata.keyspaces["ks"].tables
    finally:
        await asyncio.to_thread(ops.cluster.shutdown)
    admin = [r for r in stack.audit("allowed") if r.action == "admin"]
    assert [r.object for r in admin] == ["ks.events"]


# -- fail closed on audit -----------------------------------------------------------------------
async def test_audit_unavailable_refuses_then_recovers(
    stack: Stack, etl: Session, monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken() -> None:
        raise AuditUnavailable("disk full")

    monkeypatch.setattr(stack.gw.audit, "check_writable", broken)
    with pytest.raises(Exception, match="audit unavailable"):
        await execute(etl, "SELECT * FROM orders")
    assert [t for _, t in stack.fake.user_statements() if not t.startswith("USE")] == []
    monkeypatch.undo()
    assert await execute(etl, "SELECT * FROM orders") == []
    refused = [r for r in stack.audit("upstream_error") if r.reason == "audit_unavailable"]
    assert [(r.decision, r.action, r.object) for r in refused] == [("error", "read", "ks.orders")]
