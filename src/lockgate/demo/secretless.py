"""The demo stack with no stored secret anywhere: a worker that proves itself with a
projected service-account token, and a gateway that federates to every upstream. What
``lockgate demo --secretless`` runs (:mod:`lockgate.demo.run_secretless`) and the end-to-end
tests build on.

:class:`SecretlessStack` is :class:`~lockgate.demo.systems.FiveSystemsStack` (Cosmos DB,
Data Factory behind Entra ID, Databricks, the App Service-style orders API; Cassandra left
out: a database password is a stored secret by nature) turned secretless:

* Workers: a stand-in Kubernetes service-account issuer (``demo/standins/kubernetes``) over
  HTTPS projects a token (namespace ``airflow``, service account ``airflow-worker``,
  audience ``lockgate``) into the worker's token volume; Airflow's secrets backend gets
  ``identity_token_file`` and nothing else. ``prod`` has no proof of its own: an
  ``oidc_issuers`` entry for the cluster (issuer, audience, subject, a namespace matcher)
  is the only way to speak for it; ``lockgate init``'s client secret file is removed.
* Gateway: every upstream credential is ``type: federated``. Entra ID (three app
  registrations: Cosmos DB data plane, ARM, the orders API), each with a federated
  identity credential trusting Lockgate's issuer URL (the HTTPS control plane, the stack's
  CA) for ``lockgate:credential:<name>``; Cosmos DB with ``upstream_auth: aad``, local
  (key) auth disabled and a data-plane role for the app; Databricks with a federation
  policy (audience :data:`DATABRICKS_AUDIENCE`, ES256 assertions). No client secret,
  certificate or account key is registered or stored for any of them: the stand-ins'
  demo secrets are withdrawn and kept only in :attr:`SecretlessStack.retired_secrets`,
  for the secret scan (:mod:`lockgate.demo.secret_scan`) to look for.

Run again in the same directory, it starts over: ``lockgate init`` rewrites the config and
the DAGs are copied anew (the caller clears an earlier run's state, see ``run_secretless``).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import TYPE_CHECKING, Any

import jwt
import yaml

from lockgate.demo.secret_scan import SecretScan, key_ids_of_files, key_ids_of_jwks
from lockgate.demo.stack import EXAMPLE_DAGS
from lockgate.demo.standins.databricks import DEFAULT_CLIENT_ID
from lockgate.demo.standins.databricks.federation import FederationPolicies
from lockgate.demo.standins.entra.thread import server_tls
from lockgate.demo.standins.kubernetes import FakeClusterIssuer
from lockgate.demo.standins.kubernetes import start as start_cluster_issuer
from lockgate.demo.systems import ENTRA_CLIENT, FiveSystemsStack

if TYPE_CHECKING:
    from lockgate.server import Gateway

NAMESPACE = "airflow"
SERVICE_ACCOUNT = "airflow-worker"
WORKER_AUDIENCE = "lockgate"
DATABRICKS_AUDIENCE = "lockgate-demo-account"  # the federation policy's audience
DATABRICKS_ALGORITHM = "ES256"
ORDERS_APP_ID_URI = "api://lockgate-orders"  # the orders API's Entra audience
# credential -> (Entra app registration, the resource it serves)
ENTRA_APPS = {
    "cosmos-federated": ("lockgate-cosmos-app", "orders-cosmos"),
    "arm-federated": (ENTRA_CLIENT, "arm"),
    "orders-federated": ("lockgate-orders-app", "orders-api"),
}
DATABRICKS_CREDENTIAL = "databricks-federated"
# Upstream access tokens live this long (seconds), so every run signs fresh assertions.
UPSTREAM_TOKEN_TTL = 5
# the example DAGs the secretless runs use (files in examples/dags)
DAG_FILES = ("finance_daily.py", "orders_load.py", "cosmos_orders.py", "adf_pipelines.py",
             "databricks_jobs.py")  # fmt: skip
ENV_DUMP_DAG_ID = "secretless_env_dump"
# Dumps what a task process holds (its environment) where the scan finds it: the worker's
# temp directory.
ENV_DUMP_DAG = f'''
import json, os, tempfile
from datetime import datetime

from airflow.sdk import DAG, task


@task
def dump_environment() -> None:
    path = os.path.join(tempfile.gettempdir(), "task-environment.json")
    with open(path, "w", encoding="utf-8") as fh:
        json.dump(dict(os.environ), fh)
    print("ENV-DUMPED", path)


with DAG("{ENV_DUMP_DAG_ID}", start_date=datetime(2025, 1, 1), schedule=None, catchup=False):
    dump_environment()
'''


class RecordedFederation(FederationPolicies):
    """Databricks' federation policies, keeping the header and claims of every subject
    token it accepted (never the token), as the Entra stand-in does for its assertions."""

    def __init__(self, policies: FederationPolicies) -> None:
        super().__init__(policies.account_id, policies.keys, leeway=policies.leeway)
        self.accepted: list[tuple[dict[str, Any], dict[str, Any]]] = []

    async def exchange(
        self, form: Any, principals: set[str], now: float | None = None
    ) -> tuple[str, dict[str, Any]]:
        principal, claims = await super().exchange(form, principals, now)
        self.accepted.append((jwt.get_unverified_header(str(form["subject_token"])), claims))
        return principal, claims


class SecretlessStack(FiveSystemsStack):
    """The five-systems stack minus Cassandra, with workload identity and federation only."""

    def __init__(self, workdir: Path) -> None:
        super().__init__(workdir)
        self.retired_secrets: dict[str, str] = {}  # label -> a value no one may hold now
        self.worker = self.workdir / "worker"  # the worker pod's own files
        self.token_file = self.worker / "var/run/secrets/lockgate/token"
        self.worker_tmp = self.worker / "tmp"
        self.worker_home = self.worker / "home"  # where SDKs would cache tokens (~/.azure)
        self.worker_tmp.mkdir(parents=True, exist_ok=True)
        self.worker_home.mkdir(exist_ok=True)
        self.dags = self.workdir / "dags"
        self.dags.mkdir(exist_ok=True)
        for name in DAG_FILES:
            shutil.copy(EXAMPLE_DAGS / name, self.dags / name)
        (self.dags / f"{ENV_DUMP_DAG_ID}.py").write_text(ENV_DUMP_DAG, encoding="utf-8")
        try:
            doc = yaml.safe_load(Path(self.config_path).read_text(encoding="utf-8"))
            self._trust_the_cluster(doc)
            self._federate(doc)
            Path(self.config_path).write_text(
                yaml.safe_dump(doc, sort_keys=False), encoding="utf-8"
            )
        except BaseException:
            self._stop_standins()
            raise
        self.project_token()

    @property
    def running_gateway(self) -> Gateway:
        if self.gateway is None:
            raise RuntimeError("the secretless stack is not started")
        return self.gateway

    # -- workers: the cluster's tokens are the only proof of "prod" ----------------------------
    def _trust_the_cluster(self, doc: dict[str, Any]) -> None:
        self.cluster = FakeClusterIssuer(algorithm="RS256")
        cluster_tls, cluster_ca = server_tls(self.workdir / "cluster-tls")
        self._serve(start_cluster_issuer(self.cluster, 0, cluster_tls))
        deployment = doc["deployments"][0]
        deployment.pop("proof")
        self.retired_secrets["deployment client secret"] = self.deployment_secret
        self.written["deployment_secret"].unlink()  # the base env names it; we drop that
        doc["oidc_issuers"] = [
            {"issuer": self.cluster.issuer, "ca_file": str(cluster_ca),
             "audience": WORKER_AUDIENCE, "deployment": deployment["name"],
             # the service account in any namespace; the namespace matcher narrows it
             "subjects": [f"system:serviceaccount:*:{SERVICE_ACCOUNT}"],
             "claims": {"kubernetes.io.namespace": NAMESPACE}}
        ]  # fmt: skip

    def project_token(self, namespace: str = NAMESPACE, ttl: int = 3600) -> str:
        """Write the worker's projected service-account token (as the kubelet does)."""
        return self.cluster.project(
            self.token_file, namespace=namespace, service_account=SERVICE_ACCOUNT,
            audience=WORKER_AUDIENCE, ttl=ttl,
        )  # fmt: skip

    # -- gateway: federated credentials only ---------------------------------------------------
    def _federate(self, doc: dict[str, Any]) -> None:
        issuer = self.config.issuer_url
        if self.ca_file is None:  # FiveSystemsStack always serves TLS; the clouds demand it
            raise RuntimeError("the secretless stack needs the control plane on https")
        doc["signing"] = {"algorithms": ["EdDSA", "RS256", "ES256"], "publish_ahead": 2}
        for cred, (app, _) in ENTRA_APPS.items():
            self.entra.add_federated_credential(
                app, issuer=issuer, subject=f"lockgate:credential:{cred}", name="lockgate"
            )
        self._withdraw_demo_secrets()
        self.entra.token_ttl = self.databricks.token_ttl = UPSTREAM_TOKEN_TTL
        self.entra.trust_issuer_ca(self.ca_file)  # Lockgate's discovery is https, our CA
        self.databricks.federation = self.databricks_federation = RecordedFederation(
            self.databricks.federation
        )
        self.databricks.trust_issuer_ca(self.ca_file)
        self.databricks.add_federation_policy(  # a service principal federation policy
            issuer=issuer, audiences=[DATABRICKS_AUDIENCE],
            subject=f"lockgate:credential:{DATABRICKS_CREDENTIAL}",
            service_principal=DEFAULT_CLIENT_ID,
        )  # fmt: skip
        cosmos_app = ENTRA_APPS["cosmos-federated"][0]
        self.cosmos.trust_entra(self.entra, disable_local_auth=True)
        self.cosmos.assign_role(self.entra.principal_id(cosmos_app), "Data Contributor")
        self.upstream.trust_entra(  # App Service authentication: this app's tokens only
            self.entra, audience=ORDERS_APP_ID_URI,
            allowed_applications=(ENTRA_APPS["orders-federated"][0],),
        )  # fmt: skip

        credentials = []
        for cred, (app, resource) in ENTRA_APPS.items():
            credentials.append(
                {"name": cred, "type": "federated", "provider": "entra",
                 "token_url": self.entra.token_url, "client_id": app,
                 "scope": self._use_credential(doc, resource, cred), "refresh_before": 1}
            )  # fmt: skip
        self._use_credential(doc, "databricks", DATABRICKS_CREDENTIAL)
        credentials.append(
            {"name": DATABRICKS_CREDENTIAL, "type": "federated", "provider": "databricks",
             "token_url": f"{self.databricks.base_url}/oidc/v1/token",
             "client_id": DEFAULT_CLIENT_ID, "audience": DATABRICKS_AUDIENCE,
             "algorithm": DATABRICKS_ALGORITHM, "refresh_before": 1}
        )  # fmt: skip
        doc["credentials"] = credentials

    def _use_credential(self, doc: dict[str, Any], name: str, credential: str) -> str:
        """Serve resource ``name`` with ``credential``; return the Entra scope it needs."""
        resource = next(r for r in doc["resources"] if r["name"] == name)
        resource["credential"] = credential
        if resource.get("profile") == "cosmos":
            resource["cosmos"]["upstream_auth"] = "aad"  # Entra tokens, not the account key
            return f"https://{self.cosmos.account_id}.documents.azure.com/.default"
        if resource.get("profile") == "arm":
            return "https://management.azure.com/.default"
        return f"{ORDERS_APP_ID_URI}/.default"

    def _withdraw_demo_secrets(self) -> None:
        """The stand-ins forget the secrets FiveSystemsStack gave them (kept for the scan)."""
        for app, known in self.entra.client_secrets.items():
            for i, value in enumerate(sorted(known)):
                self.retired_secrets[f"Entra client secret {app} #{i}"] = value
        self.entra.client_secrets.clear()
        for i, value in enumerate(sorted(self.databricks.client_secrets)):
            self.retired_secrets[f"Databricks client secret #{i}"] = value
        self.databricks.client_secrets.clear()
        for i, key in enumerate(self.cosmos.keys):
            self.retired_secrets[f"Cosmos DB account key #{i}"] = key
        for name, value in self._credentials.items():
            self.retired_secrets[f"credential {name}"] = value
        self._credentials.clear()
        self.retired_secrets["orders API bearer secret"] = self.upstream_secret
        self.upstream.accepted.clear()

    # -- what happened -------------------------------------------------------------------------
    def assertions_seen(self) -> list[tuple[str, dict[str, Any], dict[str, Any]]]:
        """(cloud, header, claims) of every assertion the stand-ins accepted, oldest first:
        ``entra`` (client assertions) and ``databricks`` (subject tokens), never the JWT."""
        seen = [
            ("entra", r.assertion_header, r.assertion_claims)
            for r in self.entra.token_requests
            if r.status == 200 and r.assertion_header is not None
        ]
        seen += [("databricks", h, c) for h, c in self.databricks_federation.accepted]
        return [(cloud, dict(h or {}), dict(c or {})) for cloud, h, c in seen]

    def secret_scan(self, *, gateway: bool) -> SecretScan:
        """The scan's rules: the secrets the stand-ins held before they went secretless and
        the upstream access tokens they issued may be nowhere. The gateway may hold its own
        signing and TLS keys (``gateway=True``); a worker holds no private key at all."""
        known = dict(self.retired_secrets)
        for i, token in enumerate(self.databricks.tokens):
            known[f"Databricks access token #{i}"] = token
        if not gateway:
            return SecretScan(known=known)
        own = key_ids_of_jwks(self.running_gateway.state.keys.jwks())
        tls = self.workdir / "tls"
        own |= key_ids_of_files(sorted(p for p in tls.iterdir() if p.is_file()))
        return SecretScan(known=known, own_keys=own)

    def _add_cassandra(self, doc: dict[str, Any]) -> None:
        """Left out: the node's password would be a stored secret."""

    def set_credential(self, value: str, *, rotate: bool = False) -> int:
        """Nothing to store: the orders API's credential is federated (the base stack would
        store its bearer secret at start)."""
        return 0

    # -- Airflow -------------------------------------------------------------------------------
    def airflow_env(self, airflow_home: Path, dags_folder: Path | None = None) -> dict[str, str]:
        env = super().airflow_env(airflow_home, dags_folder or self.dags)
        kwargs = json.loads(env["AIRFLOW__WORKERS__SECRETS_BACKEND_KWARGS"])
        del kwargs["client_secret_file"]
        kwargs["identity_token_file"] = str(self.token_file)
        env["AIRFLOW__WORKERS__SECRETS_BACKEND_KWARGS"] = json.dumps(kwargs)
        # the worker's own home and temp files, where the scan looks
        env["HOME"], env["TMPDIR"] = str(self.worker_home), str(self.worker_tmp)
        for name in list(env):
            if name.startswith("LOCKGATE_"):  # nothing of Lockgate's but the backend kwargs
                del env[name]
        return env
