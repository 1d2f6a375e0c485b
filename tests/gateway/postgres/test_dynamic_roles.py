"""PostgresRoles against a real PostgreSQL server: a role granted exactly what policy allows,
enforced by the server itself (42501), ended with its sessions, swept at expiry, and a
password that never reaches the server in clear (its own statement log is the oracle)."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import psycopg
import pytest

from lockgate.config import PostgresResource
from lockgate.errors import CredentialError, UpstreamAuthFailed, UpstreamUnavailable
from lockgate.gateway.dynamic_roles import NoGrants, RolesRetired, role_name, upstream_password
from lockgate.gateway.postgres.dynamic_roles import PostgresRoles
from lockgate.identity import Claims, KeyStore, TaskIdentity, TokenIssuer
from tests.pgserver import PgServer

from ..fakes import FakeBroker, FakePolicy, FakePolicySet

GATEWAY_USER = "roles_gateway"
GATEWAY_PASSWORD = "gateway-upstream-password"
DATABASE = "roles_shop"
SETUP = """\
CREATE SCHEMA sales;
CREATE TABLE sales.orders (id int PRIMARY KEY, item text);
INSERT INTO sales.orders VALUES (1, 'apple'), (2, 'pear');
CREATE VIEW sales.order_items AS SELECT item FROM sales.orders;
CREATE SCHEMA other;
CREATE TABLE other.secret (v text);
INSERT INTO other.secret VALUES ('hidden');
"""


def prepare(server: PgServer) -> None:
    """A CREATEROLE gateway login owning a database with two schemas (as a cloud admin
    user owns its databases); once per server (the run shares one)."""
    if server.psql("SELECT 1 FROM pg_database WHERE datname = 'roles_shop';").strip():
        return
    server.create_user(GATEWAY_USER, GATEWAY_PASSWORD, createrole=True)
    server.psql(f"CREATE DATABASE {DATABASE} OWNER {GATEWAY_USER};")
    server.psql(SETUP, user=GATEWAY_USER, dbname=DATABASE)


def own_database(server: PgServer, name: str, setup: str) -> PgServer:
    """``server`` with database ``name`` owned by the CREATEROLE gateway login and filled
    by ``setup`` as it (once per server), so its objects change no other test's grants."""
    prepare(server)
    if not server.psql(f"SELECT 1 FROM pg_database WHERE datname = '{name}';").strip():  # noqa: S608 (a test's own name)
        server.psql(f"CREATE DATABASE {name} OWNER {GATEWAY_USER};")
        server.psql(setup, user=GATEWAY_USER, dbname=name)
    return server


def run_as(
    server: PgServer, user: str, password: str, sql: str, *, dbname: str = DATABASE
) -> list[tuple[Any, ...]] | None:
    """Rows of ``sql`` run directly as ``user`` ([] without a result), None when the server
    refuses it (42501): the server's own permission check is the oracle."""
    with psycopg.connect(server.dsn(user, password, dbname=dbname), autocommit=True) as conn:
        try:
            cur = conn.execute(sql.encode())
            return cur.fetchall() if cur.description else []
        except psycopg.errors.InsufficientPrivilege:
            return None


@pytest.fixture
def pg(pg_server: PgServer) -> PgServer:
    prepare(pg_server)
    return pg_server


def resource(server: PgServer, **kw: Any) -> PostgresResource:
    fields: dict[str, Any] = {
        "name": "shop-pg", "kind": "postgres", "host": server.host, "port": server.port,
        "database": DATABASE, "username": GATEWAY_USER, "credential": "shop-pw",
        "ca_file": server.ca_file, "dynamic_roles": True, **kw,
    }  # fmt: skip
    return PostgresResource(**fields)


async def _password(*, previous: bool = False) -> str:
    if previous:
        raise CredentialError("no rotation under way")
    return GATEWAY_PASSWORD


def mint(tmp_path: Path, ttl: int = 600, try_number: int = 1) -> Claims:
    identity = TaskIdentity("prod", "etl", "load", "run-1", try_number)
    issuer = TokenIssuer(KeyStore(tmp_path / "keys"), "https://lockgate.test")
    return issuer.mint(identity, "shop-pg", ttl)[1]


def roles_for(server: PgServer, allow: list[tuple[str, str]], **kw: Any) -> PostgresRoles:
    return PostgresRoles(resource(server, **kw), _password, FakePolicy(FakePolicySet(allow)))


def login(server: PgServer, user: str, password: str) -> psycopg.Connection[Any]:
    return psycopg.connect(server.dsn(user, password, dbname=DATABASE), autocommit=True)


