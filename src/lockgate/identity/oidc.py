"""OIDC subject tokens from trusted issuers, for RFC 8693 token exchange.

Strategy: pick the configured issuer by the token's (unverified) ``iss`` — exact string
match, nothing else is trusted — then verify with keys from that issuer's JWKS only.
Discovery (``/.well-known/openid-configuration``) and the JWKS are fetched with aiohttp and
cached for ``max_age``; an unknown ``kid`` triggers one refetch, at most every
``refetch_interval`` seconds, so a flood of garbage kids cannot make us hammer the IdP.

Rules: ``alg`` must be in the issuer's configured ``algorithms`` (config already forbids
``none`` and HS*), and must fit the JWK's key type; ``iss``, ``aud``, ``exp`` are required
and checked; ``sub`` must match one of the issuer's ``subjects`` globs.

One issuer may be trusted by several deployments (one Kubernetes cluster or Entra tenant
hosting two Airflow installations): each entry is tried, and the token speaks for the one
deployment whose entry takes it (audience, algorithm, subjects). A token that entries of
two deployments would take is refused (``ambiguous_subject``), never given to either.
"""

from __future__ import annotations

import asyncio
import fnmatch
import json
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import jwt

from lockgate import _log
from lockgate.config import OidcIssuer
from lockgate.errors import AuthenticationError
from lockgate.identity.tokens import split_jwt, unverified_claims, verified_claims

SUBJECT_TOKEN_TYPES = frozenset(
    {"urn:ietf:params:oauth:token-type:jwt", "urn:ietf:params:oauth:token-type:id_token"}
)
_MAX_DOC_BYTES = 512 * 1024
_KTY_FOR_ALG = {"RS": "RSA", "PS": "RSA", "ES": "EC", "Ed": "OKP"}
log = _log.get("identity.oidc")

# One key of an issuer's JWKS document, as published (JSON; PyJWK builds the key from it).
Jwk = dict[str, Any]


@dataclass
class _IssuerKeys:
    keys: dict[str, Jwk] = field(default_factory=dict)  # kid -> the key as published
    fetched_at: float = float("-inf")
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)


@dataclass(frozen=True, slots=True)
class SubjectToken:
    issuer: OidcIssuer
    subject: str
    claims: dict[str, Any]

    @property
    def deployment(self) -> str:
        return self.issuer.deployment


