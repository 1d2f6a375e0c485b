"""Mint and verify Lockgate tokens: JWTs whose audience is one resource name, EdDSA unless
``signing.audiences`` maps that resource to RS256 or ES256.

Verification strategy, strictest first and cheapest on repeat:

1. Size and shape: at most 8 KiB, exactly three strict base64url segments.
2. The header is parsed here, not by a library: a JSON object, ``alg`` exactly one of
   ``EdDSA``/``RS256``/``ES256``, no ``crit``, and a ``kid`` that is a known RFC 7638
   thumbprint in the :class:`KeyStore` whose key is for that very ``alg``: the algorithm
   is pinned per key, never chosen by the token (``alg_mismatch`` otherwise). Embedded
   ``jwk``/``jku``/``x5u``/``x5c`` are ignored: keys come only from the store.
3. Signature of the key's length (an ES256 signature is raw r||s, never DER), then via
   PyJWT with ``algorithms=[key.alg]`` and that key's public half.
4. Claims: every claim present and typed, ``sub`` equal to the principal, issuer, then
   time (``exp``/``nbf``/``iat`` with leeway), audience, shared-state staleness and
   revocation.

Every engine verifies here, so this is where shared state that went stale stops every
decision: with ``state: {postgresql: ...}`` and the database out of reach longer than
``max_staleness``, each token is refused with reason ``shared_state_stale`` (the message
says for how long; :mod:`lockgate.identity.staleness`), audited by the engine like any
refusal. Within the bound, revocations and keys held in memory decide.

Verified claims are cached by token string (bounded). A cache hit re-checks only time,
audience and revocation, which keeps the hot path in the low microseconds.
Errors are :class:`AuthenticationError` with a reason slug, never the token. A refusal at
step 4's time, audience or revocation checks (the signature verified) also carries the
claims (``exc.claims``), so it is audited with the token's jti, deployment and DAG; every
earlier refusal carries None: nothing in an unverified token is worth recording.
"""

from __future__ import annotations

import base64
import binascii
import json
import re
import secrets
import time
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

import jwt

from lockgate import _log, metrics
from lockgate.config import SigningSettings
from lockgate.errors import AuthenticationError, LockgateError
from lockgate.identity.keys import ALGORITHMS, KID_RE, KeyStore
from lockgate.identity.model import Claims, TaskIdentity
from lockgate.identity.revocation import RevocationStore
from lockgate.identity.staleness import STALE_REASON, StalenessBound
from lockgate.tracing import valid_traceparent

if TYPE_CHECKING:
    from jwt.algorithms import AllowedPublicKeys

MAX_TOKEN_BYTES = 8 * 1024
ALGORITHM = "EdDSA"  # of Lockgate's own tokens unless signing.audiences says otherwise
_B64URL_RE = re.compile(r"^[A-Za-z0-9_-]*\Z")  # \Z: "$" would pass a final newline
log = _log.get("identity.tokens")


def b64url_decode(segment: str) -> bytes:
    """Strict base64url without padding; ``ValueError`` on anything else."""
    if not _B64URL_RE.match(segment) or len(segment) % 4 == 1:
        raise ValueError("not base64url")
    try:
        return base64.urlsafe_b64decode(segment + "=" * (-len(segment) % 4))
    except (binascii.Error, ValueError):
        raise ValueError("not base64url") from None


def split_jwt(token: str, max_bytes: int = MAX_TOKEN_BYTES) -> tuple[dict[str, Any], bytes]:
    """Check shape and return (header, signature). Reasons: missing/oversized/malformed/bad_header.

    Shared with the proof and OIDC verifiers, which then apply their own ``alg`` rules.
    """
    if not token or not isinstance(token, str):
        raise AuthenticationError("missing")
    if len(token) > max_bytes:
        raise AuthenticationError("oversized")
    parts = token.split(".")
    if len(parts) != 3 or not parts[0] or not parts[1]:
        raise AuthenticationError("malformed")
    try:
        raw_header = b64url_decode(parts[0])
        b64url_decode(parts[1])
        signature = b64url_decode(parts[2])
    except ValueError:
        raise AuthenticationError("malformed") from None
    try:
        header = json.loads(raw_header)
    except (UnicodeDecodeError, ValueError, RecursionError):  # RecursionError: [[[[...]]]]
        raise AuthenticationError("bad_header") from None
    if not isinstance(header, dict):
        raise AuthenticationError("bad_header")
    if "crit" in header:  # we understand no extensions, so any critical one must fail
        raise AuthenticationError("bad_header")
    if not isinstance(header.get("alg"), str):
        raise AuthenticationError("bad_header")
    return header, signature


