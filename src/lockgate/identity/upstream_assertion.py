"""Caller-identity assertions for upstreams: a short JWT that says which task is calling.

Some upstreams want to know the task behind a request (for their own audit or row-level
rules). The gateway sends them an EdDSA JWT signed with the current Lockgate signing key,
``aud`` = ``<issuer>/upstream/<resource>``, carrying the task's coordinates and the jti of the
token it came from. It lives at most :data:`ASSERTION_TTL` seconds and never past that token.
Anyone can verify it with the published JWKS.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import jwt

from lockgate.identity.keys import KeyStore
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
    ) -> None:
        self._keys = keys
        self._issuer = issuer_url
        self._ttl = ttl
        self._clock = clock

    def __call__(self, claims: Claims, resource: str) -> str:
        now = int(self._clock())
        key = self._keys.current()
        payload = {
            "iss": self._issuer,
            "sub": claims.sub,
            "aud": f"{self._issuer}/upstream/{resource}",
            "iat": now,
            "exp": min(claims.exp, now + self._ttl),
            **{name: getattr(claims, name) for name in TASK_CLAIMS},  # the task's coordinates
            "token_jti": claims.jti,
        }
        return jwt.encode(payload, key.private, algorithm="EdDSA", headers={"kid": key.kid})
