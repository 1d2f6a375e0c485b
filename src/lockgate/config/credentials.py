"""``credentials:``: what the gateway itself uses upstream (values live in the store)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal

from pydantic import Field, field_validator, model_validator

from lockgate._urls import private_channel
from lockgate.config._base import NAME_RE, Section


def reaches_in_clear(url: str) -> bool:
    """True when a request to ``url`` would cross a network in clear."""
    return not private_channel(url)


def _token_url_not_in_clear(url: str) -> str:
    if reaches_in_clear(url):
        raise ValueError(
            "must be https (plain http only to this machine): the request carries a "
            "secret or a signed assertion anyone on the path could replay"
        )
    return url


class StaticCredential(Section):
    name: str = Field(pattern=NAME_RE)
    type: Literal["static"]
    overlap: int = Field(default=600, ge=0, description="seconds the previous version stays usable")


class OAuth2ClientCredential(Section):
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

    check_token_url = field_validator("token_url")(_token_url_not_in_clear)


class ManagedIdentityCredential(Section):
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


class FederatedCredential(Section):
    """No stored secret: the gateway proves itself upstream with a short JWT it signs as an
    OIDC issuer (its ``issuer`` URL, keys in its JWKS), exchanged for an access token.

    - ``provider: entra``: workload identity federation. Client credentials grant at
      ``token_url`` with ``client_assertion`` = the JWT (RS256 only; ``audience`` defaults
      to ``api://AzureADTokenExchange``), ``client_id`` the app registration, ``scope`` e.g.
      ``https://<account>.documents.azure.com/.default``.
    - ``provider: databricks``: OAuth token federation. RFC 8693 token exchange of the JWT
      at ``token_url`` (``https://<workspace>/oidc/v1/token``), ``scope`` default
      ``all-apis``; ``client_id`` names the service principal for a service principal
      federation policy (absent: an account-wide policy). RS256 or ES256.

    ``subject`` is what the cloud's federated credential or policy matches: stable, one per
    upstream identity (default ``lockgate:credential:<name>``), never per task.
    """

    name: str = Field(pattern=NAME_RE)
    type: Literal["federated"]
    provider: Literal["entra", "databricks"]
    token_url: str
    client_id: str | None = None
    scope: str | None = None
    audience: str | None = Field(
        default=None, description="the assertion's aud (default per provider)"
    )
    subject: str | None = Field(
        default=None, description="the assertion's sub (default lockgate:credential:<name>)"
    )
    algorithm: Literal["RS256", "ES256"] | None = Field(
        default=None, description="default: signing.audiences for the audience, else RS256"
    )
    assertion_ttl: int = Field(default=300, ge=60, le=3600, description="seconds")
    check_token_url = field_validator("token_url")(_token_url_not_in_clear)
    overlap: int = Field(default=0, ge=0)
    refresh_before: int = Field(default=300, ge=0)

    @model_validator(mode="after")
    def _provider_rules(self) -> FederatedCredential:
        if self.provider == "entra" and not self.client_id:
            raise ValueError("client_id: provider 'entra' needs the app registration's client id")
        if self.provider == "entra" and not self.scope:
            # Entra refuses a client-credentials request without one.
            raise ValueError(
                "scope: provider 'entra' needs the resource's scope, e.g. "
                "https://<account>.documents.azure.com/.default"
            )
        if self.provider == "entra" and self.algorithm == "ES256":
            raise ValueError("algorithm: Entra ID accepts only RS256 assertions")
        if self.provider == "databricks" and not self.audience:
            raise ValueError(
                "audience: provider 'databricks' needs the federation policy's audience "
                "(Databricks' default is your account id)"
            )
        return self

    @property
    def assertion_audience(self) -> str:
        if self.audience:
            return self.audience
        return ENTRA_FEDERATION_AUDIENCE

    @property
    def assertion_subject(self) -> str:
        return self.subject or f"lockgate:credential:{self.name}"


def _vault_url_not_in_clear(url: str) -> str:
    if reaches_in_clear(url):
        raise ValueError(
            "must be https (plain http only to this machine): the answer carries the secret "
            "and the request a token anyone on the path could replay"
        )
    return url.rstrip("/")


def _no_dot_segments(value: str | None) -> str | None:
    """A path piece of a Vault URL: no ``.``/``..`` segment (the URL would point elsewhere)."""
    if value is not None and {".", ".."} & set(value.split("/")):
        raise ValueError("must not have a '.' or '..' segment")
    return value


#: The audiences (``resource``, or ``scope`` without ``/.default``) of Key Vault's data plane
#: in the public and sovereign clouds: what the ``identity`` of a Key Vault credential needs.
KEY_VAULT_AUDIENCES = (
    "https://vault.azure.net",
    "https://vault.azure.cn",
    "https://vault.usgovcloudapi.net",
)


class _VaultHeld(Section):
    """What both vault-held credentials share: the value lives in the vault, the gateway
    caches it for ``ttl`` seconds, keeps the previous value usable for ``overlap`` seconds
    after a new one is seen, and serves the cached value for ``grace`` seconds past its ttl
    while the vault cannot be reached."""

    name: str = Field(pattern=NAME_RE)
    ttl: int = Field(default=300, ge=1, description="seconds a fetched value is cached")
    overlap: int = Field(default=600, ge=0, description="seconds the previous value stays usable")
    grace: int = Field(
        default=900, ge=0, description="seconds past ttl the cached value is served while the "
        "vault cannot be reached"
    )  # fmt: skip
    timeout: float = Field(default=10.0, gt=0, le=120, description="seconds per vault request")


class KeyVaultCredential(_VaultHeld):
    """A secret held in Azure Key Vault (``GET {vault_url}/secrets/{secret}/{version}``),
    read with the gateway's own Entra ID token: ``identity`` names a ``managed_identity``,
    ``federated`` (entra) or ``oauth2_client_credentials`` credential of this file whose
    audience is Key Vault (``https://vault.azure.net``). ``version`` pins one version;
    absent, the latest is used and a new one is picked up within ``ttl``."""

    type: Literal["azure_key_vault"]
    vault_url: str = Field(description="https://<name>.vault.azure.net")
    secret: str = Field(pattern=r"^[0-9A-Za-z-]{1,127}$", description="the secret's name")
    version: str | None = Field(default=None, pattern=r"^[0-9A-Za-z]{1,64}$")
    identity: str = Field(pattern=NAME_RE, description="credential whose token reads the vault")

    check_vault_url = field_validator("vault_url")(_vault_url_not_in_clear)

    @property
    def held_at(self) -> str:
        """Where the value lives (no secret): the secret's URL, with its version if pinned."""
        return f"{self.vault_url}/secrets/{self.secret}" + (
            f"/{self.version}" if self.version else ""
        )


class VaultAppRole(Section):
    """AppRole login: ``role_id`` plus a secret id read from ``secret_id_file`` (the one
    local secret) or, without it, stored encrypted with ``lockgate creds set NAME``."""

    method: Literal["approle"]
    role_id: str = Field(min_length=1)
    secret_id_file: Path | None = None
    mount: str = Field(default="approle", pattern=r"^[A-Za-z0-9_.-]+(/[A-Za-z0-9_.-]+)*$")
    check_mount = field_validator("mount")(_no_dot_segments)


class VaultJwt(Section):
    """JWT login: Lockgate signs a short JWT as an OIDC issuer (as federated credentials
    do) and Vault's jwt auth method checks it against Lockgate's JWKS: the role's
    ``bound_audiences`` must hold ``audience``, its ``bound_subject`` the ``subject``."""

    method: Literal["jwt"]
    role: str = Field(min_length=1)
    audience: str = Field(min_length=1, description="the JWT's aud (the role's bound_audiences)")
    subject: str | None = Field(
        default=None, description="the JWT's sub (default lockgate:credential:<name>)"
    )
    algorithm: Literal["RS256", "ES256"] | None = None
    assertion_ttl: int = Field(default=300, ge=60, le=3600)
    mount: str = Field(default="jwt", pattern=r"^[A-Za-z0-9_.-]+(/[A-Za-z0-9_.-]+)*$")
    check_mount = field_validator("mount")(_no_dot_segments)


class VaultKvCredential(_VaultHeld):
    """A field of a secret in a HashiCorp Vault / OpenBao KV version 2 engine
    (``GET {address}/v1/{mount}/data/{path}``), read with a Vault token from an ``approle``
    or ``jwt`` login that is renewed or logged in again before it expires."""

    type: Literal["vault_kv"]
    address: str = Field(description="https://vault.example.com:8200")
    mount: str = Field(default="secret", pattern=r"^[A-Za-z0-9_.-]+(/[A-Za-z0-9_.-]+)*$")
    path: str = Field(pattern=r"^[A-Za-z0-9_.@-]+(/[A-Za-z0-9_.@-]+)*$")
    field: str = Field(default="value", min_length=1, description="key inside the secret's data")
    version: int | None = Field(default=None, ge=1)
    namespace: str | None = Field(
        default=None,
        pattern=r"^[A-Za-z0-9_.-]+(/[A-Za-z0-9_.-]+)*/?$",  # a header value: no CR/LF
        description="Vault Enterprise / OpenBao namespace",
    )
    auth: Annotated[VaultAppRole | VaultJwt, Field(discriminator="method")]
    ca_file: Path | None = Field(
        default=None, description="CA bundle the vault's https is checked with"
    )

    check_address = field_validator("address")(_vault_url_not_in_clear)
    check_segments = field_validator("mount", "path", "namespace")(_no_dot_segments)

    @property
    def held_at(self) -> str:
        """Where the value lives (no secret): address, namespace, path, field, version."""
        ns = f"{self.namespace.strip('/')}/" if self.namespace else ""
        pinned = f"?version={self.version}" if self.version else ""
        return f"{self.address}/v1/{ns}{self.mount}/data/{self.path}{pinned}#{self.field}"

    @property
    def assertion_subject(self) -> str:
        subject = self.auth.subject if isinstance(self.auth, VaultJwt) else None
        return subject or f"lockgate:credential:{self.name}"


#: The audience Entra ID expects in a workload identity federation assertion.
ENTRA_FEDERATION_AUDIENCE = "api://AzureADTokenExchange"

#: Credentials whose value is an access token obtained at run time (bearer, Cosmos aad, a
#: PostgreSQL Entra login), as opposed to a stored secret used as it is.
TokenCredential = OAuth2ClientCredential | ManagedIdentityCredential | FederatedCredential

#: Credentials whose value lives in a vault and is used as a static secret is.
VaultCredential = KeyVaultCredential | VaultKvCredential

#: Any one credential section.
AnyCredential = (
    StaticCredential
    | OAuth2ClientCredential
    | ManagedIdentityCredential
    | FederatedCredential
    | KeyVaultCredential
    | VaultKvCredential
)

Credential = Annotated[AnyCredential, Field(discriminator="type")]


def key_vault_audience(cred: TokenCredential) -> str | None:
    """The audience a token credential's tokens are for (``resource``, or ``scope`` without
    ``/.default``), or None when it names none."""
    if isinstance(cred, ManagedIdentityCredential):
        return cred.resource.rstrip("/")
    if cred.scope is None:
        return None
    return cred.scope.removesuffix("/.default").rstrip("/")
