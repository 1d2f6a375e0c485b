"""``console:``: the web console served on the control listener at ``/console``.

Humans sign in with OIDC (authorization code with PKCE) against a trusted issuer, their role
(viewer, operator, admin) read from a claim of the ID token; without ``oidc`` the console
takes one-time admin links only (``lockgate serve`` prints one, ``lockgate console link``
makes another). The room that serves it is :mod:`lockgate.console`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, field_validator, model_validator

from lockgate._urls import private_channel
from lockgate.config._base import Section

ROLES = ("viewer", "operator", "admin")
Role = Literal["viewer", "operator", "admin"]


class ConsoleOidc(Section):
    """The OIDC provider people sign in with (Entra ID, Okta, Keycloak, ...)."""

    issuer: str = Field(description="issuer URL; its /.well-known/openid-configuration is read")
    client_id: str = Field(min_length=1, description="the console's client (application) id")
    client_secret_file: Path | None = Field(
        default=None,
        description="file holding the client secret (a confidential client); None: a public "
        "client, PKCE alone",
    )
    ca_file: Path | None = Field(
        default=None,
        description="CA bundle the provider's discovery, keys and token endpoint are verified "
        "with (a provider on a private CA); None: the system's trust store",
    )
    redirect_uri: str | None = Field(
        default=None,
        description="the callback registered with the provider; default "
        "<control listener URL>/console/auth/callback",
    )
    scopes: list[str] = Field(default=["openid", "profile", "email"])
    roles_claim: str = Field(
        default="roles", min_length=1, description="the ID token claim holding the user's roles"
    )
    # role -> claim values that grant it; the highest granted role wins; no match: refused
    roles: dict[Role, list[str]] = Field(
        default={"admin": ["Lockgate.Admin"], "operator": ["Lockgate.Operator"],
                 "viewer": ["Lockgate.Viewer"]},
    )  # fmt: skip
    # pinned: an ID token signed with any other algorithm is refused
    algorithms: list[Literal["RS256", "RS384", "RS512", "PS256", "ES256", "ES384", "EdDSA"]] = [
        "RS256"
    ]
    name_claim: str = "preferred_username"

    @field_validator("issuer", "redirect_uri")
    @classmethod
    def _https(cls, url: str | None) -> str | None:
        if url is not None and not private_channel(url):
            raise ValueError("must be https (plain http only to this machine)")
        return url

    @field_validator("scopes")
    @classmethod
    def _openid(cls, scopes: list[str]) -> list[str]:
        if "openid" not in scopes:
            raise ValueError("must include 'openid'")
        return scopes

    @model_validator(mode="after")
    def _some_role(self) -> ConsoleOidc:
        if not any(self.roles.values()):
            raise ValueError("roles: map at least one role to a claim value")
        return self


class ConsoleSettings(Section):
    enabled: bool = Field(default=True, description="serve /console on the control listener")
    oidc: ConsoleOidc | None = Field(
        default=None, description="human sign-in; None: one-time admin links only"
    )
    public_url: str | None = Field(
        default=None,
        description="the console's URL as browsers reach it (a load balancer's); default "
        "<control listener URL>/console",
    )
    session_ttl: float = Field(
        default=8 * 3600.0, gt=0, le=7 * 86400, description="seconds a sign-in lasts"
    )
    idle_timeout: float = Field(
        default=1800.0, gt=0, le=86400, description="seconds of inactivity that end a sign-in"
    )
    link_ttl: float = Field(
        default=900.0, gt=0, le=86400, description="seconds a one-time admin link stays usable"
    )
    print_link: bool = Field(
        default=True,
        description="`lockgate serve` prints a one-time admin link at start when oidc is not set",
    )


__all__ = ["ROLES", "ConsoleOidc", "ConsoleSettings", "Role"]
