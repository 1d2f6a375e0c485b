"""Human sign-in with OIDC: authorization code flow with PKCE (S256), ``state`` and ``nonce``.

The provider (Entra ID, Okta, Keycloak ...) is found by discovery
(``<issuer>/.well-known/openid-configuration``, cached an hour; it must name this very
issuer, and every endpoint it names must be https, or plain http to this machine). TLS to
the provider is checked against the system's trust store, or ``ca_file``'s CAs alone (a
provider on a private CA); redirects are never followed and a document is read up to
512 KiB within 10 seconds. The
code is exchanged at the token endpoint with the PKCE verifier, and with
``client_secret_post`` when ``client_secret_file`` is set (the secret is read from the file
on each exchange and never logged); otherwise the console is a public client.

The ID token is the only thing trusted, and only once verified with PyJWT: its ``alg``
pinned to ``console.oidc.algorithms`` (``none`` and HMAC are never accepted: an HS256 token
"signed" with the provider's public key is refused before any key is looked at), its
signature against the provider's JWKS key of its ``kid`` (an unknown kid refetches the JWKS
at most every 10 seconds; keys an hour old are fetched again, so a withdrawn key stops
working), ``iss`` the issuer, ``aud`` the client id (several audiences: ``azp`` must be the
client id; an ``azp`` present must be it too), ``exp``/``iat``/``nbf`` with a small leeway,
and ``nonce`` the one this sign-in sent. The role is the highest of viewer < operator <
admin whose configured claim values meet the ``roles_claim`` claim (a list or a string);
none: refused, naming the claim expected. The subject is ``oid`` when present (Entra ID's
stable user id), else ``sub``; a subject of the shape of a one-time link's
(``link:...``) is refused, so the trail never mistakes a user for a link's admin.

A refusal is :class:`SignInRefused` with a short reason fit for the audit trail and the
page: never a token, a code or a claim's value.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
import secrets
import ssl
import time
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlencode, urlsplit

import aiohttp
import jwt

from lockgate import _log
from lockgate._files import read_regular_file
from lockgate._urls import private_channel
from lockgate.config.console import ROLES, ConsoleOidc
from lockgate.console.links import LINK_SUBJECT_PREFIX
from lockgate.errors import AuthenticationError
from lockgate.identity.tokens import split_jwt, verified_claims

log = _log.get("console.oidc")

DISCOVERY_MAX_AGE = 3600.0
JWKS_REFETCH_INTERVAL = 10.0
LEEWAY = 30  # seconds of clock difference tolerated on exp/iat/nbf
_MAX_DOC_BYTES = 512 * 1024
_TIMEOUT = aiohttp.ClientTimeout(total=10)


class SignInRefused(Exception):
    """A sign-in that did not succeed; ``reason`` is a short slug, ``message`` for people."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(reason)
        self.reason = reason
        self.message = message


@dataclass(frozen=True)
class Provider:
    """What discovery says about the provider."""

    authorization_endpoint: str
    token_endpoint: str
    jwks_uri: str


@dataclass(frozen=True)
class SignedIn:
    """A verified ID token, reduced to what the console keeps."""

    subject: str
    name: str
    role: str


def pkce_pair() -> tuple[str, str]:
    """(verifier, S256 challenge) per RFC 7636."""
    verifier = secrets.token_urlsafe(48)  # 64 characters of [A-Za-z0-9_-]
    challenge = base64.urlsafe_b64encode(hashlib.sha256(verifier.encode()).digest())
    return verifier, challenge.rstrip(b"=").decode()