def live_roles(server: PgServer) -> set[str]:
    out = server.psql("SELECT rolname FROM pg_roles WHERE rolname LIKE 'lg\\_%';")
    return set(out.split())


async def test_the_role_gets_exactly_the_policy_grants_enforced_by_the_server(
    pg: PgServer, tmp_path: Path
) -> None:
    roles = roles_for(pg, [("read", "sales.*"), ("write", "sales.orders")])
    since = pg.log_position()
    cred = await roles.issue(mint(tmp_path), require_grants=True)
    assert cred.username.startswith("lg_") and len(cred.password) >= 43
    assert sorted(cred.grants) == sorted([
        ("SELECT", 'TABLE "sales"."order_items"'),
        ("SELECT", 'TABLE "sales"."orders"'),
        ("INSERT", 'TABLE "sales"."orders"'),
        ("UPDATE", 'TABLE "sales"."orders"'),
        ("DELETE", 'TABLE "sales"."orders"'),
    ])  # fmt: skip
    with login(pg, cred.username, cred.password) as conn:
        assert conn.execute("SELECT count(*) FROM sales.orders").fetchone() == (2,)
        conn.execute("INSERT INTO sales.orders VALUES (3, 'fig')")
        assert conn.execute("SELECT item FROM sales.order_items WHERE item = 'fig'").fetchall()
        for forbidden in (
            "SELECT * FROM other.secret",
            "DROP TABLE sales.orders",
            "INSERT INTO sales.order_items VALUES ('x')",
            "CREATE TABLE sales.mine (x int)",
        ):
            with pytest.raises(psycopg.errors.InsufficientPrivilege):
                conn.execute(forbidden)
        attrs = conn.execute(
            "SELECT rolsuper, rolcreatedb, rolcreaterole, rolreplication, rolbypassrls,"
            " rolinherit, rolconnlimit, rolvaliduntil FROM pg_roles WHERE rolname = current_user"
        ).fetchone()
    assert attrs is not None and attrs[:6] == (False,) * 6
    assert attrs[6] == PostgresRoles.CONNECTION_LIMIT
    assert abs(attrs[7].timestamp() - cred.expires_at) < 1.0
    # the server never saw the password in clear: CREATE ROLE carried a SCRAM verifier
    logged = [s.text for s in pg.statements(since)]
    assert any("CREATE ROLE" in t and "SCRAM-SHA-256$" in t for t in logged)
    assert not [t for t in logged if cred.password in t]
    assert await roles.revoke(cred.username)
    pg.psql("DELETE FROM sales.orders WHERE id = 3;", dbname=DATABASE)


async def test_revoke_kills_the_open_session_and_drops_the_role(
    pg: PgServer, tmp_path: Path
) -> None:
    roles = roles_for(pg, [("read", "sales.orders")])
    cred = await roles.issue(mint(tmp_path, try_number=2))
    conn = login(pg, cred.username, cred.password)
    try:
        assert conn.execute("SELECT 1").fetchone() == (1,)
        assert await roles.revoke_matching("prod", "etl", try_number=2) == [cred.username]
        with pytest.raises(psycopg.OperationalError):
            conn.execute("SELECT 1")
    finally:
        conn.close()
    assert cred.username not in live_roles(pg) and roles.issued == {}
    with pytest.raises(psycopg.OperationalError):
        login(pg, cred.username, cred.password)


async def test_nothing_granted_creates_nothing(pg: PgServer, tmp_path: Path) -> None:
    roles = roles_for(pg, [("read", "nowhere.*"), ("admin", "*")])
    claims = mint(tmp_path, try_number=3)
    with pytest.raises(NoGrants):
        await roles.issue(claims, require_grants=True)
    assert role_name("shop-pg", claims.jti) not in live_roles(pg)


async def test_admin_is_never_granted(pg: PgServer, tmp_path: Path) -> None:
    roles = roles_for(pg, [("*", "*")])
    cred = await roles.issue(mint(tmp_path, try_number=4))
    assert {perm for perm, _ in cred.grants} == {"SELECT", "INSERT", "UPDATE", "DELETE"}
    conn = login(pg, cred.username, cred.password)
    with conn, pytest.raises(psycopg.errors.InsufficientPrivilege):
        conn.execute("TRUNCATE other.secret")
    await roles.retire()
    assert cred.username not in live_roles(pg)
    with pytest.raises(RolesRetired):
        await roles.issue(mint(tmp_path, try_number=5))


