"""``state:``: where the gateway's durable state lives.

``state: sqlite`` (the default) keeps today's files under ``data_dir``; one machine.
``state: {postgresql: {...}}`` shares revocations, signing keys, credentials, run registries
and the audit trail between any number of replicas through one PostgreSQL database::

    state:
      postgresql:
        dsn: postgresql://lockgate@db:5432/lockgate?sslmode=verify-full
        password_file: /run/secrets/lockgate-db-password   # or password_env: VAR
        max_staleness: 30

The password never sits in the YAML: a DSN that carries a libpq secret (``password``, the
client key's ``sslpassword``, ``oauth_client_secret``) is refused, naming the parameter and
never its value. Paths to secrets (``passfile``, ``sslkey``) are fine.
"""

from __future__ import annotations

import os
import socket
from pathlib import Path
from typing import Literal

from psycopg.conninfo import conninfo_to_dict
from pydantic import Field, model_validator

from lockgate.config._base import NAME_RE, Section

Backend = Literal["sqlite", "postgresql"]
# libpq's connection parameters that carry a secret themselves (flagged "*" in libpq's
# PQconninfoOptions); a DSN is logged, shown and committed, so none of them may be in it.
_DSN_SECRETS = ("password", "sslpassword", "oauth_client_secret")


class PostgresStateSettings(Section):
    """How to reach the shared PostgreSQL database, and how long to trust memory without it."""

    dsn: str = Field(description="libpq URI or key=value string, without a password")
    password_file: Path | None = None  # re-read at every new connection (rotation)
    password_env: str | None = None
    pool_size: int = Field(default=8, ge=1, le=1000)
    connect_timeout: float = Field(default=5, gt=0, description="seconds")
    statement_timeout: float = Field(default=5, gt=0, description="seconds")
    catch_up_interval: float = Field(
        default=1, gt=0, description="seconds between re-reads of the change versions"
    )
    max_staleness: float = Field(
        default=30,
        gt=0,
        description="seconds without contact after which requests are refused",
    )
    lease_grace: float = Field(
        default=30,
        gt=0,
        description="seconds without a heartbeat after which another replica drops a "
        "replica's dynamic database roles (more than the clock skew between replicas)",
    )
    replica_id: str | None = Field(default=None, pattern=NAME_RE)
    migrate_on_start: bool = True

    @model_validator(mode="before")
    @classmethod
    def _no_password_in_dsn(cls, value: object) -> object:
        # Checked on the whole section so a refused DSN is never echoed back in the error
        # (it may hold the very password it is refused for).
        dsn = value.get("dsn") if isinstance(value, dict) else None
        if not isinstance(dsn, str):
            return value
        try:
            params = conninfo_to_dict(dsn)
        except Exception:  # psycopg.ProgrammingError, whose text may echo the DSN
            raise ValueError(
                "dsn: not a valid libpq connection string (postgresql://user@host:port/db?...)"
            ) from None
        secrets = [name for name in _DSN_SECRETS if params.get(name)]
        if "password" in secrets:
            raise ValueError(
                "dsn: the DSN carries a password; remove it and use password_file or password_env"
            )
        if secrets:
            raise ValueError(
                f"dsn: the DSN carries {', '.join(secrets)}, a secret; remove it (a client "
                "key's passphrase cannot be configured here: use an unencrypted key file "
                "readable by the gateway only)"
            )
        return value

    @model_validator(mode="after")
    def _one_password_source(self) -> PostgresStateSettings:
        if self.password_file is not None and self.password_env is not None:
            raise ValueError("state.postgresql: give password_file or password_env, not both")
        if self.catch_up_interval >= self.max_staleness:
            raise ValueError(
                "state.postgresql.catch_up_interval: must be shorter than max_staleness "
                f"({self.max_staleness:g} s), or every replica would be stale between polls"
            )
        return self

    def resolved_replica_id(self) -> str:
        """``replica_id``, else ``LOCKGATE_REPLICA_ID``, else the host name."""
        return self.replica_id or os.environ.get("LOCKGATE_REPLICA_ID") or socket.gethostname()


class StateSettings(Section):
    """``state: sqlite`` or ``state: {postgresql: {...}}``."""

    backend: Backend = "sqlite"
    postgresql: PostgresStateSettings | None = None

    @model_validator(mode="before")
    @classmethod
    def _shorthand(cls, value: object) -> object:
        if value == "sqlite" or value is None:
            return {"backend": "sqlite"}
        if value == "postgresql":
            raise ValueError(
                "'postgresql' needs its settings: state: {postgresql: {dsn: postgresql://...}}"
            )
        if isinstance(value, str):
            raise ValueError(
                f"expected 'sqlite' or a mapping {{postgresql: {{dsn: ...}}}}, got {value!r}"
            )
        if isinstance(value, dict) and "backend" not in value:
            value = dict(value)
            if value.get("sqlite", "absent") in ({}, None):
                del value["sqlite"]
            value["backend"] = "postgresql" if "postgresql" in value else "sqlite"
        return value

    @model_validator(mode="after")
    def _settings_match_backend(self) -> StateSettings:
        if self.backend == "postgresql" and self.postgresql is None:
            raise ValueError("state.postgresql: missing (the dsn at least)")
        if self.backend == "sqlite" and self.postgresql is not None:
            raise ValueError("state.backend: 'sqlite' cannot take postgresql settings")
        return self

    @property
    def shared(self) -> bool:
        return self.backend == "postgresql"


__all__ = ["Backend", "PostgresStateSettings", "StateSettings"]
