"""The Entra ID stand-in's workload identity federation, checked as the real service does:
federated identity credentials match iss, sub and aud exactly; RS256 only; keys through the
issuer's discovery over https; exp and nbf within the skew. Assertions are signed with real
keys by an outside test issuer (tests/fakes/test_entra_outside_issuer.py).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jwt
import pytest
import requests
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from lockgate.demo.standins.entra import FakeEntra, start
from lockgate.demo.standins.entra.thread import LoopThread, server_tls
from tests.fakes.test_entra_outside_issuer import OutsideIssuer, running_outside_issuer

JWT_BEARER = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"
EXCHANGE = "api://AzureADTokenExchange"
APP = "app-federated"
SUBJECT = "lockgate:credential:arm"
ARM = "https://management.azure.com"
_CLAIM = {700211: "issuer", 700212: "audience", 700213: "subject"}


@pytest.fixture(scope="module")
def outside(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[OutsideIssuer, Path]]:
    with running_outside_issuer(tmp_path_factory.mktemp("issuer-tls")) as served:
        yield served


@pytest.fixture(scope="module")
def entra(
    outside: tuple[OutsideIssuer, Path], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[FakeEntra, Path]]:
    issuer, issuer_ca = outside
    ctx, ca = server_tls(tmp_path_factory.mktemp("entra-tls"))
    fake = FakeEntra(federation_ca=issuer_ca)
    fake.add_federated_credential(APP, issuer=issuer.issuer, subject=SUBJECT, name="arm")
    loop = LoopThread()
    loop.serve(start(fake, 0, ctx))
    yield fake, ca
    loop.stop()


def _post(entra: tuple[FakeEntra, Path], assertion: str, **extra: str) -> requests.Response:
    fake, ca = entra
    form = {"grant_type": "client_credentials", "client_id": APP, "scope": f"{ARM}/.default",
            "client_assertion_type": JWT_BEARER, "client_assertion": assertion}  # fmt: skip
    form.update(extra)
    answer = requests.post(fake.token_url, data=form, verify=str(ca), timeout=10)
    record = fake.token_requests[-1]  # what the fake noted of it, never the assertion itself
    assert record.status == answer.status_code and record.form["client_assertion"] == "<redacted>"
    assert record.error == ("" if answer.ok else answer.json()["error"])
    return answer


def _hmac_jwt(claims: dict[str, Any], secret: bytes, kid: str) -> str:
    def part(data: bytes) -> str:
        return base64.urlsafe_b64encode(data).rstrip(b"=").decode()

    head = part(json.dumps({"alg": "HS256", "typ": "JWT", "kid": kid}).encode())
    body = part(json.dumps(claims).encode())
    mac = hmac.new(secret, f"{head}.{body}".encode(), hashlib.sha256).digest()
    return f"{head}.{body}.{part(mac)}"


def _refused(answer: requests.Response, code: int, status: int = 400) -> None:
    assert answer.status_code == status, answer.text
    assert answer.json()["error_description"].startswith(f"AADSTS{code}:"), answer.text


def test_federated_assertion_gets_a_token_for_the_resource(
    entra: tuple[FakeEntra, Path], outside: tuple[OutsideIssuer, Path]
) -> None:
    fake, _ = entra
    issuer, _ = outside
    assertion = issuer.sign(issuer.claims(aud=EXCHANGE))
    answer = _post(entra, assertion)
    assert answer.status_code == 200, answer.text
    body = answer.json()
    assert body["token_type"] == "Bearer" and body["expires_in"] == fake.token_ttl
    claims = fake.verify(body["access_token"], ARM)
    assert claims["appid"] == APP and claims["tid"] == fake.tenant
    assert jwt.get_unverified_header(body["access_token"])["alg"] == "RS256"
    seen = fake.token_requests[-1]
    assert seen.status == 200 and seen.form["client_assertion"] == "<redacted>"
    assert seen.assertion_claims is not None and seen.assertion_claims["sub"] == SUBJECT
    assert seen.assertion_header is not None and seen.assertion_header["alg"] == "RS256"
    assert assertion not in repr(fake.token_requests)


def test_azure_identity_client_assertion_credential(
    entra: tuple[FakeEntra, Path], outside: tuple[OutsideIssuer, Path]
) -> None:
    azure_identity = pytest.importorskip("azure.identity")
    fake, ca = entra
    issuer, _ = outside
    cred = azure_identity.ClientAssertionCredential(
        fake.tenant, APP, lambda: issuer.sign(issuer.claims(aud=[EXCHANGE])),
        authority=fake.base_url, disable_instance_discovery=True, connection_verify=str(ca),
    )  # fmt: skip
    token = cred.get_token(f"{ARM}/.default")
    assert fake.verify(token.token, ARM)["appid"] == APP


@pytest.mark.parametrize("alg", ["ES256", "EdDSA"])
def test_only_rs256_is_accepted(
    entra: tuple[FakeEntra, Path], outside: tuple[OutsideIssuer, Path], alg: str
) -> None:
    issuer, _ = outside
    _refused(_post(entra, issuer.sign(issuer.claims(aud=EXCHANGE), alg)), 5002738)


def test_hmac_and_none_are_refused(
    entra: tuple[FakeEntra, Path], outside: tuple[OutsideIssuer, Path]
) -> None:
    issuer, _ = outside
    claims = issuer.claims(aud=EXCHANGE)
    kid = issuer.kid("RS256")
    public_pem = (
        issuer.keys[kid][1]
        .public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    )
    hs = _hmac_jwt(claims, public_pem, kid)  # keyed with the published key: the confusion
    _refused(_post(entra, hs), 5002738)
    unsigned = jwt.encode(claims, "", algorithm="none", headers={"kid": kid})
    _refused(_post(entra, unsigned), 5002738)


def test_an_outside_token_whose_header_names_a_thumbprint_is_still_federated(
    entra: tuple[FakeEntra, Path], outside: tuple[OutsideIssuer, Path]
) -> None:
    """GitHub Actions' tokens carry ``x5t`` beside ``kid``: what decides is who issued it
    (iss and sub not the client id), not the header."""
    issuer, _ = outside
    kid = issuer.kid("RS256")
    assertion = jwt.encode(
        issuer.claims(aud=EXCHANGE), issuer.keys[kid][1], algorithm="RS256",
        headers={"kid": kid, "x5t": "example-thumbprint"},
    )  # fmt: skip
    answer = _post(entra, assertion)
    assert answer.status_code == 200, answer.text


@pytest.mark.parametrize(
    ("change", "code"),
    [
        ({"sub": SUBJECT.upper()}, 700213),  # case-sensitive
        ({"sub": "lockgate:credential:other"}, 700213),
        ({"aud": "api://AzureADTokenExchange/"}, 700212),
        ({"aud": ARM}, 700212),
        ({"iss": "https://127.0.0.1:1"}, 700211),
    ],
)
def test_iss_sub_and_aud_must_match_a_credential_exactly(
    entra: tuple[FakeEntra, Path],
    outside: tuple[OutsideIssuer, Path],
    change: dict[str, Any],
    code: int,
) -> None:
    """The code names the claim that matched no credential, and the answer shows its value."""
    issuer, _ = outside
    answer = _post(entra, issuer.sign(issuer.claims(**{"aud": EXCHANGE, **change})))
    _refused(answer, code, 401)  # invalid_client, as the service answers these
    [value] = change.values()
    assert f"presented assertion {_CLAIM[code]} '{value}'" in answer.json()["error_description"]


def test_signature_must_verify_with_the_issuers_key(
    entra: tuple[FakeEntra, Path], outside: tuple[OutsideIssuer, Path]
) -> None:
    issuer, _ = outside
    stranger = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    forged = jwt.encode(
        issuer.claims(aud=EXCHANGE), stranger, algorithm="RS256",
        headers={"kid": issuer.kid("RS256")},
    )  # fmt: skip
    _refused(_post(entra, forged), 700027, 401)
    renamed = jwt.encode(
        issuer.claims(aud=EXCHANGE), issuer.keys[issuer.kid("RS256")][1], algorithm="RS256",
        headers={"kid": "no-such-kid"},
    )  # fmt: skip
    _refused(_post(entra, renamed), 700027, 401)


def test_times_with_five_minutes_of_skew(
    entra: tuple[FakeEntra, Path], outside: tuple[OutsideIssuer, Path]
) -> None:
    issuer, _ = outside
    now = int(time.time())

    def post(**times: int) -> requests.Response:
        return _post(entra, issuer.sign(issuer.claims(aud=EXCHANGE, **times)))

    assert post(exp=now - 200, nbf=now - 400, iat=now - 400).status_code == 200  # in skew
    _refused(post(exp=now - 400, nbf=now - 700, iat=now - 700), 700024)
    assert post(nbf=now + 200, iat=now + 200, exp=now + 500).status_code == 200
    _refused(post(nbf=now + 400, iat=now + 400, exp=now + 700), 700024)
    _refused(post(nbf=now, iat=now, exp=now + 25 * 3600), 700024)  # lifetime
    _refused(_post(entra, issuer.sign({**issuer.claims(aud=EXCHANGE), "exp": None})), 50027)


def test_rotated_issuer_key_is_fetched_on_its_unknown_kid(
    entra: tuple[FakeEntra, Path], outside: tuple[OutsideIssuer, Path]
) -> None:
    fake, _ = entra
    issuer, _ = outside
    assert _post(entra, issuer.sign(issuer.claims(aud=EXCHANGE))).status_code == 200
    fetched = len(fake.issuer_keys.fetched)
    assert _post(entra, issuer.sign(issuer.claims(aud=EXCHANGE))).status_code == 200
    assert len(fake.issuer_keys.fetched) == fetched  # cached
    issuer.rotate("RS256")
    assert _post(entra, issuer.sign(issuer.claims(aud=EXCHANGE))).status_code == 200
    assert len(fake.issuer_keys.fetched) == fetched + 2


def test_discovery_must_name_the_issuer_and_be_trusted(
    entra: tuple[FakeEntra, Path], outside: tuple[OutsideIssuer, Path]
) -> None:
    fake, _ = entra
    issuer, issuer_ca = outside
    issuer.discovery_issuer = issuer.issuer + "/"
    fake.issuer_keys.forget()
    try:
        _refused(_post(entra, issuer.sign(issuer.claims(aud=EXCHANGE))), 50166)
    finally:
        issuer.discovery_issuer = None
    fake.trust_issuer_ca(None)  # the test CA is not the system's
    try:
        _refused(_post(entra, issuer.sign(issuer.claims(aud=EXCHANGE))), 50166)
    finally:
        fake.trust_issuer_ca(issuer_ca)
    assert _post(entra, issuer.sign(issuer.claims(aud=EXCHANGE))).status_code == 200


def test_unknown_app_and_entra_issued_tokens(
    entra: tuple[FakeEntra, Path], outside: tuple[OutsideIssuer, Path]
) -> None:
    fake, _ = entra
    issuer, _ = outside
    good = issuer.sign(issuer.claims(aud=EXCHANGE))
    answer = _post(entra, good, client_id="no-such-app")
    _refused(answer, 700016)
    assert answer.json()["error"] == "unauthorized_client"
    own = jwt.encode(
        {**issuer.claims(aud=EXCHANGE), "iss": fake.issuer}, fake.key, algorithm="RS256",
        headers={"kid": fake.kid},
    )  # fmt: skip
    _refused(_post(entra, own), 700222)
    padded = issuer.claims(aud=EXCHANGE, iss=f" {issuer.issuer}")  # white space never matches
    _refused(_post(entra, issuer.sign(padded)), 700211, 401)


def test_credential_limits_and_removal(outside: tuple[OutsideIssuer, Path]) -> None:
    issuer, _ = outside
    fake = FakeEntra()
    for n in range(20):
        fake.add_federated_credential("app", issuer=issuer.issuer, subject=f"s{n}", name=f"c{n}")
    with pytest.raises(ValueError, match="at most 20"):
        fake.add_federated_credential("app", issuer=issuer.issuer, subject="s20")
    fake.remove_federated_credential("app", "c0")
    with pytest.raises(ValueError, match="already trusted"):
        fake.add_federated_credential("app", issuer=issuer.issuer, subject="s1")
    with pytest.raises(ValueError, match="exactly one audience"):
        fake.add_federated_credential("app", issuer=issuer.issuer, subject="x", audiences=[])
    with pytest.raises(ValueError, match="at most 600"):
        fake.add_federated_credential(
            "app", issuer=issuer.issuer, subject="x", audiences=["api://" + "a" * 595]
        )
    with pytest.raises(ValueError, match="at most 600"):
        fake.add_federated_credential("app", issuer=issuer.issuer, subject="s" * 601)
    with pytest.raises(ValueError, match="white space"):
        fake.add_federated_credential("app", issuer=issuer.issuer + " ", subject="z")
    with pytest.raises(ValueError, match="URL friendly"):
        fake.add_federated_credential("app", issuer=issuer.issuer, subject="y", name="a b")
    with pytest.raises(KeyError):
        fake.remove_federated_credential("app", "c0")
    assert len(fake.federated_credentials["app"]) == 19


def test_a_removed_credential_no_longer_matches(
    entra: tuple[FakeEntra, Path], outside: tuple[OutsideIssuer, Path]
) -> None:
    fake, _ = entra
    issuer, _ = outside
    fake.add_federated_credential(APP, issuer=issuer.issuer, subject="temp", name="temp")
    assertion = issuer.sign(issuer.claims(aud=EXCHANGE, sub="temp"))
    assert _post(entra, assertion).status_code == 200
    fake.remove_federated_credential(APP, "temp")
    _refused(_post(entra, issuer.sign(issuer.claims(aud=EXCHANGE, sub="temp"))), 700213, 401)
