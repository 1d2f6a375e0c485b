"""Caller-identity assertions for upstreams: a short JWT that says which task is calling.

Some upstreams want to know the task behind a request (for their own audit or row-level
rules). The gateway sends them a JWT signed with the current Lockgate signing key of the
algorithm ``signing.algorithm_for(aud)`` names (EdDSA unless mapped: an upstream that only
takes RS256 gets RS256), ``aud`` = ``<issuer>/upstream/<resource>``, carrying the task's
coordinates and the jti of the token it came from. It lives at most :data:`ASSERTION_TTL`
seconds and never past that token. Anyone can verify it with the published JWKS.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from lockgate.config import SigningSettings
from lockgate.identity.keys import DEFAULT_ALGORITHM, KeyStore
from lockgate.identity.model import TASK_CLAIMS, Claims

ASSERTION_TTL = 300


class UpstreamAssertionSigner:
    """``signer(claims, resource)`` → a signed assertion for that task and upstream."""

    def __init__(
        self,
        keys: KeyStore,
        issuer_url: str,
        *,
        ttl: int = ASSERTION_TTL,
        clock: Callable[[], float] = time.time,
        signing: SigningSettings | None = None,
    ) -> None:
        self._keys = keys
        self._issuer = issuer_url
        self._ttl = ttl
        self._clock = clock
        self._signing = signing

    def __call__(self, claims: Claims, resource: str) -> str:
        now = int(self._clock())
        audience = f"{self._issuer}/upstream/{resource}"
        payload = {
            "iss": self._issuer,
            "sub": claims.sub,
            "aud": audience,
            "iat": now,
            "exp": min(claims.exp, now + self._ttl),
            **{name: getattr(claims, name) for name in TASK_CLAIMS},  # the task's coordinates
            "token_jti": claims.jti,
        }
        signing = self._signing
        alg = DEFAULT_ALGORITHM if signing is None else signing.algorithm_for(audience)
        return self._keys.sign(payload, alg)
