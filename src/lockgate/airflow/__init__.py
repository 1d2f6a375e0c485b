"""Lockgate's Airflow provider.

Three pieces, each usable alone:

- :class:`lockgate.airflow.secrets.LockgateSecretsBackend` goes in Airflow's
  ``[workers] secrets_backend`` slot. Inside a task it answers ``get_connection(conn_id)`` for
  connections in the gateway's catalog with a Connection that points at the gateway and
  carries a fresh Lockgate token minted for that task try.
- :class:`lockgate.airflow.plugin.LockgatePlugin` (entry point ``airflow.plugins``) adds a
  listener that revokes the task try's tokens when it ends.
- ``get_provider_info`` (entry point ``apache_airflow_provider``) registers the
  ``lockgate`` connection type.

This module must import without Airflow installed, so the gateway never needs Airflow.
"""

from __future__ import annotations

from typing import Any

import lockgate


def get_provider_info() -> dict[str, Any]:
    return {
        "package-name": "lockgate",
        "name": "Lockgate",
        "description": "Per-task short-lived credentials for Airflow through the Lockgate gateway.",
        "versions": [lockgate.__version__],
        "connection-types": [
            {
                "connection-type": "lockgate",
                "hook-class-name": "lockgate.airflow.hooks.LockgateHook",
            }
        ],
        "secrets-backends": ["lockgate.airflow.secrets.LockgateSecretsBackend"],
    }
