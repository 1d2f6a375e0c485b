"""OidcVerifier with workload identities: a Kubernetes cluster's service-account tokens
(discovery over TLS with the cluster's CA, claim matchers, audiences) and SPIFFE JWT-SVIDs
checked against a trust bundle file."""

from __future__ import annotations

import ssl
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import jwt
import pytest

from lockgate.config import OidcIssuer
from lockgate.demo.standins.kubernetes import FakeClusterIssuer, start
from lockgate.errors import AuthenticationError
from lockgate.identity.oidc import OidcVerifier, claim_matches, claim_value
from lockgate.tlsgen import write_dev_tls
from tests.fakes.spiffe_workload_api import FakeWorkloadApi

AUDIENCE = "https://lockgate.example"


@pytest.fixture
async def cluster() -> AsyncIterator[FakeClusterIssuer]:
    fake = FakeClusterIssuer()
    runner = await start(fake)
    yield fake
    await runner.cleanup()


@pytest.fixture
def spire() -> Iterator[FakeWorkloadApi]:
    fake = FakeWorkloadApi()  # only its keys and SVIDs: the bundle goes through a file here
    yield fake
    fake.stop()


async def _verifier(
    *entries: OidcIssuer, **options: Any
) -> tuple[OidcVerifier, aiohttp.ClientSession]:
    http = aiohttp.ClientSession()

    async def session() -> aiohttp.ClientSession:
        return http

    return OidcVerifier(list(entries), session, **options), http


def k8s_entry(cluster: FakeClusterIssuer, **changes: Any) -> OidcIssuer:
    fields: dict[str, Any] = {
        "issuer": cluster.issuer,
        "audience": ["api://other", AUDIENCE],
        "deployment": "prod",
        "subjects": ["system:serviceaccount:airflow:*"],
        "claims": {
            "kubernetes.io.namespace": "airflow",
            "kubernetes.io.serviceaccount.name": ["airflow-worker", "airflow-triggerer"],
        },
        "algorithms": ["RS256", "ES256"],
    }
    return OidcIssuer(**{**fields, **changes})


def k8s_token(cluster: FakeClusterIssuer, **changes: Any) -> str:
    args: dict[str, Any] = {"namespace": "airflow", "service_account": "airflow-worker",
                            "audience": AUDIENCE, **changes}  # fmt: skip
    return cluster.token(**args)


async def test_a_cluster_token_is_taken_through_discovery(cluster: FakeClusterIssuer) -> None:
    verifier, http = await _verifier(k8s_entry(cluster))
    async with http:
        subject = await verifier.verify(k8s_token(cluster))
        assert subject.deployment == "prod"
        assert subject.subject == "system:serviceaccount:airflow:airflow-worker"
        assert subject.claims["kubernetes.io"]["namespace"] == "airflow"
        # the second audience of the entry is as good as the first; the key is cached
        assert await verifier.verify(k8s_token(cluster, audience="api://other"))
        assert (cluster.discovery_requests, cluster.jwks_requests) == (1, 1)


@pytest.mark.parametrize(
    ("changes", "reason"),
    [
        ({"service_account": "default"}, "claim_not_allowed:kubernetes.io.serviceaccount.name"),
        ({"namespace": "kube-system"}, "subject_not_allowed"),
        ({"audience": "api://someone-else"}, "wrong_audience"),
        ({"now": time.time() - 7200, "ttl": 600}, "expired"),
    ],
)
async def test_cluster_tokens_outside_the_entry_are_refused(
    cluster: FakeClusterIssuer, changes: dict[str, Any], reason: str
) -> None:
    verifier, http = await _verifier(k8s_entry(cluster))
    async with http:
        with pytest.raises(AuthenticationError) as refused:
            await verifier.verify(k8s_token(cluster, **changes))
    assert refused.value.reason == reason
    assert "default" not in refused.value.reason.replace("serviceaccount", "")  # path, no value


async def test_a_claim_the_entry_names_must_be_present_and_a_scalar(
    cluster: FakeClusterIssuer,
) -> None:
    missing = k8s_entry(cluster, claims={"kubernetes.io.node.name": "*"})
    an_object = k8s_entry(cluster, claims={"kubernetes.io.pod": "*"})
    for entry, path in ((missing, "kubernetes.io.node.name"), (an_object, "kubernetes.io.pod")):
        verifier, http = await _verifier(entry)
        async with http:
            with pytest.raises(AuthenticationError) as refused:
                await verifier.verify(k8s_token(cluster))
        assert refused.value.reason == f"claim_not_allowed:{path}"  # "*" matches no absence


def test_claim_paths_reach_keys_that_hold_dots() -> None:
    claims = {"kubernetes.io": {"namespace": "airflow", "pod": {"name": "w-1"}},
              "n": 3, "flag": True, "groups": ["a"]}  # fmt: skip
    assert claim_value(claims, "kubernetes.io.pod.name") == "w-1"
    assert claim_value(claims, "kubernetes.io.nope") is None
    assert claim_matches(claims, "kubernetes.io.namespace", ["prod", "air*"])
    assert claim_matches(claims, "n", "3")
    assert not claim_matches(claims, "flag", "*")  # a boolean is not a name
    assert not claim_matches(claims, "groups", "*")  # nor a list


