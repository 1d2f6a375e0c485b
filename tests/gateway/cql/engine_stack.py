"""A real Lockgate gateway (cql listener) in front of the fake Cassandra node, for engine tests.

The gateway is built from a temporary lockgate.yaml with the real token issuer/verifier,
policy files, credential store and audit log. The first contact point is a dead port, so
every connection also exercises failover.
"""

from __future__ import annotations

import asyncio
import socket
import struct
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

from cassandra.auth import PlainTextAuthProvider
from cassandra.cluster import EXEC_PROFILE_DEFAULT, Cluster, ExecutionProfile, Session
from cassandra.policies import DCAwareRoundRobinPolicy

from lockgate.audit.record import AuditRow
from lockgate.config import load_config
from lockgate.demo.standins.cqlserver import CqlServer, start_cql_server
from lockgate.demo.standins.cqlserver.executor import Bound
from lockgate.demo.standins.cqlserver.grammar import parse
from lockgate.demo.standins.cqlserver.session import Session as FakeSession
from lockgate.gateway.cql import codec
from lockgate.gateway.cql.context import EngineContext
from lockgate.gateway.cql.engine import CqlEngine
from lockgate.identity import TaskIdentity, TokenIssuer
from lockgate.server import Gateway

UPSTREAM_USER = "lockgate"
UPSTREAM_PASSWORD = "upstream-pw-not-a-token"
RESOURCE = "cass"

CONFIG = """\
data_dir: {data}
listeners:
  control: {{host: 127.0.0.1, port: 0}}
  http: {{host: 127.0.0.1, port: 0}}
  cql: {{host: 127.0.0.1, port: 0}}
resources:
  - name: cass
    kind: cql
    contact_points: ["127.0.0.1:{dead}", "127.0.0.1:{live}"]
    username: lockgate
    credential: cass-pw
    connect_timeout: 1
    handshake_timeout: 1.0
    idle_timeout: 30
    max_frame_bytes: 65536
credentials:
  - {{name: cass-pw, type: static}}
policies: ["policies/*.yaml"]
audit: {{write_timeout: 1.0}}
"""

POLICY = """\
rules:
  - id: etl-read-write
    effect: allow
    principals: ["airflow:prod/etl/*"]
    actions: [read, write]
    resources: [cass]
    objects: ["ks.*"]
    conditions: {max_token_ttl: 3600}
  - id: etl-no-secrets
    effect: deny
    principals: ["*"]
    actions: [write]
    resources: [cass]
    objects: ["ks.secrets"]
  - id: ops-admin
    effect: allow
    principals: ["airflow:prod/ops/*"]
    actions: [read, write, admin]
    resources: [cass]
"""

SCHEMA = [
    "CREATE KEYSPACE ks WITH replication = {'class': 'SimpleStrategy', 'replication_factor': 1}",
    "CREATE TABLE ks.orders (id int PRIMARY KEY, item text)",
    "CREATE TABLE ks.secrets (id int PRIMARY KEY, v text)",
]


def dead_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Stack:
    gw: Gateway
    fake: CqlServer
    port: int

    def token(self, dag: str = "etl", ttl: int = 900, *, age: float = 0.0) -> str:
        issuer = TokenIssuer(
            self.gw.state.keys, self.gw.config.issuer_url, clock=lambda: time.time() - age
        )
        identity = TaskIdentity("prod", dag, "load", "run-1", 1)
        return issuer.mint(identity, RESOURCE, ttl)[0]

    def audit(self, event: str | None = None) -> list[AuditRow]:
        self.gw.audit.flush(2.0)
        rows = self.gw.audit.tail(200)
        return [r for r in rows if event is None or r.event == event]

    def upstream_users(self) -> set[str]:
        return {role for role, _ in self.fake.user_statements()}


def cql_context(stack: Stack) -> EngineContext:
    """The CQL engine's context (prepared registry, view catalog, collaborators)."""
    return cast(CqlEngine, stack.gw.engines["cql"]).ctx


