"""The fake CQL node against the real cassandra-driver (blocking, so run in a thread)."""

from __future__ import annotations

import asyncio
import datetime as dt
import ipaddress
import ssl
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import contextmanager
from decimal import Decimal
from pathlib import Path
from typing import Any, TypeVar

import pytest
from cassandra import AlreadyExists, AuthenticationFailed, InvalidRequest, Unauthorized
from cassandra.auth import PlainTextAuthProvider
from cassandra.cluster import (
    EXEC_PROFILE_DEFAULT,
    Cluster,
    ExecutionProfile,
    NoHostAvailable,
    Session,
)
from cassandra.policies import DCAwareRoundRobinPolicy
from cassandra.query import BatchStatement, BatchType, SimpleStatement

from lockgate.demo.standins.cqlserver import CqlServer, start_cql_server
from lockgate.tlsgen import write_dev_tls

T = TypeVar("T")
KS = "CREATE KEYSPACE ks WITH replication = {'class': 'SimpleStrategy', 'replication_factor': 1}"


@pytest.fixture
async def server() -> AsyncIterator[CqlServer]:
    srv = await start_cql_server(users={"cassandra": "cassandra", "plain": "pw"})
    yield srv
    await srv.close()


def profiles() -> dict[object, ExecutionProfile]:
    policy = DCAwareRoundRobinPolicy(local_dc="datacenter1")
    return {EXEC_PROFILE_DEFAULT: ExecutionProfile(load_balancing_policy=policy)}


def make_cluster(port: int, user: str = "cassandra", pw: str = "cassandra", **kw: Any) -> Cluster:
    kw.setdefault("protocol_version", 4)
    return Cluster(
        ["127.0.0.1"],
        port=port,
        auth_provider=PlainTextAuthProvider(user, pw),
        execution_profiles=profiles(),
        connect_timeout=2,
        control_connection_timeout=2,
        **kw,
    )


@contextmanager
def connected(port: int, user: str = "cassandra", pw: str = "cassandra",
              keyspace: str | None = None, **kw: Any) -> Iterator[Session]:  # fmt: skip
    cluster = make_cluster(port, user, pw, **kw)
    try:
        yield cluster.connect(keyspace)
    finally:
        cluster.shutdown()


async def in_thread(fn: Callable[[], T]) -> T:
    return await asyncio.to_thread(fn)


def login_error(port: int, user: str, password: str) -> Exception:
    cluster = make_cluster(port, user, password)
    try:
        cluster.connect()
    except NoHostAvailable as exc:
        return next(iter(exc.errors.values()))
    finally:
        cluster.shutdown()
    raise AssertionError("login unexpectedly succeeded")


async def test_default_protocol_is_downgraded_to_v4_and_logs_in(server: CqlServer) -> None:
    def go_default() -> tuple[int, str]:
        cluster = Cluster(
            ["127.0.0.1"], port=server.port,
            auth_provider=PlainTextAuthProvider("cassandra", "cassandra"),
            execution_profiles=profiles(), connect_timeout=2, control_connection_timeout=2,
        )  # fmt: skip
        try:
            session = cluster.connect()
            row = session.execute("SELECT release_version FROM system.local").one()
            return cluster.protocol_version, row.release_version
        finally:
            cluster.shutdown()

    version, release = await in_thread(go_default)
    assert version == 4
    assert release.startswith("3.11")
    # 0x42, 0x41 and 5 were each refused on their own connection before v4 succeeded.
    assert server.total_connections >= 5


async def test_bad_password_and_unknown_user_fail_authentication(server: CqlServer) -> None:
    err = await in_thread(lambda: login_error(server.port, "cassandra", "wrong"))
    assert isinstance(err, AuthenticationFailed)
    assert "Provided username and/or password are incorrect" in str(err)
    err = await in_thread(lambda: login_error(server.port, "nobody", "cassandra"))
    assert isinstance(err, AuthenticationFailed)
    assert server.statements == []


