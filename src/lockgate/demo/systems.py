"""The demo stack with all five seed systems: App Service, Cosmos DB, Data Factory, Cassandra
and Databricks, each behind the gateway and each played by a local stand-in.

:class:`FiveSystemsStack` is :class:`~lockgate.demo.stack.LocalStack` (``lockgate init``, the
App Service-style orders API, the gateway in a thread) plus, on one background loop:

* Cosmos DB (:mod:`lockgate.demo.standins.cosmos`): resource ``orders-cosmos`` (profile
  cosmos, request signing with the account key the gateway alone holds), on its own TLS
  listener at :data:`COSMOS_HOST` (:func:`verified_cosmos_listener`);
* Data Factory over ARM (:mod:`lockgate.demo.standins.adf`) behind Entra ID
  (:mod:`lockgate.demo.standins.entra`): resource ``arm``, reached by the stock operator
  through the gateway's forward proxy, which intercepts ``management.azure.com``;
* a Cassandra node (:mod:`lockgate.demo.standins.cqlserver`): resource ``sales-cassandra`` on
  the gateway's CQL listener;
* Databricks (:mod:`lockgate.demo.standins.databricks`): resource ``databricks`` on its own
  TLS listener, OAuth M2M upstream.

The example policies of each system (examples/policies) go into the policies directory and
their DAG patterns are delegated to the ``prod`` deployment. Every upstream secret is random
or the stand-in's own and lives only in the gateway's credential store.
"""

from __future__ import annotations

import asyncio
import secrets
import shutil
import socket
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import yaml

from lockgate.demo.stack import REPO_ROOT, LocalStack, free_port
from lockgate.demo.standins.adf import FakeAdf
from lockgate.demo.standins.adf import start as start_adf
from lockgate.demo.standins.cosmos import CosmosFake, start_cosmos
from lockgate.demo.standins.cqlserver import CqlServer, start_cql_server
from lockgate.demo.standins.cqlserver.executor import Bound
from lockgate.demo.standins.cqlserver.grammar import parse
from lockgate.demo.standins.cqlserver.session import Session
from lockgate.demo.standins.databricks import DEFAULT_CLIENT_ID, FakeDatabricks
from lockgate.demo.standins.databricks import start as start_databricks
from lockgate.demo.standins.entra import FakeEntra
from lockgate.demo.standins.entra import start as start_entra
from lockgate.demo.standins.entra.thread import LoopThread, server_tls
from lockgate.scaffold import write_trust_bundle
from lockgate.tlsgen import write_dev_ca, write_dev_tls

POLICIES = REPO_ROOT / "examples" / "policies"
CQL_SCHEMA = (
    "CREATE KEYSPACE sales WITH replication = {'class': 'SimpleStrategy', 'replication_factor': 1}",
    "CREATE TABLE sales.orders (order_id text PRIMARY KEY, customer text, amount int)",
    "CREATE TABLE sales.payouts (payout_id text PRIMARY KEY, amount int)",
)
CQL_ADMIN = ("cassandra", "cassandra")  # the node's own superuser, used only to lay the schema
ENTRA_CLIENT = "lockgate-gateway-app"
# azure-cosmos turns TLS verification off for "localhost" and "127.0.0.1" (its emulator
# rule), and urllib3 then warns on every request. Another loopback address (all of 127/8 is
# loopback on Linux) is verified like any real account, so the gateway's Cosmos endpoint lives
# there, named in the gateway's certificate.
COSMOS_HOST = "127.0.0.2"
DATABRICKS_JOB_101 = {
    "name": "etl-load",
    "timeout_seconds": 1800,
    "job_clusters": [
        {"job_cluster_key": "main",
         "new_cluster": {"node_type_id": "i3.xlarge",
                         "autoscale": {"min_workers": 1, "max_workers": 4}}}
    ],
    "tasks": [{"task_key": "load", "job_cluster_key": "main"}],
}  # fmt: skip


def verified_cosmos_listener(workdir: Path) -> dict[str, Any]:
    """The ``listen`` block of a Cosmos resource served at :data:`COSMOS_HOST`, after
    re-issuing ``workdir``'s development TLS (``lockgate init``'s ``tls/``) with that address
    in the certificate. Run it before anything copies ``tls/ca.pem`` (a new CA is made).

    Where that address is not configured (macOS has only 127.0.0.1 on its loopback by
    default) the listener falls back to 127.0.0.1: the demo still runs, with the SDK's
    warning."""
    host = COSMOS_HOST if _can_bind(COSMOS_HOST) else "127.0.0.1"
    tls = workdir / "tls"
    paths = write_dev_tls(tls, hosts=["localhost", "127.0.0.1", COSMOS_HOST])
    bundle, proxy_ca = tls / "worker-bundle.pem", tls / "proxy-ca.pem"
    if bundle.exists():  # init's worker bundle: keep it trusting the new CA
        write_trust_bundle(bundle, [paths["ca"], *([proxy_ca] if proxy_ca.exists() else [])])
    return {"host": host, "port": 0, "tls": {"cert": "tls/cert.pem", "key": "tls/key.pem"}}


