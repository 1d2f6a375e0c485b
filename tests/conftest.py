"""Fixtures shared across test packages."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from lockgate.demo.stack import LocalStack
from tests._gateway_process import BearerUpstream


@pytest.fixture(scope="session")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalStack]:
    """A real local stack (demo upstream + gateway over HTTPS) on free 127.0.0.1 ports."""
    with LocalStack(tmp_path_factory.mktemp("lockgate")) as s:
        yield s


@pytest.fixture
def bearer_upstream() -> Iterator[BearerUpstream]:
    """An HTTP upstream that logs and answers only its own bearer secret (see
    :mod:`tests._gateway_process`)."""
    up = BearerUpstream()
    try:
        yield up
    finally:
        up.stop()


# For every test package: the real PostgreSQL server fixtures (pg_server, pg_server_factory)
# and real tracing recorded in memory (spans).
pytest_plugins = ["tests.pgserver.fixtures", "tests.tracing_helpers"]