async def test_schema_simple_statements_and_metadata(server: CqlServer) -> None:
    def go() -> None:
        with connected(server.port) as s:
            s.execute(KS)
            s.execute(
                "CREATE TABLE ks.events (tenant text, day int, seq bigint, body text, "
                "PRIMARY KEY ((tenant, day), seq)) WITH CLUSTERING ORDER BY (seq DESC)"
            )
            with pytest.raises(AlreadyExists):
                s.execute(KS)
            with pytest.raises(AlreadyExists):
                s.execute("CREATE TABLE ks.events (a int PRIMARY KEY)")
            s.execute("CREATE TABLE IF NOT EXISTS ks.events (a int PRIMARY KEY)")
            for seq in (1, 3, 2):
                s.execute(
                    "INSERT INTO ks.events (tenant, day, seq, body) VALUES (%s, %s, %s, %s)",
                    ("acme", 7, seq, f"b{seq}"),
                )
            rows = list(
                s.execute("SELECT seq, body FROM ks.events WHERE tenant = 'acme' AND day = 7")
            )
            assert [(r.seq, r.body) for r in rows] == [(3, "b3"), (2, "b2"), (1, "b1")]
            one = s.execute("SELECT * FROM ks.events WHERE tenant='acme' AND day=7 AND seq=2").one()
            assert one._fields == ("tenant", "day", "seq", "body")
            assert s.execute("SELECT count(*) FROM ks.events").one().count == 3
            assert len(list(s.execute("SELECT * FROM ks.events LIMIT 2"))) == 2
            with pytest.raises(InvalidRequest, match="unconfigured table nope"):
                s.execute("SELECT * FROM ks.nope")
            with pytest.raises(InvalidRequest, match="does not exist"):
                s.execute("SELECT * FROM nope.t")

            meta = s.cluster.metadata.keyspaces["ks"]
            assert meta.replication_strategy.replication_factor == 1
            table = meta.tables["events"]
            assert [c.name for c in table.partition_key] == ["tenant", "day"]
            assert [c.name for c in table.clustering_key] == ["seq"]
            assert {n: c.cql_type for n, c in table.columns.items()} == {
                "tenant": "text", "day": "int", "seq": "bigint", "body": "text",
            }  # fmt: skip
            assert table.columns["seq"].is_reversed

    await in_thread(go)


async def test_prepared_statements_bind_many_types(server: CqlServer) -> None:
    tid, uid = uuid.uuid1(), uuid.uuid4()
    ts = dt.datetime(2024, 5, 17, 8, 30, 1, 250000)
    values = (
        uid, "héllo", 42, 2**40, 1.5, 0.25, True, tid, ts, b"\x00\xffraw",
        Decimal("123.4500"), ipaddress.ip_address("10.1.2.3"), {"a", "b"}, {"k": 7}, [3, 1, 2],
    )  # fmt: skip

    def go() -> None:
        with connected(server.port) as s:
            s.execute(KS)
            s.execute(
                "CREATE TABLE ks.t (id uuid PRIMARY KEY, txt varchar, i int, big bigint, "
                "d double, f float, ok boolean, tu timeuuid, at timestamp, raw blob, "
                "dec decimal, ip inet, tags set<text>, counts map<text, int>, xs list<int>)"
            )
            ins = s.prepare(
                "INSERT INTO ks.t (id, txt, i, big, d, f, ok, tu, at, raw, dec, ip, tags, "
                "counts, xs) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
            )
            s.execute(ins, values)
            sel = s.prepare("SELECT * FROM ks.t WHERE id = ?")
            assert sel.column_metadata[0].name == "id"
            assert sel.routing_key_indexes == [0]
            row = s.execute(sel, (uid,)).one()
            got = (
                row.id, row.txt, row.i, row.big, row.d, row.f, row.ok, row.tu, row.at,
                row.raw, row.dec, row.ip, set(row.tags), dict(row.counts), list(row.xs),
            )  # fmt: skip
            assert got[:11] == values[:11]
            assert got[11] == "10.1.2.3"
            assert got[12:] == values[12:]
            # Unset/None bound values and a literal insert through the same table.
            s.execute("INSERT INTO ks.t (id, txt) VALUES (%s, %s)", (uuid.uuid4(), None))
            assert s.execute("SELECT count(*) FROM ks.t").one().count == 2

    await in_thread(go)