def _can_bind(host: str) -> bool:
    with socket.socket() as s:
        try:
            s.bind((host, 0))
        except OSError:
            return False
    return True


def run_cql_as_superuser(node: CqlServer, text: str) -> None:
    """Run one statement on the node as its own superuser (setting up, not through Lockgate)."""
    role = node.store.authenticate(*CQL_ADMIN)
    if role is None:
        raise RuntimeError("the Cassandra stand-in refused its own superuser")
    session = Session(node, None, None)  # type: ignore[arg-type]  # no connection: a direct run
    session.run(parse(text)[0], Bound([]), None, role, (None, None))


class FiveSystemsStack(LocalStack):
    """The local stack with a resource, a stand-in and a policy for each seed system."""

    def __init__(self, workdir: Path) -> None:
        super().__init__(workdir, tls=True)
        self.loops = LoopThread()
        self._closers: list[Callable[[], Awaitable[Any]]] = []
        self._credentials: dict[str, str] = {}
        try:
            doc = yaml.safe_load(Path(self.config_path).read_text(encoding="utf-8"))
            self._add_cosmos(doc)
            self._add_adf(doc)
            self._add_cassandra(doc)
            self._add_databricks(doc)
            Path(self.config_path).write_text(
                yaml.safe_dump(doc, sort_keys=False), encoding="utf-8"
            )
        except BaseException:
            self._stop_standins()
            raise

    # -- one method per system ----------------------------------------------------------------
    def _add_cosmos(self, doc: dict[str, Any]) -> None:
        self.cosmos: CosmosFake = self.loops.call(start_cosmos())
        self._closers.append(self.cosmos.close)
        self.cosmos.public_url = "https://127.0.0.1:9/"  # a client skipping the gateway fails
        self.cosmos.store.create_database({"id": "sales"})
        pk = {"paths": ["/region"], "kind": "Hash"}
        self.cosmos.store.create_container("sales", {"id": "orders", "partitionKey": pk})
        doc["resources"].append(
            {"name": "orders-cosmos", "kind": "http", "upstream": self.cosmos.url.rstrip("/"),
             "credential": "orders-cosmos-key", "conn_id": "azure_cosmos_default",
             "profile": "cosmos", "listen": verified_cosmos_listener(self.workdir),
             "cosmos": {"database": "sales", "container": "orders", "partition_key": "eu"}}
        )  # fmt: skip
        doc["credentials"].append({"name": "orders-cosmos-key", "type": "static"})
        self._credentials["orders-cosmos-key"] = self.cosmos.keys[0]
        self._policy("cosmos.yaml")

    def _add_adf(self, doc: dict[str, Any]) -> None:
        self.entra = FakeEntra(client_secrets={ENTRA_CLIENT: {"entra-demo-secret"}})
        self._serve(start_entra(self.entra))  # plain HTTP: only the gateway calls it
        upstream_tls, upstream_ca = server_tls(self.workdir / "adf-tls")
        self.adf = FakeAdf(
            self.entra.verify, factories={"adf-prod": {"load_orders", "drop_everything"}},
            queued_polls=1, running_polls=1,
        )  # fmt: skip
        self._serve(start_adf(self.adf, 0, upstream_tls))
        proxy_ca = write_dev_ca(self.workdir / "tls")
        # Workers trust the gateway's CA and the proxy's interception CA, one bundle.
        assert self.ca_file is not None
        self.bundle = self.workdir / "tls" / "worker-bundle.pem"
        self.bundle.write_bytes(self.ca_file.read_bytes() + proxy_ca["cert"].read_bytes())
        doc["listeners"]["forward_proxy"] = {
            "host": "127.0.0.1", "port": free_port(),
            "ca": {"cert": str(proxy_ca["cert"]), "key": str(proxy_ca["key"])},
        }  # fmt: skip
        doc["resources"].append(
            {"name": "arm", "kind": "http", "upstream": self.adf.base_url,
             "ca_file": str(upstream_ca), "credential": "entra-arm",
             "conn_id": "azure_data_factory_default", "profile": "arm",
             "intercept": ["management.azure.com"], "identity_header": None,
             "arm": {"subscription_id": "sub-1", "resource_group": "rg-data",
                     "factory": "adf-prod", "tenant_id": self.entra.tenant}}
        )  # fmt: skip
        doc["credentials"].append(
            {"name": "entra-arm", "type": "oauth2_client_credentials",
             "token_url": self.entra.token_url, "client_id": ENTRA_CLIENT,
             "scope": "https://management.azure.com/.default"}
        )  # fmt: skip
        self._credentials["entra-arm"] = "entra-demo-secret"
        self._delegate(doc, "adf_*")
        self._policy("adf.yaml")

    def _add_cassandra(self, doc: dict[str, Any]) -> None:
        password = secrets.token_urlsafe(24)
        users = {CQL_ADMIN[0]: CQL_ADMIN[1], "lockgate": password}
        self.cql_node: CqlServer = self.loops.call(
            start_cql_server(users=users, superusers=tuple(users))
        )
        self._closers.append(self.cql_node.close)

        async def lay_schema() -> None:
            for text in CQL_SCHEMA:
                run_cql_as_superuser(self.cql_node, text)

        self.loops.call(lay_schema())
        doc["listeners"]["cql"] = {
            "host": "127.0.0.1", "port": 0, "tls": {"cert": "tls/cert.pem", "key": "tls/key.pem"}
        }  # fmt: skip
        doc["resources"].append(
            {"name": "sales-cassandra", "kind": "cql",
             "contact_points": [f"127.0.0.1:{self.cql_node.port}"], "username": "lockgate",
             "credential": "sales-cassandra-pw", "conn_id": "sales_cassandra",
             "keyspace": "sales", "connect_timeout": 2}
        )  # fmt: skip
        doc["credentials"].append({"name": "sales-cassandra-pw", "type": "static"})
        self._credentials["sales-cassandra-pw"] = password
        self._delegate(doc, "sales_*")
        self._policy("sales.yaml")

    def _add_databricks(self, doc: dict[str, Any]) -> None:
        sp_secret = secrets.token_urlsafe(24)
        self.databricks = FakeDatabricks({sp_secret}, pending_polls=1, running_polls=1)
        self.databricks.add_job(101, DATABRICKS_JOB_101)
        self.databricks.add_job(404, {"name": "other", "tasks": []})
        runner, port = self.loops.call(start_databricks(self.databricks))
        self._closers.append(runner.cleanup)
        doc["resources"].append(
            {"name": "databricks", "kind": "http", "upstream": f"http://127.0.0.1:{port}",
             "credential": "databricks-sp", "conn_id": "databricks_default",
             "profile": "databricks",
             "listen": {"host": "127.0.0.1", "port": 0,
                        "tls": {"cert": "tls/cert.pem", "key": "tls/key.pem"}},
             "databricks": {"guardrails": [
                 {"principals": ["airflow:prod/databricks_*/*"], "max_workers": 8,
                  "allowed_node_types": ["i3.*", "m5.*"], "max_timeout_seconds": 7200}]}}
        )  # fmt: skip
        doc["credentials"].append(
            {"name": "databricks-sp", "type": "oauth2_client_credentials",
             "token_url": f"http://127.0.0.1:{port}/oidc/v1/token",
             "client_id": DEFAULT_CLIENT_ID, "scope": "all-apis",
             "token_auth": "client_secret_basic"}
        )  # fmt: skip
        self._credentials["databricks-sp"] = sp_secret
        self._delegate(doc, "databricks_*")
        self._policy("databricks.yaml")

    # -- shared steps -------------------------------------------------------------------------
    def _serve(self, start: Any) -> None:
        runner = self.loops.call(start)
        self._closers.append(runner.cleanup)

    def _policy(self, name: str) -> None:
        shutil.copy(POLICIES / name, self.workdir / "policies" / name)

    @staticmethod
    def _delegate(doc: dict[str, Any], pattern: str) -> None:
        for deployment in doc["deployments"]:
            deployment["dags"].append(pattern)

    # -- lifecycle ----------------------------------------------------------------------------
    def start(self) -> FiveSystemsStack:
        from lockgate.server import State

        store = State(self.config).credentials
        for name, value in self._credentials.items():
            store.set(name, value)
        super().start()
        return self

    def stop(self) -> None:
        try:
            super().stop()
        finally:
            self._stop_standins()

    def _stop_standins(self) -> None:
        async def close_all() -> None:
            await asyncio.gather(*(close() for close in self._closers), return_exceptions=True)

        try:
            self.loops.call(close_all(), timeout=10)
        finally:
            self._closers.clear()
            self.loops.stop()

    def airflow_env(self, airflow_home: Path, dags_folder: Path | None = None) -> dict[str, str]:
        env = (
            super().airflow_env(airflow_home)
            if dags_folder is None
            else (super().airflow_env(airflow_home, dags_folder))
        )
        env["REQUESTS_CA_BUNDLE"] = str(self.bundle)
        env["SSL_CERT_FILE"] = str(self.bundle)  # aiohttp in a deferred operator's trigger
        for name in list(env):  # the tasks find no Azure identity or proxy of their own
            if name.upper().startswith(("AZURE_", "IDENTITY_", "MSI_")) or name.lower() in (
                "https_proxy", "http_proxy", "all_proxy", "no_proxy"
            ):  # fmt: skip
                del env[name]
        return env
