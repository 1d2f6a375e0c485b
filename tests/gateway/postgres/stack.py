"""A real Lockgate gateway (postgres listener) in front of a real PostgreSQL server.

:func:`start_stack` builds the gateway from a temporary lockgate.yaml with the real token
issuer and verifier, policy files, credential store and audit log, and a ``kind: postgres``
resource ``pg`` that logs in to ``server`` (the ``pg_server`` fixture of tests/pgserver) with
``tls: verify-full`` against the server's CA. Each stack gets a database and an upstream
login of its own (unique names), so stacks can share one server and read only their own
statements from its log:

* schemas ``sales`` (``orders``), ``other`` (``secret``); the upstream login may read and
  write them all on the server: what denies in tests is the gateway;
* policies: DAG ``etl`` may read and write ``sales.*``; DAG ``ops`` may do anything on
  ``pg``; anything else is denied by default (:data:`POLICY`, replaceable per stack).

Clients connect with :meth:`PgStack.dsn` (TLS verify-full against the gateway's CA, the
resource name as database, a token as password); :meth:`PgStack.token` mints one for a DAG;
:meth:`PgStack.audit` reads the trail back. Usage::

    @pytest.fixture
    async def stack(tmp_path, pg_server):
        async with pg_stack(tmp_path, pg_server) as s:
            yield s

    async def test_x(stack):
        conn = await stack.connect("etl")          # psycopg, autocommit, TLS verify-full
        since = stack.server.log_position()
        ...
        assert "other.secret" not in " ".join(stack.executed(since))
"""

from __future__ import annotations

import contextlib
import secrets
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, cast
from urllib.parse import quote

import psycopg

from lockgate.audit.record import AuditRow
from lockgate.config import load_config
from lockgate.identity import TaskIdentity, TokenIssuer
from lockgate.server import Gateway
from lockgate.tlsgen import write_dev_tls

if TYPE_CHECKING:
    from lockgate.gateway.postgres.engine import PostgresEngine
    from tests.pgserver import PgServer

Conn = psycopg.AsyncConnection[tuple[object, ...]]

RESOURCE = "pg"
CREDENTIAL = "pg-pw"

CONFIG = """\
data_dir: {data}
listeners:
  control: {{host: 127.0.0.1, port: 0}}
  http: {{host: 127.0.0.1, port: 0}}
  postgres:
    host: 127.0.0.1
    port: 0
    tls: {{cert: {cert}, key: {key}}}
    handshake_timeout: {handshake_timeout}
    allow_plaintext: {allow_plaintext}
resources:
  - name: {resource}
    kind: postgres
    host: 127.0.0.1
    port: {pg_port}
    database: {database}
    username: {login}
    credential: {credential}
    tls: verify-full
    ca_file: {pg_ca}
    handshake_timeout: {handshake_timeout}
    connect_timeout: 3
    idle_timeout: {idle_timeout}
{resource_extra}credentials:
  - {{name: {credential}, type: static}}
policies: ["policies/*.yaml"]
audit: {{write_timeout: 1.0}}
"""

POLICY = """\
rules:
  - id: etl-sales
    effect: allow
    principals: ["airflow:prod/etl/*"]
    actions: [read, write]
    resources: [pg]
    objects: ["sales.*"]
  - id: ops-admin
    effect: allow
    principals: ["airflow:prod/ops/*"]
    actions: [read, write, admin]
    resources: [pg]
"""

# Run as the superuser in the stack's own database; {login} is the gateway's upstream login.
SCHEMA = """\
CREATE SCHEMA sales;
CREATE TABLE sales.orders (id int PRIMARY KEY, item text NOT NULL, amount int NOT NULL);
INSERT INTO sales.orders VALUES (1, 'apple', 3), (2, 'pear', 5);
CREATE SCHEMA other;
CREATE TABLE other.secret (id int PRIMARY KEY, value text NOT NULL);
INSERT INTO other.secret VALUES (1, 'the-upstream-only-secret');
GRANT USAGE, CREATE ON SCHEMA sales, other, public TO {login};
GRANT ALL ON ALL TABLES IN SCHEMA sales, other TO {login};
"""


