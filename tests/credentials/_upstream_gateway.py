"""A gateway in front of one HTTP API whose key comes from a configured credential (held in a
vault, or an OAuth2 token): the configuration the credential gateway tests start it with, and
the Vault AppRole login they give it."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from lockgate.config import LockgateConfig, parse_config
from lockgate.demo.standins.vault import FakeVault

#: Airflow's prod ETL DAGs may read the API.
READ_POLICY = """\
rules:
  - id: etl-reads-api
    effect: allow
    principals: ["airflow:prod/etl_*/*"]
    actions: [read]
    resources: [orders-api]
"""
#: The Vault policy letting a login read the orders secrets (KV v2 under ``secret``).
ORDERS_READ = {"orders": [("secret/data/orders/*", {"read"})]}


def gateway_config(
    tmp_path: Path,
    upstream: str,
    credentials: list[dict[str, Any]],
    *,
    resource: str = "orders-api",
    credential: str = "orders-key",
    policy: str = READ_POLICY,
    **settings: Any,
) -> LockgateConfig:
    """One deployment (``prod``, DAGs ``etl_*``), one HTTP ``resource`` forwarding to
    ``upstream`` with ``credential`` (one of ``credentials``), ``policy`` written under
    ``tmp_path``; control and HTTP listeners on free ports. ``settings`` add top-level keys."""
    (tmp_path / "policies").mkdir()
    (tmp_path / "policies" / "p.yaml").write_text(policy)
    return parse_config(
        {
            "data_dir": str(tmp_path / "data"),
            "listeners": {"control": {"port": 0}, "http": {"port": 0}},
            "deployments": [
                {"name": "prod", "proof": {"type": "client_secret", "secret_sha256": "0" * 64},
                 "dags": ["etl_*"]}
            ],
            "resources": [
                {"name": resource, "kind": "http", "upstream": upstream, "credential": credential}
            ],
            "credentials": credentials,
            "policies": [str(tmp_path / "policies" / "*.yaml")],
            **settings,
        },
        tmp_path / "lockgate.yaml",
    )  # fmt: skip


def vault_approle_credential(vault: FakeVault, tmp_path: Path, **fields: Any) -> dict[str, Any]:
    """The ``orders-key`` credential: ``orders/api`` read from ``vault`` after an AppRole login
    (role ``gateway``, Vault policy ``orders``; its secret id in a file under ``tmp_path``).
    ``fields`` add to it (``ttl``, ``overlap``)."""
    role_id, secret_id = vault.add_approle("gateway", policies=["orders"])
    (tmp_path / "secret-id").write_text(secret_id)
    return {
        "name": "orders-key", "type": "vault_kv", "address": vault.base_url,
        "path": "orders/api", **fields,
        "auth": {"method": "approle", "role_id": role_id,
                 "secret_id_file": str(tmp_path / "secret-id")},
    }  # fmt: skip
