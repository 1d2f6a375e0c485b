"""``LockgateHook``: the connection type shown in Airflow's UI for Lockgate-served connections."""

from __future__ import annotations

from typing import Any

from airflow.sdk import Connection
from airflow.sdk.bases.hook import BaseHook


class LockgateHook(BaseHook):
    conn_name_attr = "lockgate_conn_id"
    default_conn_name = "lockgate_default"
    conn_type = "lockgate"
    hook_name = "Lockgate"

    def __init__(self, lockgate_conn_id: str = default_conn_name, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.lockgate_conn_id = lockgate_conn_id

    def get_conn(self) -> Connection:
        return self.get_connection(self.lockgate_conn_id)
