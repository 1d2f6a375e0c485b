"""``lockgate.yaml``: the one configuration file, validated at start.

Example (``lockgate init DIR`` writes a working one)::

    data_dir: ./data                      # SQLite state, keys, audit; created on first start
    issuer: https://127.0.0.1:8470        # defaults to the control listener's URL
    listeners:
      control: {host: 127.0.0.1, port: 8470, tls: {cert: tls/cert.pem, key: tls/key.pem}}
      http:    {host: 127.0.0.1, port: 8471}
    tokens: {default_ttl: 900, max_ttl: 3600}
    deployments:
      - name: prod
        proof: {type: client_secret, secret_sha256: "<hex sha256 of the secret>"}
        dags: ["finance_*", "orders_*"]
    oidc_issuers:
      - issuer: https://login.microsoftonline.com/<tenant>/v2.0
        audience: api://lockgate
        deployment: prod
        subjects: ["system:serviceaccount:airflow:*"]
    resources:
      - name: orders-api
        kind: http
        upstream: https://orders.azurewebsites.net
        credential: orders-api-key
        conn_id: orders_api
    credentials:
      - name: orders-api-key
        type: static
    policies: ["policies/*.yaml"]

Relative paths are resolved against the directory of the config file. Errors raise
:class:`~lockgate.errors.ConfigError` naming the file, the field path and what was expected.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from lockgate.errors import ConfigError

NAME_RE = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$"
# Fields whose rejected value is never echoed back in an error message.
_SECRETISH = re.compile(r"(?i)secret|password|token")


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class TlsConfig(_Model):
    cert: Path
    key: Path


class ListenerConfig(_Model):
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

    @property
    def scheme(self) -> str:
        return "https" if self.tls else "http"


class ForwardProxyConfig(_Model):
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

    @property
    def scheme(self) -> str:
        return "https" if self.tls else "http"


class Listeners(_Model):
    control: ListenerConfig = ListenerConfig(port=8470)
    http: ListenerConfig = ListenerConfig(port=8471)
    cql: ListenerConfig | None = None  # e.g. {port: 9042}; needed for kind: cql resources
    forward_proxy: ForwardProxyConfig | None = None  # needed by resources with ``intercept``


class TokenSettings(_Model):
    default_ttl: int = Field(default=900, gt=0, description="seconds; used when policy sets no max")
    max_ttl: int = Field(default=3600, gt=0, description="hard cap for any token, seconds")
    leeway: int = Field(
        default=5, ge=0, le=60, description="clock skew allowed on exp/nbf, seconds"
    )


class ClientSecretProof(_Model):
    type: Literal["client_secret"]
    secret_sha256: str = Field(pattern=r"^[0-9a-f]{64}$")


class PrivateKeyJwtProof(_Model):
    type: Literal["private_key_jwt"]
    public_key: Path  # PEM, Ed25519 or RSA or EC


Proof = Annotated[ClientSecretProof | PrivateKeyJwtProof, Field(discriminator="type")]


class AirflowApi(_Model):
    """Attest asserted task coordinates against the deployment's Airflow REST API."""

    url: str
    token_env: str | None = None  # env var holding a bearer token for the Airflow API
    verify_tls: bool = True


class Deployment(_Model):
    name: str = Field(pattern=NAME_RE)
    proof: Proof
    dags: list[str] = Field(min_length=1, description="globs of dag_ids it may act for")
    airflow_api: AirflowApi | None = None


class OidcIssuer(_Model):
    issuer: str
    audience: str
    deployment: str
    jwks_uri: str | None = None  # else taken from OIDC discovery
    subjects: list[str] = ["*"]
    algorithms: list[str] = ["RS256", "ES256", "EdDSA"]

    @field_validator("algorithms")
    @classmethod
    def _no_symmetric(cls, algs: list[str]) -> list[str]:
        bad = [a for a in algs if a.lower() == "none" or a.upper().startswith("HS")]
        if bad:
            raise ValueError(f"symmetric or 'none' algorithms are not accepted: {bad}")
        return algs


class UpstreamAuth(_Model):
    """How the upstream credential goes onto the request."""

    header: str = "Authorization"
    scheme: str | None = "Bearer"  # None: the raw secret is the header value


class Route(_Model):
    method: str = "*"
    path: str  # glob on the normalised path, e.g. /orders/*
    action: Literal["read", "write", "admin", "run"]
    object: str | None = None  # default: the normalised path


