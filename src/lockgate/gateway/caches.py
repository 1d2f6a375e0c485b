"""The engines' two hot-path caches: upstream secrets and signed identity assertions.

* :class:`SecretCache` — upstream secrets per credential for about a second, so a request
  costs a dict lookup, not a broker round trip, while a rotation is seen within a second;
  an access token is never kept past its own expiry;
* :class:`AssertionCache` — signed identity assertions per (token id, resource), never kept
  past the token's expiry.

One of each per process, held by :class:`lockgate.gateway.engine.Collaborators` and shared
by every engine.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from lockgate.identity import Claims

Clock = Callable[[], float]
#: ``sign(claims, resource)``: a short-lived assertion of who acts, for the upstream.
AssertionSigner = Callable[["Claims", str], str]


class UpstreamSecret(Protocol):
    @property
    def value(self) -> str: ...

    @property
    def version(self) -> int: ...


class CredentialBroker(Protocol):
    def upstream_secret(
        self, credential_name: str, previous: bool = False
    ) -> Awaitable[UpstreamSecret | None]: ...


class SecretCache:
    """Upstream secrets per (credential, previous) for ``ttl`` seconds, and never past a
    secret's ``expires_at`` (wall-clock seconds, access tokens only) when it has one.

    Returns the same object while fresh, so callers may cache derived bytes keyed on identity.
    """

    def __init__(
        self,
        broker: CredentialBroker,
        *,
        ttl: float = 1.0,
        clock: Clock = time.monotonic,
        wall: Clock = time.time,
    ) -> None:
        self._broker = broker
        self._ttl = ttl
        self._clock = clock
        self._wall = wall  # the clock of ``expires_at``
        self._entries: dict[tuple[str, bool], tuple[float, UpstreamSecret | None]] = {}
        self._generation = self._broker_generation()

    def _broker_generation(self) -> int | None:
        return getattr(self._broker, "generation", None)  # brokers without it: TTL only

    def _follow_rotations(self) -> None:
        # A rotation the broker took in (from any process or replica) empties the cache at
        # once: otherwise an old secret would outlive the rotation by up to ``ttl``.
        generation = self._broker_generation()
        if generation != self._generation:
            self._generation = generation
            self._entries.clear()

    def peek(self, name: str, previous: bool = False) -> UpstreamSecret | None:
        """The cached secret if fresh, else None (sync fast path)."""
        self._follow_rotations()
        entry = self._entries.get((name, previous))
        if entry is not None and entry[0] > self._clock():
            return entry[1]
        return None

    async def get(self, name: str, previous: bool = False) -> UpstreamSecret | None:
        self._follow_rotations()
        key = (name, previous)
        entry = self._entries.get(key)
        if entry is not None and entry[0] > self._clock():
            return entry[1]
        secret = await self._broker.upstream_secret(name, previous=previous)
        self._entries[key] = (self._fresh_until(secret), secret)
        return secret

    def _fresh_until(self, secret: UpstreamSecret | None) -> float:
        # A token that expires before the TTL is up would be sent upstream expired (401)
        # until the entry aged out. Static secrets carry no expiry (nor do brokers' fakes).
        now = self._clock()
        expires_at: float | None = getattr(secret, "expires_at", None)
        if expires_at is None:
            return now + self._ttl
        return now + min(self._ttl, expires_at - self._wall())

    def invalidate(self, name: str | None = None) -> None:
        if name is None:
            self._entries.clear()
        else:
            self._entries.pop((name, False), None)
            self._entries.pop((name, True), None)

    def forget_token(self, name: str, version: int) -> None:
        """The upstream refused an access token: drop it here and in the broker, so the
        next ``get`` fetches a fresh one instead of returning the refused token again."""
        self.invalidate(name)
        forget = getattr(self._broker, "invalidate", None)  # brokers without a token cache
        if forget is not None:
            forget(name, version)


class AssertionCache:
    """Signed identity assertions per (jti, resource), reused for ``ttl`` seconds.

    ``ttl`` must be shorter than the signer's assertion lifetime; an entry never outlives
    the token it was made for (``claims.exp`` is wall-clock seconds).
    """

    MAX_ENTRIES = 10_000

    def __init__(
        self,
        signer: AssertionSigner,
        *,
        ttl: float = 30.0,
        clock: Clock = time.monotonic,
        wall: Clock = time.time,
    ) -> None:
        self._signer = signer
        self._ttl = ttl
        self._clock = clock
        self._wall = wall
        self._entries: dict[tuple[str, str], tuple[float, str]] = {}

    def get(self, claims: Claims, resource: str) -> str:
        key = (claims.jti or "", resource)
        now = self._clock()
        entry = self._entries.get(key)
        if entry is not None and entry[0] > now:
            return entry[1]
        value = self._signer(claims, resource)
        left = float(claims.exp or 0) - self._wall()
        if key[0] and left > 0:
            if len(self._entries) >= self.MAX_ENTRIES:
                self._entries.clear()  # cheap bound; entries are re-signed on demand
            self._entries[key] = (now + min(self._ttl, left), value)
        return value


__all__ = [
    "AssertionCache",
    "AssertionSigner",
    "Clock",
    "CredentialBroker",
    "SecretCache",
    "UpstreamSecret",
]
