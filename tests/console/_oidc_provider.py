"""A small OIDC provider for the console's sign-in tests: discovery, an authorize endpoint
that signs the configured user in at once (302 back with a code), a token endpoint that
checks the code, client and PKCE verifier, and a JWKS of one RSA key.

``tamper`` lets a test change the ID token's claims and header, or forge it outright
(``alg: none``, HS256 keyed with the public key), to see the console refuse it.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlencode

import jwt
from aiohttp import web
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

CLIENT_ID = "lockgate-console"
KID = "test-key-1"
_KEY = rsa.generate_private_key(public_exponent=65537, key_size=2048)
PUBLIC_PEM = _KEY.public_key().public_bytes(
    serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
)


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def hs256_with_public_key(claims: dict[str, Any]) -> str:
    """The key-confusion forgery: HMAC-SHA256 keyed with the provider's public key."""
    head = b64url(json.dumps({"alg": "HS256", "kid": KID, "typ": "JWT"}).encode())
    body = b64url(json.dumps(claims).encode())
    sig = hmac.new(PUBLIC_PEM, f"{head}.{body}".encode(), hashlib.sha256).digest()
    return f"{head}.{body}.{b64url(sig)}"


def unsigned(claims: dict[str, Any]) -> str:
    head = b64url(json.dumps({"alg": "none", "typ": "JWT"}).encode())
    return f"{head}.{b64url(json.dumps(claims).encode())}."


@dataclass
class Provider:
    """State of the test provider; ``url`` is set once it serves."""

    url: str = ""
    user: dict[str, Any] = field(
        default_factory=lambda: {
            "sub": "sub-ann",
            "oid": "oid-ann",
            "preferred_username": "ann@example.com",
            "roles": ["Lockgate.Operator"],
        }
    )
    #: (claims, header) -> the ID token to send (None: sign them as they are)
    tamper: Callable[[dict[str, Any], dict[str, Any]], str | None] | None = None
    #: False: the JWKS is empty (the key withdrawn)
    publish_key: bool = True
    codes: dict[str, dict[str, Any]] = field(default_factory=dict)
    token_requests: list[dict[str, str]] = field(default_factory=list)

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_get("/.well-known/openid-configuration", self.discovery)
        app.router.add_get("/authorize", self.authorize)
        app.router.add_post("/token", self.token)
        app.router.add_get("/keys", self.keys)
        return app

    async def discovery(self, request: web.Request) -> web.Response:
        return web.json_response(
            {
                "issuer": self.url,
                "authorization_endpoint": f"{self.url}/authorize",
                "token_endpoint": f"{self.url}/token",
                "jwks_uri": f"{self.url}/keys",
                "id_token_signing_alg_values_supported": ["RS256"],
            }
        )

    async def keys(self, request: web.Request) -> web.Response:
        jwk = json.loads(jwt.algorithms.RSAAlgorithm.to_jwk(_KEY.public_key()))
        published = [{**jwk, "kid": KID, "use": "sig", "alg": "RS256"}] if self.publish_key else []
        return web.json_response({"keys": published})

    async def authorize(self, request: web.Request) -> web.StreamResponse:
        q = request.query
        assert q["response_type"] == "code" and q["code_challenge_method"] == "S256"
        code = secrets.token_urlsafe(16)
        self.codes[code] = {
            "nonce": q["nonce"],
            "challenge": q["code_challenge"],
            "client_id": q["client_id"],
            "redirect_uri": q["redirect_uri"],
            "scope": q["scope"],
        }
        target = q["redirect_uri"] + "?" + urlencode({"code": code, "state": q["state"]})
        raise web.HTTPFound(target)

    async def token(self, request: web.Request) -> web.Response:
        form = {k: str(v) for k, v in (await request.post()).items()}
        self.token_requests.append(form)
        grant = self.codes.pop(form.get("code", ""), None)
        if grant is None:
            return web.json_response({"error": "invalid_grant"}, status=400)
        verifier = form.get("code_verifier", "")
        if b64url(hashlib.sha256(verifier.encode()).digest()) != grant["challenge"]:
            return web.json_response({"error": "invalid_grant"}, status=400)
        if (
            form.get("client_id") != grant["client_id"]
            or form.get("redirect_uri") != grant["redirect_uri"]
        ):
            return web.json_response({"error": "invalid_client"}, status=400)
        now = int(time.time())
        claims = {
            "iss": self.url,
            "aud": CLIENT_ID,
            "iat": now,
            "nbf": now,
            "exp": now + 600,
            "nonce": grant["nonce"],
            **self.user,
        }
        header = {"kid": KID}
        forged = self.tamper(claims, header) if self.tamper is not None else None
        id_token = forged or jwt.encode(claims, _KEY, algorithm="RS256", headers=header)
        return web.json_response(
            {"access_token": "at-" + secrets.token_hex(8), "token_type": "Bearer",
             "id_token": id_token}
        )  # fmt: skip


def sign(claims: dict[str, Any], header: dict[str, Any]) -> str:
    """The provider's own signature over (possibly changed) claims."""
    return jwt.encode(claims, _KEY, algorithm="RS256", headers=header)