def run_on_fake(fake: CqlServer, text: str) -> None:
    """Run DDL directly on the fake node as its superuser (test setup, not through Lockgate)."""
    role = fake.store.authenticate("cassandra", "cassandra")
    FakeSession(fake, None, None).run(parse(text)[0], Bound([]), None, role, (None, None))  # type: ignore[arg-type]


async def start_stack(tmp: Path) -> Stack:
    fake = await start_cql_server(
        users={"cassandra": "cassandra", UPSTREAM_USER: UPSTREAM_PASSWORD},
        superusers=("cassandra", UPSTREAM_USER),
        fake_peers=["10.9.9.9", ("10.9.9.10", "datacenter1", "rack1")],
    )
    for text in SCHEMA:
        run_on_fake(fake, text)
    (tmp / "policies").mkdir()
    (tmp / "policies" / "team.yaml").write_text(POLICY)
    cfg = tmp / "lockgate.yaml"
    cfg.write_text(CONFIG.format(data=tmp / "data", dead=dead_port(), live=fake.port))
    gw = Gateway(load_config(cfg))
    gw.state.credentials.set("cass-pw", UPSTREAM_PASSWORD)
    await gw.start()
    return Stack(gw, fake, gw.cql_port)


async def stop_stack(stack: Stack) -> None:
    await stack.gw.stop()
    await stack.fake.close()


async def stack_fixture(tmp: Path) -> AsyncIterator[Stack]:
    stack = await start_stack(tmp)
    try:
        yield stack
    finally:
        await stop_stack(stack)


# -- the real driver (blocking; call through asyncio.to_thread) ----------------------------------
def connect(port: int, token: str, keyspace: str | None = None, **kw: Any) -> Session:
    policy = DCAwareRoundRobinPolicy(local_dc="datacenter1")
    cluster = Cluster(
        ["127.0.0.1"],
        port=port,
        auth_provider=PlainTextAuthProvider(kw.pop("user", RESOURCE), token),
        execution_profiles={EXEC_PROFILE_DEFAULT: ExecutionProfile(load_balancing_policy=policy)},
        connect_timeout=3,
        control_connection_timeout=3,
        **kw,
    )
    try:
        return cluster.connect(keyspace)
    except BaseException:
        cluster.shutdown()
        raise


# -- a raw v4 client for byte-level tests --------------------------------------------------------
class RawClient:
    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer
        self.conn = codec.Connection(codec.Role.CLIENT)

    @classmethod
    async def open(cls, port: int) -> RawClient:
        return cls(*await asyncio.open_connection("127.0.0.1", port))

    def send(self, event: codec.Event) -> None:
        self.writer.write(self.conn.send(event))

    async def recv(self, timeout: float = 3.0) -> codec.Event | None:
        """The next frame, or None when the gateway closed the connection."""
        async with asyncio.timeout(timeout):
            while True:
                event = self.conn.next_event()
                if event is not codec.NEED_DATA:
                    assert isinstance(event, codec.Event)
                    return event
                data = await self.reader.read(65536)
                if not data:
                    return None
                self.conn.receive_data(data)

    async def closed(self, timeout: float = 3.0) -> bool:
        """True once the gateway closes the connection (any frames before are skipped)."""
        try:
            async with asyncio.timeout(timeout):
                while await self.reader.read(65536):
                    pass
            return True
        except TimeoutError:
            return False

    async def login(self, token: str, user: str = RESOURCE) -> codec.Event | None:
        self.send(codec.Startup(stream=1, options={"CQL_VERSION": "3.0.0"}))
        assert isinstance(await self.recv(), codec.Authenticate)
        self.send(
            codec.AuthResponse(stream=2, token=b"\0" + user.encode() + b"\0" + token.encode())
        )
        return await self.recv()

    def close(self) -> None:
        self.writer.close()


def header(opcode: int, length: int, stream: int = 5) -> bytes:
    return struct.pack(">BBhBi", 0x04, 0, stream, opcode, length)