class RetrySettings(_Model):
    max_attempts: int = Field(default=4, ge=1, le=20)
    base_delay: float = Field(default=0.1, gt=0)
    max_delay: float = Field(default=5.0, gt=0)
    deadline: float = Field(default=30.0, gt=0, description="seconds for all attempts together")


class DatabricksGuardrail(_Model):
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


class DatabricksSettings(_Model):
    """Settings of ``profile: databricks`` (see ``docs/databricks.md``)."""

    guardrails: list[DatabricksGuardrail] = []
    max_body_bytes: int = Field(default=1024 * 1024, ge=1024, le=16 * 1024 * 1024)
    job_cache_seconds: float = Field(default=30.0, ge=0)
    poll_token_ttl: int = Field(default=3600, gt=0, le=86400, description="triggerer poll tokens")
    run_read_max_age: int = Field(
        default=7 * 86400, gt=0, description="poll tokens read runs this young"
    )


class ArmSettings(_Model):
    """Settings of ``profile: arm`` (Azure Data Factory over ARM; docs/azure-data-factory.md).

    The subscription (and resource group, when set) bound what the resource serves: requests
    for any other are refused. They also fill the ``azure_data_factory`` connection.
    """

    subscription_id: str = Field(pattern=r"^[A-Za-z0-9-]{1,64}$")
    resource_group: str | None = None
    factory: str | None = None
    tenant_id: str | None = None
    max_body_bytes: int = Field(default=1024 * 1024, ge=1024, le=16 * 1024 * 1024)


class CosmosSettings(_Model):
    """Settings of ``profile: cosmos`` (Azure Cosmos DB for NoSQL; see ``docs/cosmos.md``).

    ``upstream_auth``: ``master_key`` re-signs every request with the account key stored in
    the resource's ``static`` credential (primary, then secondary after a rotation);
    ``aad`` sends the Entra ID token of an ``oauth2_client_credentials`` credential.
    ``database``/``container``/``partition_key`` fill the Airflow connection's extras.
    """

    upstream_auth: Literal["master_key", "aad"] = "master_key"
    max_skew: int = Field(default=900, ge=30, le=3600, description="x-ms-date window, seconds")
    max_body_bytes: int = Field(default=4 * 1024 * 1024, ge=1024, le=64 * 1024 * 1024)
    timeout: float = Field(default=65.0, gt=0, description="seconds for one upstream exchange")
    database: str | None = None
    container: str | None = None
    partition_key: str | None = None


class HttpResource(_Model):
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


class CqlResource(_Model):
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


Resource = Annotated[HttpResource | CqlResource, Field(discriminator="kind")]


class StaticCredential(_Model):
    name: str = Field(pattern=NAME_RE)
    type: Literal["static"]
    overlap: int = Field(default=600, ge=0, description="seconds the previous version stays usable")


class OAuth2ClientCredential(_Model):
    """OAuth2 client credentials (Entra ID, Databricks M2M).

    The client secret is the value stored with ``lockgate creds set``.
    """

    name: str = Field(pattern=NAME_RE)
    type: Literal["oauth2_client_credentials"]
    token_url: str
    client_id: str
    scope: str | None = None
    audience: str | None = None
    overlap: int = Field(default=600, ge=0)
    # private_key_jwt: the stored value is a PEM private key followed by its certificate;
    # the request carries a client_assertion JWT signed with the key (x5t header, Entra ID).
    token_auth: Literal["client_secret_post", "client_secret_basic", "private_key_jwt"] = (
        "client_secret_post"  # noqa: S105
    )
    refresh_before: int = Field(
        default=300, ge=0, description="refresh this many seconds before expiry"
    )


class ManagedIdentityCredential(_Model):
    """The gateway's own Azure managed identity (IMDS, or App Service ``IDENTITY_ENDPOINT``).

    Nothing is stored: the host hands out the token. ``resource`` is the audience, e.g.
    ``https://management.azure.com``.
    """

    name: str = Field(pattern=NAME_RE)
    type: Literal["managed_identity"]
    resource: str
    client_id: str | None = None  # a user-assigned identity
    endpoint: str | None = None  # IMDS token URL override (tests, pod identity)
    overlap: int = Field(default=0, ge=0)
    refresh_before: int = Field(default=300, ge=0)


