"""The Databricks stand-in's OAuth token federation (RFC 8693 exchange at /oidc/v1/token),
checked as the docs describe: federation policies per service principal or account-wide,
RS256 or ES256 only, keys through the issuer's discovery over https, and the token it returns
working on the API. Subject tokens are signed with real keys by an outside test issuer.
"""

from __future__ import annotations

import base64
import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jwt
import pytest
import requests
from aiohttp import web
from cryptography.hazmat.primitives.asymmetric import ec

from lockgate.demo.standins.databricks import DEFAULT_ACCOUNT_ID, FakeDatabricks, start
from lockgate.demo.standins.entra.thread import LoopThread, server_tls
from tests.fakes.test_entra_outside_issuer import OutsideIssuer, running_outside_issuer

EXCHANGE = "urn:ietf:params:oauth:grant-type:token-exchange"
JWT_TYPE = "urn:ietf:params:oauth:token-type:jwt"
SP = "7c2f0a9e-5d4b-4c61-b1a2-0f3e9d8c7b6a"
SUBJECT = "lockgate:credential:databricks"
AUD = "https://workspace.example/oidc"


@pytest.fixture(scope="module")
def outside(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[OutsideIssuer, Path]]:
    with running_outside_issuer(tmp_path_factory.mktemp("issuer-tls")) as served:
        yield served


@pytest.fixture(scope="module")
def workspace(
    outside: tuple[OutsideIssuer, Path], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[FakeDatabricks, Path]]:
    issuer, issuer_ca = outside
    ctx, ca = server_tls(tmp_path_factory.mktemp("dbx-tls"))
    fake = FakeDatabricks({"m2m-secret"}, federation_ca=issuer_ca)
    fake.add_federation_policy(
        issuer=issuer.issuer, audiences=[AUD], subject=SUBJECT, service_principal=SP
    )
    fake.add_federation_policy(issuer=issuer.issuer, subject_claim="email")
    fake.principals.add("analyst@example.com")
    fake.add_job(1, {"name": "nightly"})
    loop = LoopThread()

    async def serve() -> web.AppRunner:
        runner, _ = await start(fake, 0, ctx)
        return runner

    loop.serve(serve())
    yield fake, ca
    loop.stop()


def _exchange(
    workspace: tuple[FakeDatabricks, Path], subject_token: str, **extra: str
) -> requests.Response:
    fake, ca = workspace
    form = {"grant_type": EXCHANGE, "subject_token": subject_token,
            "subject_token_type": JWT_TYPE, "scope": "all-apis", "client_id": SP}  # fmt: skip
    form.update(extra)
    return requests.post(f"{fake.base_url}/oidc/v1/token", data=form, verify=str(ca), timeout=10)


def _jobs(workspace: tuple[FakeDatabricks, Path], token: str) -> int:
    fake, ca = workspace
    answer = requests.get(
        f"{fake.base_url}/api/2.1/jobs/list",
        headers={"Authorization": f"Bearer {token}"}, verify=str(ca), timeout=10,
    )  # fmt: skip
    return answer.status_code


def _refused(answer: requests.Response, words: str) -> None:
    assert answer.status_code == 400, answer.text
    body = answer.json()
    assert body["error"] == "invalid_request" and words in body["error_description"], body


@pytest.mark.parametrize("alg", ["RS256", "ES256"])
def test_service_principal_policy_exchange_works_on_the_api(
    workspace: tuple[FakeDatabricks, Path], outside: tuple[OutsideIssuer, Path], alg: str
) -> None:
    fake, _ = workspace
    issuer, _ = outside
    subject_token = issuer.sign(issuer.claims(aud=AUD, sub=SUBJECT), alg)
    answer = _exchange(workspace, subject_token)
    assert answer.status_code == 200, answer.text
    body = answer.json()
    assert body["token_type"] == "Bearer" and body["scope"] == "all-apis"
    assert body["expires_in"] == fake.token_ttl
    assert fake.token_principals[body["access_token"]] == SP
    assert _jobs(workspace, body["access_token"]) == 200
    assert fake.token_requests[-1]["subject_token"] == "<redacted>"
    assert subject_token not in repr(fake.token_requests)


