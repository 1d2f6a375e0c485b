"""Upstream federation: an access token for a JWT Lockgate signs as an OIDC issuer, so the
gateway stores no upstream secret.

The cloud trusts Lockgate's issuer (``config.issuer_url``: it fetches
``<issuer>/.well-known/openid-configuration`` and the JWKS it names) for one subject. Every
exchange presents a fresh assertion (new ``jti``)::

    {"iss": <issuer>, "sub": cred.assertion_subject, "aud": cred.assertion_audience,
     "iat": now, "nbf": now, "exp": now + assertion_ttl, "jti": <random>}

signed with the current key of ``config.federation_algorithm(cred)`` (RS256 or ES256; a
rotated key is published ahead of signing, so the cloud's cached JWKS already knows it).

- ``provider: entra`` (workload identity federation): client credentials grant at
  ``token_url`` with ``client_assertion`` = the JWT, ``client_id`` the app registration,
  ``scope`` e.g. ``https://<account>.documents.azure.com/.default``.
- ``provider: databricks`` (OAuth token federation): RFC 8693 token exchange of the JWT at
  ``https://<workspace>/oidc/v1/token``, ``scope`` ``all-apis`` unless configured,
  ``client_id`` for a service principal federation policy.

Both answer ``{access_token, token_type, expires_in}``. A refusal is a
:class:`~lockgate.errors.CredentialError` naming the credential, the HTTP status, the OAuth
``error`` slug (and Entra's ``AADSTS`` code) and what the cloud must be told to trust
(issuer, subject, audience: configuration, not secrets); never the assertion, the token or
the response body.
"""

from __future__ import annotations

import secrets
import time
from collections.abc import Callable
from typing import Any

import aiohttp

from lockgate.config import FederatedCredential, LockgateConfig
from lockgate.credentials.oauth2 import (
    ASSERTION_TYPE,
    AccessToken,
    check_transport,
    request_token,
)
from lockgate.errors import CredentialError

TOKEN_EXCHANGE_GRANT = "urn:ietf:params:oauth:grant-type:token-exchange"  # noqa: S105
JWT_TOKEN_TYPE = "urn:ietf:params:oauth:token-type:jwt"  # noqa: S105
DATABRICKS_DEFAULT_SCOPE = "all-apis"

#: Signs claims with the current key of an algorithm: ``(claims, alg) -> compact JWS``.
AssertionSigner = Callable[[dict[str, Any], str], str]

_PROVIDER_NAMES = {"entra": "Entra ID", "databricks": "Databricks"}


def assertion_claims(cred: FederatedCredential, issuer: str, *, now: float) -> dict[str, Any]:
    """The claims of one assertion for ``cred`` (a new ``jti`` every call)."""
    issued = int(now)
    return {
        "iss": issuer,
        "sub": cred.assertion_subject,
        "aud": cred.assertion_audience,
        "iat": issued,
        "nbf": issued,
        "exp": issued + cred.assertion_ttl,
        "jti": secrets.token_urlsafe(18),
    }


def exchange_form(cred: FederatedCredential, assertion: str) -> dict[str, str]:
    """The token request's form for ``cred``'s provider, carrying ``assertion``."""
    if cred.provider == "entra":
        form = {
            "grant_type": "client_credentials",
            "client_id": cred.client_id or "",
            "client_assertion_type": ASSERTION_TYPE,
            "client_assertion": assertion,
        }
        if cred.scope:
            form["scope"] = cred.scope
        return form
    form = {
        "grant_type": TOKEN_EXCHANGE_GRANT,
        "subject_token": assertion,
        "subject_token_type": JWT_TOKEN_TYPE,
        "scope": cred.scope or DATABRICKS_DEFAULT_SCOPE,
    }
    if cred.client_id:
        form["client_id"] = cred.client_id
    return form


def sign_assertion(
    config: LockgateConfig,
    cred: FederatedCredential,
    signer: AssertionSigner | None,
    *,
    now: float,
) -> str:
    """A fresh assertion for ``cred``, signed with the current key of its algorithm."""
    if signer is None:
        raise CredentialError(
            f"credential {cred.name!r}: federation needs the gateway's signing keys "
            "(this process has none to sign with)"
        )
    alg = config.federation_algorithm(cred)
    try:
        return signer(assertion_claims(cred, config.issuer_url, now=now), alg)
    except ValueError:
        raise CredentialError(
            f"credential {cred.name!r}: no {alg} signing key to sign its assertion with "
            f"(signing.algorithms must include {alg})"
        ) from None


async def fetch_federated_token(
    session: aiohttp.ClientSession,
    config: LockgateConfig,
    cred: FederatedCredential,
    signer: AssertionSigner | None,
    *,
    clock: Callable[[], float] = time.time,
) -> AccessToken:
    """Exchange a fresh assertion for ``cred``'s access token."""
    check_transport(cred.token_url, cred.name)  # before anything is signed
    assertion = sign_assertion(config, cred, signer, now=clock())
    return await request_token(
        session,
        cred.token_url,
        exchange_form(cred, assertion),
        name=cred.name,
        refresh_before=cred.refresh_before,
        clock=clock,
        refused_hint=_trust_hint(config, cred),
    )


def trusted_as(config: LockgateConfig, cred: FederatedCredential) -> str:
    """What the cloud's federated credential or policy must name for ``cred``:
    ``issuer <url>, subject <sub>, audience <aud> (<alg>)`` (configuration, no secret)."""
    return (
        f"issuer {config.issuer_url}, subject {cred.assertion_subject}, "
        f"audience {cred.assertion_audience} ({config.federation_algorithm(cred)})"
    )


def _trust_hint(config: LockgateConfig, cred: FederatedCredential) -> str:
    """The end of a refusal's message: who refused and what it must trust."""
    provider = _PROVIDER_NAMES[cred.provider]
    where = (
        f"app {cred.client_id}'s federated credential"
        if cred.provider == "entra"
        else "the federation policy" + (f" of {cred.client_id}" if cred.client_id else "")
    )
    return f": {provider} refused the federated assertion; {where} must trust " + trusted_as(
        config, cred
    )


__all__ = [
    "DATABRICKS_DEFAULT_SCOPE",
    "JWT_TOKEN_TYPE",
    "TOKEN_EXCHANGE_GRANT",
    "AssertionSigner",
    "assertion_claims",
    "exchange_form",
    "fetch_federated_token",
    "sign_assertion",
    "trusted_as",
]
