"""Shared-state settings on a test server: a fresh database per call, owned by a fresh
role whose password sits in a file (the way a deployment mounts it), never in the DSN."""

from __future__ import annotations

import base64
import itertools
import os
import secrets
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from lockgate.config import PostgresStateSettings, parse_config
from lockgate.state import State
from tests.pgserver.server import PgServer

_names = itertools.count(1)


def shared_state_settings(
    server: PgServer, workdir: Path, **overrides: object
) -> PostgresStateSettings:
    """A new database ``lockgate_state_<n>`` and role on ``server``; settings that reach it
    over TLS (verify-full) with the password in ``workdir``/<role>.password."""
    n = f"{os.getpid()}_{next(_names)}"
    role, dbname = f"lockgate_{n}", f"lockgate_state_{n}"
    password = secrets.token_urlsafe(18)
    server.create_user(role, password)
    server.psql(f'CREATE DATABASE "{dbname}" OWNER "{role}"')
    workdir.mkdir(parents=True, exist_ok=True)
    password_file = workdir / f"{role}.password"
    password_file.write_text(password + "\n")
    password_file.chmod(0o600)
    fields: dict[str, object] = {
        "dsn": server.dsn(user=role, password=None, dbname=dbname),
        "password_file": password_file,
        "connect_timeout": 2,
        "statement_timeout": 5,
        "catch_up_interval": 0.5,
    }
    fields.update(overrides)
    return PostgresStateSettings.model_validate(fields)


@contextmanager
def replica_states(
    settings: PostgresStateSettings,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    config_for: Callable[[Path], dict[str, Any]] = lambda data: {},
    replicas: tuple[str, ...] = ("replica-1", "replica-2"),
) -> Iterator[list[State]]:
    """The States of several replicas on one PostgreSQL database: each its own data
    directory (``tmp_path``/<replica>) and replica id, one master key. ``config_for(data)``
    gives the rest of a replica's configuration (its ``state`` is set here)."""
    monkeypatch.setenv("LOCKGATE_MASTER_KEY", base64.b64encode(b"k" * 32).decode())
    shared = settings.model_dump(mode="json", exclude_none=True)
    states: list[State] = []
    try:
        for replica in replicas:
            data = tmp_path / replica
            data.mkdir(parents=True, exist_ok=True)
            raw = {"data_dir": str(data), **config_for(data)}
            raw["state"] = {"postgresql": {**shared, "replica_id": replica}}
            states.append(State(parse_config(raw, tmp_path / "lockgate.yaml")))
        yield states
    finally:
        for state in states:
            state.close()