async def test_batches_use_update_delete_truncate_and_paging(server: CqlServer) -> None:
    def go() -> None:
        with connected(server.port) as s:
            s.execute(KS)
            s.execute("USE ks")
            s.execute("CREATE TABLE kv (k text, c int, v text, PRIMARY KEY (k, c))")
            ins = s.prepare("INSERT INTO kv (k, c, v) VALUES (?, ?, ?)")
            for kind in (BatchType.LOGGED, BatchType.UNLOGGED):
                batch = BatchStatement(batch_type=kind)
                batch.add(ins, ("a", 1, "one"))
                batch.add(SimpleStatement("INSERT INTO kv (k, c, v) VALUES (%s, %s, %s)"),
                          ("a", 2, "two"))  # fmt: skip
                batch.add("UPDATE kv SET v = 'three' WHERE k = 'a' AND c = 3")
                s.execute(batch)
            s.execute(
                "BEGIN BATCH INSERT INTO kv (k, c, v) VALUES ('b', 1, 'x'); "
                "DELETE FROM kv WHERE k = 'a' AND c = 3; APPLY BATCH"
            )
            assert [r.c for r in s.execute("SELECT c FROM kv WHERE k = 'a'")] == [1, 2]
            s.execute("UPDATE kv SET v = 'uno' WHERE k = 'a' AND c = 1")
            s.execute("DELETE v FROM kv WHERE k = 'a' AND c = 2")
            rows = {r.c: r.v for r in s.execute("SELECT c, v FROM kv WHERE k = 'a'")}
            assert rows == {1: "uno", 2: None}
            for c in range(10, 17):
                s.execute(ins, ("p", c, str(c)))
            paged = s.execute(SimpleStatement("SELECT c FROM kv WHERE k = 'p'", fetch_size=3))
            assert paged.has_more_pages
            assert [r.c for r in paged] == list(range(10, 17))
            s.execute("DELETE FROM kv WHERE k = 'p'")
            assert s.execute("SELECT * FROM kv WHERE k = 'p'").one() is None
            s.execute("TRUNCATE kv")
            assert s.execute("SELECT count(*) FROM kv").one().count == 0
        with connected(server.port, keyspace="ks") as s:  # pool connections send USE "ks"
            s.execute("INSERT INTO kv (k, c, v) VALUES ('z', 1, 'ok')")
            assert s.execute("SELECT v FROM kv WHERE k = 'z' AND c = 1").one().v == "ok"

    await in_thread(go)
    texts = [t for _, t in server.user_statements()]
    assert texts.count("INSERT INTO kv (k, c, v) VALUES (?, ?, ?)") >= 3  # PREPARE + 2 batches
    assert "UPDATE kv SET v = 'three' WHERE k = 'a' AND c = 3" in texts
    assert "INSERT INTO kv (k, c, v) VALUES ('a', 2, 'two')" in texts
    assert 'USE "ks"' in texts


