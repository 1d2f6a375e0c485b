"""SecretCache: how long an upstream secret is reused."""

from __future__ import annotations

from dataclasses import dataclass

from lockgate.gateway.caches import SecretCache


@dataclass(frozen=True)
class Token:
    value: str
    version: int
    expires_at: float | None = None


class Clocks:
    """A monotonic and a wall clock that advance together."""

    def __init__(self) -> None:
        self.mono = 100.0
        self.wall = 1_700_000_000.0

    def advance(self, seconds: float) -> None:
        self.mono += seconds
        self.wall += seconds


class TokenBroker:
    def __init__(self, clocks: Clocks, lifetime: float | None) -> None:
        self.clocks = clocks
        self.lifetime = lifetime
        self.calls = 0

    async def upstream_secret(self, credential_name: str, previous: bool = False) -> Token:
        self.calls += 1
        expires = None if self.lifetime is None else self.clocks.wall + self.lifetime
        return Token(f"token-{self.calls}", 1, expires)


def _cache(broker: TokenBroker, clocks: Clocks) -> SecretCache:
    return SecretCache(broker, ttl=1.0, clock=lambda: clocks.mono, wall=lambda: clocks.wall)


async def test_a_token_expiring_before_the_ttl_is_not_kept_past_its_expiry() -> None:
    clocks = Clocks()
    broker = TokenBroker(clocks, lifetime=0.3)
    cache = _cache(broker, clocks)
    first = await cache.get("aad")
    assert cache.peek("aad") is first
    clocks.advance(0.4)  # the token has expired; the 1 s TTL has not
    assert cache.peek("aad") is None
    second = await cache.get("aad")
    assert second is not None and second.value == "token-2"
    assert broker.calls == 2


async def test_an_already_expired_token_is_not_reused() -> None:
    clocks = Clocks()
    broker = TokenBroker(clocks, lifetime=-1.0)
    cache = _cache(broker, clocks)
    await cache.get("aad")
    assert cache.peek("aad") is None


async def test_a_secret_without_expiry_is_kept_for_the_ttl() -> None:
    clocks = Clocks()
    broker = TokenBroker(clocks, lifetime=None)
    cache = _cache(broker, clocks)
    first = await cache.get("key")
    clocks.advance(0.9)
    assert cache.peek("key") is first
    assert await cache.get("key") is first
    clocks.advance(0.2)
    assert cache.peek("key") is None
    assert broker.calls == 1


async def test_a_long_lived_token_is_kept_for_the_ttl_only() -> None:
    clocks = Clocks()
    broker = TokenBroker(clocks, lifetime=3600.0)
    cache = _cache(broker, clocks)
    await cache.get("aad")
    clocks.advance(1.1)
    assert cache.peek("aad") is None