def unverified_claims(token: str) -> dict[str, Any]:
    """The payload before its signature is checked: only ever used to pick the verifying key."""
    try:
        payload = jwt.decode(token, options={"verify_signature": False})
    except jwt.PyJWTError:
        raise AuthenticationError("malformed") from None
    return payload if isinstance(payload, dict) else {}


def verified_claims(
    token: str,
    key: AllowedPublicKeys,
    *,
    alg: str,
    audience: str | Sequence[str],
    issuer: str,
    leeway: float,
    require: Sequence[str],
    misaddressed: str | None = None,
) -> dict[str, Any]:
    """Check an outside JWT's signature, lifetime, audience and issuer; refuse with a slug.

    Shared by the proof and OIDC verifiers. ``misaddressed`` is the one slug for a wrong
    audience or issuer where the verifier should not say which; None names each.
    """
    try:
        return jwt.decode(
            token,
            key,
            algorithms=[alg],
            audience=audience,
            issuer=issuer,
            leeway=leeway,
            options={"require": list(require)},
        )
    except jwt.PyJWTError as exc:
        reason = _jwt_reason(exc)
        if misaddressed and reason in ("wrong_audience", "wrong_issuer"):
            reason = misaddressed
        raise AuthenticationError(reason) from None


# What each refusal of PyJWT becomes; anything else it refuses is "malformed".
_JWT_REASONS: tuple[tuple[type[jwt.PyJWTError], str], ...] = (
    (jwt.ExpiredSignatureError, "expired"),
    (jwt.InvalidSignatureError, "bad_signature"),
    (jwt.InvalidAlgorithmError, "unsupported_alg"),
    (jwt.InvalidAudienceError, "wrong_audience"),
    (jwt.InvalidIssuerError, "wrong_issuer"),
    (jwt.ImmatureSignatureError, "not_yet_valid"),
    (jwt.MissingRequiredClaimError, "missing_claims"),
)


def _jwt_reason(exc: jwt.PyJWTError) -> str:
    return next((slug for kind, slug in _JWT_REASONS if isinstance(exc, kind)), "malformed")


class TokenIssuer:
    """Mints Lockgate tokens with the KeyStore's current key of the audience's algorithm
    (``signing.algorithm_for(resource)``: EdDSA unless mapped)."""

    def __init__(
        self,
        keys: KeyStore,
        issuer: str,
        *,
        clock: Callable[[], float] = time.time,
        signing: SigningSettings | None = None,
    ) -> None:
        self._keys = keys
        self.issuer = issuer
        self._clock = clock
        self._signing = signing

    def mint(
        self,
        identity: TaskIdentity,
        audience: str,
        ttl: int,
        *,
        traceparent: str | None = None,
    ) -> tuple[str, Claims]:
        """A signed token and its claims; ``traceparent`` (the asking task's trace, kept
        only when it is a valid W3C one) lets the gateway's spans join that trace."""
        if ttl <= 0:
            raise ValueError("ttl must be positive")
        now = int(self._clock())
        claims = Claims(
            iss=self.issuer,
            sub=identity.principal,
            aud=audience,
            exp=now + int(ttl),
            iat=now,
            nbf=now,
            jti=secrets.token_hex(16),  # 128 random bits
            deployment=identity.deployment,
            dag_id=identity.dag_id,
            task_id=identity.task_id,
            run_id=identity.run_id,
            try_number=int(identity.try_number),
            map_index=int(identity.map_index),
            traceparent=valid_traceparent(traceparent),
        )
        alg = ALGORITHM if self._signing is None else self._signing.algorithm_for(audience)
        key = self._keys.current(alg)
        token = jwt.encode(
            claims.to_payload(),
            key.private,
            algorithm=alg,
            headers={"kid": key.kid, "typ": "JWT"},
        )
        return token, claims


