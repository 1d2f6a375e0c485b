"""The CQL engine's live catalog: new logins see it, a removed resource's sessions end."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest

from lockgate.config import CqlResource, ListenerConfig, Listeners
from lockgate.gateway.cql import CqlEngine, codec
from lockgate.gateway.engine import Collaborators
from tests.fakes.cqlserver import CqlServer, start_cql_server

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


async def select(raw: RawClient, stream: int = 7) -> codec.Event | None:
    raw.send(codec.Query(stream=stream, query="SELECT * FROM ks.orders"))
    return await raw.recv()


def audit_of(engine: CqlEngine) -> FakeAudit:
    audit = engine.ctx.audit
    assert isinstance(audit, FakeAudit)
    return audit


async def test_a_new_resource_takes_logins_and_an_unchanged_one_keeps_its_sessions(
    engine: CqlEngine, fake: CqlServer
) -> None:
    one, answer = await login(engine, "one")
    assert isinstance(answer, codec.AuthSuccess)
    two, answer = await login(engine, "two")
    assert isinstance(answer, codec.Error) and "unknown_resource" in answer.message
    two.close()

    engine.update_resources([cass("one", fake.port), cass("two", fake.port)])
    assert isinstance(await select(one), codec.Rows)  # unchanged: the session goes on
    two, answer = await login(engine, "two")
    assert isinstance(answer, codec.AuthSuccess)
    assert isinstance(await select(two), codec.Rows)
    one.close()
    two.close()


async def test_a_removed_resource_ends_its_sessions_and_refuses_logins(
    engine: CqlEngine, fake: CqlServer
) -> None:
    one, answer = await login(engine, "one")
    assert isinstance(answer, codec.AuthSuccess)
    engine.update_resources([cass("two", fake.port)])
    assert await one.closed()
    removed = [r for r in audit_of(engine).records if r.reason == "resource_removed"]
    assert len(removed) == 1 and removed[0].event == "denied"
    assert (removed[0].resource, removed[0].principal) == ("one", claims_for("one").sub)
    again, answer = await login(engine, "one")
    assert isinstance(answer, codec.Error) and "unknown_resource" in answer.message
    again.close()


async def test_a_changed_resource_ends_its_sessions_and_the_next_login_sees_the_change(
    engine: CqlEngine, fake: CqlServer
) -> None:
    one, answer = await login(engine, "one")
    assert isinstance(answer, codec.AuthSuccess)
    engine.update_resources([cass("one", fake.port, idle_timeout=60)])
    assert await one.closed()
    assert not [r for r in audit_of(engine).records if r.reason == "resource_removed"]
    again, answer = await login(engine, "one")
    assert isinstance(answer, codec.AuthSuccess)
    assert isinstance(await select(again), codec.Rows)
    again.close()