Credential = Annotated[
    StaticCredential | OAuth2ClientCredential | ManagedIdentityCredential,
    Field(discriminator="type"),
]


class AuditSettings(_Model):
    jsonl: Path | None = None
    write_timeout: float = Field(
        default=1.0, gt=0, description="a write slower than this fails closed"
    )
    # thread: a writer thread in the gateway process (fastest on small machines);
    # process: a separate writer process (frees the event loop's core; needed by --workers).
    writer: Literal["thread", "process"] = "thread"
    # What an allowed request's record survives before the request is forwarded (it is
    # journaled first, see docs/audit.md): process: a crash of the gateway process (one
    # write() to the page cache); fsync: a crash of the machine too (group-committed
    # fdatasync per request, at a cost in latency and requests/s).
    durability: Literal["process", "fsync"] = "process"


class LockgateConfig(_Model):
    data_dir: Path = Path("data")
    issuer: str | None = None
    listeners: Listeners = Listeners()
    tokens: TokenSettings = TokenSettings()
    deployments: list[Deployment] = []
    oidc_issuers: list[OidcIssuer] = []
    resources: list[Resource] = []
    credentials: list[Credential] = []
    policies: list[str] = []
    audit: AuditSettings = AuditSettings()
    log_level: Literal["debug", "info", "warning", "error"] = "info"
    source: Path | None = Field(default=None, exclude=True)  # set by load_config

    @model_validator(mode="after")
    def _cross_refs(self) -> LockgateConfig:
        _unique("deployments", "name", [d.name for d in self.deployments])
        _unique("resources", "name", [r.name for r in self.resources])
        _unique("credentials", "name", [c.name for c in self.credentials])
        _unique("resources", "conn_id", [r.conn_id for r in self.resources])
        creds = {c.name for c in self.credentials}
        for i, r in enumerate(self.resources):
            if r.credential and r.credential not in creds:
                raise ValueError(
                    f"resources[{i}].credential: unknown credential {r.credential!r}; "
                    f"expected one of {sorted(creds)}"
                )
        intercepted: dict[str, int] = {}
        for i, r in enumerate(self.resources):
            for h in getattr(r, "intercept", []):
                if h in intercepted:
                    raise ValueError(
                        f"resources[{i}].intercept: {h!r} is already intercepted by "
                        f"resources[{intercepted[h]}]"
                    )
                intercepted[h] = i
        if intercepted and self.listeners.forward_proxy is None:
            raise ValueError(
                "resources: 'intercept' needs a listeners.forward_proxy section "
                "(for example {port: 8472, ca: {cert: tls/proxy-ca.pem, key: tls/proxy-ca.key}})"
            )
        if self.listeners.cql is None:
            for i, r in enumerate(self.resources):
                if r.kind == "cql":
                    raise ValueError(
                        f"resources[{i}].kind: 'cql' needs a listeners.cql section "
                        "(for example {port: 9042})"
                    )
        deps = {d.name for d in self.deployments}
        for i, o in enumerate(self.oidc_issuers):
            if o.deployment not in deps:
                raise ValueError(
                    f"oidc_issuers[{i}].deployment: unknown deployment {o.deployment!r}"
                )
        return self

    # -- lookups -----------------------------------------------------------------------------
    @property
    def issuer_url(self) -> str:
        if self.issuer:
            return self.issuer.rstrip("/")
        c = self.listeners.control
        return f"{c.scheme}://{c.host}:{c.port}"

    def resource(self, name: str) -> HttpResource | CqlResource | None:
        return next((r for r in self.resources if r.name == name), None)

    def resource_for_conn_id(self, conn_id: str) -> HttpResource | CqlResource | None:
        return next((r for r in self.resources if r.conn_id == conn_id), None)

    def deployment(self, name: str) -> Deployment | None:
        return next((d for d in self.deployments if d.name == name), None)

    def credential(
        self, name: str
    ) -> StaticCredential | OAuth2ClientCredential | ManagedIdentityCredential | None:
        return next((c for c in self.credentials if c.name == name), None)

    def policy_files(self) -> list[Path]:
        base = self.source.parent if self.source else Path.cwd()
        found: list[Path] = []
        for pattern in self.policies:
            p = Path(pattern)
            if p.is_absolute():
                matches = sorted(Path(p.anchor).glob(str(p.relative_to(p.anchor))))
            else:
                matches = sorted(base.glob(pattern))
            found.extend(m for m in matches if m.is_file())
        return found


