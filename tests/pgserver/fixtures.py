"""pytest fixtures for a real PostgreSQL server (registered for the whole suite by
``tests/conftest.py``).

``pg_server``: one server for the run (TLS on, SCRAM passwords, every statement logged).
``pg_server_factory``: private servers for one test (restarts, odd settings), stopped after it.
``pg_state``: settings for a fresh shared-state database (``state: {postgresql: ...}``).
Without the PostgreSQL binaries the tests using them skip -- unless ``CI`` is set, where a
missing PostgreSQL fails them (so CI cannot pass by skipping the engine's tests).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from tests.pgserver.server import PgServer, PostgresMissing, find_pg_bin, start_pg_server

if TYPE_CHECKING:
    from lockgate.config import PostgresStateSettings

PgServerFactory = Callable[..., PgServer]


def require_postgres() -> None:
    """Skip (fail under CI) when the PostgreSQL server binaries are missing."""
    try:
        find_pg_bin()
    except PostgresMissing as exc:
        if os.environ.get("CI"):
            pytest.fail(f"CI: {exc}")
        pytest.skip(str(exc))


def _start(workdir: Path, **kwargs: object) -> PgServer:
    require_postgres()
    try:
        return start_pg_server(workdir, **kwargs)  # type: ignore[arg-type]
    except PostgresMissing as exc:
        if os.environ.get("CI"):
            pytest.fail(f"CI: {exc}")
        pytest.skip(str(exc))


@pytest.fixture(scope="session")
def pg_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PgServer]:
    """One PostgreSQL server for the whole run."""
    server = _start(tmp_path_factory.mktemp("pg_server"))
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def pg_server_factory(tmp_path: Path) -> Iterator[PgServerFactory]:
    """Start private servers: ``pg_server_factory(tls=True, settings={...})``."""
    started: list[PgServer] = []

    def factory(*, tls: bool = True, settings: dict[str, str] | None = None) -> PgServer:
        server = _start(tmp_path / f"pg{len(started)}", tls=tls, settings=settings)
        started.append(server)
        return server

    try:
        yield factory
    finally:
        for server in started:
            server.stop()


SharedStateFactory = Callable[..., "PostgresStateSettings"]


@pytest.fixture
def pg_state(pg_server: PgServer, tmp_path: Path) -> SharedStateFactory:
    """``pg_state(**overrides)``: settings for a fresh shared-state database on the run's
    server (a role of its own, password in a file); see tests/pgserver/state.py."""
    from tests.pgserver.state import shared_state_settings

    def factory(**overrides: object) -> PostgresStateSettings:
        return shared_state_settings(pg_server, tmp_path / "pg-state", **overrides)

    return factory
