"""Small local servers for the token-service tests: an OIDC issuer and an Airflow REST API."""

from __future__ import annotations

import contextlib
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any

import jwt
from aiohttp import web
from aiohttp.test_utils import TestServer
from cryptography.hazmat.primitives.asymmetric import rsa


@contextlib.asynccontextmanager
async def serve(app: web.Application) -> AsyncIterator[TestServer]:
    """Run ``app`` on 127.0.0.1 on a free port until the block ends."""
    server = TestServer(app, host="127.0.0.1", port=0)
    await server.start_server()
    try:
        yield server
    finally:
        await server.close()


RSA_KEY = rsa.generate_private_key(public_exponent=65537, key_size=2048)


class FakeOidcIssuer:
    """Serves discovery and a JWKS with one RS256 key; mints subject tokens."""

    kid = "test-rsa-1"

    def __init__(self) -> None:
        self.url = ""
        self.jwks_hits = 0
        self.app = web.Application()
        self.app.router.add_get("/.well-known/openid-configuration", self._discovery)
        self.app.router.add_get("/keys", self._jwks)

    async def _discovery(self, request: web.Request) -> web.Response:
        return web.json_response({"issuer": self.url, "jwks_uri": f"{self.url}/keys"})

    async def _jwks(self, request: web.Request) -> web.Response:
        self.jwks_hits += 1
        jwk = jwt.algorithms.RSAAlgorithm.to_jwk(RSA_KEY.public_key(), as_dict=True)
        return web.json_response({"keys": [{**jwk, "kid": self.kid, "alg": "RS256", "use": "sig"}]})

    def token(self, **overrides: Any) -> str:
        now = int(time.time())
        claims: dict[str, Any] = {
            "iss": self.url,
            "aud": "api://lockgate",
            "sub": "system:serviceaccount:airflow:worker",
            "iat": now,
            "exp": now + 300,
            "jti": uuid.uuid4().hex,
        }
        alg = overrides.pop("_alg", "RS256")
        key = overrides.pop("_key", RSA_KEY)
        kid = overrides.pop("_kid", self.kid)
        claims.update(overrides)
        return jwt.encode(claims, key, algorithm=alg, headers={"kid": kid})


class FakeAirflowApi:
    """``GET /api/v2/dags/{dag}/dagRuns/{run}/taskInstances/{task}[/{map_index}]``."""

    def __init__(self, bearer: str) -> None:
        self.bearer = bearer
        self.instances: dict[tuple[str, str, str, int], dict[str, Any]] = {}
        self.app = web.Application()
        base = "/api/v2/dags/{dag_id}/dagRuns/{run_id}/taskInstances/{task_id}"
        self.app.router.add_get(base, self._ti)
        self.app.router.add_get(base + "/{map_index}", self._ti)

    async def _ti(self, request: web.Request) -> web.Response:
        if request.headers.get("Authorization") != f"Bearer {self.bearer}":
            return web.json_response({"detail": "unauthorized"}, status=401)
        m = request.match_info
        key = (m["dag_id"], m["run_id"], m["task_id"], int(m.get("map_index", -1)))
        ti = self.instances.get(key)
        if ti is None:
            return web.json_response({"detail": "not found"}, status=404)
        # Airflow's TaskInstanceResponse names the instance it describes.
        named = dict(zip(("dag_id", "dag_run_id", "task_id", "map_index"), key, strict=True))
        return web.json_response({**named, **ti})
