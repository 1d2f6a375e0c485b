"""``credentials:``: what the gateway itself uses upstream (values live in the store)."""

from __future__ import annotations

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


#: The audience Entra ID expects in a workload identity federation assertion.
ENTRA_FEDERATION_AUDIENCE = "api://AzureADTokenExchange"

#: Credentials whose value is an access token obtained at run time (bearer, Cosmos aad, a
#: PostgreSQL Entra login), as opposed to a stored secret used as it is.
TokenCredential = OAuth2ClientCredential | ManagedIdentityCredential | FederatedCredential

Credential = Annotated[
    StaticCredential | OAuth2ClientCredential | ManagedIdentityCredential | FederatedCredential,
    Field(discriminator="type"),
]
