"""A Databricks workspace (jobs, runs, clusters, OAuth M2M) — see :mod:`.app`.

A stand-in for demos and tests, written from the public API docs: not the service.
"""

from lockgate.demo.standins.databricks.app import DEFAULT_CLIENT_ID, FakeDatabricks, start

__all__ = ["DEFAULT_CLIENT_ID", "FakeDatabricks", "start"]
