"""Attacks on the CQL engine's live catalog: a login under way while its resource changes.

:meth:`CqlEngine.update_resources` ends the sessions of a removed or changed resource and
lets sessions "not logged in yet" be, since they "will read the new catalog". A login that
has already looked its resource up and is waiting for the upstream credential or connection
read the old catalog, though. These tests hold a login there (the credential broker waits on
a gate), change the catalog, then let it finish: it must not become a session of the old
resource.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest

from lockgate.config import ListenerConfig, Listeners
from lockgate.demo.standins.cqlserver import CqlServer, start_cql_server
from lockgate.gateway.cql import CqlEngine, codec
from lockgate.gateway.engine import Collaborators

from ..fakes import (
    FakeAudit,
    FakeBroker,
    FakePolicy,
    FakePolicySet,
    FakeSecret,
    FakeSigner,
    FakeVerifier,
    claims_for,
)
from .engine_stack import RawClient, run_on_fake
from .test_engine_live import PASSWORD, cass, select
from .test_engine_live import fake as fake


class GatedBroker(FakeBroker):
    """Hands out the upstream secret only once ``gate`` is set; ``asked`` is set on a call."""

    def __init__(self, versions: dict[str, list[str]]) -> None:
        super().__init__(versions)
        self.gate = asyncio.Event()
        self.asked = asyncio.Event()

    async def upstream_secret(
        self, credential_name: str, previous: bool = False
    ) -> FakeSecret | None:
        self.asked.set()
        await self.gate.wait()
        return await super().upstream_secret(credential_name, previous)


@pytest.fixture
async def gated(fake: CqlServer) -> AsyncIterator[tuple[CqlEngine, GatedBroker]]:
    broker = GatedBroker({"pw": [PASSWORD]})
    shared = Collaborators(
        FakeVerifier({"tok-one": claims_for("one")}), FakePolicy(FakePolicySet([("*", "*")])),
        broker, FakeAudit(), FakeSigner(),
    )  # fmt: skip
    engine = CqlEngine([cass("one", fake.port)], shared)
    await engine.listen(Listeners(cql=ListenerConfig(port=0)))
    yield engine, broker
    broker.gate.set()
    await engine.close()


async def _login_held(engine: CqlEngine, broker: GatedBroker) -> RawClient:
    """A client whose login waits for the upstream credential (the resource looked up)."""
    raw = await RawClient.open(engine.ports["cql"])
    raw.send(codec.Startup(stream=1, options={"CQL_VERSION": "3.0.0"}))
    assert isinstance(await raw.recv(), codec.Authenticate)
    raw.send(codec.AuthResponse(stream=2, token=b"\0one\0tok-one"))
    await asyncio.wait_for(broker.asked.wait(), 3.0)
    return raw


async def test_a_login_under_way_when_its_resource_is_removed_is_not_served(
    gated: tuple[CqlEngine, GatedBroker], fake: CqlServer
) -> None:
    engine, broker = gated
    raw = await _login_held(engine, broker)
    try:
        engine.update_resources([])  # "one" is taken away while its login is under way
        broker.gate.set()
        answer = await raw.recv()
        ran_before = len(fake.statements)
        served = isinstance(answer, codec.AuthSuccess) and isinstance(await select(raw), codec.Rows)
    finally:
        raw.close()
    assert not served, "a removed resource served a statement"
    assert len(fake.statements) == ran_before
    # refused before AUTH_SUCCESS, and the refusal audited like any other
    assert isinstance(answer, codec.Error), answer
    audit = engine.ctx.audit
    assert isinstance(audit, FakeAudit)
    assert any(r.decision == "deny" and r.resource == "one" for r in audit.records)
    assert any(r.reason == "resource_removed" for r in audit.records)


async def test_a_login_under_way_when_its_resource_changes_is_not_served_the_old_one(
    gated: tuple[CqlEngine, GatedBroker], fake: CqlServer
) -> None:
    """The change moves the resource to another upstream user (say, after the old one was
    found compromised): no statement may run as the old user once the change is made."""
    engine, broker = gated
    broker.versions["pw2"] = ["cassandra"]
    raw = await _login_held(engine, broker)
    try:
        engine.update_resources(
            [
                cass("one", fake.port).model_copy(
                    update={"username": "cassandra", "credential": "pw2"}
                )
            ]
        )
        broker.gate.set()
        answer = await raw.recv()
        if isinstance(answer, codec.AuthSuccess):
            await select(raw)
    finally:
        raw.close()
    ran_as = {role for role, text in fake.user_statements() if "ks.orders" in text}
    assert "lockgate" not in ran_as, "a statement ran as the upstream user the change replaced"
    # refused before AUTH_SUCCESS and audited; the driver logs in again on the new resource
    assert isinstance(answer, codec.Error), answer
    audit = engine.ctx.audit
    assert isinstance(audit, FakeAudit)
    assert any(
        r.decision == "deny" and r.resource == "one" and r.reason == "resource_changed"
        for r in audit.records
    )


async def test_a_resource_moved_to_another_cluster_is_judged_with_that_clusters_views(
    fake: CqlServer,
) -> None:
    """A grant on ``ks.*_by_*`` reads views, and a view's rows are its base's: the gateway
    judges a view read on the base too, from the catalog it read from the cluster. When the
    resource moves to another cluster, a view there (over a table not granted) must not be
    judged with the old cluster's catalog, which does not know it."""
    other = await start_cql_server(
        users={"cassandra": "cassandra", "lockgate": PASSWORD}, superusers=("cassandra", "lockgate")
    )
    for text in (
        "CREATE KEYSPACE ks WITH replication = {'class': 'SimpleStrategy', "
        "'replication_factor': 1}",
        "CREATE TABLE ks.secrets (id int PRIMARY KEY, v text)",
        "INSERT INTO ks.secrets (id, v) VALUES (1, 'top secret')",
        "CREATE MATERIALIZED VIEW ks.secrets_by_v AS SELECT * FROM ks.secrets "
        "WHERE v IS NOT NULL AND id IS NOT NULL PRIMARY KEY (v, id)",
    ):
        run_on_fake(other, text)
    policy = FakePolicySet([("read", "ks.orders"), ("read", "ks.*_by_*")])
    shared = Collaborators(
        FakeVerifier({"tok-one": claims_for("one")}), FakePolicy(policy),
        FakeBroker({"pw": [PASSWORD]}), FakeAudit(), FakeSigner(),
    )  # fmt: skip
    engine = CqlEngine([cass("one", fake.port)], shared)
    await engine.listen(Listeners(cql=ListenerConfig(port=0)))
    try:
        first = await RawClient.open(engine.ports["cql"])
        assert isinstance(await first.login("tok-one", user="one"), codec.AuthSuccess)
        engine.update_resources([cass("one", other.port)])  # the resource moves
        assert await first.closed()
        again = await RawClient.open(engine.ports["cql"])
        assert isinstance(await again.login("tok-one", user="one"), codec.AuthSuccess)
        again.send(codec.Query(stream=7, query="SELECT * FROM ks.secrets_by_v"))
        answer = await again.recv()
        again.close()
    finally:
        await engine.close()
        await other.close()
    assert isinstance(answer, codec.Error) and answer.code == codec.ERR_UNAUTHORIZED, answer
