"""Workload identity federation: an application trusts tokens of an outside issuer.

Written from Microsoft's public docs ("Workload identity federation", "Important
considerations and restrictions for federated identity credentials", the Graph
``federatedIdentityCredential`` resource, the client-credentials "access token request with a
federated credential" and the AADSTS error code reference):

- an application holds at most 20 federated identity credentials; each names ``issuer``,
  ``subject`` and exactly one audience (``api://AzureADTokenExchange`` recommended; issuer,
  subject and audience at most 600 characters each); the pair issuer+subject is unique on
  the app; the name is URL friendly, at most 120 characters;
- a presented assertion must match one credential's ``issuer``, ``subject`` and audience
  exactly (case-sensitive; an issuer claim with surrounding white space never matches);
- its signature is checked with the issuer's keys (discovery over https, then
  ``jwks_uri``), RS256 only: ES256, EdDSA, HS* and ``none`` are refused with AADSTS5002738;
- ``exp`` and ``nbf`` hold within the clock skew; tokens Entra itself issued are refused.

Each refusal carries the code the service answers (an assertion no credential matches names
the first claim that differs: issuer AADSTS700211, subject 700213, audience 700212). The
compact assertion is never recorded or logged: only its header and claims, not secret.

Part of a stand-in for demos and tests, written from the public docs: not the service.
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass
from typing import Any, NoReturn

import jwt

from .issuer_keys import IssuerKeyError, IssuerKeys, UnknownKeyId, verify_signature

__all__ = [
    "ENTRA_EXCHANGE_AUDIENCE",
    "MAX_FEDERATED_CREDENTIALS",
    "FederatedIdentityCredential",
    "FederationRefusal",
    "check_federated_assertion",
]

ENTRA_EXCHANGE_AUDIENCE = "api://AzureADTokenExchange"
MAX_FEDERATED_CREDENTIALS = 20
_MAX_FIELD = 600  # characters of an issuer, subject or audience (Graph's limit)
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,119}$")


@dataclass(frozen=True)
class FederatedIdentityCredential:
    name: str
    issuer: str
    subject: str
    audiences: tuple[str, ...] = (ENTRA_EXCHANGE_AUDIENCE,)

    def __post_init__(self) -> None:
        if not _NAME.match(self.name):
            raise ValueError("a credential name is URL friendly, 1-120 characters")
        if len(self.audiences) != 1 or not self.audiences[0]:
            raise ValueError("a federated identity credential holds exactly one audience")
        if len(self.audiences[0]) > _MAX_FIELD:
            raise ValueError("an audience is at most 600 characters")
        if not self.issuer or not self.subject:
            raise ValueError("issuer and subject are required")
        if max(len(self.issuer), len(self.subject)) > _MAX_FIELD:
            raise ValueError("an issuer or subject is at most 600 characters")
        if self.issuer != self.issuer.strip():
            raise ValueError("an issuer with surrounding white space never matches")


@dataclass(frozen=True)
class FederationRefusal(Exception):
    """A refused assertion: HTTP status, OAuth error and the AADSTS description."""

    status: int
    error: str
    description: str


def _refuse(code: int, text: str, status: int = 400, error: str = "invalid_request") -> NoReturn:
    raise FederationRefusal(status, error, f"AADSTS{code}: {text}")


def _audiences(claims: dict[str, Any]) -> list[str]:
    aud = claims.get("aud")
    if isinstance(aud, str):
        return [aud]
    return [a for a in aud if isinstance(a, str)] if isinstance(aud, list) else []


async def check_federated_assertion(
    assertion: str,
    credentials: list[FederatedIdentityCredential],
    keys: IssuerKeys,
    *,
    own_issuers: tuple[str, ...],
    clock_skew: int,
    max_lifetime: int,
    now: float | None = None,
) -> dict[str, Any]:
    """The assertion's claims when one of ``credentials`` accepts it; FederationRefusal else."""
    try:
        header = jwt.get_unverified_header(assertion)
        claims: dict[str, Any] = jwt.decode(assertion, options={"verify_signature": False})
    except jwt.PyJWTError:
        _refuse(50027, "JWT token is invalid or malformed.")
    alg = header.get("alg")
    if alg != "RS256":
        _refuse(
            5002738,
            f"Invalid JWT token. '{alg}' is not a supported signature algorithm. "
            "Supported signing algorithms are: 'RS256'",
        )
    iss, sub, auds = claims.get("iss"), claims.get("sub"), _audiences(claims)
    if not isinstance(iss, str) or not isinstance(sub, str) or not auds:
        _refuse(50027, "JWT token is invalid or malformed (iss, sub and aud are required).")
    if any(iss.startswith(own) for own in own_issuers):
        _refuse(700222, "AAD-issued tokens may not be used for federated identity flows.")
    _match_credential(credentials, iss, sub, auds)
    try:
        jwk = await keys.key(str(iss), header.get("kid"))
        verify_signature(assertion, jwk, "RS256")
    except (jwt.PyJWTError, UnknownKeyId):  # no key of that kid: nothing verifies it
        _refuse(700027, "Client assertion failed signature validation.", 401, "invalid_client")
    except IssuerKeyError:
        _refuse(50166, "Request to External OIDC endpoint failed.")
    _check_times(claims, clock_skew, max_lifetime, time.time() if now is None else now)
    return claims


def _match_credential(
    credentials: list[FederatedIdentityCredential], iss: str, sub: str, auds: list[str]
) -> None:
    """Refuse unless one credential matches; the code names the first claim that did not
    (issuer 700211, then subject 700213, then audience 700212), as the service answers."""
    same_issuer = [c for c in credentials if c.issuer == iss]
    same_subject = [c for c in same_issuer if c.subject == sub]
    if any(c.audiences[0] in auds for c in same_subject):
        return
    code, claim, value = (
        (700211, "issuer", iss) if not same_issuer
        else (700213, "subject", sub) if not same_subject
        else (700212, "audience", ",".join(auds))
    )  # fmt: skip
    _refuse(
        code,
        f"No matching federated identity record found for presented assertion {claim} "
        f"'{value}'. Check your federated identity credential Subject, Audience and Issuer "
        "against the presented assertion.",
        status=401,  # the service answers these as a failed client authentication
        error="invalid_client",
    )


def _check_times(claims: dict[str, Any], skew: int, max_lifetime: int, now: float) -> None:
    exp, nbf = claims.get("exp"), claims.get("nbf", claims.get("iat"))
    if not isinstance(exp, int | float):
        _refuse(50027, "JWT token is invalid or malformed (exp is required).")
    start = nbf if isinstance(nbf, int | float) else now
    if now > exp + skew or now + skew < start:
        _refuse(
            700024,
            "Client assertion is not within its valid time range. "
            f"Current time: {int(now)}, assertion valid from {int(start)} "
            f"to {int(exp)}.",
        )
    if exp - start > max_lifetime:
        _refuse(700024, "Client assertion is not within its valid time range (lifetime too long).")
