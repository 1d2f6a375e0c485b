"""The Entra ID fake against the real azure-identity (MSAL) clients."""

from __future__ import annotations

import datetime as dt
import hashlib
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jwt
import pytest
import requests
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import NameOID

from lockgate.demo.standins.entra import FakeEntra, start
from lockgate.demo.standins.entra.thread import LoopThread, server_tls

azure_identity = pytest.importorskip("azure.identity")
ARM_SCOPE = "https://management.azure.com/.default"
JWT_BEARER = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"


def make_cert(cn: str = "lockgate-gw") -> tuple[rsa.RSAPrivateKey, x509.Certificate, bytes]:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder().subject_name(name).issuer_name(name)
        .public_key(key.public_key()).serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=1))
        .not_valid_after(now + dt.timedelta(days=1)).sign(key, hashes.SHA256())
    )  # fmt: skip
    pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    ) + cert.public_bytes(serialization.Encoding.PEM)  # fmt: skip
    return key, cert, pem


@pytest.fixture(scope="module")
def entra(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[FakeEntra, Path]]:
    ctx, ca = server_tls(tmp_path_factory.mktemp("entra-tls"))
    fake = FakeEntra(client_secrets={"app-1": {"s3cret"}})
    lt = LoopThread()
    lt.serve(start(fake, 0, ctx))
    yield fake, ca
    lt.stop()


def _kw(fake: FakeEntra, ca: Path) -> dict[str, Any]:
    return {"authority": fake.base_url, "disable_instance_discovery": True,
            "connection_verify": str(ca)}  # fmt: skip


def test_client_secret_credential_gets_an_arm_token(entra: tuple[FakeEntra, Path]) -> None:
    fake, ca = entra
    cred = azure_identity.ClientSecretCredential(fake.tenant, "app-1", "s3cret", **_kw(fake, ca))
    tok = cred.get_token(ARM_SCOPE)
    claims = fake.verify(tok.token, "https://management.azure.com")
    assert claims["appid"] == "app-1" and claims["tid"] == fake.tenant
    assert tok.expires_on > time.time() + 3000


def test_wrong_secret_is_refused(entra: tuple[FakeEntra, Path]) -> None:
    fake, ca = entra
    cred = azure_identity.ClientSecretCredential(fake.tenant, "app-1", "nope", **_kw(fake, ca))
    with pytest.raises(azure_identity.CredentialUnavailableError.__mro__[1]):
        cred.get_token(ARM_SCOPE)
    assert "invalid_client" in fake.refusals


def test_certificate_credential_and_assertion_checks(
    entra: tuple[FakeEntra, Path], tmp_path: Path
) -> None:
    fake, ca = entra
    key, cert, pem = make_cert()
    fake.client_certs["app-cert"] = [cert]
    (tmp_path / "c.pem").write_bytes(pem)
    cred = azure_identity.CertificateCredential(
        fake.tenant, "app-cert", str(tmp_path / "c.pem"), **_kw(fake, ca)
    )
    tok = cred.get_token(ARM_SCOPE)
    assert fake.verify(tok.token, "https://management.azure.com")["appid"] == "app-cert"

    der = cert.public_bytes(serialization.Encoding.DER)
    x5t = jwt.utils.base64url_encode(hashlib.sha1(der).digest()).decode()  # noqa: S324

    def post(claims: dict[str, Any], headers: dict[str, Any]) -> requests.Response:
        assertion = jwt.encode(claims, key, algorithm="RS256", headers=headers)
        return requests.post(
            fake.token_url,
            data={"grant_type": "client_credentials", "client_id": "app-cert",
                  "scope": ARM_SCOPE, "client_assertion": assertion,
                  "client_assertion_type": JWT_BEARER},
            verify=str(ca), timeout=10,
        )  # fmt: skip

    now = int(time.time())
    good = {"aud": fake.token_url, "iss": "app-cert", "sub": "app-cert", "exp": now + 60,
            "nbf": now, "jti": str(uuid.uuid4())}  # fmt: skip
    assert post(good, {"x5t": x5t}).status_code == 200
    assert post(good, {"x5t": x5t}).status_code == 401  # replayed jti
    assert post({**good, "jti": "b", "aud": "https://elsewhere"}, {"x5t": x5t}).status_code == 401
    assert post({**good, "jti": "c", "exp": now - 120}, {"x5t": x5t}).status_code == 401
    assert post({**good, "jti": "d", "iss": "other"}, {"x5t": x5t}).status_code == 401
    assert post({**good, "jti": "e"}, {"x5t": "AAAA"}).status_code == 401
    other_key, _, _ = make_cert()
    forged = jwt.encode({**good, "jti": "f"}, other_key, algorithm="RS256", headers={"x5t": x5t})
    r = requests.post(
        fake.token_url,
        data={"grant_type": "client_credentials", "client_id": "app-cert", "scope": ARM_SCOPE,
              "client_assertion": forged,
              "client_assertion_type": JWT_BEARER},
        verify=str(ca), timeout=10,
    )  # fmt: skip
    assert r.status_code == 401


def test_discovery_and_jwks(entra: tuple[FakeEntra, Path]) -> None:
    fake, ca = entra
    doc = requests.get(
        f"{fake.base_url}/{fake.tenant}/v2.0/.well-known/openid-configuration",
        verify=str(ca), timeout=10,
    ).json()  # fmt: skip
    assert doc["token_endpoint"] == fake.token_url
    keys = requests.get(doc["jwks_uri"], verify=str(ca), timeout=10).json()["keys"]
    assert keys[0]["kid"] == fake.kid and keys[0]["kty"] == "RSA"
    bad = requests.get(
        f"{fake.base_url}/other/v2.0/.well-known/openid-configuration", verify=str(ca), timeout=10
    )
    assert bad.status_code == 400
