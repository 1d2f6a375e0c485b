"""The CQL engine's live catalog: new logins see it, a removed resource's sessions end."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest

from lockgate.config import CqlResource, ListenerConfig, Listeners
from lockgate.demo.standins.cqlserver import CqlServer, start_cql_server
from lockgate.gateway.cql import CqlEngine, codec
from lockgate.gateway.engine import Collaborators

from ..fakes import (
    FakeAudit,
    FakeBroker,
    FakePolicy,
    FakePolicySet,
    FakeSigner,
    FakeVerifier,
    claims_for,
)
from .engine_stack import RawClient, run_on_fake

PASSWORD = "upstream-pw-not-a-token"


def cass(name: str, port: int, **kw: Any) -> CqlResource:
    return CqlResource(
        name=name, kind="cql", contact_points=[f"127.0.0.1:{port}"], username="lockgate",
        credential="pw", **kw,
    )  # fmt: skip


@pytest.fixture
async def fake() -> AsyncIterator[CqlServer]:
    node = await start_cql_server(
        users={"cassandra": "cassandra", "lockgate": PASSWORD}, superusers=("cassandra", "lockgate")
    )
    run_on_fake(node, "CREATE KEYSPACE ks WITH replication = {'class': 'SimpleStrategy', "
                "'replication_factor': 1}")  # fmt: skip
    run_on_fake(node, "CREATE TABLE ks.orders (id int PRIMARY KEY, item text)")
    yield node
    await node.close()


@pytest.fixture
async def engine(fake: CqlServer) -> AsyncIterator[CqlEngine]:
    tokens = {f"tok-{n}": claims_for(n) for n in ("one", "two")}
    shared = Collaborators(
        FakeVerifier(tokens), FakePolicy(FakePolicySet([("*", "*")])),
        FakeBroker({"pw": [PASSWORD]}), FakeAudit(), FakeSigner(),
    )  # fmt: skip
    eng = CqlEngine([cass("one", fake.port)], shared)
    await eng.listen(Listeners(cql=ListenerConfig(port=0)))
    yield eng
    await eng.close()


async def login(engine: CqlEngine, name: str) -> tuple[RawClient, codec.Event | None]:
    raw = await RawClient.open(engine.ports["cql"])
    return raw, await raw.login(f"tok-{name}", user=name)


async def logged_in(engine: CqlEngine, name: str) -> RawClient:
    raw, answer = await login(engine, name)
    assert isinstance(answer, codec.AuthSuccess)
    return raw


async def refused(engine: CqlEngine, name: str) -> None:
    raw, answer = await login(engine, name)
    raw.close()
    assert isinstance(answer, codec.Error) and "unknown_resource" in answer.message


async def select(raw: RawClient, stream: int = 7) -> codec.Event | None:
    raw.send(codec.Query(stream=stream, query="SELECT * FROM ks.orders"))
    return await raw.recv()


def removals(engine: CqlEngine) -> list[Any]:
    audit = engine.ctx.audit
    assert isinstance(audit, FakeAudit)
    return [r for r in audit.records if r.reason == "resource_removed"]


async def test_a_new_resource_takes_logins_and_an_unchanged_one_keeps_its_sessions(
    engine: CqlEngine, fake: CqlServer
) -> None:
    one = await logged_in(engine, "one")
    await refused(engine, "two")
    engine.update_resources([cass("one", fake.port), cass("two", fake.port)])
    assert isinstance(await select(one), codec.Rows)  # unchanged: the session goes on
    two = await logged_in(engine, "two")
    assert isinstance(await select(two), codec.Rows)
    one.close()
    two.close()


async def test_a_removed_resource_ends_its_sessions_and_refuses_logins(
    engine: CqlEngine, fake: CqlServer
) -> None:
    one = await logged_in(engine, "one")
    engine.update_resources([cass("two", fake.port)])
    assert await one.closed()
    (removed,) = removals(engine)
    assert (removed.event, removed.decision) == ("denied", "deny")
    assert (removed.resource, removed.principal) == ("one", claims_for("one").sub)
    await refused(engine, "one")


async def test_a_changed_resource_ends_its_sessions_and_the_next_login_sees_the_change(
    engine: CqlEngine, fake: CqlServer
) -> None:
    one = await logged_in(engine, "one")
    engine.update_resources([cass("one", fake.port, idle_timeout=60)])
    assert await one.closed()
    assert not removals(engine)
    again = await logged_in(engine, "one")
    assert isinstance(await select(again), codec.Rows)
    again.close()
