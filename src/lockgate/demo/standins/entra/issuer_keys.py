"""The signing keys of an outside OIDC issuer, fetched the way a relying party does.

Used by the test Entra ID (workload identity federation), the test Databricks workspace
(OAuth token federation) and the test resource servers (Cosmos DB, the orders API) that
check Entra's own tokens. Written from OpenID Connect Discovery 1.0 and RFC 7517, not from
Lockgate's verifier, so a mistake in one is caught by the other:

- ``<issuer>/.well-known/openid-configuration`` is fetched over https only (trust: the CA
  file given, else the system's), and its ``issuer`` must equal the issuer asked for,
  character for character;
- its ``jwks_uri`` (https too) gives the keys; they are cached per issuer, and fetched again
  when a token names a ``kid`` the cache does not hold (the issuer rotated);
- a token with no ``kid`` is accepted only when the set holds exactly one key.

Signature checking (:func:`verify_signature`) pins the algorithm the caller allows, checks it
against the key's type (an RSA key never verifies an HMAC or EC signature), and leaves the
claims to the caller, whose rules (skew, audience, lifetime) differ per service.

Part of a stand-in for demos and tests, written from the public docs: not the service.
"""

from __future__ import annotations

import ssl
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import jwt

__all__ = ["IssuerKeyError", "IssuerKeys", "UnknownKeyId", "verify_signature"]

# The JWK key type each algorithm needs (RFC 7518 §3.1).
_KEY_TYPE = {"RS256": "RSA", "ES256": "EC"}


class IssuerKeyError(Exception):
    """The issuer's discovery document or key set could not be had, or did not fit."""


class UnknownKeyId(IssuerKeyError):
    """The key set, fetched anew, holds no key of the token's ``kid``."""


@dataclass
class _Cached:
    jwks_uri: str
    keys: dict[str, dict[str, Any]]  # kid -> JWK ("" for a key without one)


@dataclass
class IssuerKeys:
    """Keys of outside issuers, cached per issuer. ``fetched`` lists every URL fetched."""

    ca_file: Path | str | None = None
    timeout: float = 5.0
    # Plain http only for a key set URL a test configured by hand (a resource server
    # trusting a test Entra ID served without TLS); discovery of an issuer is https always.
    allow_http: bool = False
    fetched: list[str] = field(default_factory=list)
    _cache: dict[str, _Cached] = field(default_factory=dict)

    def forget(self, issuer: str | None = None) -> None:
        """Drop the cache (of one issuer, or all)."""
        if issuer is None:
            self._cache.clear()
        else:
            self._cache.pop(issuer, None)

    async def key(self, issuer: str, kid: str | None) -> dict[str, Any]:
        """The JWK ``kid`` of ``issuer`` (discovery first); IssuerKeyError if none."""
        return await self._cached(issuer, kid, lambda: self._discover(issuer))

    async def key_at(self, jwks_uri: str, kid: str | None) -> dict[str, Any]:
        """The JWK ``kid`` from a key set at a known URL (no discovery), cached by URL."""
        return await self._cached(jwks_uri, kid, lambda: _known(jwks_uri))

    async def _cached(
        self, source: str, kid: str | None, locate: Callable[[], Awaitable[str]]
    ) -> dict[str, Any]:
        cached = self._cache.get(source)
        if cached is None or not _pick(cached.keys, kid):  # unknown kid: the issuer rotated
            jwks_uri = await locate()
            cached = _Cached(jwks_uri, await self._fetch_keys(jwks_uri))
            self._cache[source] = cached
        found = _pick(cached.keys, kid)
        if found is None:
            raise UnknownKeyId(f"no key {kid!r} in the key set of {source}")
        return found

    async def _discover(self, issuer: str) -> str:
        doc = await self._get_json(
            issuer.rstrip("/") + "/.well-known/openid-configuration", discovery=True
        )
        if doc.get("issuer") != issuer:
            raise IssuerKeyError("the discovery document names another issuer")
        jwks_uri = doc.get("jwks_uri")
        if not isinstance(jwks_uri, str):
            raise IssuerKeyError("the discovery document has no jwks_uri")
        return jwks_uri

    async def _fetch_keys(self, jwks_uri: str) -> dict[str, dict[str, Any]]:
        keys = (await self._get_json(jwks_uri)).get("keys")
        if not isinstance(keys, list):
            raise IssuerKeyError("the key set has no keys")
        return {str(k.get("kid", "")): k for k in keys if isinstance(k, dict)}

    async def _get_json(self, url: str, *, discovery: bool = False) -> dict[str, Any]:
        plain_ok = self.allow_http and not discovery and url.startswith("http://")
        if not url.startswith("https://") and not plain_ok:
            raise IssuerKeyError(f"not an https URL: {url}")
        self.fetched.append(url)
        context = (
            ssl.create_default_context(cafile=str(self.ca_file) if self.ca_file else None)
            if url.startswith("https://")
            else None
        )
        timeout = aiohttp.ClientTimeout(total=self.timeout)
        try:
            async with (
                aiohttp.ClientSession(timeout=timeout) as http,
                http.get(url, ssl=context or True) as answer,
            ):
                if answer.status != 200:
                    raise IssuerKeyError(f"{url} answered {answer.status}")
                body = await answer.json(content_type=None)
        except (aiohttp.ClientError, TimeoutError, ValueError) as exc:
            raise IssuerKeyError(f"{url}: {type(exc).__name__}") from None
        if not isinstance(body, dict):
            raise IssuerKeyError(f"{url} did not answer a JSON object")
        return body


async def _known(jwks_uri: str) -> str:
    return jwks_uri


def _pick(keys: dict[str, dict[str, Any]], kid: str | None) -> dict[str, Any] | None:
    if kid is None:
        return next(iter(keys.values())) if len(keys) == 1 else None
    return keys.get(kid)


def verify_signature(token: str, jwk: dict[str, Any], algorithm: str) -> dict[str, Any]:
    """The claims of ``token`` once its ``algorithm`` signature verifies with ``jwk``.

    Only the signature (and the algorithm's fit to the key) is checked here: every claim,
    including times, is the caller's to judge. Raises jwt.PyJWTError on any failure.
    """
    if jwk.get("kty") != _KEY_TYPE.get(algorithm) or jwk.get("alg", algorithm) != algorithm:
        raise jwt.InvalidAlgorithmError(f"the key does not sign {algorithm}")
    key = jwt.PyJWK(jwk, algorithm=algorithm)
    claims: dict[str, Any] = jwt.decode(
        token,
        key.key,
        algorithms=[algorithm],
        options={"verify_aud": False, "verify_exp": False, "verify_nbf": False,
                 "verify_iat": False, "verify_iss": False},
    )  # fmt: skip
    return claims