async def test_roles_grants_and_logins(server: CqlServer) -> None:
    def go() -> None:
        with connected(server.port) as admin:
            admin.execute(KS)
            admin.execute("CREATE TABLE ks.t (k int PRIMARY KEY, v text)")
            admin.execute("INSERT INTO ks.t (k, v) VALUES (1, 'a')")
            admin.execute("CREATE ROLE reader WITH PASSWORD = 's3cret' AND LOGIN = true")
            admin.execute(
                "CREATE ROLE IF NOT EXISTS reader WITH PASSWORD = 'other' AND LOGIN = true"
            )
            admin.execute("GRANT SELECT ON KEYSPACE ks TO reader")
            with connected(server.port, "reader", "s3cret") as s:
                assert s.execute("SELECT v FROM ks.t WHERE k = 1").one().v == "a"
                with pytest.raises(
                    Unauthorized, match=r"has no MODIFY permission on <table ks\.t>"
                ):
                    s.execute("INSERT INTO ks.t (k, v) VALUES (2, 'b')")
                with pytest.raises(Unauthorized):
                    s.execute("CREATE ROLE evil WITH PASSWORD = 'x' AND LOGIN = true")
                with pytest.raises(Unauthorized):
                    s.execute("CREATE TABLE ks.u (k int PRIMARY KEY)")
                admin.execute("GRANT MODIFY ON TABLE ks.t TO reader")
                s.execute("INSERT INTO ks.t (k, v) VALUES (2, 'b')")
                admin.execute("REVOKE SELECT ON KEYSPACE ks FROM reader")
                with pytest.raises(Unauthorized, match="has no SELECT permission"):
                    s.execute("SELECT * FROM ks.t")
            # "plain" is a non-superuser seeded through users=.
            with connected(server.port, "plain", "pw") as s, pytest.raises(Unauthorized):
                s.execute("SELECT * FROM ks.t")
            admin.execute("ALTER ROLE reader WITH PASSWORD = 'rotated'")
            assert isinstance(login_error(server.port, "reader", "s3cret"), AuthenticationFailed)
            with connected(server.port, "reader", "rotated") as s:
                s.execute("SELECT key FROM system.local")  # system tables stay readable
            admin.execute("DROP ROLE reader")
            admin.execute("DROP ROLE IF EXISTS reader")
        assert isinstance(login_error(server.port, "reader", "rotated"), AuthenticationFailed)

    await in_thread(go)
    roles = {role for role, _ in server.user_statements()}
    assert roles == {"cassandra", "reader", "plain"}


async def test_fake_peers_are_discovered_by_the_driver() -> None:
    async with await start_cql_server(fake_peers=["10.9.9.9", ("10.9.9.8", "dc2", "r2")]) as srv:

        def go() -> set[str]:
            cluster = make_cluster(srv.port)
            try:
                cluster.connect()
                return {h.address for h in cluster.metadata.all_hosts()}
            finally:
                cluster.shutdown()

        assert await in_thread(go) == {"127.0.0.1", "10.9.9.9", "10.9.9.8"}


async def test_faults_unprepared_and_statement_log(server: CqlServer) -> None:
    def go() -> None:
        with connected(server.port) as s:
            s.execute(KS)
            s.execute("CREATE TABLE ks.t (k int PRIMARY KEY)")
            server.fail_next(1, 0x1001)
            with pytest.raises(NoHostAvailable, match="overloaded"):
                s.execute("SELECT * FROM ks.t")
            s.execute("SELECT * FROM ks.t")  # the fault was used up
            server.fail_next(1, 0x1000, match="INSERT")
            s.execute("SELECT * FROM ks.t")
            with pytest.raises(Exception, match="Cannot achieve consistency"):
                s.execute("INSERT INTO ks.t (k) VALUES (1)")
            prep = s.prepare("SELECT k FROM ks.t WHERE k = ?")
            server.forget_prepared()  # EXECUTE now gets Unprepared; the driver re-prepares
            s.execute("INSERT INTO ks.t (k) VALUES (5)")
            assert s.execute(prep, (5,)).one().k == 5

    await in_thread(go)
    texts = [t for _, t in server.user_statements()]
    # PREPARE, EXECUTE refused as Unprepared (its text is unknown, so not logged), PREPARE
    # again by the driver, EXECUTE.
    assert texts.count("SELECT k FROM ks.t WHERE k = ?") == 3
    assert all(role == "cassandra" for role, _ in server.statements)
    assert any("system.local" in t for _, t in server.statements)


async def test_tls_listener_with_the_driver(tmp_path: Path) -> None:
    paths = write_dev_tls(tmp_path)
    server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_ctx.load_cert_chain(paths["cert"], paths["key"])
    client_ctx = ssl.create_default_context(cafile=str(paths["ca"]))
    async with await start_cql_server(ssl=server_ctx) as srv:

        def go() -> str:
            with connected(srv.port, ssl_context=client_ctx) as s:
                return s.execute("SELECT cluster_name FROM system.local").one().cluster_name

        assert await in_thread(go) == "Fake Cluster"
