"""The test Kubernetes service-account issuer behaves as the Kubernetes docs describe:
discovery, a JWKS whose kids are key hashes, tokens with the API server's claims, and a
projected token file the kubelet swaps in atomically."""

from __future__ import annotations

import base64
import hashlib
import os
import stat
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import jwt
import pytest
from cryptography.hazmat.primitives import serialization

from lockgate.demo.standins.kubernetes import FakeClusterIssuer, start


@pytest.fixture(params=["RS256", "ES256"])
async def cluster(request: pytest.FixtureRequest) -> AsyncIterator[FakeClusterIssuer]:
    fake = FakeClusterIssuer(algorithm=request.param)
    runner = await start(fake)
    yield fake
    await runner.cleanup()


async def _get(url: str) -> dict:
    async with aiohttp.ClientSession() as http, http.get(url) as resp:
        assert resp.status == 200
        return await resp.json(content_type=None)


async def test_discovery_and_jwks(cluster: FakeClusterIssuer) -> None:
    assert cluster.issuer.startswith("http://127.0.0.1:")
    doc = await _get(cluster.issuer + "/.well-known/openid-configuration")
    assert doc["issuer"] == cluster.issuer
    assert doc["jwks_uri"] == cluster.issuer + "/openid/v1/jwks"
    assert doc["id_token_signing_alg_values_supported"] == [cluster.algorithm]
    assert doc["response_types_supported"] == ["id_token"]
    keys = (await _get(doc["jwks_uri"]))["keys"]
    assert len(keys) == 1 and keys[0]["use"] == "sig" and keys[0]["alg"] == cluster.algorithm
    public = jwt.PyJWK(keys[0]).key
    der = public.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    kid = base64.urlsafe_b64encode(hashlib.sha256(der).digest()).rstrip(b"=").decode()
    assert keys[0]["kid"] == kid  # the API server's key id: the hash of the public key


async def test_a_projected_token_verifies_with_the_published_key(
    cluster: FakeClusterIssuer, tmp_path: Path
) -> None:
    path = tmp_path / "volume" / "token"
    token = cluster.project(
        path, namespace="airflow", service_account="worker", audience="lockgate", ttl=600
    )
    assert path.read_text() == token
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    assert path.is_symlink() and os.readlink(path) == "..data/token"  # the atomic writer
    header = jwt.get_unverified_header(token)
    assert set(header) == {"alg", "kid"} and header["kid"] == cluster.kid
    keys = (await _get(cluster.issuer + "/openid/v1/jwks"))["keys"]
    claims = jwt.decode(token, jwt.PyJWK(keys[0]).key, algorithms=[cluster.algorithm],
                        audience="lockgate", issuer=cluster.issuer)  # fmt: skip
    assert claims["sub"] == "system:serviceaccount:airflow:worker"
    assert claims["aud"] == ["lockgate"] and claims["exp"] - claims["iat"] == 600
    assert claims["nbf"] == claims["iat"] and claims["jti"]
    k8s = claims["kubernetes.io"]
    assert k8s["namespace"] == "airflow" and k8s["serviceaccount"]["name"] == "worker"
    assert k8s["serviceaccount"]["uid"] and k8s["pod"]["name"] and k8s["pod"]["uid"]


async def test_the_kubelet_refresh_swaps_the_file_and_leaves_no_old_payload(
    cluster: FakeClusterIssuer, tmp_path: Path
) -> None:
    path = tmp_path / "token"
    first = cluster.project(path, namespace="a", service_account="w", audience="x")
    reader = path.open()  # a reader holding the old file still reads a whole token
    second = cluster.project(path, namespace="a", service_account="w", audience="x")
    assert first != second and path.read_text() == second
    assert reader.read() == first
    reader.close()
    payloads = [p.name for p in tmp_path.iterdir() if p.name.startswith("..") and p.is_dir()
                and not p.is_symlink()]  # fmt: skip
    assert len(payloads) == 1  # the previous payload directory is gone


async def test_key_rotation_keeps_the_old_key_published_unless_retired(
    cluster: FakeClusterIssuer,
) -> None:
    old = cluster.kid
    new = cluster.rotate_key()
    kids = [k["kid"] for k in (await _get(cluster.issuer + "/openid/v1/jwks"))["keys"]]
    assert kids == [old, new]
    assert (
        jwt.get_unverified_header(cluster.token(namespace="a", service_account="w", audience="x"))[
            "kid"
        ]
        == new
    )
    newest = cluster.rotate_key(retire_old=True)
    kids = [k["kid"] for k in (await _get(cluster.issuer + "/openid/v1/jwks"))["keys"]]
    assert kids == [newest]


def test_a_token_needs_a_started_issuer() -> None:
    with pytest.raises(RuntimeError):
        FakeClusterIssuer().token(namespace="a", service_account="w", audience="x")