class OidcVerifier:
    def __init__(
        self,
        issuers: list[OidcIssuer],
        session: Callable[[], Awaitable[aiohttp.ClientSession]],
        *,
        leeway: int = 5,
        refetch_interval: float = 10.0,
        max_age: float = 3600.0,
        timeout: float = 5.0,
    ) -> None:
        self._issuers: dict[str, list[OidcIssuer]] = {}
        for entry in issuers:
            self._issuers.setdefault(entry.issuer.rstrip("/"), []).append(entry)
        self._session = session
        self._leeway = leeway
        self._refetch_interval = refetch_interval
        self._max_age = max_age
        self._timeout = aiohttp.ClientTimeout(total=timeout)
        self._cache: dict[tuple[str, str | None], _IssuerKeys] = {}

    async def verify(self, token: str) -> SubjectToken:
        header, _ = split_jwt(token)
        iss = unverified_claims(token).get("iss")
        entries = self._issuers.get(iss.rstrip("/")) if isinstance(iss, str) else None
        if not entries or not isinstance(iss, str):
            raise AuthenticationError("wrong_issuer")
        alg = header["alg"]
        if alg.upper().startswith("HS") or alg.lower() == "none":
            raise AuthenticationError("unsupported_alg")
        entries = [conf for conf in entries if alg in conf.algorithms]
        if not entries:
            raise AuthenticationError("unsupported_alg")
        kid = header.get("kid")
        if kid is not None and not isinstance(kid, str):
            raise AuthenticationError("bad_header")
        taken: list[SubjectToken] = []
        refusal: AuthenticationError | None = None
        for conf in entries:
            try:
                taken.append(await self._verify_for(conf, token, iss, kid, alg))
            except AuthenticationError as exc:
                refusal = refusal or exc
        if len({subject.deployment for subject in taken}) > 1:
            raise AuthenticationError("ambiguous_subject")
        if taken:
            return taken[0]
        assert refusal is not None
        raise refusal

    async def _verify_for(
        self, conf: OidcIssuer, token: str, iss: str, kid: str | None, alg: str
    ) -> SubjectToken:
        jwk = await self._key_for(conf, kid, alg)
        claims = verified_claims(
            token,
            jwk.key,
            alg=alg,
            audience=conf.audience,
            issuer=iss,
            leeway=self._leeway,
            require=("exp", "iss", "aud", "sub"),
        )
        sub = claims.get("sub")
        if not isinstance(sub, str) or not any(
            fnmatch.fnmatchcase(sub, pattern) for pattern in conf.subjects
        ):
            raise AuthenticationError("subject_not_allowed")
        return SubjectToken(conf, sub, claims)

    # -- keys ---------------------------------------------------------------------------------
    async def _key_for(self, conf: OidcIssuer, kid: str | None, alg: str) -> jwt.PyJWK:
        entry = self._cache.setdefault((conf.issuer.rstrip("/"), conf.jwks_uri), _IssuerKeys())
        # Stale keys are refetched too, so a key the IdP withdrew stops working within max_age.
        stale = time.monotonic() - entry.fetched_at >= self._max_age
        jwk = None if stale else _pick(entry.keys, kid, alg)
        if jwk is None:
            async with entry.lock:
                jwk = _pick(entry.keys, kid, alg)  # another request may have refetched
                due = time.monotonic() - entry.fetched_at >= self._refetch_interval
                if (jwk is None or stale) and due:
                    entry.fetched_at = time.monotonic()
                    entry.keys = await self._fetch_jwks(conf)
                    jwk = _pick(entry.keys, kid, alg)
        if jwk is None:
            raise AuthenticationError("unknown_kid")
        return jwk

    async def _fetch_jwks(self, conf: OidcIssuer) -> dict[str, Jwk]:
        try:
            uri = conf.jwks_uri
            if uri is None:
                discovery = await self._get_json(
                    conf.issuer.rstrip("/") + "/.well-known/openid-configuration"
                )
                named = discovery.get("issuer")
                if not isinstance(named, str) or named.rstrip("/") != conf.issuer.rstrip("/"):
                    log.warning(
                        "oidc discovery names another issuer",
                        extra={"fields": {"issuer": conf.issuer}},
                    )
                    return {}
                uri = discovery.get("jwks_uri")
                if not isinstance(uri, str):
                    return {}
            doc = await self._get_json(uri)
        except (aiohttp.ClientError, TimeoutError, ValueError) as exc:
            log.warning(
                "oidc key fetch failed",
                extra={"fields": {"issuer": conf.issuer, "error": type(exc).__name__}},
            )
            return {}
        keys: dict[str, Jwk] = {}
        for raw in doc.get("keys", []) if isinstance(doc.get("keys"), list) else []:
            if not isinstance(raw, dict) or raw.get("kty") == "oct" or "d" in raw:
                continue  # symmetric or private material never counts as a verification key
            try:
                keys[str(raw.get("kid", ""))] = raw
            except (TypeError, ValueError):
                continue
        return keys

    async def _get_json(self, url: str) -> dict[str, Any]:
        session = await self._session()
        async with session.get(url, timeout=self._timeout, allow_redirects=False) as resp:
            if resp.status != 200:
                raise ValueError(f"HTTP {resp.status}")
            body = await resp.content.read(_MAX_DOC_BYTES + 1)
            if len(body) > _MAX_DOC_BYTES:
                raise ValueError("document too large")
            doc = json.loads(body)
            if not isinstance(doc, dict):
                raise ValueError("not a JSON object")
            return doc


def _pick(keys: dict[str, Jwk], kid: str | None, alg: str) -> jwt.PyJWK | None:
    """The JWK for ``kid`` that fits ``alg``; without a kid, only if exactly one fits."""
    kty = _KTY_FOR_ALG.get(alg[:2])
    candidates = list(keys.values()) if kid is None else [keys[kid]] if kid in keys else []
    fitting = [
        raw
        for raw in candidates
        if raw.get("kty") == kty and raw.get("alg") in (None, alg) and raw.get("use") != "enc"
    ]
    if len(fitting) != 1:
        return None
    try:
        return jwt.PyJWK(fitting[0], algorithm=alg)
    except jwt.PyJWTError:
        return None
