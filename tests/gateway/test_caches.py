"""SecretCache: how long an upstream secret is reused."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

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


class RotatingBroker(TokenBroker):
    """A broker whose ``generation`` moves when it takes in a rotation."""

    def __init__(self, clocks: Clocks) -> None:
        super().__init__(clocks, lifetime=None)
        self.generation = 0


async def test_a_rotation_the_broker_took_in_empties_the_cache_at_once() -> None:
    clocks = Clocks()
    broker = RotatingBroker(clocks)
    cache = _cache(broker, clocks)
    first = await cache.get("orders-key")
    assert cache.peek("orders-key") is first and broker.calls == 1
    broker.generation += 1  # e.g. `lockgate creds rotate` on another replica, reloaded here
    assert cache.peek("orders-key") is None  # well within the 1 s TTL
    second = await cache.get("orders-key")
    assert second is not None and second.value == "token-2"
    assert cache.peek("orders-key") is second  # cached again until the next rotation


async def test_a_real_broker_moves_its_generation_on_a_rotation(tmp_path: Path) -> None:
    from lockgate.config import parse_config
    from lockgate.credentials import CredentialBroker, CredentialStore

    config = parse_config(
        {"data_dir": str(tmp_path),
         "credentials": [{"name": "orders-key", "type": "static", "overlap": 60}]},
        tmp_path / "lockgate.yaml",
    )  # fmt: skip
    writer = CredentialStore(tmp_path / "credentials.db", b"k" * 32)
    writer.set("orders-key", "old")
    reader = CredentialStore(tmp_path / "credentials.db", b"k" * 32)
    broker = CredentialBroker(config, reader, None)
    cache = SecretCache(broker, ttl=60.0)
    first = await cache.get("orders-key")
    assert first is not None and first.value == "old"
    writer.rotate("orders-key", "new")  # another process
    assert broker.refresh()  # the gateway's tick
    second = await cache.get("orders-key")
    assert second is not None and second.value == "new"
    await broker.close()
    writer.close()
    reader.close()
