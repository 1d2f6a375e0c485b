"""Which credential version an upstream login sends, and what it tries after a refusal."""

from __future__ import annotations

from dataclasses import dataclass

import pytest

from lockgate.config import PostgresResource
from lockgate.errors import CredentialError
from lockgate.gateway import upstream_credential
from lockgate.gateway.caches import SecretCache
from lockgate.gateway.upstream_credential import CredentialChoice
from tests.gateway.fakes import FakeBroker


@pytest.fixture(autouse=True)
def _no_memory() -> None:
    upstream_credential.forget_refusals()


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def resource(name: str = "warehouse") -> PostgresResource:
    return PostgresResource.model_validate(
        {
            "name": name,
            "kind": "postgres",
            "host": "db",
            "database": "d",
            "username": "gw",
            "credential": "wh-login",
        }
    )


async def test_current_first_then_previous_after_a_refusal() -> None:
    cache = SecretCache(FakeBroker({"wh-login": ["old", "new"]}))
    choice = CredentialChoice(resource(), cache)
    first = await choice.first()
    assert first is not None and (first.value, first.version) == ("new", 2)
    retry = await choice.after_refusal(first)
    assert retry is not None and (retry.value, retry.version) == ("old", 1)
    assert await choice.after_refusal(retry) is None  # once only


async def test_no_previous_version_means_no_retry() -> None:
    choice = CredentialChoice(resource(), SecretCache(FakeBroker({"wh-login": ["only"]})))
    first = await choice.first()
    assert first is not None
    assert await choice.after_refusal(first) is None


async def test_a_refusal_passed_by_the_previous_version_is_remembered_per_resource() -> None:
    clock = Clock()
    cache = SecretCache(FakeBroker({"wh-login": ["old", "new"]}))
    choice = CredentialChoice(resource(), cache, clock=clock)
    refused = await choice.first()
    assert refused is not None
    older = await choice.after_refusal(refused)
    choice.succeeded(older)
    # the next login starts with the version that worked ...
    again = CredentialChoice(resource(), cache, clock=clock)
    assert (await again.first()).version == 1  # type: ignore[union-attr]
    # ... on this resource only
    other = CredentialChoice(resource("other"), cache, clock=clock)
    assert (await other.first()).version == 2  # type: ignore[union-attr]
    # and not for ever
    clock.now += upstream_credential.REFUSED_MEMORY_SECONDS + 1
    later = CredentialChoice(resource(), cache, clock=clock)
    assert (await later.first()).version == 2  # type: ignore[union-attr]


async def test_a_refused_previous_version_falls_back_to_the_current_and_is_forgotten() -> None:
    clock = Clock()
    cache = SecretCache(FakeBroker({"wh-login": ["old", "new"]}))
    choice = CredentialChoice(resource(), cache, clock=clock)
    choice.succeeded(await choice.after_refusal(await choice.first()))  # type: ignore[arg-type]
    switched = CredentialChoice(resource(), cache, clock=clock)
    older = await switched.first()
    assert older is not None and older.version == 1
    current = await switched.after_refusal(older)  # the server moved on
    assert current is not None and current.version == 2
    switched.succeeded(current)
    assert (await CredentialChoice(resource(), cache, clock=clock).first()).version == 2  # type: ignore[union-attr]


async def test_a_rotation_the_cache_had_not_seen_is_tried_before_the_previous() -> None:
    broker = FakeBroker({"wh-login": ["v1"]})
    cache = SecretCache(broker, ttl=3600)
    choice = CredentialChoice(resource(), cache)
    stale = await choice.first()
    broker.versions["wh-login"].append("v2")
    newer = await choice.after_refusal(stale)  # type: ignore[arg-type]
    assert newer is not None and (newer.value, newer.version) == ("v2", 2)
    choice.succeeded(newer)
    assert not upstream_credential._refused


@dataclass(frozen=True)
class Token:
    value: str
    version: int
    expires_at: float = 2e9


class TokenBroker:
    def __init__(self) -> None:
        self.issued = 0
        self.forgotten: list[tuple[str, int | None]] = []

    async def upstream_secret(self, credential_name: str, previous: bool = False) -> Token | None:
        if previous:
            return None
        return Token(f"token-{self.issued}", 3)

    def invalidate(self, credential_name: str, version: int | None = None) -> None:
        self.forgotten.append((credential_name, version))
        self.issued += 1


async def test_a_refused_token_is_fetched_again_once_and_never_remembered() -> None:
    broker = TokenBroker()
    choice = CredentialChoice(resource(), SecretCache(broker))
    first = await choice.first()
    assert first is not None and first.value == "token-0"
    fresh = await choice.after_refusal(first)
    assert fresh is not None and fresh.value == "token-1"
    assert broker.forgotten == [("wh-login", 3)]
    assert await choice.after_refusal(fresh) is None
    choice.succeeded(fresh)
    assert not upstream_credential._refused


async def test_the_same_token_again_is_no_retry() -> None:
    class Stuck(TokenBroker):
        def invalidate(self, credential_name: str, version: int | None = None) -> None:
            self.forgotten.append((credential_name, version))

    choice = CredentialChoice(resource(), SecretCache(Stuck()))
    first = await choice.first()
    assert first is not None
    assert await choice.after_refusal(first) is None


async def test_a_broker_failure_after_a_refusal_means_no_retry() -> None:
    class Failing(FakeBroker):
        async def upstream_secret(self, credential_name: str, previous: bool = False):  # type: ignore[no-untyped-def]
            if self.calls:
                raise CredentialError("credential 'wh-login': token endpoint refused")
            return await super().upstream_secret(credential_name, previous)

    choice = CredentialChoice(resource(), SecretCache(Failing({"wh-login": ["a", "b"]})))
    first = await choice.first()
    assert first is not None
    assert await choice.after_refusal(first) is None
