"""OidcVerifier alone: discovery, key caching, refetch on unknown kid and its rate limit."""

from __future__ import annotations

from collections.abc import AsyncIterator

import aiohttp
import pytest

from lockgate.config import OidcIssuer
from lockgate.errors import AuthenticationError
from lockgate.identity import OidcVerifier

from ._fakes import FakeOidcIssuer, serve


@pytest.fixture
async def idp() -> AsyncIterator[FakeOidcIssuer]:
    fake = FakeOidcIssuer()
    async with serve(fake.app) as srv:
        fake.url = str(srv.make_url("")).rstrip("/")
        yield fake


async def verifier_for(idp: FakeOidcIssuer, http: aiohttp.ClientSession, **kw) -> OidcVerifier:
    async def session() -> aiohttp.ClientSession:
        return http

    conf = OidcIssuer(
        issuer=idp.url,
        audience="api://lockgate",
        deployment="prod",
        subjects=["system:serviceaccount:airflow:*"],
        algorithms=["RS256"],
    )
    return OidcVerifier([conf], session, **kw)


async def test_refetch_on_unknown_kid(idp: FakeOidcIssuer) -> None:
    async with aiohttp.ClientSession() as http:
        v = await verifier_for(idp, http, refetch_interval=0)
        assert (await v.verify(idp.token())).deployment == "prod"
        idp.kid = "test-rsa-2"  # the IdP rotated (same key material, new kid)
        subject = await v.verify(idp.token())
        assert subject.subject == "system:serviceaccount:airflow:worker"
        assert idp.jwks_hits == 2


async def test_unknown_kid_refetch_is_rate_limited(idp: FakeOidcIssuer) -> None:
    async with aiohttp.ClientSession() as http:
        v = await verifier_for(idp, http, refetch_interval=3600)
        await v.verify(idp.token())
        for _ in range(5):
            with pytest.raises(AuthenticationError) as exc:
                await v.verify(idp.token(_kid="garbage-kid"))
            assert exc.value.reason == "unknown_kid"
        assert idp.jwks_hits == 1


async def test_discovery_naming_another_issuer_is_not_trusted(idp: FakeOidcIssuer) -> None:
    async with aiohttp.ClientSession() as http:
        v = await verifier_for(idp, http)
        real = idp.url
        token = idp.token()
        idp.url = "https://impostor.test"  # discovery now claims a different issuer
        with pytest.raises(AuthenticationError) as exc:
            await v.verify(token)
        assert exc.value.reason == "unknown_kid"
        idp.url = real


async def test_unreachable_issuer_fails_closed(idp: FakeOidcIssuer) -> None:
    async with aiohttp.ClientSession() as http:
        conf = OidcIssuer(issuer=idp.url, audience="api://lockgate", deployment="prod",
                          subjects=["system:serviceaccount:airflow:*"],
                          jwks_uri="http://127.0.0.1:9/keys", algorithms=["RS256"])  # fmt: skip

        async def session() -> aiohttp.ClientSession:
            return http

        v = OidcVerifier([conf], session, timeout=2)
        with pytest.raises(AuthenticationError) as exc:
            await v.verify(idp.token())
        assert exc.value.reason == "unknown_kid"


async def test_one_issuer_trusted_by_two_deployments_picks_by_subject(
    idp: FakeOidcIssuer,
) -> None:
    # One Kubernetes cluster (or Entra tenant) is the issuer of two Airflow deployments:
    # each entry's subjects decide which deployment a token speaks for, and a token both
    # entries would take is refused, never handed to whichever was configured last.
    def entry(deployment: str, subjects: list[str]) -> OidcIssuer:
        return OidcIssuer(issuer=idp.url, audience="api://lockgate", deployment=deployment,
                          subjects=subjects, algorithms=["RS256"])  # fmt: skip

    async with aiohttp.ClientSession() as http:

        async def session() -> aiohttp.ClientSession:
            return http

        v = OidcVerifier(
            [
                entry("prod", ["system:serviceaccount:airflow-prod:*"]),
                entry("staging", ["system:serviceaccount:airflow-staging:*"]),
                entry("shared", ["system:serviceaccount:airflow-*:scheduler"]),
            ],
            session,
        )
        prod = idp.token(sub="system:serviceaccount:airflow-prod:worker")
        staging = idp.token(sub="system:serviceaccount:airflow-staging:worker")
        assert (await v.verify(prod)).deployment == "prod"
        assert (await v.verify(staging)).deployment == "staging"
        with pytest.raises(AuthenticationError) as exc:
            await v.verify(idp.token(sub="system:serviceaccount:airflow-prod:scheduler"))
        assert exc.value.reason == "ambiguous_subject"
        with pytest.raises(AuthenticationError) as exc:
            await v.verify(idp.token(sub="system:serviceaccount:other:worker"))
        assert exc.value.reason == "subject_not_allowed"
        assert idp.jwks_hits == 1  # one key cache for the issuer
