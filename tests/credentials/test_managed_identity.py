"""The gateway's own upstream credentials for Azure: managed identity (App Service and IMDS
protocols) and Entra ID client credentials with a certificate (private_key_jwt)."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import jwt
import pytest
from aiohttp import web

from lockgate.config import LockgateConfig, ManagedIdentityCredential
from lockgate.credentials import CredentialBroker, CredentialStore
from lockgate.credentials.managed_identity import IMDS, request_for
from lockgate.demo.standins.entra import FakeEntra
from lockgate.demo.standins.entra import start as start_entra
from lockgate.errors import CredentialError
from tests.fakes.test_entra import make_cert

ARM = "https://management.azure.com"


class MiHost:
    """Both host protocols on one app: /app (App Service) and /imds (IMDS)."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, dict[str, str], dict[str, str]]] = []
        self.header = "id-header-secret"
        self.lifetime = 3600
        self.fail = False
        self.url = ""

    async def app_service(self, request: web.Request) -> web.Response:
        self.calls.append(("app", dict(request.query), dict(request.headers)))
        if self.fail or request.headers.get("X-IDENTITY-HEADER") != self.header:
            return web.json_response({"error": "unauthorized"}, status=401)
        exp = int(time.time()) + self.lifetime
        return web.json_response({"access_token": f"app-tok-{len(self.calls)}",
                                  "expires_on": str(exp), "resource": request.query["resource"],
                                  "token_type": "Bearer"})  # fmt: skip

    async def imds(self, request: web.Request) -> web.Response:
        self.calls.append(("imds", dict(request.query), dict(request.headers)))
        if self.fail or request.headers.get("Metadata") != "true":
            return web.json_response({"error": "bad_request"}, status=400)
        body = {"access_token": f"imds-tok-{len(self.calls)}",
                "expires_in": str(self.lifetime), "token_type": "Bearer"}  # fmt: skip
        return web.json_response(body)


@pytest.fixture
async def host() -> AsyncIterator[MiHost]:
    h = MiHost()
    app = web.Application()
    app.router.add_get("/app", h.app_service)
    app.router.add_get("/imds", h.imds)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    h.url = f"http://127.0.0.1:{runner.addresses[0][1]}"
    yield h
    await runner.cleanup()


def _mi(**kw: Any) -> ManagedIdentityCredential:
    return ManagedIdentityCredential(name="mi", type="managed_identity", resource=ARM, **kw)


def test_protocol_follows_the_environment() -> None:
    url, q, h = request_for(_mi(), {"IDENTITY_ENDPOINT": "http://x/msi", "IDENTITY_HEADER": "h"})
    assert url == "http://x/msi" and q["api-version"] == "2019-08-01"
    assert h["X-IDENTITY-HEADER"] == "h" and q["resource"] == ARM
    url, q, h = request_for(_mi(client_id="uami"), {})
    assert url == IMDS and q == {"api-version": "2018-02-01", "resource": ARM, "client_id": "uami"}
    assert h == {"Metadata": "true"}
    url, _, _ = request_for(_mi(), {"AZURE_POD_IDENTITY_AUTHORITY_HOST": "http://pod:8080/"})
    assert url == "http://pod:8080/metadata/identity/oauth2/token"


def _broker(tmp_path: Path, cred: dict[str, Any]) -> CredentialBroker:
    config = LockgateConfig.model_validate({"data_dir": str(tmp_path), "credentials": [cred]})
    return CredentialBroker(config, CredentialStore(tmp_path / "c.db", b"k" * 32))


async def test_broker_imds_token_is_cached_and_never_has_a_previous(
    tmp_path: Path, host: MiHost
) -> None:
    broker = _broker(tmp_path, {"name": "mi", "type": "managed_identity", "resource": ARM,
                                "endpoint": f"{host.url}/imds"})  # fmt: skip
    try:
        a = await broker.upstream_secret("mi")
        b = await broker.upstream_secret("mi")
        assert a.value == b.value == "imds-tok-1" and len(host.calls) == 1
        assert a.expires_at is not None and a.expires_at > time.time() + 3000
        assert await broker.upstream_secret("mi", previous=True) is None
        assert "imds-tok" not in repr(a)
    finally:
        await broker.close()


async def test_broker_app_service_protocol_and_refresh(
    tmp_path: Path, host: MiHost, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("IDENTITY_ENDPOINT", f"{host.url}/app")
    monkeypatch.setenv("IDENTITY_HEADER", host.header)
    host.lifetime = 2  # refresh at half the lifetime
    broker = _broker(tmp_path, {"name": "mi", "type": "managed_identity", "resource": ARM})
    try:
        first = await broker.upstream_secret("mi")
        assert first.value == "app-tok-1" and host.calls[0][1]["resource"] == ARM
        broker._clock = lambda: time.time() + 1.5  # past refresh_at
        second = await broker.upstream_secret("mi")
        assert second.value == "app-tok-2"
        host.fail = True  # refresh fails while the cached token is still valid: served
        broker._clock = lambda: time.time() + 1.6
        assert (await broker.upstream_secret("mi")).value == "app-tok-2"
        broker._clock = lambda: time.time() + 10  # expired and the host refuses
        with pytest.raises(CredentialError) as err:
            await broker.upstream_secret("mi")
        assert "HTTP 401" in str(err.value) and host.header not in str(err.value)
    finally:
        await broker.close()


async def test_entra_certificate_credential_with_rotation(tmp_path: Path) -> None:
    entra = FakeEntra()
    runner = await start_entra(entra)
    _, cert1, pem1 = make_cert("gw-1")
    _, cert2, pem2 = make_cert("gw-2")
    entra.client_certs["gw"] = [cert1]
    cred = {
        "name": "arm",
        "type": "oauth2_client_credentials",
        "token_url": entra.token_url,
        "client_id": "gw",
        "scope": f"{ARM}/.default",
        "token_auth": "private_key_jwt",
    }
    broker = _broker(tmp_path, cred)
    store = broker._store
    try:
        store.set("arm", pem1.decode())
        tok = await broker.upstream_secret("arm")
        assert entra.verify(tok.value, ARM)["appid"] == "gw"
        # rotation: register the new certificate, store the new key, retire the old one
        entra.client_certs["gw"].append(cert2)
        store.rotate("arm", pem2.decode())
        entra.client_certs["gw"].remove(cert1)
        tok2 = await broker.upstream_secret("arm")
        assert tok2.version == 2 and jwt.decode(tok2.value, options={"verify_signature": False})
        assert entra.refusals == []
        store.rotate("arm", "not a pem")
        with pytest.raises(CredentialError) as err:
            await broker.upstream_secret("arm")
        assert "PEM private key" in str(err.value)
    finally:
        await broker.close()
        await runner.cleanup()
