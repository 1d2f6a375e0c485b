"""A complete lockgate.yaml touching every section, and helpers that write and load one."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import pytest
import yaml

from lockgate.config import load_config
from lockgate.errors import ConfigError

SHA = hashlib.sha256(b"deployment secret").hexdigest()


def valid() -> dict[str, Any]:
    """A complete configuration touching every section."""
    return {
        "data_dir": "./state",
        "listeners": {
            "control": {
                "host": "127.0.0.1",
                "port": 9470,
                "tls": {"cert": "tls/cert.pem", "key": "tls/key.pem"},
            },
            "http": {"host": "127.0.0.1", "port": 9471},
        },
        "tokens": {"default_ttl": 600, "max_ttl": 1800, "leeway": 3},
        "deployments": [
            {
                "name": "prod",
                "proof": {"type": "client_secret", "secret_sha256": SHA},
                "dags": ["finance_*"],
                "airflow_api": {"url": "https://airflow.example", "token_env": "AF_TOKEN"},
            },
            {
                "name": "stage",
                "proof": {"type": "private_key_jwt", "public_key": "keys/stage.pem"},
                "dags": ["*"],
            },
        ],
        "oidc_issuers": [
            {
                "issuer": "https://login.example/tenant/v2.0",
                "audience": "api://lockgate",
                "deployment": "prod",
                "subjects": ["system:serviceaccount:airflow:*"],
            }
        ],
        "resources": [
            {
                "name": "orders-api",
                "kind": "http",
                "upstream": "https://orders.example/",
                "credential": "orders-key",
                "conn_id": "orders_api",
                "routes": [{"method": "GET", "path": "/orders/*", "action": "read"}],
                "ca_file": "ca/upstream.pem",
            },
            {
                "name": "adf",
                "kind": "http",
                "upstream": "https://management.azure.com",
                "credential": "adf-sp",
                "conn_id": "adf",
            },
        ],
        "credentials": [
            {"name": "orders-key", "type": "static"},
            {
                "name": "adf-sp",
                "type": "oauth2_client_credentials",
                "token_url": "https://login.example/token",
                "client_id": "abc",
                "scope": "https://management.azure.com/.default",
            },
        ],
        "policies": ["policies/*.yaml"],
        "audit": {"jsonl": "audit/audit.jsonl", "write_timeout": 2.0},
        "log_level": "debug",
    }


def write(tmp_path: Path, data: Any, name: str = "lockgate.yaml") -> Path:
    path = tmp_path / name
    path.write_text(yaml.safe_dump(data) if not isinstance(data, str) else data)
    return path


def error_of(tmp_path: Path, data: Any) -> tuple[Path, str]:
    path = write(tmp_path, data)
    with pytest.raises(ConfigError) as info:
        load_config(path)
    return path, str(info.value)
