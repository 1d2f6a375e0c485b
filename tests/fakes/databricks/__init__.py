"""A test Databricks workspace (jobs, runs, clusters, OAuth M2M) — see :mod:`.app`."""

from tests.fakes.databricks.app import DEFAULT_CLIENT_ID, FakeDatabricks, start

__all__ = ["DEFAULT_CLIENT_ID", "FakeDatabricks", "start"]
