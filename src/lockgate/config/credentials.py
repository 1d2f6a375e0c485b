"""``credentials:``: what the gateway itself uses upstream (values live in the store)."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field

from lockgate.config._base import NAME_RE, Section


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


Credential = Annotated[
    StaticCredential | OAuth2ClientCredential | ManagedIdentityCredential,
    Field(discriminator="type"),
]