def _unique(section: str, field: str, values: list[str | None]) -> None:
    """Raise naming the second occurrence, e.g. ``resources[2].conn_id: duplicate ...``."""
    seen: dict[str, int] = {}
    for i, v in enumerate(values):
        if v is None:
            continue
        if v in seen:
            raise ValueError(
                f"{section}[{i}].{field}: duplicate {field} {v!r} "
                f"(first used by {section}[{seen[v]}]); expected unique values"
            )
        seen[v] = i


def _resolve_paths(data: Any, base: Path) -> Any:
    """Make relative file paths absolute against the config file's directory."""
    path_keys = {"cert", "key", "public_key", "data_dir", "jsonl", "ca_file"}
    if isinstance(data, dict):
        out = {}
        for k, v in data.items():
            if k in path_keys and isinstance(v, str) and not Path(v).is_absolute():
                out[k] = str((base / v).resolve())
            else:
                out[k] = _resolve_paths(v, base)
        return out
    if isinstance(data, list):
        return [_resolve_paths(v, base) for v in data]
    return data


# Tags pydantic puts in the location of a discriminated union member; users never wrote them.
_UNION_TAGS = frozenset({"http", "cql", "client_secret", "private_key_jwt", "static",
                         "oauth2_client_credentials", "managed_identity"})  # fmt: skip
_UNION_FIELD = {"resources": "kind", "credentials": "type", "proof": "type"}


def _readable_loc(e: Any) -> list[Any]:
    """The field path as written in the file: no union tags; the tag field when it is wrong."""
    loc = list(e["loc"])
    parts = [
        p
        for i, p in enumerate(loc)
        if not (
            i > 0 and p in _UNION_TAGS and (isinstance(loc[i - 1], int) or loc[i - 1] == "proof")
        )
    ]
    if e.get("type") in ("union_tag_invalid", "union_tag_not_found"):
        owner = next((str(p) for p in reversed(parts) if isinstance(p, str)), "")
        parts.append(_UNION_FIELD.get(owner, "kind"))
    return parts


def format_validation_error(source: str, err: ValidationError) -> str:
    lines = [f"{source}: invalid configuration"]
    for e in err.errors():
        parts = _readable_loc(e)
        loc = ".".join(str(p) if not isinstance(p, int) else f"[{p}]" for p in parts)
        loc = loc.replace(".[", "[")
        msg = e["msg"].removeprefix("Value error, ")
        if not loc:
            # Cross-reference checks run on the whole model and put the field path in the
            # message themselves ("resources[1].credential: ..."); show that as the path.
            lines.append(f"  {msg}" if ": " in msg else f"  <root>: {msg}")
            continue
        got = e.get("input")
        shown = "" if isinstance(got, dict | list) or got is None else f" (got {got!r})"
        if _SECRETISH.search(str(e["loc"][-1])):
            shown = ""  # someone may have pasted the secret itself where its hash belongs
        lines.append(f"  {loc}: {msg}{shown}")
    return "\n".join(lines)


def parse_config(data: Any, source: Path | str = "<config>") -> LockgateConfig:
    """Validate already-parsed YAML. ``source`` is the file it came from, or a ``<label>``.

    Relative paths (and the default ``data_dir``) are resolved against the file's directory;
    for a ``<label>`` source, against the current directory.
    """
    is_file = not str(source).startswith("<")
    src = Path(source)
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: expected a mapping at the top level")
    base = src.parent.resolve() if is_file else Path.cwd()
    data = _resolve_paths(data, base)
    # The default data_dir follows the same rule as an explicit one, so the state of a
    # config in /etc/lockgate never lands in whatever directory the CLI was started from.
    data.setdefault("data_dir", str(base / "data"))
    data["source"] = str(src.resolve()) if is_file else None
    try:
        return LockgateConfig.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(format_validation_error(str(source), exc)) from None


def load_config(path: Path | str) -> LockgateConfig:
    """Read and validate ``path``. Raises ConfigError naming the file and field."""
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"{p}: cannot read configuration: {exc.strerror}") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" line {mark.line + 1} column {mark.column + 1}" if mark else ""
        raise ConfigError(f"{p}:{where} not valid YAML: {getattr(exc, 'problem', exc)}") from None
    return parse_config(data, p)