class OidcClient:
    """One provider's sign-in: authorize URL, code exchange, ID token check, role."""

    def __init__(self, settings: ConsoleOidc, redirect_uri: str) -> None:
        self.settings = settings
        self.issuer = settings.issuer.rstrip("/")
        self.redirect_uri = redirect_uri
        self._session: aiohttp.ClientSession | None = None
        self._provider: Provider | None = None
        self._provider_at = float("-inf")
        self._keys: dict[str, dict[str, Any]] = {}
        self._keys_at = float("-inf")  # last fetch tried
        self._keys_ok_at = float("-inf")  # last fetch that answered
        self._lock = asyncio.Lock()

    @property
    def issuer_host(self) -> str:
        """The provider's host name, for the sign-in button."""
        return urlsplit(self.issuer).hostname or self.issuer

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    # -- the flow -------------------------------------------------------------------------
    async def authorize_url(self, *, state: str, nonce: str, challenge: str) -> str:
        provider = await self.provider()
        query = urlencode(
            {
                "response_type": "code",
                "client_id": self.settings.client_id,
                "redirect_uri": self.redirect_uri,
                "scope": " ".join(self.settings.scopes),
                "state": state,
                "nonce": nonce,
                "code_challenge": challenge,
                "code_challenge_method": "S256",
            }
        )
        sep = "&" if "?" in provider.authorization_endpoint else "?"
        return f"{provider.authorization_endpoint}{sep}{query}"

    async def sign_in(self, *, code: str, verifier: str, nonce: str) -> SignedIn:
        """Exchange ``code`` and verify the ID token it brings; the signed-in user."""
        id_token = await self._exchange(code, verifier)
        claims = await self.verify(id_token, nonce=nonce)
        return self.user_of(claims)

    async def _exchange(self, code: str, verifier: str) -> str:
        provider = await self.provider()
        form = {
            "grant_type": "authorization_code",
            "code": code,
            "redirect_uri": self.redirect_uri,
            "client_id": self.settings.client_id,
            "code_verifier": verifier,
        }
        secret_file = self.settings.client_secret_file
        if secret_file is not None:
            try:
                form["client_secret"] = read_regular_file(secret_file, 64 * 1024).decode().strip()
            except (OSError, ValueError, UnicodeDecodeError):
                log.error(
                    "console client secret file unreadable",
                    extra={"fields": {"path": str(secret_file)}},
                )
                raise SignInRefused(
                    "client_secret_unreadable", "The console's client secret cannot be read."
                ) from None
        try:
            session = self._client()
            async with session.post(provider.token_endpoint, data=form, timeout=_TIMEOUT,
                                    allow_redirects=False) as resp:  # fmt: skip
                body = await _read_json(resp)
                status = resp.status
        except (aiohttp.ClientError, TimeoutError, ValueError) as exc:
            log.warning(
                "console token request failed", extra={"fields": {"error": type(exc).__name__}}
            )
            raise SignInRefused(
                "token_request_failed", "The sign-in provider could not be reached."
            ) from None
        if status != 200:
            # the provider's error code is safe to name (never the code we sent)
            error = body.get("error") if isinstance(body.get("error"), str) else f"http_{status}"
            raise SignInRefused(
                "token_refused", f"The sign-in provider refused the code ({error})."
            )
        id_token = body.get("id_token")
        if not isinstance(id_token, str):
            raise SignInRefused("no_id_token", "The sign-in provider sent no ID token.")
        return id_token

    # -- the ID token ---------------------------------------------------------------------
    async def verify(self, id_token: str, *, nonce: str) -> dict[str, Any]:
        """The ID token's claims once every check passes (see the module docstring)."""
        try:
            header, _ = split_jwt(id_token)
        except AuthenticationError as exc:
            raise SignInRefused(f"id_token_{exc}", "The ID token is malformed.") from None
        alg = header["alg"]
        if alg not in self.settings.algorithms:
            raise SignInRefused(
                "unsupported_alg", f"The ID token is signed with {alg!r}, which is not allowed."
            )
        kid = header.get("kid")
        if kid is not None and not isinstance(kid, str):
            raise SignInRefused("id_token_bad_header", "The ID token is malformed.")
        key = await self._key(kid, alg)
        try:
            claims = verified_claims(
                id_token, key.key, alg=alg, audience=self.settings.client_id,
                issuer=self.settings.issuer, leeway=LEEWAY,
                require=("exp", "iat", "iss", "aud", "sub"),
            )  # fmt: skip
        except AuthenticationError as exc:
            raise SignInRefused(f"id_token_{exc}", "The ID token was not accepted.") from None
        aud, azp = claims.get("aud"), claims.get("azp")
        several = isinstance(aud, list) and len(aud) > 1
        if (several or azp is not None) and azp != self.settings.client_id:
            # OIDC Core 3.1.3.7: a token for several parties must name us as its holder, and
            # one that names a holder must name us
            raise SignInRefused("id_token_wrong_azp", "The ID token was issued to another app.")
        got = claims.get("nonce")
        if not isinstance(got, str) or not hmac.compare_digest(got.encode(), nonce.encode()):
            raise SignInRefused("wrong_nonce", "The ID token was not issued for this sign-in.")
        return claims

    def user_of(self, claims: dict[str, Any]) -> SignedIn:
        """Subject, display name and role of verified ``claims``."""
        oid, sub = claims.get("oid"), claims.get("sub")
        subject = oid if isinstance(oid, str) and oid else sub
        if not isinstance(subject, str) or not subject:
            raise SignInRefused("no_subject", "The ID token names no user.")
        if subject.startswith(LINK_SUBJECT_PREFIX):
            # console:link:<digest> names a one-time link's admin in the audit trail
            raise SignInRefused("reserved_subject", "The ID token's user id is not accepted.")
        role = self.role_of(claims)
        if role is None:
            raise SignInRefused(
                "no_role",
                f"Your account has no Lockgate role: the {self.settings.roles_claim!r} claim "
                f"must hold one of {', '.join(self._role_values())}.",
            )
        name = claims.get(self.settings.name_claim)
        return SignedIn(subject, name if isinstance(name, str) and name else subject, role)

    def role_of(self, claims: dict[str, Any]) -> str | None:
        """The highest role whose claim values meet the roles claim; None: no role."""
        held = claims.get(self.settings.roles_claim)
        values = (
            {held}
            if isinstance(held, str)
            else {v for v in held if isinstance(v, str)}
            if isinstance(held, list)
            else set()
        )
        for role in reversed(ROLES):
            if values & set(self.settings.roles.get(role, [])):  # type: ignore[call-overload]
                return role
        return None

    def _role_values(self) -> list[str]:
        return [v for role in reversed(ROLES) for v in self.settings.roles.get(role, [])]  # type: ignore[call-overload]

    # -- discovery and keys ---------------------------------------------------------------
    async def provider(self) -> Provider:
        """The provider's endpoints from discovery (cached :data:`DISCOVERY_MAX_AGE`)."""
        if self._provider is not None and time.monotonic() - self._provider_at < DISCOVERY_MAX_AGE:
            return self._provider
        async with self._lock:
            if self._provider is None or time.monotonic() - self._provider_at >= DISCOVERY_MAX_AGE:
                self._provider = await self._discover()
                self._provider_at = time.monotonic()
        return self._provider

    async def _discover(self) -> Provider:
        try:
            doc = await self._get_json(f"{self.issuer}/.well-known/openid-configuration")
        except (aiohttp.ClientError, TimeoutError, ValueError) as exc:
            log.warning(
                "console oidc discovery failed",
                extra={"fields": {"issuer": self.issuer, "error": str(exc)[:200]}},
            )
            raise SignInRefused(
                "discovery_failed", "The sign-in provider could not be reached."
            ) from None
        named = doc.get("issuer")
        if not isinstance(named, str) or named.rstrip("/") != self.issuer:
            raise SignInRefused(
                "discovery_wrong_issuer", "The sign-in provider names another issuer."
            )
        endpoints = [doc.get(k) for k in ("authorization_endpoint", "token_endpoint", "jwks_uri")]
        if not all(isinstance(e, str) and private_channel(e) for e in endpoints):
            raise SignInRefused(
                "discovery_insecure", "The sign-in provider's endpoints are not https."
            )
        return Provider(*endpoints)  # type: ignore[arg-type]

    async def _key(self, kid: str | None, alg: str) -> jwt.PyJWK:
        """The provider's key ``kid``: fetched again when unknown (at most every
        :data:`JWKS_REFETCH_INTERVAL`) or older than :data:`DISCOVERY_MAX_AGE` (a key the
        provider withdrew stops working); keys that old that cannot be fetched again are
        dropped (fail closed)."""
        stale = time.monotonic() - self._keys_ok_at >= DISCOVERY_MAX_AGE
        jwk = None if stale else self._pick(kid)
        if jwk is None:
            # before the lock: discovery takes it too (asyncio's lock is not reentrant)
            provider = await self.provider()
            async with self._lock:
                stale = time.monotonic() - self._keys_ok_at >= DISCOVERY_MAX_AGE
                jwk = None if stale else self._pick(kid)
                due = time.monotonic() - self._keys_at >= JWKS_REFETCH_INTERVAL
                if jwk is None and (due or stale):
                    self._keys_at = time.monotonic()
                    fetched = await self._fetch_keys(provider)
                    if fetched is not None:
                        self._keys, self._keys_ok_at = fetched, self._keys_at
                    elif stale:
                        self._keys = {}
                    jwk = self._pick(kid)
        if jwk is None:
            raise SignInRefused(
                "unknown_kid", "The ID token is signed with a key the provider does not publish."
            )
        try:
            return jwt.PyJWK(jwk, algorithm=alg)  # refuses a key of another type than alg's
        except (jwt.PyJWKError, jwt.InvalidKeyError, ValueError, TypeError):
            raise SignInRefused(
                "key_mismatch", "The ID token's key does not fit its algorithm."
            ) from None

    def _pick(self, kid: str | None) -> dict[str, Any] | None:
        if kid is not None:
            return self._keys.get(kid)
        return next(iter(self._keys.values())) if len(self._keys) == 1 else None

    async def _fetch_keys(self, provider: Provider) -> dict[str, dict[str, Any]] | None:
        """The provider's public keys by kid; None when they could not be had."""
        try:
            doc = await self._get_json(provider.jwks_uri)
        except (aiohttp.ClientError, TimeoutError, ValueError) as exc:
            log.warning(
                "console oidc key fetch failed", extra={"fields": {"error": str(exc)[:200]}}
            )
            return None
        keys: dict[str, dict[str, Any]] = {}
        for raw in doc.get("keys", []) if isinstance(doc.get("keys"), list) else []:
            if isinstance(raw, dict) and raw.get("kty") != "oct" and "d" not in raw:
                keys[str(raw.get("kid", ""))] = raw  # public asymmetric keys only
        return keys

    async def _get_json(self, url: str) -> dict[str, Any]:
        if not private_channel(url):
            raise ValueError("plain http to another host")
        async with self._client().get(url, timeout=_TIMEOUT, allow_redirects=False) as resp:
            if resp.status != 200:
                raise ValueError(f"HTTP {resp.status}")
            return await _read_json(resp)

    def _client(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=self._tls()))
        return self._session

    def _tls(self) -> ssl.SSLContext | bool:
        """TLS to the provider: the system's trust store, or ``ca_file``'s CAs alone (a
        provider on a private CA); ValueError when that file cannot be loaded."""
        ca_file = self.settings.ca_file
        if ca_file is None:
            return True
        try:
            return ssl.create_default_context(cafile=str(ca_file))
        except (OSError, ssl.SSLError):
            log.error(
                "console oidc ca_file cannot be loaded", extra={"fields": {"path": str(ca_file)}}
            )
            raise ValueError(f"cannot load CA file {ca_file}") from None


async def _read_json(resp: aiohttp.ClientResponse) -> dict[str, Any]:
    body = bytearray()
    async for chunk in resp.content.iter_chunked(64 * 1024):
        body += chunk
        if len(body) > _MAX_DOC_BYTES:
            raise ValueError("document too large")
    try:
        doc = json.loads(bytes(body))
    except (UnicodeDecodeError, ValueError, RecursionError):
        raise ValueError("not JSON") from None
    if not isinstance(doc, dict):
        raise ValueError("not a JSON object")
    return doc


__all__ = ["OidcClient", "Provider", "SignInRefused", "SignedIn", "pkce_pair"]
