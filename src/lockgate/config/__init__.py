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
:class:`~lockgate.errors.ConfigError` naming the file, the line, the field path and what was
expected.

The rooms: one module per section (``listeners``, ``identity`` for tokens, deployments and
OIDC issuers, ``resources``, ``credentials``), ``model`` for the whole file and the checks
across sections, ``loader`` for reading and error messages.
"""

from lockgate.config._base import NAME_RE, Section
from lockgate.config.alerts import AlertSettings
from lockgate.config.console import ConsoleOidc, ConsoleSettings
from lockgate.config.credentials import (
    ENTRA_FEDERATION_AUDIENCE,
    KEY_VAULT_AUDIENCES,
    AnyCredential,
    Credential,
    FederatedCredential,
    KeyVaultCredential,
    ManagedIdentityCredential,
    OAuth2ClientCredential,
    StaticCredential,
    TokenCredential,
    VaultAppRole,
    VaultCredential,
    VaultJwt,
    VaultKvCredential,
)
from lockgate.config.identity import (
    AirflowApi,
    ClientSecretProof,
    Deployment,
    OidcIssuer,
    PrivateKeyJwtProof,
    Proof,
    TokenSettings,
)
from lockgate.config.listeners import (
    ForwardProxyConfig,
    ListenerConfig,
    Listeners,
    PostgresListenerConfig,
    TlsConfig,
)
from lockgate.config.loader import format_validation_error, load_config, parse_config
from lockgate.config.metrics import MetricsSettings
from lockgate.config.model import AuditSettings, LockgateConfig
from lockgate.config.resources import (
    AnyResource,
    ArmSettings,
    CosmosSettings,
    CqlResource,
    DatabricksGuardrail,
    DatabricksSettings,
    HttpResource,
    PostgresResource,
    Resource,
    RetrySettings,
    Route,
    UpstreamAuth,
)
from lockgate.config.signing import SigningAlgorithm, SigningSettings
from lockgate.config.state import PostgresStateSettings, StateSettings
from lockgate.config.tracing import TracingSettings

__all__ = [
    "ENTRA_FEDERATION_AUDIENCE",
    "KEY_VAULT_AUDIENCES",
    "NAME_RE",
    "AirflowApi",
    "AlertSettings",
    "AnyCredential",
    "AnyResource",
    "ArmSettings",
    "AuditSettings",
    "ClientSecretProof",
    "ConsoleOidc",
    "ConsoleSettings",
    "CosmosSettings",
    "CqlResource",
    "Credential",
    "DatabricksGuardrail",
    "DatabricksSettings",
    "Deployment",
    "FederatedCredential",
    "ForwardProxyConfig",
    "HttpResource",
    "KeyVaultCredential",
    "ListenerConfig",
    "Listeners",
    "LockgateConfig",
    "ManagedIdentityCredential",
    "MetricsSettings",
    "OAuth2ClientCredential",
    "OidcIssuer",
    "PostgresListenerConfig",
    "PostgresResource",
    "PostgresStateSettings",
    "PrivateKeyJwtProof",
    "Proof",
    "Resource",
    "RetrySettings",
    "Route",
    "Section",
    "SigningAlgorithm",
    "SigningSettings",
    "StateSettings",
    "StaticCredential",
    "TlsConfig",
    "TokenCredential",
    "TokenSettings",
    "TracingSettings",
    "UpstreamAuth",
    "VaultAppRole",
    "VaultCredential",
    "VaultJwt",
    "VaultKvCredential",
    "format_validation_error",
    "load_config",
    "parse_config",
]
