"""Lockgate's Airflow provider.

Three pieces, each usable alone:

- :class:`lockgate.airflow.secrets.LockgateSecretsBackend` goes in Airflow's
  ``[workers] secrets_backend`` slot. Inside a task it answers ``get_connection(conn_id)`` for
  connections in the gateway's catalog with a Connection that points at the gateway and
  carries a fresh Lockgate token minted for that task try.
- :class:`lockgate.airflow.plugin.LockgatePlugin` (entry point ``airflow.plugins``) adds a
  listener that revokes the task try's tokens when it ends.
- ``get_provider_info`` (entry point ``apache_airflow_provider``) registers the
  ``lockgate`` connection type: a gateway's token service, as the secrets backend's kwargs
  name it. Its form is declared here (``conn-fields``, ``ui-field-behaviour``), the
  Airflow 3 way, so the UI renders it without importing the hook.

This module must import without Airflow installed, so the gateway never needs Airflow.
"""

from __future__ import annotations

import copy
from typing import Any

import lockgate

CONNECTION_TYPE = "lockgate"

# Extra fields of a ``lockgate`` connection, named as LockgateSecretsBackend's kwargs.
# The client secret itself is never a field: a connection is stored in Airflow's database,
# and a static secret there is what Lockgate exists to remove; the connection says where
# the secret is (a file or an environment variable on the worker).
CONN_FIELDS: dict[str, dict[str, Any]] = {
    "identity_token_file": {
        "label": "Workload identity token file",
        "description": "Path, on the worker, of a workload-identity token the platform "
        "writes and rotates (a Kubernetes projected service-account token): no secret "
        "stored. Read again at every mint.",
        "schema": {"type": ["string", "null"]},
    },
    "identity_token_env": {
        "label": "Workload identity token file variable",
        "description": "Name of the worker's environment variable holding the path of such "
        "a token file (Azure workload identity: AZURE_FEDERATED_TOKEN_FILE).",
        "schema": {"type": ["string", "null"]},
    },
    "spiffe_socket": {
        "label": "SPIFFE Workload API socket",
        "description": "A path or unix:// URI of the SPIFFE Workload API, or 'env' for "
        "$SPIFFE_ENDPOINT_SOCKET: the worker proves itself with a JWT-SVID.",
        "schema": {"type": ["string", "null"]},
    },
    "spiffe_audience": {
        "label": "SPIFFE audience",
        "description": "The audience of the JWT-SVID, as the gateway's oidc_issuers entry "
        "expects it.",
        "schema": {"type": ["string", "null"]},
    },
    "client_secret_file": {
        "label": "Client secret file",
        "description": "Path, on the worker, of the file holding the deployment's client secret.",
        "schema": {"type": ["string", "null"]},
    },
    "client_secret_env": {
        "label": "Client secret environment variable",
        "description": "Name of the worker's environment variable holding the deployment's "
        "client secret (read before the file when set).",
        "schema": {"type": ["string", "null"]},
    },
    "ca_file": {
        "label": "CA file",
        "description": "CA bundle that verifies the token service's TLS certificate; "
        "empty: the system trust store.",
        "schema": {"type": ["string", "null"]},
    },
    "timeout": {
        "label": "Timeout (seconds)",
        "description": "Timeout of one request to the token service; empty: 10 seconds.",
        "schema": {"type": ["number", "null"], "minimum": 0},
    },
}

# Standard fields: host carries the token service URL, login the deployment; the rest
# has no meaning for a token service (and password must stay empty, see above).
UI_FIELD_BEHAVIOUR: dict[str, Any] = {
    "hidden-fields": ["schema", "port", "password"],
    "relabeling": {"host": "Token service URL", "login": "Deployment"},
    "placeholders": {
        "host": "https://lockgate.internal:8470",
        "login": "prod",
        "identity_token_file": "/var/run/secrets/lockgate/token",
        "identity_token_env": "AZURE_FEDERATED_TOKEN_FILE",
        "spiffe_socket": "env",
        "spiffe_audience": "lockgate",
        "client_secret_file": "/var/run/secrets/lockgate/prod",
        "client_secret_env": "LOCKGATE_CLIENT_SECRET",
        "ca_file": "/etc/lockgate/ca.pem",
        "timeout": "10",
    },
}


def get_provider_info() -> dict[str, Any]:
    return {
        "package-name": "lockgate",
        "name": "Lockgate",
        "description": "Per-task short-lived credentials for Airflow through the Lockgate gateway.",
        "versions": [lockgate.__version__],
        "connection-types": [
            {
                "connection-type": CONNECTION_TYPE,
                "hook-class-name": "lockgate.airflow.hooks.LockgateHook",
                "hook-name": "Lockgate",
                # copies: Airflow keeps what it is given, callers must not edit ours
                "conn-fields": copy.deepcopy(CONN_FIELDS),
                "ui-field-behaviour": copy.deepcopy(UI_FIELD_BEHAVIOUR),
            }
        ],
        "secrets-backends": ["lockgate.airflow.secrets.LockgateSecretsBackend"],
    }
