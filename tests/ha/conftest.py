"""Three replicas on the run's PostgreSQL server, shared by the tests of a module (a start
costs seconds); see :mod:`tests.ha.cluster`."""

from __future__ import annotations

import secrets
from collections.abc import Iterator

import pytest

from tests.ha.cluster import Cluster, add_pg_resource, build_cluster
from tests.pgserver import PgServer
from tests.pgserver.state import shared_state_settings


@pytest.fixture(scope="module")
def cluster(pg_server: PgServer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    """Replicas r1, r2, r3 (``cluster.replicas[0..2]``) started and ready, with the HTTP
    resource ``orders-api`` and the postgres resource ``orders-pg`` (a database of its own
    on ``pg_server``)."""
    tmp = tmp_path_factory.mktemp("ha")
    settings = shared_state_settings(pg_server, tmp / "pg-state", catch_up_interval=0.5)
    pg_resource = add_pg_resource(pg_server, secrets.token_hex(4))
    built = build_cluster(tmp / "cluster", settings, pg_resource=pg_resource)
    try:
        built.start_all()
        yield built
    finally:
        built.close()
