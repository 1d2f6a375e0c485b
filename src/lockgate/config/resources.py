"""``resources:``: the upstreams the engines serve, one kind per wire protocol.

An ``http`` resource may carry a ``profile`` (Databricks, ARM, Cosmos DB) with settings of
its own; a ``cql`` resource is a Cassandra cluster or Cosmos DB for Apache Cassandra.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Annotated, Literal

from pydantic import Field, field_validator, model_validator

from lockgate.config._base import NAME_RE, Section
from lockgate.config.listeners import ListenerConfig


class UpstreamAuth(Section):
    """How the upstream credential goes onto the request."""

    header: str = "Authorization"
    scheme: str | None = "Bearer"  # None: the raw secret is the header value


class Route(Section):
    method: str = "*"
    path: str  # glob on the normalised path, e.g. /orders/*
    action: Literal["read", "write", "admin", "run"]
    object: str | None = None  # default: the normalised path


class RetrySettings(Section):
    max_attempts: int = Field(default=4, ge=1, le=20)
    base_delay: float = Field(default=0.1, gt=0)
    max_delay: float = Field(default=5.0, gt=0)
    deadline: float = Field(default=30.0, gt=0, description="seconds for all attempts together")


class DatabricksGuardrail(Section):
    """Cluster-cost limits for the principals matching ``principals`` (first match wins).

    Checked on the cluster specs a request would start: the submitted spec for
    ``jobs/runs/submit``, the job's own spec (``jobs/get``) for ``jobs/run-now``.
    """

    principals: list[str] = Field(min_length=1, description="globs on airflow:<dep>/<dag>/<task>")
    max_workers: int | None = Field(
        default=None, ge=0, description="num_workers / autoscale max cap"
    )
    allowed_node_types: list[str] | None = None  # globs on node_type_id / driver_node_type_id
    require_instance_pool: bool = False
    require_policy_id: bool = False
    max_timeout_seconds: int | None = Field(default=None, gt=0)
    allow_existing_clusters: bool = True


class DatabricksSettings(Section):
    """Settings of ``profile: databricks`` (see ``docs/databricks.md``)."""

    guardrails: list[DatabricksGuardrail] = []
    max_body_bytes: int = Field(default=1024 * 1024, ge=1024, le=16 * 1024 * 1024)
    job_cache_seconds: float = Field(default=30.0, ge=0)
    poll_token_ttl: int = Field(default=3600, gt=0, le=86400, description="triggerer poll tokens")
    run_read_max_age: int = Field(
        default=7 * 86400, gt=0, description="poll tokens read runs this young"
    )


class ArmSettings(Section):
    """Settings of ``profile: arm`` (Azure Data Factory over ARM; docs/azure-data-factory.md).

    The subscription (and resource group, when set) bound what the resource serves: requests
    for any other are refused. They also fill the ``azure_data_factory`` connection.
    """

    subscription_id: str = Field(pattern=r"^[A-Za-z0-9-]{1,64}$")
    resource_group: str | None = None
    factory: str | None = None
    tenant_id: str | None = None
    max_body_bytes: int = Field(default=1024 * 1024, ge=1024, le=16 * 1024 * 1024)
    poll_token_ttl: int = Field(default=3600, gt=0, le=86400, description="triggerer poll tokens")


class CosmosSettings(Section):
    """Settings of ``profile: cosmos`` (Azure Cosmos DB for NoSQL; see ``docs/cosmos.md``).

    ``upstream_auth``: ``master_key`` re-signs every request with the account key stored in
    the resource's ``static`` credential (primary, then secondary after a rotation);
    ``aad`` sends the Entra ID token of an ``oauth2_client_credentials``, ``managed_identity``
    or ``federated`` credential (the last holds no secret at all).
    ``database``/``container``/``partition_key`` fill the Airflow connection's extras.
    """

    upstream_auth: Literal["master_key", "aad"] = "master_key"
    max_skew: int = Field(default=900, ge=30, le=3600, description="x-ms-date window, seconds")
    max_body_bytes: int = Field(default=4 * 1024 * 1024, ge=1024, le=64 * 1024 * 1024)
    timeout: float = Field(default=65.0, gt=0, description="seconds for one upstream exchange")
    database: str | None = None
    container: str | None = None
    partition_key: str | None = None


class HttpResource(Section):
    """An HTTP upstream served by the HTTP engine at ``/<name>/...``.

    With ``listen``, the resource is also served at the root of its own listener (clients
    such as the Databricks hook cannot put a path prefix in front of their API paths).
    ``profile`` adds upstream-specific classification, guardrails and audit detail.
    """

    name: str = Field(pattern=NAME_RE)
    kind: Literal["http"]
    upstream: str
    credential: str | None = None
    conn_id: str | None = None
    auth: UpstreamAuth = UpstreamAuth()
    routes: list[Route] = []
    retry: RetrySettings = RetrySettings()
    verify_tls: bool = True
    ca_file: Path | None = None
    identity_header: str | None = "X-Lockgate-Assertion"  # signed caller identity; None: off
    listen: ListenerConfig | None = None  # serve this resource alone at the root of a port
    profile: Literal["databricks", "arm", "cosmos"] | None = None
    databricks: DatabricksSettings = DatabricksSettings()
    cosmos: CosmosSettings = CosmosSettings()
    arm: ArmSettings | None = None  # required by profile: arm
    # Hosts (host or host:port, port 443 by default) the forward proxy serves as this
    # resource, e.g. ["management.azure.com"] for clients with a fixed ARM URL.
    intercept: list[str] = []

    @field_validator("intercept")
    @classmethod
    def _hosts(cls, hosts: list[str]) -> list[str]:
        out = []
        for h in hosts:
            if not re.match(r"^[A-Za-z0-9.-]{1,253}(:\d{1,5})?$", h):
                raise ValueError(f"expected host or host:port, got {h!r}")
            out.append(h.lower() if ":" in h else f"{h.lower()}:443")
        return out

    @model_validator(mode="after")
    def _profile_settings(self) -> HttpResource:
        if self.profile == "arm" and self.arm is None:
            raise ValueError("profile 'arm' needs an arm section (at least subscription_id)")
        return self

    @field_validator("upstream")
    @classmethod
    def _url(cls, v: str) -> str:
        if not re.match(r"^https?://[^/\s]+", v):
            raise ValueError("expected an http:// or https:// URL")
        return v.rstrip("/")


class CqlResource(Section):
    """A Cassandra cluster (or Cosmos DB for Apache Cassandra) served by the CQL engine.

    Clients connect to the ``cql`` listener with the resource name as the SASL PLAIN user
    and their Lockgate token as the password.
    """

    name: str = Field(pattern=NAME_RE)
    kind: Literal["cql"]
    contact_points: list[str] = Field(min_length=1, description="host:port, tried in order")
    username: str = Field(description="the gateway's own upstream login")
    credential: str = Field(description="credential holding the upstream password")
    conn_id: str | None = None
    keyspace: str | None = None
    tls: bool = False
    verify_tls: bool = True
    ca_file: Path | None = None
    max_frame_bytes: int = Field(16 * 1024 * 1024, ge=1024, le=256 * 1024 * 1024)
    handshake_timeout: float = Field(default=10.0, gt=0, description="seconds to finish auth")
    idle_timeout: float = Field(default=300.0, gt=0)
    connect_timeout: float = Field(default=5.0, gt=0)
    dynamic_roles: bool = False

    @field_validator("contact_points")
    @classmethod
    def _host_ports(cls, points: list[str]) -> list[str]:
        for p in points:
            if not re.match(r"^[A-Za-z0-9_.:\[\]-]+:\d{1,5}$", p):
                raise ValueError(f"expected host:port, got {p!r}")
        return points


class PostgresResource(Section):
    """A PostgreSQL server (or Azure Database for PostgreSQL, Cosmos DB for PostgreSQL)
    served by the PostgreSQL engine.

    Clients connect to the ``postgres`` listener with the resource name as the *database*
    name (as PgBouncer maps a database alias to a server), any user name, and their Lockgate
    token as the password. The gateway logs in upstream to ``database`` on ``host:port`` as
    ``username`` with the credential's value: a password (SCRAM-SHA-256 or md5, whatever the
    server asks) or an Entra ID access token (an ``oauth2_client_credentials``,
    ``managed_identity`` or ``federated`` credential; sent as a cleartext password, only
    over TLS).
    """

    name: str = Field(pattern=NAME_RE)
    kind: Literal["postgres"]
    host: str = Field(description="upstream server host name or address")
    port: int = Field(default=5432, ge=1, le=65535)
    database: str = Field(min_length=1, description="upstream database name")
    username: str = Field(min_length=1, description="the gateway's own upstream login")
    credential: str = Field(description="credential holding the upstream password or token")
    conn_id: str | None = None
    # disable: plain TCP; require: TLS without verifying the server; verify-full: TLS, the
    # certificate chains to ca_file (or the system store) and names ``host``.
    tls: Literal["disable", "require", "verify-full"] = "verify-full"
    ca_file: Path | None = None
    # The session's search_path at login (sent upstream in the startup packet, so neither a
    # role default nor ``$user`` decides where unqualified names resolve).
    search_path: list[str] = Field(default_factory=lambda: ["public"], min_length=1)
    max_message_bytes: int = Field(
        16 * 1024 * 1024, ge=8 * 1024, le=1024 * 1024 * 1024,
        description="largest message a client may send",
    )  # fmt: skip
    handshake_timeout: float = Field(default=10.0, gt=0, description="seconds to log in")
    idle_timeout: float = Field(default=3600.0, gt=0)
    connect_timeout: float = Field(default=5.0, gt=0)
    # Per-task roles for clients that cannot go through the gateway (docs/postgres.md);
    # the gateway's upstream login needs CREATEROLE.
    dynamic_roles: bool = False

    @field_validator("host")
    @classmethod
    def _host(cls, v: str) -> str:
        if not re.match(r"^[A-Za-z0-9_.:\[\]-]+$", v):
            raise ValueError(f"expected a host name or address, got {v!r}")
        return v.strip("[]")

    @field_validator("search_path")
    @classmethod
    def _schemas(cls, v: list[str]) -> list[str]:
        for s in v:
            if not s or "\x00" in s or len(s) > 63:
                raise ValueError(f"expected schema names (1-63 characters), got {s!r}")
        return v


Resource = Annotated[HttpResource | CqlResource | PostgresResource, Field(discriminator="kind")]

#: Any resource of the catalog, as the loaded config holds it.
AnyResource = HttpResource | CqlResource | PostgresResource