def test_account_policy_maps_the_subject_claim_to_a_principal(
    workspace: tuple[FakeDatabricks, Path], outside: tuple[OutsideIssuer, Path]
) -> None:
    fake, _ = workspace
    issuer, _ = outside
    claims = issuer.claims(aud=DEFAULT_ACCOUNT_ID, sub="x", email="analyst@example.com")
    answer = _exchange(workspace, issuer.sign(claims), client_id="")
    assert answer.status_code == 200, answer.text
    assert fake.token_principals[answer.json()["access_token"]] == "analyst@example.com"
    stranger = issuer.claims(aud=DEFAULT_ACCOUNT_ID, email="nobody@example.com")
    _refused(_exchange(workspace, issuer.sign(stranger), client_id=""), "no federation policy")
    # The account-wide policy does not serve a service principal's exchange.
    _refused(_exchange(workspace, issuer.sign(claims)), "no federation policy")


@pytest.mark.parametrize(
    "change",
    [
        {"sub": SUBJECT.upper()},
        {"aud": DEFAULT_ACCOUNT_ID},
        {"aud": [AUD + "/"]},
        {"iss": "https://127.0.0.1:1"},
    ],
)
def test_policy_must_match_issuer_audience_and_subject(
    workspace: tuple[FakeDatabricks, Path],
    outside: tuple[OutsideIssuer, Path],
    change: dict[str, Any],
) -> None:
    issuer, _ = outside
    claims = {**issuer.claims(aud=AUD, sub=SUBJECT), **change}
    _refused(_exchange(workspace, issuer.sign(claims)), "no federation policy")


def test_audience_list_matches_when_one_value_is_in_the_policy(
    workspace: tuple[FakeDatabricks, Path], outside: tuple[OutsideIssuer, Path]
) -> None:
    issuer, _ = outside
    claims = issuer.claims(aud=["https://other", AUD], sub=SUBJECT)
    assert _exchange(workspace, issuer.sign(claims)).status_code == 200


def test_eddsa_hmac_and_none_are_refused(
    workspace: tuple[FakeDatabricks, Path], outside: tuple[OutsideIssuer, Path]
) -> None:
    issuer, _ = outside
    claims = issuer.claims(aud=AUD, sub=SUBJECT)
    _refused(_exchange(workspace, issuer.sign(claims, "EdDSA")), "RS256 or ES256")
    hs = jwt.encode(claims, "k" * 32, algorithm="HS256", headers={"kid": issuer.kid("RS256")})
    _refused(_exchange(workspace, hs), "RS256 or ES256")
    _refused(_exchange(workspace, jwt.encode(claims, "", algorithm="none")), "RS256 or ES256")


def test_signature_and_key_type_must_fit(
    workspace: tuple[FakeDatabricks, Path], outside: tuple[OutsideIssuer, Path]
) -> None:
    issuer, _ = outside
    claims = issuer.claims(aud=AUD, sub=SUBJECT)
    stranger = ec.generate_private_key(ec.SECP256R1())
    forged = jwt.encode(claims, stranger, algorithm="ES256", headers={"kid": issuer.kid("ES256")})
    _refused(_exchange(workspace, forged), "signature")
    # An ES256 signature presented under the RSA key's kid: the key type does not fit.
    es_key = issuer.keys[issuer.kid("ES256")][1]
    crossed = jwt.encode(claims, es_key, algorithm="ES256", headers={"kid": issuer.kid("RS256")})
    _refused(_exchange(workspace, crossed), "signature")
    rsa_key = issuer.keys[issuer.kid("RS256")][1]
    renamed = jwt.encode(claims, rsa_key, algorithm="RS256", headers={"kid": "no-such-kid"})
    _refused(_exchange(workspace, renamed), "signature")


def test_request_shape_and_times(
    workspace: tuple[FakeDatabricks, Path], outside: tuple[OutsideIssuer, Path]
) -> None:
    issuer, _ = outside
    good = issuer.sign(issuer.claims(aud=AUD, sub=SUBJECT))
    _refused(_exchange(workspace, good, subject_token_type="urn:x"), "subject_token_type")
    _refused(_exchange(workspace, good, scope="sql"), "scope")
    _refused(_exchange(workspace, good, client_id="no-such-sp"), "does not exist")
    _refused(_exchange(workspace, "not-a-jwt"), "not a valid JWT")
    now = int(time.time())
    old = issuer.claims(aud=AUD, sub=SUBJECT, iat=now - 900, nbf=now - 900, exp=now - 300)
    _refused(_exchange(workspace, issuer.sign(old)), "expired")
    early = issuer.claims(aud=AUD, sub=SUBJECT, nbf=now + 600, exp=now + 900)
    _refused(_exchange(workspace, issuer.sign(early)), "not valid yet")