async def test_a_rotated_cluster_key_is_fetched_on_its_first_token(
    cluster: FakeClusterIssuer,
) -> None:
    verifier, http = await _verifier(k8s_entry(cluster), refetch_interval=0)
    async with http:
        await verifier.verify(k8s_token(cluster))
        old_kid = cluster.kid
        assert cluster.rotate_key(retire_old=True) != old_kid
        subject = await verifier.verify(k8s_token(cluster))
        assert subject.deployment == "prod" and cluster.jwks_requests == 2


async def test_an_es256_cluster(cluster: FakeClusterIssuer) -> None:
    ec_cluster = FakeClusterIssuer(algorithm="ES256")
    runner = await start(ec_cluster)
    try:
        verifier, http = await _verifier(k8s_entry(ec_cluster))
        async with http:
            assert (await verifier.verify(k8s_token(ec_cluster))).deployment == "prod"
    finally:
        await runner.cleanup()


async def test_discovery_over_tls_is_verified_with_the_entry_ca_only(tmp_path: Path) -> None:
    tls = write_dev_tls(tmp_path / "tls")
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(tls["cert"], tls["key"])
    secured = FakeClusterIssuer()
    runner = await start(secured, ssl_context=context)
    try:
        assert secured.issuer.startswith("https://")
        # the system trust store does not know the cluster's CA: nothing verifies
        verifier, http = await _verifier(k8s_entry(secured))
        async with http:
            with pytest.raises(AuthenticationError) as refused:
                await verifier.verify(k8s_token(secured))
            assert refused.value.reason == "unknown_kid"
        verifier, http = await _verifier(k8s_entry(secured, ca_file=tls["ca"]))
        async with http:
            assert (await verifier.verify(k8s_token(secured))).deployment == "prod"
    finally:
        await runner.cleanup()


# -- SPIFFE ------------------------------------------------------------------------------------


def spiffe_entry(bundle: Path, **changes: Any) -> OidcIssuer:
    fields: dict[str, Any] = {"issuer": "spiffe://example.org", "audience": AUDIENCE,
                              "deployment": "prod", "jwks_file": bundle,
                              "subjects": ["spiffe://example.org/ns/airflow/*"],
                              "algorithms": ["ES256"]}  # fmt: skip
    return OidcIssuer(**{**fields, **changes})


async def test_a_jwt_svid_is_checked_against_the_trust_bundle_file(
    spire: FakeWorkloadApi, tmp_path: Path
) -> None:
    bundle = spire.bundle(tmp_path / "bundle.json")
    verifier, http = await _verifier(spiffe_entry(bundle), refetch_interval=3600)
    async with http:
        subject = await verifier.verify(spire.svid([AUDIENCE]))  # no iss: SPIRE's default
        assert subject.subject == spire.spiffe_id
        # an iss that names the trust domain is as good; any other is another issuer
        assert await verifier.verify(spire.svid([AUDIENCE], iss="spiffe://example.org"))
        with pytest.raises(AuthenticationError) as refused:
            await verifier.verify(spire.svid([AUDIENCE], iss="https://elsewhere.test"))
        assert refused.value.reason == "wrong_issuer"
        with pytest.raises(AuthenticationError) as refused:
            await verifier.verify(spire.svid(["api://other"]))
        assert refused.value.reason == "wrong_audience"
        with pytest.raises(AuthenticationError) as refused:
            await verifier.verify(spire.svid([AUDIENCE], sub="spiffe://evil.org/ns/airflow/x"))
        assert refused.value.reason == "wrong_issuer"  # another trust domain: not trusted
        # the JWT authority rotated and the bundle file was replaced: read again at once,
        # whatever the refetch interval (no unknown kid for the new key)
        spire.rotate_key()
        spire.bundle(tmp_path / "bundle.json")
        assert (await verifier.verify(spire.svid([AUDIENCE]))).deployment == "prod"


async def test_a_jwt_svid_needs_an_audience_and_a_subject_of_its_domain(
    spire: FakeWorkloadApi, tmp_path: Path
) -> None:
    bundle = spire.bundle(tmp_path / "bundle.json")
    verifier, http = await _verifier(spiffe_entry(bundle, subjects=["spiffe://example.org/*"]))
    async with http:
        token = jwt.encode(
            {"sub": spire.spiffe_id, "exp": int(time.time()) + 60},
            spire._key, algorithm="ES256", headers={"kid": spire.kid},
        )  # fmt: skip
        with pytest.raises(AuthenticationError) as refused:
            await verifier.verify(token)
        assert refused.value.reason == "missing_claims"
        # a subject of the domain's issuer entry that is not a SPIFFE ID of the domain
        forged = spire.svid([AUDIENCE], iss="spiffe://example.org", sub="system:admin")
        with pytest.raises(AuthenticationError) as refused:
            await verifier.verify(forged)
        assert refused.value.reason == "subject_not_allowed"