class TokenVerifier:
    """Verifies Lockgate tokens for one resource (audience) at a time."""

    def __init__(
        self,
        keys: KeyStore,
        revocations: RevocationStore | None,
        issuer: str,
        leeway: int = 5,
        clock: Callable[[], float] = time.time,
        *,
        cache_size: int = 10_000,
        reload_interval: float = 1.0,
        staleness: StalenessBound | None = None,
    ) -> None:
        self._keys = keys
        self._revocations = revocations
        self._staleness = staleness
        self.issuer = issuer
        self.leeway = leeway
        self._clock = clock
        self._cache: dict[str, Claims] = {}
        # The cache holds verdicts of one key set: emptied when keys change (a rotation with
        # --retire-after 0) or when the next published key's retirement time comes.
        self._cache_keys = keys.changes
        self._cache_until = keys.next_retirement()
        self._cache_size = cache_size
        self._reload_interval = reload_interval

    def verify(self, token: str, audience: str) -> Claims:
        """The token's claims if valid for ``audience`` now; else AuthenticationError(reason).

        Every refusal also counts in ``lockgate_token_rejections_total{reason}``, so callers
        (the gateway engines) need not count them again.
        """
        try:
            now = self._clock()
            claims = self._claims(token, now)
            self._check_dynamic(claims, audience, now)
        except AuthenticationError as exc:
            metrics.TOKEN_REJECTIONS.labels(reason=exc.reason).inc()
            raise
        return claims

    def verify_any_audience(self, token: str) -> Claims:
        """Signature, issuer, time and revocation, for callers that hold no resource name."""
        now = self._clock()
        claims = self._claims(token, now)
        self._check_dynamic(claims, claims.aud, now)
        return claims

    # -- internals ----------------------------------------------------------------------------
    def _claims(self, token: str, now: float) -> Claims:
        """The token's verified claims: from the cache while the key set that verified them
        stands, else verified afresh."""
        claims = self._cache.get(token) if isinstance(token, str) else None
        if claims is not None and (
            self._keys.changes != self._cache_keys or now >= self._cache_until
        ):
            self._cache.clear()  # verdicts of a key set that is no more
            self._cache_keys, self._cache_until = self._keys.changes, self._keys.next_retirement()
            claims = None
        if claims is None:
            return self._verify_fresh(token)
        if now >= claims.exp + self.leeway:
            self._cache.pop(token, None)  # dead for good; free the slot
        return claims

    def _check_dynamic(self, claims: Claims, audience: str, now: float) -> None:
        # Only reached with claims whose signature and issuer verified, so each refusal
        # carries them: the caller audits it against the token's jti, deployment and DAG.
        if now >= claims.exp + self.leeway:
            raise AuthenticationError("expired", claims=claims)
        if now + self.leeway < claims.nbf or now + self.leeway < claims.iat:
            raise AuthenticationError("not_yet_valid", claims=claims)
        if claims.aud != audience:
            raise AuthenticationError("wrong_audience", claims=claims)
        if self._staleness is not None:
            # What memory holds may miss a revocation made elsewhere: past the bound, stop.
            stale = self._staleness.refusal()
            if stale is not None:
                raise AuthenticationError(STALE_REASON, stale, claims=claims)
        if self._revocations is not None and self._revocations.is_revoked(claims):
            raise AuthenticationError("revoked", claims=claims)

    def _reload_keys(self) -> bool:
        try:
            return self._keys.maybe_reload(self._reload_interval)
        except LockgateError as exc:
            # A broken index on disk must not turn into a 500 per request; keep the keys we
            # have and say so. ConfigError messages carry paths, never key material.
            log.error("signing keys not reloaded", extra={"fields": {"error": str(exc)}})
            return False

    def _verify_fresh(self, token: str) -> Claims:
        header, signature = split_jwt(token)
        alg = header["alg"]
        if alg not in ALGORITHMS:  # exact spelling: "none", "HS256", "eddsa", "PS256" ...
            raise AuthenticationError("unsupported_alg")
        kid = header.get("kid")
        if not isinstance(kid, str) or not KID_RE.match(kid):
            raise AuthenticationError("unknown_kid")
        key = self._keys.key(kid)
        if key is None and self._reload_keys():
            key = self._keys.key(kid)  # a rotation by another process
        if key is None:
            raise AuthenticationError("unknown_kid")
        if alg != key.alg:  # the key decides how it is checked, never the token
            raise AuthenticationError("alg_mismatch")
        if len(signature) != key.signature_length:
            raise AuthenticationError("bad_signature")
        try:
            payload = jwt.decode(
                token,
                key.public,
                algorithms=[key.alg],
                # Claims are checked below with our clock and reason slugs.
                options={
                    "verify_signature": True,
                    "verify_exp": False,
                    "verify_nbf": False,
                    "verify_iat": False,
                    "verify_aud": False,
                    "verify_iss": False,
                    "verify_sub": False,
                    "verify_jti": False,
                },
            )
        except jwt.PyJWTError as exc:
            raise AuthenticationError(_jwt_reason(exc)) from None
        if not isinstance(payload, dict):
            raise AuthenticationError("malformed")
        claims = Claims.from_payload(payload)
        if claims is None:
            raise AuthenticationError("missing_claims")
        if claims.iss != self.issuer:
            raise AuthenticationError("wrong_issuer")
        if self._clock() < claims.exp + self.leeway:  # never cache what is already dead
            if len(self._cache) >= self._cache_size:
                # Evict the oldest insert; dicts keep insertion order.
                self._cache.pop(next(iter(self._cache)))
            self._cache[token] = claims
        return claims
