"""``listeners:``: the ports Lockgate serves, with their TLS and connection limits."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field

from lockgate.config._base import Section


class TlsConfig(Section):
    cert: Path
    key: Path


class ListenerConfig(Section):
    host: str = "127.0.0.1"
    port: int = Field(ge=0, le=65535)
    tls: TlsConfig | None = None
    # A TLS client that has not finished its handshake by then is closed (port scans,
    # health checks, wrong CA); see docs/architecture.md "Connections".
    handshake_timeout: float = Field(
        default=10.0, gt=0, le=300, description="TLS handshake, seconds"
    )
    max_connections: int = Field(
        default=10_000, ge=1, description="open connections, handshakes included"
    )
    # The name clients dial when it is not the bound address: a load balancer's or a
    # Service's DNS name in front of several replicas (catalog connections carry it).
    advertise: str | None = Field(
        default=None,
        max_length=253,
        pattern=r"^[A-Za-z0-9]([A-Za-z0-9.:-]*[A-Za-z0-9])?$",
        description="host name clients dial (a load balancer's), when not the bound address",
    )

    @property
    def scheme(self) -> str:
        return "https" if self.tls else "http"


class PostgresListenerConfig(ListenerConfig):
    """The PostgreSQL listener. TLS starts after the client's SSLRequest, as the protocol
    has it (``tls`` holds the certificate); a client that does not ask for TLS is refused
    unless ``allow_plaintext`` is true (tokens are passwords here: keep them off the wire)."""

    port: int = Field(default=5432, ge=0, le=65535)
    allow_plaintext: bool = False


class ForwardProxyConfig(Section):
    """The HTTPS forward proxy (HTTP CONNECT) for clients with a fixed upstream URL.

    CONNECT to a host that an ``http`` resource lists in ``intercept`` is terminated here
    with a leaf certificate for that host signed by ``ca``; anything else is refused.
    See ``docs/azure-data-factory.md``.
    """

    host: str = "127.0.0.1"
    port: int = Field(ge=0, le=65535)
    tls: TlsConfig | None = None  # the proxy listener itself; usually plain like most proxies
    ca: TlsConfig  # CA certificate and key that sign leaf certificates for intercepted hosts
    leaf_days: int = Field(default=7, ge=1, le=365)
    handshake_timeout: float = Field(default=10.0, gt=0)  # the listener's TLS and the tunnel's
    max_connections: int = Field(default=10_000, ge=1)
    # The name clients dial when it is not the bound address: a load balancer's or a
    # Service's DNS name in front of several replicas (catalog connections carry it).
    advertise: str | None = Field(
        default=None,
        max_length=253,
        pattern=r"^[A-Za-z0-9]([A-Za-z0-9.:-]*[A-Za-z0-9])?$",
        description="host name clients dial (a load balancer's), when not the bound address",
    )

    @property
    def scheme(self) -> str:
        return "https" if self.tls else "http"


class Listeners(Section):
    control: ListenerConfig = ListenerConfig(port=8470)
    http: ListenerConfig = ListenerConfig(port=8471)
    cql: ListenerConfig | None = None  # e.g. {port: 9042}; needed for kind: cql resources
    postgres: PostgresListenerConfig | None = None  # needed for kind: postgres resources
    forward_proxy: ForwardProxyConfig | None = None  # needed by resources with ``intercept``
