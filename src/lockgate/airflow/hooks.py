"""``LockgateHook``: the ``lockgate`` connection type, a gateway's token service.

A ``lockgate`` connection holds what ``LockgateSecretsBackend`` takes as kwargs: host is
the token service URL, login the deployment, and the extras (declared with their form in
``lockgate.airflow.get_provider_info``) say where the client secret and the CA are. The
stock hooks do the real work on the connections the backend hands out; this hook lets a
DAG or a check reach the token service with settings kept in Airflow.
"""

from __future__ import annotations

from typing import Any

from airflow.sdk import Connection
from airflow.sdk.bases.hook import BaseHook

from lockgate.airflow import CONN_FIELDS, CONNECTION_TYPE
from lockgate.airflow._client import TokenServiceClient


class LockgateHook(BaseHook):
    conn_name_attr = "lockgate_conn_id"
    default_conn_name = "lockgate_default"
    conn_type = CONNECTION_TYPE
    hook_name = "Lockgate"

    def __init__(self, lockgate_conn_id: str = default_conn_name, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.lockgate_conn_id = lockgate_conn_id

    def get_conn(self) -> Connection:
        return self.get_connection(self.lockgate_conn_id)

    def token_service_kwargs(self) -> dict[str, Any]:
        """The connection as ``LockgateSecretsBackend`` kwargs (empty fields left out)."""
        return token_service_kwargs(self.get_conn())

    def get_client(self) -> TokenServiceClient:
        """A token service client configured from the connection."""
        kwargs = self.token_service_kwargs()
        return TokenServiceClient(kwargs.pop("url"), kwargs.pop("deployment"), **kwargs)


def token_service_kwargs(conn: Connection) -> dict[str, Any]:
    """Read a ``lockgate`` connection: host → url, login → deployment, the declared extras."""
    if not conn.host or not conn.login:
        raise ValueError(
            f"Lockgate connection {conn.conn_id!r} needs the token service URL (host) "
            "and the deployment (login)"
        )
    extra = conn.extra_dejson
    kwargs: dict[str, Any] = {"url": conn.host, "deployment": conn.login}
    for name in CONN_FIELDS:
        # the form may store a cleared field as "" or null: both mean "not set"
        value = extra.get(name)
        if value is None or value == "":
            continue
        kwargs[name] = float(value) if name == "timeout" else str(value)
    return kwargs
