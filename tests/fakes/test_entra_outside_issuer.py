"""An outside OIDC issuer for the federation tests (Entra ID, Databricks), and its own checks.

It serves ``/.well-known/openid-configuration`` and ``/keys`` over https with a test CA and
signs tokens with real keys of each algorithm (RSA, P-256, Ed25519, and an HMAC secret for
the confusion cases), independently of Lockgate's key code.
"""

from __future__ import annotations

import secrets
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import jwt
import pytest
import requests
from aiohttp import web
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa

from lockgate.demo.standins.entra.issuer_keys import IssuerKeyError, IssuerKeys
from lockgate.demo.standins.entra.thread import LoopThread, server_tls

SigningKey = rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey | ed25519.Ed25519PrivateKey


class OutsideIssuer:
    """A test OIDC issuer; ``issuer`` is its https URL once served."""

    def __init__(self) -> None:
        self.keys: dict[str, tuple[str, SigningKey]] = {}  # kid -> (alg, private key)
        self.issuer = ""
        self.discovery_issuer: str | None = None  # to lie about the issuer
        self.rotate("RS256")
        self.rotate("ES256")
        self.rotate("EdDSA")

    def rotate(self, alg: str) -> str:
        """A new key for ``alg`` (the old ones stay published); returns its kid."""
        key: SigningKey
        if alg == "RS256":
            key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        elif alg == "ES256":
            key = ec.generate_private_key(ec.SECP256R1())
        else:
            key = ed25519.Ed25519PrivateKey.generate()
        kid = f"{alg.lower()}-{secrets.token_hex(4)}"
        self.keys[kid] = (alg, key)
        return kid

    def kid(self, alg: str) -> str:
        return [k for k, (a, _) in self.keys.items() if a == alg][-1]

    def sign(self, claims: dict[str, Any], alg: str = "RS256", kid: str | None = None) -> str:
        kid = kid or self.kid(alg)
        return jwt.encode(claims, self.keys[kid][1], algorithm=alg, headers={"kid": kid})

    def claims(self, **overrides: Any) -> dict[str, Any]:
        now = int(time.time())
        base = {"iss": self.issuer, "sub": "lockgate:credential:arm", "iat": now, "nbf": now,
                "exp": now + 300, "jti": secrets.token_hex(8)}  # fmt: skip
        return {**base, **overrides}

    def _jwks(self) -> list[dict[str, Any]]:
        out = []
        for kid, (alg, key) in self.keys.items():
            jwk = jwt.algorithms.get_default_algorithms()[alg].to_jwk(
                key.public_key(), as_dict=True
            )
            out.append({**jwk, "kid": kid, "alg": alg, "use": "sig"})
        return out

    async def _discovery(self, request: web.Request) -> web.Response:
        return web.json_response(
            {"issuer": self.discovery_issuer or self.issuer, "jwks_uri": f"{self.issuer}/keys",
             "id_token_signing_alg_values_supported": ["RS256", "ES256", "EdDSA"]}
        )  # fmt: skip

    async def _keys(self, request: web.Request) -> web.Response:
        return web.json_response({"keys": self._jwks()})

    async def start(self, ssl_context: Any) -> web.AppRunner:
        app = web.Application()
        app.router.add_get("/.well-known/openid-configuration", self._discovery)
        app.router.add_get("/keys", self._keys)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0, ssl_context=ssl_context)
        await site.start()
        self.issuer = f"https://127.0.0.1:{runner.addresses[0][1]}"
        return runner


@contextmanager
def running_outside_issuer(tls_dir: Path) -> Iterator[tuple[OutsideIssuer, Path]]:
    """An outside issuer served over https on its own loop: (issuer, the CA to trust)."""
    ctx, ca = server_tls(tls_dir)
    issuer = OutsideIssuer()
    loop = LoopThread()
    loop.serve(issuer.start(ctx))
    try:
        yield issuer, ca
    finally:
        loop.stop()


@pytest.fixture(scope="module")
def outside(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[OutsideIssuer, Path]]:
    with running_outside_issuer(tmp_path_factory.mktemp("issuer-tls")) as served:
        yield served


def test_discovery_then_keys_and_refetch_on_unknown_kid(
    outside: tuple[OutsideIssuer, Path],
) -> None:
    issuer, ca = outside
    doc = requests.get(
        f"{issuer.issuer}/.well-known/openid-configuration", verify=str(ca), timeout=10
    ).json()
    assert doc["issuer"] == issuer.issuer
    keys = IssuerKeys(ca)
    loop = LoopThread()
    try:
        jwk = loop.call(keys.key(issuer.issuer, issuer.kid("RS256")))
        assert jwk["kty"] == "RSA"
        fetched = len(keys.fetched)
        loop.call(keys.key(issuer.issuer, issuer.kid("RS256")))
        assert len(keys.fetched) == fetched  # cached
        new_kid = issuer.rotate("RS256")
        assert loop.call(keys.key(issuer.issuer, new_kid))["kid"] == new_kid
        assert len(keys.fetched) == fetched + 2  # discovery and keys again
        with pytest.raises(IssuerKeyError):
            loop.call(keys.key(issuer.issuer, "nope"))
        with pytest.raises(IssuerKeyError):  # the CA is not trusted
            loop.call(IssuerKeys().key(issuer.issuer, None))
        with pytest.raises(IssuerKeyError):  # https only
            loop.call(keys.key(issuer.issuer.replace("https", "http"), None))
    finally:
        loop.stop()
