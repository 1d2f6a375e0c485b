"""A local stack with a Cassandra resource: the demo stack plus a fake Cassandra node.

:class:`CqlLocalStack` extends :class:`~lockgate.demo.stack.LocalStack` (``lockgate init``,
demo upstream, gateway in a background thread) with:

* a fake Cassandra node (src/lockgate/demo/standins/cqlserver) on its own event loop in its own
thread,
  started first and kept for the stack's whole life, with keyspace ``sales`` and tables
  ``orders`` and ``payouts``;
* in lockgate.yaml: a ``listeners.cql`` section (TLS with the dev certificate), a
  ``kind: cql`` resource ``sales-cassandra`` (conn_id ``sales_cassandra``, keyspace
  ``sales``) pointing at the fake node, its upstream password credential, and ``sales_*``
  added to the ``prod`` deployment's DAGs;
* the example sales policy (examples/policies/sales.yaml) in the policies directory.

The upstream password is random and set only in the credential store, as an operator would.
"""

from __future__ import annotations

import asyncio
import secrets
import shutil
import threading
from pathlib import Path
from typing import Any

import yaml

from lockgate.demo.stack import REPO_ROOT, LocalStack
from lockgate.demo.standins.cqlserver import CqlServer, start_cql_server
from tests.gateway.cql.engine_stack import run_on_fake

RESOURCE = "sales-cassandra"
CONN_ID = "sales_cassandra"
CREDENTIAL = "sales-cassandra-pw"
UPSTREAM_USER = "lockgate"
SALES_POLICY = REPO_ROOT / "examples" / "policies" / "sales.yaml"
SCHEMA = [
    "CREATE KEYSPACE sales WITH replication = {'class': 'SimpleStrategy', 'replication_factor': 1}",
    "CREATE TABLE sales.orders (order_id text PRIMARY KEY, customer text, amount int)",
    "CREATE TABLE sales.payouts (payout_id text PRIMARY KEY, amount int)",
]


class FakeNode:
    """The fake Cassandra node on a private event loop in a daemon thread."""

    def __init__(self, users: dict[str, str], superusers: tuple[str, ...]) -> None:
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self._thread.start()
        self.server: CqlServer = self.call(start_cql_server(users=users, superusers=superusers))

    @property
    def port(self) -> int:
        return int(self.server.port)

    def call(self, coro: Any, timeout: float = 30) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def run_ddl(self, text: str) -> None:
        async def ddl() -> None:
            run_on_fake(self.server, text)

        self.call(ddl())

    def rows(self, keyspace: str, table: str) -> list[dict[str, Any]]:
        async def read() -> list[dict[str, Any]]:
            return [dict(r) for r in self.server.store.table(keyspace, table).rows()]

        return list(self.call(read()))

    def statements(self) -> list[tuple[str, str]]:
        """(role, text) of every user statement that reached the node."""

        async def read() -> list[tuple[str, str]]:
            return list(self.server.user_statements())

        return list(self.call(read()))

    def stop(self) -> None:
        try:
            self.call(self.server.close(), timeout=10)
        finally:
            self.loop.call_soon_threadsafe(self.loop.stop)
            self._thread.join(10)
            self.loop.close()


class CqlLocalStack(LocalStack):
    """The demo stack with a ``kind: cql`` resource in front of a fake Cassandra node."""

    def __init__(self, workdir: Path, *, cql_tls: bool = True) -> None:
        super().__init__(workdir, tls=True)
        self.upstream_password = secrets.token_urlsafe(24)
        self.node = FakeNode(
            {"cassandra": "cassandra", UPSTREAM_USER: self.upstream_password},
            ("cassandra", UPSTREAM_USER),
        )
        for text in SCHEMA:
            self.node.run_ddl(text)
        self._add_cql(cql_tls)

    def _add_cql(self, tls: bool) -> None:
        path = Path(self.config_path)
        doc = yaml.safe_load(path.read_text(encoding="utf-8"))
        listener: dict[str, Any] = {"host": "127.0.0.1", "port": 0}
        if tls:
            listener["tls"] = {"cert": "tls/cert.pem", "key": "tls/key.pem"}
        doc["listeners"]["cql"] = listener
        doc["resources"].append(
            {
                "name": RESOURCE,
                "kind": "cql",
                "contact_points": [f"127.0.0.1:{self.node.port}"],
                "username": UPSTREAM_USER,
                "credential": CREDENTIAL,
                "conn_id": CONN_ID,
                "keyspace": "sales",
                "connect_timeout": 2,
            }
        )
        doc["credentials"].append({"name": CREDENTIAL, "type": "static"})
        for deployment in doc["deployments"]:
            deployment["dags"].append("sales_*")
        path.write_text(yaml.safe_dump(doc, sort_keys=False), encoding="utf-8")
        shutil.copy(SALES_POLICY, self.workdir / "policies" / "sales.yaml")

    @property
    def cql_port(self) -> int:
        return int(self.gateway.cql_port)

    def start(self) -> CqlLocalStack:
        from lockgate.server import State

        State(self.config).credentials.set(CREDENTIAL, self.upstream_password)
        super().start()
        return self

    def stop(self) -> None:
        try:
            super().stop()
        finally:
            self.node.stop()