def test_keys_only_over_trusted_https_and_policy_jwks_uri(
    workspace: tuple[FakeDatabricks, Path], outside: tuple[OutsideIssuer, Path]
) -> None:
    fake, _ = workspace
    issuer, issuer_ca = outside
    good = issuer.sign(issuer.claims(aud=AUD, sub=SUBJECT))
    fake.trust_issuer_ca(None)
    try:
        _refused(_exchange(workspace, good), "could not be fetched")
    finally:
        fake.trust_issuer_ca(issuer_ca)
    policy = fake.add_federation_policy(
        issuer=issuer.issuer, audiences=["jwks-only"], subject="by-uri",
        service_principal="sp-by-uri", jwks_uri=f"{issuer.issuer}/keys",
    )  # fmt: skip
    try:
        claims = issuer.claims(aud="jwks-only", sub="by-uri")
        answer = _exchange(workspace, issuer.sign(claims), client_id="sp-by-uri")
        assert answer.status_code == 200, answer.text
        assert f"{issuer.issuer}/keys" in fake.federation.keys.fetched
    finally:
        fake.remove_federation_policy(policy.policy_id)


def test_m2m_client_credentials_still_work(workspace: tuple[FakeDatabricks, Path]) -> None:
    fake, ca = workspace
    basic = base64.b64encode(f"{fake.client_id}:m2m-secret".encode()).decode()
    answer = requests.post(
        f"{fake.base_url}/oidc/v1/token",
        data={"grant_type": "client_credentials", "scope": "all-apis"},
        headers={"Authorization": f"Basic {basic}"}, verify=str(ca), timeout=10,
    )  # fmt: skip
    assert answer.status_code == 200
    token = answer.json()["access_token"]
    assert fake.token_principals[token] == fake.client_id and _jobs(workspace, token) == 200
    assert fake.token_requests[-1].get("client_secret") is None
    assert _jobs(workspace, "dbx-made-up") == 401


def test_policy_shape_follows_the_federation_policy_api() -> None:
    """The account API: an https issuer; a subject on a service principal's policy only (an
    account policy maps tokens with subject_claim); at most 20 policies per principal."""
    fake = FakeDatabricks(set())
    idp = "https://idp.example.com"
    with pytest.raises(ValueError, match="https URL"):
        fake.add_federation_policy(issuer="http://idp.example.com")
    with pytest.raises(ValueError, match="names no subject"):
        fake.add_federation_policy(issuer=idp, subject="someone")
    for n in range(20):
        fake.add_federation_policy(issuer=idp, subject=f"s{n}", service_principal="sp")
    with pytest.raises(ValueError, match="at most 20"):
        fake.add_federation_policy(issuer=idp, subject="s20", service_principal="sp")
    fake.add_federation_policy(issuer=idp, subject="s0", service_principal="another-sp")
    fake.add_federation_policy(issuer=idp)  # account-wide policies count for no principal
    with pytest.raises(ValueError, match="non-empty"):
        fake.add_federation_policy(issuer=idp, audiences=[""])
    with pytest.raises(ValueError, match="JSON Web Key Set"):
        fake.add_federation_policy(issuer=idp, jwks_json="[]")


def test_policy_keys_given_inline_as_jwks_json(
    workspace: tuple[FakeDatabricks, Path], outside: tuple[OutsideIssuer, Path]
) -> None:
    """A policy's jwks_json verifies tokens with no fetch at all; a key not in it never does."""
    fake, _ = workspace
    issuer, _ = outside
    inline_issuer = "https://inline.example"  # never reachable: nothing may be fetched
    policy = fake.add_federation_policy(
        issuer=inline_issuer, audiences=["inline"], subject="by-json",
        service_principal="sp-by-json", jwks_json=json.dumps({"keys": issuer._jwks()}),
    )  # fmt: skip
    try:
        claims = {**issuer.claims(aud="inline", sub="by-json"), "iss": inline_issuer}
        answer = _exchange(workspace, issuer.sign(claims), client_id="sp-by-json")
        assert answer.status_code == 200, answer.text
        assert not [url for url in fake.federation.keys.fetched if "inline.example" in url]
        unknown = issuer.rotate("ES256")  # published by the issuer, not in the policy's set
        refused = _exchange(
            workspace, issuer.sign(claims, "ES256", unknown), client_id="sp-by-json"
        )
        _refused(refused, "signature is not valid")
    finally:
        fake.remove_federation_policy(policy.policy_id)