async def test_expiry_sweep_and_orphans(pg: PgServer, tmp_path: Path) -> None:
    now = [time.time()]
    roles = PostgresRoles(
        resource(pg), _password, FakePolicy(FakePolicySet([("read", "*")])), clock=lambda: now[0]
    )
    cred = await roles.issue(mint(tmp_path, ttl=60, try_number=6))
    assert await roles.sweep() == [] and cred.username in live_roles(pg)
    now[0] += 61
    assert await roles.sweep() == [cred.username]
    assert cred.username not in live_roles(pg)
    # a crashed gateway's role: VALID UNTIL passed -> swept; a live one (a replica's) kept
    pg.psql(
        "CREATE ROLE lg_0000000000dead LOGIN VALID UNTIL '2000-01-01';"
        "CREATE ROLE lg_0000000000a11e LOGIN VALID UNTIL 'infinity';"
        f"GRANT lg_0000000000dead TO {GATEWAY_USER};"
    )
    try:
        assert await roles.sweep_orphans() == ["lg_0000000000dead"]
        assert live_roles(pg) >= {"lg_0000000000a11e"}
        assert "lg_0000000000dead" not in live_roles(pg)
    finally:
        pg.psql("DROP ROLE IF EXISTS lg_0000000000a11e;")


async def test_a_role_whose_resource_is_retired_while_it_is_made_never_exists(
    pg: PgServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The resource leaves the catalog while CREATE ROLE and its grants run: the
    transaction is rolled back, the issue refused, and no role is left on the server."""
    roles = roles_for(pg, [("read", "sales.*")])
    run = PostgresRoles._run
    retiring: list[asyncio.Task[list[str]]] = []

    async def run_and_retire(conn: Any, statement: Any, params: Any = None) -> Any:
        if not retiring and "CREATE ROLE" in str(getattr(statement, "_obj", statement)):
            retiring.append(asyncio.create_task(roles.retire()))
            await asyncio.sleep(0)  # the retire marks the set before the grants finish
        return await run(conn, statement, params)

    monkeypatch.setattr(PostgresRoles, "_run", staticmethod(run_and_retire))
    claims = mint(tmp_path, try_number=7)
    with pytest.raises(RolesRetired):
        await roles.issue(claims)
    assert await retiring[0] == []
    assert role_name("shop-pg", claims.jti) not in live_roles(pg) and roles.issued == {}


async def test_an_unreachable_server_is_upstream_unavailable_without_the_password(
    pg: PgServer, tmp_path: Path
) -> None:
    roles = roles_for(pg, [("read", "*")], port=1, connect_timeout=1)
    with pytest.raises(UpstreamUnavailable) as exc:
        await roles.issue(mint(tmp_path, try_number=8))
    assert "127.0.0.1:1" in str(exc.value) and GATEWAY_PASSWORD not in str(exc.value)
    wrong = PostgresRoles(
        resource(pg), _wrong_password, FakePolicy(FakePolicySet([("read", "*")]))
    )  # fmt: skip
    with pytest.raises(UpstreamAuthFailed) as exc:
        await wrong.issue(mint(tmp_path, try_number=9))
    assert "password authentication failed" in str(exc.value)
    assert "not-the-password" not in str(exc.value)


async def _wrong_password(*, previous: bool = False) -> str:
    if previous:
        raise CredentialError("no rotation under way")
    return "not-the-password"


async def test_a_rotation_not_yet_made_upstream_logs_in_with_the_previous_version(
    pg: PgServer, tmp_path: Path
) -> None:
    asked: list[bool] = []

    async def rotating(*, previous: bool = False) -> str:
        asked.append(previous)
        return GATEWAY_PASSWORD if previous else "the-new-one-the-server-lacks"

    roles = PostgresRoles(resource(pg), rotating, FakePolicy(FakePolicySet([("read", "*")])))
    cred = await roles.issue(mint(tmp_path, try_number=10))
    assert cred.username in live_roles(pg) and asked[:2] == [False, True]
    await roles.retire()
    assert cred.username not in live_roles(pg)


async def test_the_brokers_versions_reach_the_admin_login(pg: PgServer) -> None:
    password = upstream_password(FakeBroker({"shop-pw": ["old", "new"]}))
    assert await password(resource(pg)) == "new"
    assert await password(resource(pg), previous=True) == "old"
    with pytest.raises(CredentialError):  # one version: no previous
        await upstream_password(FakeBroker({"shop-pw": ["only"]}))(resource(pg), previous=True)