@dataclass
class PgStack:
    gw: Gateway
    server: PgServer
    port: int  # the gateway's postgres listener
    ca_file: Path  # the CA of the gateway's listener certificate
    database: str  # the upstream database behind resource ``pg``
    login: str  # the gateway's upstream login
    login_password: str = field(repr=False)
    tmp: Path = Path()

    def token(
        self, dag: str = "etl", ttl: int = 900, *, age: float = 0.0, resource: str = RESOURCE
    ) -> str:
        """A Lockgate token for ``airflow:prod/<dag>/load`` (``age`` seconds old)."""
        issuer = TokenIssuer(
            self.gw.state.keys, self.gw.config.issuer_url, clock=lambda: time.time() - age
        )
        identity = TaskIdentity("prod", dag, "load", "run-1", 1)
        return issuer.mint(identity, resource, ttl)[0]

    def dsn(
        self,
        password: str,
        *,
        dbname: str = RESOURCE,
        user: str = "lockgate",
        sslmode: str = "verify-full",
        **params: str,
    ) -> str:
        """A libpq URI for the gateway's listener."""
        uri = (
            f"postgresql://{quote(user, safe='')}:{quote(password, safe='')}@127.0.0.1:"
            f"{self.port}/{quote(dbname, safe='')}?sslmode={sslmode}"
        )
        if sslmode in ("verify-ca", "verify-full"):
            uri += f"&sslrootcert={quote(str(self.ca_file), safe='/')}"
        for key, value in params.items():
            uri += f"&{key}={quote(value, safe='')}"
        return uri

    async def connect(self, dag: str = "etl", **params: str) -> Conn:
        """A psycopg connection (autocommit) through the gateway as ``airflow:prod/<dag>/load``."""
        dsn = self.dsn(self.token(dag), **params)
        return await psycopg.AsyncConnection.connect(dsn, autocommit=True)

    def executed(self, since: int = 0) -> list[str]:
        """Statement texts the server ran for the gateway's login (the test oracle); ``since``
        is a ``self.server.log_position()`` taken before."""
        return [s.text for s in self.server.statements(since) if s.user == self.login]

    def conninfo(self, password: str, **params: str) -> dict[str, str]:
        """The same as keyword arguments (psycopg ``connect(**kw)``, asyncpg-like)."""
        return {
            "host": "127.0.0.1",
            "port": str(self.port),
            "dbname": RESOURCE,
            "user": "lockgate",
            "password": password,
            "sslmode": "verify-full",
            "sslrootcert": str(self.ca_file),
            **params,
        }

    def audit(self, event: str | None = None, *, limit: int = 500) -> list[AuditRow]:
        """The trail so far (flushed), optionally only ``event`` records."""
        self.gw.audit.flush(2.0)
        rows = self.gw.audit.tail(limit)
        return [r for r in rows if event is None or r.event == event]

    def engine(self) -> PostgresEngine:
        return cast("PostgresEngine", self.gw.engines["postgres"])

    def upstream_psql(self, sql: str) -> str:
        """Run SQL on the stack's database as the superuser (setup, not through Lockgate)."""
        return self.server.psql(sql, dbname=self.database)

    def write_policy(self, text: str) -> None:
        """Replace the policy file and load it now (no wait for the background reload)."""
        (self.tmp / "policies" / "team.yaml").write_text(text)
        self.gw.policy.reload_if_changed()


def _ident(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


async def start_stack(
    tmp: Path,
    server: PgServer,
    *,
    policy: str = POLICY,
    handshake_timeout: float = 5.0,
    idle_timeout: float = 300.0,
    allow_plaintext: bool = False,
    resource_extra: str = "",
) -> PgStack:
    """A started gateway with resource ``pg`` on its own database of ``server``."""
    suffix = secrets.token_hex(4)
    login, database = f"lg_gw_{suffix}", f"lg_db_{suffix}"
    login_password = secrets.token_urlsafe(18)
    server.create_user(login, login_password)
    server.psql(f"CREATE DATABASE {_ident(database)};")
    server.psql(SCHEMA.format(login=_ident(login)), dbname=database)
    tls = write_dev_tls(tmp / "gw-tls")
    (tmp / "policies").mkdir(exist_ok=True)
    (tmp / "policies" / "team.yaml").write_text(policy)
    cfg = tmp / "lockgate.yaml"
    cfg.write_text(
        CONFIG.format(
            data=tmp / "data",
            cert=tls["cert"],
            key=tls["key"],
            resource=RESOURCE,
            pg_port=server.port,
            database=database,
            login=login,
            credential=CREDENTIAL,
            pg_ca=server.ca_file,
            handshake_timeout=handshake_timeout,
            idle_timeout=idle_timeout,
            allow_plaintext=str(allow_plaintext).lower(),
            resource_extra=resource_extra,
        )
    )
    gw = Gateway(load_config(cfg))
    gw.state.credentials.set(CREDENTIAL, login_password)
    await gw.start()
    return PgStack(gw, server, gw.postgres_port, tls["ca"], database, login, login_password, tmp)


async def stop_stack(stack: PgStack) -> None:
    await stack.gw.stop()
    with contextlib.suppress(Exception):  # a test may have stopped the server itself
        stack.server.psql(f"DROP DATABASE IF EXISTS {_ident(stack.database)} WITH (FORCE);")


@contextlib.asynccontextmanager
async def pg_stack(tmp: Path, server: PgServer, **kwargs: object) -> AsyncIterator[PgStack]:
    """:func:`start_stack` ... :func:`stop_stack` as an async context manager."""
    stack = await start_stack(tmp, server, **kwargs)  # type: ignore[arg-type]
    try:
        yield stack
    finally:
        await stop_stack(stack)
