"""Shared-state settings on a test server: a fresh database per call, owned by a fresh
role whose password sits in a file (the way a deployment mounts it), never in the DSN."""

from __future__ import annotations

import itertools
import os
import secrets
from pathlib import Path

from lockgate.config import PostgresStateSettings
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
