"""How a resource server checks an access token the test Entra ID issued for it.

What Cosmos DB (data-plane RBAC) and an App Service API (App Service authentication) do with
a bearer token, from Microsoft's "Access tokens" and "Validate tokens" docs: an RS256
signature by a key of the tenant's key set (``jwks_uri``, cached, fetched anew on an unknown
``kid``), the tenant's ``iss``, an ``aud`` the resource accepts, and ``exp``/``nbf`` within
five minutes of skew. What the caller may then do (roles, allowed client applications) is
the resource's own business.

Part of a stand-in for demos and tests, written from the public docs: not the service.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import jwt

from .issuer_keys import IssuerKeyError, IssuerKeys, verify_signature

if TYPE_CHECKING:
    from .app import FakeEntra

__all__ = ["CLOCK_SKEW", "EntraTrust", "InvalidEntraToken"]

CLOCK_SKEW = 300


class InvalidEntraToken(Exception):
    """The token does not pass; ``str()`` says why (never the token)."""


@dataclass
class EntraTrust:
    """The tenant's key set URL and token issuer, and the audiences the resource accepts
    (empty: the resource supplies them per check)."""

    jwks_uri: str
    issuer: str
    ca_file: Path | str | None = None
    audiences: tuple[str, ...] = ()
    keys: IssuerKeys = field(init=False)

    def __post_init__(self) -> None:
        # A key set URL given by hand may be plain http (a test Entra ID served so).
        self.keys = IssuerKeys(self.ca_file, allow_http=self.jwks_uri.startswith("http://"))

    @classmethod
    def of(cls, entra: FakeEntra, audiences: tuple[str, ...] = ()) -> EntraTrust:
        """Trust the served test Entra ID ``entra`` (with its ``ca_file`` over https)."""
        return cls(entra.jwks_uri, entra.issuer, entra.ca_file, audiences)

    async def check(self, token: str, audiences: tuple[str, ...] = ()) -> dict[str, Any]:
        """The token's claims when it passes for one of ``audiences`` (else the trust's own)."""
        try:
            kid = jwt.get_unverified_header(token).get("kid")
            claims = verify_signature(token, await self.keys.key_at(self.jwks_uri, kid), "RS256")
        except (jwt.PyJWTError, IssuerKeyError):
            raise InvalidEntraToken("the token's signature does not verify") from None
        if claims.get("iss") != self.issuer:
            raise InvalidEntraToken("the token was issued by another tenant")
        if claims.get("aud") not in (audiences or self.audiences):
            raise InvalidEntraToken("the token was issued for another audience")
        now, exp, nbf = time.time(), claims.get("exp"), claims.get("nbf", 0)
        if not isinstance(exp, int | float) or now > exp + CLOCK_SKEW:
            raise InvalidEntraToken("the token has expired")
        if not isinstance(nbf, int | float) or now + CLOCK_SKEW < nbf:
            raise InvalidEntraToken("the token is not valid yet")
        return claims
