"""The CQL handshake against a catalog that changes while a login is under way.

A login looks its resource up, then waits for the upstream credential, the connection and
(when stale) the view catalog. If the resource moves meanwhile, the login is refused
(``resource_changed``, see test_attack_live.py); the views it read on the way are the old
cluster's, and must not be what the next login of the moved resource is judged with.
"""

from __future__ import annotations

from lockgate.config import ListenerConfig, Listeners
from lockgate.demo.standins.cqlserver import CqlServer, start_cql_server
from lockgate.gateway.cql import CqlEngine, codec
from lockgate.gateway.engine import Collaborators

from ..fakes import FakeAudit, FakePolicy, FakePolicySet, FakeSigner, FakeVerifier, claims_for
from .engine_stack import RawClient, run_on_fake
from .test_attack_live import GatedBroker, _login_held
from .test_engine_live import PASSWORD, cass
from .test_engine_live import fake as fake


async def test_views_read_by_a_login_refused_for_a_move_are_read_again(fake: CqlServer) -> None:
    """The held login reads the old cluster's views (none) after the move invalidated the
    catalog; the next login, on the new cluster, must read that cluster's views and so
    judge a read of a view there on its base table too."""
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
    broker = GatedBroker({"pw": [PASSWORD]})
    shared = Collaborators(
        FakeVerifier({"tok-one": claims_for("one")}),
        FakePolicy(FakePolicySet([("read", "ks.orders"), ("read", "ks.*_by_*")])),
        broker, FakeAudit(), FakeSigner(),
    )  # fmt: skip
    engine = CqlEngine([cass("one", fake.port)], shared)
    await engine.listen(Listeners(cql=ListenerConfig(port=0)))
    try:
        held = await _login_held(engine, broker)
        engine.update_resources([cass("one", other.port)])  # the resource moves
        broker.gate.set()  # the held login now reads the old cluster's views
        refused = await held.recv()
        held.close()
        again = await RawClient.open(engine.ports["cql"])
        assert isinstance(await again.login("tok-one", user="one"), codec.AuthSuccess)
        again.send(codec.Query(stream=7, query="SELECT * FROM ks.secrets_by_v"))
        answer = await again.recv()
        again.close()
    finally:
        broker.gate.set()
        await engine.close()
        await other.close()
    assert isinstance(refused, codec.Error) and refused.code == codec.ERR_BAD_CREDENTIALS, refused
    assert isinstance(answer, codec.Error) and answer.code == codec.ERR_UNAUTHORIZED, answer
