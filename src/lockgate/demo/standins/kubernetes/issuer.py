"""The part of a Kubernetes cluster a workload identity is made of: its service-account
token issuer, written from the Kubernetes docs, not from Lockgate's verifier.

What a cluster does, and this does too:

- **Issuer discovery** (``ServiceAccountIssuerDiscovery``): the API server serves
  ``/.well-known/openid-configuration`` (``issuer``, ``jwks_uri`` =
  ``<issuer>/openid/v1/jwks``, ``response_types_supported: ["id_token"]``,
  ``subject_types_supported: ["public"]``, ``id_token_signing_alg_values_supported``) and
  ``/openid/v1/jwks`` (the public keys of ``--service-account-key-file``, each with
  ``use: sig``, ``alg`` and a ``kid`` that is the base64url SHA-256 of the key's DER form).
- **Token projection**: the kubelet asks for a token (TokenRequest) with the audience and
  lifetime of a ``serviceAccountToken`` projected volume source and writes it into the
  pod's volume the way its atomic writer does: into a fresh timestamped directory, then a
  ``..data`` symlink swapped by rename, the file name a symlink through ``..data``, so a
  reader never sees half a token. The kubelet refreshes the file before it expires (at 80 %
  of its life); :meth:`FakeClusterIssuer.project` called again is that refresh.
- **Claims** as the API server puts them: ``aud`` (a list), ``exp``, ``iat``, ``nbf``,
  ``iss``, ``jti``, ``sub`` = ``system:serviceaccount:<namespace>:<name>`` and
  ``kubernetes.io``: ``{namespace, pod: {name, uid}, serviceaccount: {name, uid}}``. The
  header carries ``alg`` and ``kid`` only.
- **Key rotation**: a new signing key is added; the old one stays published (tokens it
  signed are still valid) unless retired.

Used by the tests and the end-to-end stack as "the cluster the Airflow workers run in".
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from aiohttp import web
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature

from lockgate.demo.standins._serving import serve

DATA_DIR = "..data"  # the kubelet's atomic writer: the symlink to the current payload
JWKS_PATH = "/openid/v1/jwks"
DISCOVERY_PATH = "/.well-known/openid-configuration"


def _b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode("ascii")


def _int_bytes(value: int, length: int | None = None) -> bytes:
    return value.to_bytes(length or (value.bit_length() + 7) // 8, "big")


@dataclass
class _ClusterKey:
    """One service-account signing key (``--service-account-signing-key-file``)."""

    algorithm: str
    private: rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey
    kid: str = field(init=False)

    def __post_init__(self) -> None:
        der = self.private.public_key().public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        )
        self.kid = _b64(hashlib.sha256(der).digest())  # what the API server publishes

    @classmethod
    def generate(cls, algorithm: str) -> _ClusterKey:
        if algorithm == "RS256":
            return cls(algorithm, rsa.generate_private_key(public_exponent=65537, key_size=2048))
        if algorithm == "ES256":
            return cls(algorithm, ec.generate_private_key(ec.SECP256R1()))
        raise ValueError(
            f"a cluster signs service-account tokens with RS256 or ES256, not {algorithm}"
        )

    def jwk(self) -> dict[str, str]:
        public = self.private.public_key()
        if isinstance(public, rsa.RSAPublicKey):
            numbers = public.public_numbers()
            material = {
                "kty": "RSA",
                "n": _b64(_int_bytes(numbers.n)),
                "e": _b64(_int_bytes(numbers.e)),
            }
        else:
            point = public.public_numbers()
            x, y = _b64(_int_bytes(point.x, 32)), _b64(_int_bytes(point.y, 32))
            material = {"kty": "EC", "crv": "P-256", "x": x, "y": y}
        return {"use": "sig", **material, "kid": self.kid, "alg": self.algorithm}

    def sign(self, header: dict[str, str], claims: dict[str, Any]) -> str:
        """A compact JWS (the API server's go-jose output, by hand)."""
        signing_input = (
            _b64(json.dumps(header, separators=(",", ":")).encode())
            + "."
            + _b64(json.dumps(claims, separators=(",", ":")).encode())
        ).encode("ascii")
        if isinstance(self.private, rsa.RSAPrivateKey):
            signature = self.private.sign(signing_input, padding.PKCS1v15(), hashes.SHA256())
        else:
            r, s = decode_dss_signature(self.private.sign(signing_input, ec.ECDSA(hashes.SHA256())))
            signature = _int_bytes(r, 32) + _int_bytes(s, 32)  # JWS: r || s, not DER
        return signing_input.decode("ascii") + "." + _b64(signature)


class FakeClusterIssuer:
    """A cluster's service-account issuer: discovery, JWKS and projected tokens.

    ``issuer`` is the URL it serves at (set by :func:`start`); ``project`` writes a token
    for a pod's service account into a file as the kubelet does; ``rotate_key`` makes a new
    key sign from now on."""

    def __init__(self, algorithm: str = "RS256") -> None:
        self.algorithm = algorithm
        self.issuer = ""
        self._keys = [_ClusterKey.generate(algorithm)]  # the last one signs
        self.jwks_requests = 0
        self.discovery_requests = 0

    @property
    def kid(self) -> str:
        """The key id of the key that signs now."""
        return self._keys[-1].kid

    def rotate_key(self, *, retire_old: bool = False) -> str:
        """A new signing key, published at once; the old ones stay published (tokens they
        signed keep verifying) unless ``retire_old``. Returns the new kid."""
        fresh = _ClusterKey.generate(self.algorithm)
        self._keys = [fresh] if retire_old else [*self._keys, fresh]
        return fresh.kid

    def token(
        self,
        *,
        namespace: str,
        service_account: str,
        audience: str | list[str],
        ttl: int = 3600,
        pod: str | None = None,
        now: float | None = None,
    ) -> str:
        """A TokenRequest's answer: a token bound to a pod of ``namespace``'s
        ``service_account`` for ``audience``, valid ``ttl`` seconds (the API server's
        minimum of 10 minutes is not enforced, so tests may make short-lived ones)."""
        if not self.issuer:
            raise RuntimeError("start the issuer first: its URL is the tokens' iss")
        issued = int(time.time() if now is None else now)
        pod_name = pod or f"{service_account}-{uuid.uuid4().hex[:5]}"
        claims: dict[str, Any] = {
            "aud": [audience] if isinstance(audience, str) else list(audience),
            "exp": issued + ttl,
            "iat": issued,
            "iss": self.issuer,
            "jti": str(uuid.uuid4()),
            "kubernetes.io": {
                "namespace": namespace,
                "pod": {"name": pod_name, "uid": str(uuid.uuid5(uuid.NAMESPACE_URL, pod_name))},
                "serviceaccount": {
                    "name": service_account,
                    "uid": str(uuid.uuid5(uuid.NAMESPACE_URL, f"{namespace}/{service_account}")),
                },
            },
            "nbf": issued,
            "sub": f"system:serviceaccount:{namespace}:{service_account}",
        }
        key = self._keys[-1]
        return key.sign({"alg": key.algorithm, "kid": key.kid}, claims)

    def project(
        self,
        path: str | os.PathLike[str],
        *,
        namespace: str,
        service_account: str,
        audience: str,
        ttl: int = 3600,
        **token_options: Any,
    ) -> str:
        """Write a fresh token to ``path`` the way the kubelet updates a projected volume
        (mode 0600, swapped in atomically) and return it."""
        token = self.token(
            namespace=namespace, service_account=service_account, audience=audience, ttl=ttl,
            **token_options,
        )  # fmt: skip
        _atomic_write(Path(path), token)
        return token

    # -- the API server's discovery endpoints -------------------------------------------------
    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_get(DISCOVERY_PATH, self._discovery)
        app.router.add_get(JWKS_PATH, self._jwks)
        return app

    async def _discovery(self, request: web.Request) -> web.Response:
        self.discovery_requests += 1
        return web.json_response(
            {
                "issuer": self.issuer,
                "jwks_uri": self.issuer + JWKS_PATH,
                "response_types_supported": ["id_token"],
                "subject_types_supported": ["public"],
                "id_token_signing_alg_values_supported": sorted({k.algorithm for k in self._keys}),
            }
        )

    async def _jwks(self, request: web.Request) -> web.Response:
        self.jwks_requests += 1
        return web.json_response({"keys": [key.jwk() for key in self._keys]},
                                 content_type="application/jwk-set+json")  # fmt: skip

    async def start(self, port: int = 0, ssl_context: Any = None) -> web.AppRunner:
        """Serve on 127.0.0.1 (see :func:`start`)."""
        return await start(self, port, ssl_context)


def _atomic_write(path: Path, token: str) -> None:
    """The kubelet's atomic writer: the payload goes into a new timestamped directory, the
    ``..data`` symlink is swapped to it by rename, and ``path`` is a symlink through
    ``..data``; the previous payload directory is removed."""
    volume = path.parent
    volume.mkdir(parents=True, exist_ok=True)
    data_link = volume / DATA_DIR
    previous = os.readlink(data_link) if data_link.is_symlink() else None
    payload = Path(
        os.path.join(
            volume, time.strftime("..%Y_%m_%d_%H_%M_%S.", time.gmtime()) + uuid.uuid4().hex[:9]
        )
    )
    payload.mkdir(mode=0o755)
    fd = os.open(payload / path.name, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w", encoding="ascii") as fh:
        fh.write(token)
    staging = volume / (DATA_DIR + "_tmp")
    if staging.is_symlink():
        staging.unlink()
    staging.symlink_to(payload.name)
    staging.replace(data_link)
    if not path.is_symlink():
        if path.exists():
            path.unlink()
        path.symlink_to(f"{DATA_DIR}/{path.name}")
    if previous and previous != payload.name:
        old = volume / previous
        for child in old.iterdir():
            child.unlink()
        old.rmdir()


async def start(issuer: FakeClusterIssuer, port: int = 0, ssl_context: Any = None) -> web.AppRunner:
    """Serve ``issuer``'s discovery and JWKS on 127.0.0.1:``port`` (0: a free one), over TLS
    with ``ssl_context``; sets ``issuer.issuer`` to the URL. Stop with ``runner.cleanup()``."""
    served = await serve(issuer.app(), port, ssl_context)
    issuer.issuer = served.url
    return served.runner
