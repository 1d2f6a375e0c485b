"""A Databricks workspace (jobs, runs, clusters, OAuth M2M, token federation) — see :mod:`.app`.

A stand-in for demos and tests, written from the public API docs: not the service.
"""

from lockgate.demo.standins.databricks.app import (
    DEFAULT_ACCOUNT_ID,
    DEFAULT_CLIENT_ID,
    FakeDatabricks,
    start,
)
from lockgate.demo.standins.databricks.federation import FederationPolicy

__all__ = ["DEFAULT_ACCOUNT_ID", "DEFAULT_CLIENT_ID", "FakeDatabricks", "FederationPolicy", "start"]
