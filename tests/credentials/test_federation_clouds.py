"""Federation against the test clouds, with every part real: a started Lockgate gateway
serving its discovery and JWKS over HTTPS (the issuer the clouds trust), its own credential
broker signing assertions with its key store, and the test Entra ID and Databricks services
checking each assertion against that discovery and JWKS as the real ones do.

An upstream that accepts only Entra ID tokens for its audience is served through the real
HTTP engine with a federated credential: no secret is stored anywhere.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

import aiohttp
import jwt
import pytest
from aiohttp import web

from lockgate.config import parse_config
from lockgate.credentials import CredentialBroker
from lockgate.demo.standins.databricks import FakeDatabricks
from lockgate.demo.standins.databricks import start as start_databricks
from lockgate.demo.standins.entra import FakeEntra
from lockgate.demo.standins.entra import start as start_entra
from lockgate.demo.standins.entra.issuer_keys import IssuerKeys, UnknownKeyId
from lockgate.errors import CredentialError
from lockgate.gateway.http import HttpEngine
from lockgate.identity import TaskIdentity
from lockgate.server import Gateway
from tests.credentials._federation import lockgate_issuer

APP = "lockgate-orders-app"  # the Entra app registration the gateway federates as
API = "api://lockgate-orders"  # the upstream's Entra audience
ENTRA_CRED = "orders-federated"
DATABRICKS_AUDIENCE = "lockgate-test-account"  # the federation policies' audience
SERVICE_PRINCIPAL = "sp-federated"  # a service principal federation policy's principal
ACCOUNT_PRINCIPAL = "sp-account"  # named by the subject under the account-wide policy
POLICY = """\
rules:
  - id: orders-read
    effect: allow
    principals: ["airflow:prod/*"]
    actions: [read]
    resources: [orders, orders-misfederated]
"""


class EntraProtectedApi:
    """An App Service-style API that takes only Entra ID tokens for its audience."""

    def __init__(self, entra: FakeEntra) -> None:
        self.entra = entra
        self.accepted: list[str] = []  # appid of each accepted token
        self.refused: list[str] = []
        self.revoked: set[str] = set()  # token ids (uti) no longer accepted
        self.url = ""

    async def handle(self, request: web.Request) -> web.Response:
        auth = request.headers.get("Authorization", "")
        try:
            claims = self.entra.verify(auth.removeprefix("Bearer "), API)
        except jwt.PyJWTError as exc:
            self.refused.append(type(exc).__name__)
            return web.json_response({"error": "invalid_token"}, status=401)
        if claims["uti"] in self.revoked:
            self.refused.append("revoked")
            return web.json_response({"error": "invalid_token"}, status=401)
        self.accepted.append(claims["appid"])
        return web.json_response({"orders": [1, 2, 3]})


@dataclass
class CachingIssuerKeys(IssuerKeys):
    """A cloud that keeps an issuer's key set ``max_age`` seconds, even when a token names a
    key it lacks (the real ones cache JWKS for minutes): why a rotated key is published
    ahead of signing."""

    max_age: float = 0.0
    fetched_at: dict[str, float] = field(default_factory=dict)

    async def key(self, issuer: str, kid: str | None) -> dict[str, Any]:
        at = self.fetched_at.get(issuer)
        if at is None or time.monotonic() - at >= self.max_age:
            self.forget(issuer)
            self.fetched_at[issuer] = time.monotonic()
        elif kid not in {k.get("kid") for k in self._cache[issuer].keys.values()}:
            raise UnknownKeyId(f"no key {kid!r} in the cached key set of {issuer}")
        return await super().key(issuer, kid)


@dataclass
class Clouds:
    gateway: Gateway
    entra: FakeEntra
    databricks: FakeDatabricks
    api: EntraProtectedApi
    issuer: str

    @property
    def broker(self) -> CredentialBroker:
        assert self.gateway.broker is not None
        return self.gateway.broker

    def assertions(self) -> list[tuple[dict[str, Any], dict[str, Any]]]:
        """(header, claims) of every assertion Entra ID was shown, in order."""
        return [
            (r.assertion_header, r.assertion_claims)
            for r in self.entra.token_requests
            if r.assertion_header is not None and r.assertion_claims is not None
        ]

    def published_kids(self) -> set[str]:
        return {k.kid for k in self.gateway.state.keys.published()}

    async def get_orders(self, http: aiohttp.ClientSession, resource: str = "orders") -> int:
        token, _ = self.gateway.issuer.mint(
            TaskIdentity("prod", "orders_load", "load", "r1", 1), resource, 600
        )
        url = f"http://127.0.0.1:{self.gateway.http_port}/{resource}/v1/orders"
        async with http.get(url, headers={"Authorization": f"Bearer {token}"}) as resp:
            await resp.read()
            return resp.status


async def _serve(app: web.Application) -> tuple[web.AppRunner, str]:
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    return runner, f"http://127.0.0.1:{runner.addresses[0][1]}"


def _credentials(entra: FakeEntra, databricks: FakeDatabricks) -> list[dict[str, Any]]:
    scope = f"{API}/.default"
    exchange = f"{databricks.base_url}/oidc/v1/token"
    return [
        {"name": "dbx-rs256", "type": "federated", "provider": "databricks",
         "token_url": exchange, "audience": DATABRICKS_AUDIENCE, "client_id": SERVICE_PRINCIPAL},
        {"name": "dbx-es256", "type": "federated", "provider": "databricks",
         "token_url": exchange, "audience": DATABRICKS_AUDIENCE, "subject": ACCOUNT_PRINCIPAL,
         "algorithm": "ES256"},
        {"name": "dbx-wrong-subject", "type": "federated", "provider": "databricks",
         "token_url": exchange, "audience": DATABRICKS_AUDIENCE, "client_id": SERVICE_PRINCIPAL,
         "subject": "lockgate:credential:someone-else"},
        {"name": ENTRA_CRED, "type": "federated", "provider": "entra",
         "token_url": entra.token_url, "client_id": APP, "scope": scope},
        # Entra knows no federated credential for these two
        {"name": "entra-wrong-subject", "type": "federated", "provider": "entra",
         "token_url": entra.token_url, "client_id": APP, "scope": scope,
         "subject": "lockgate:credential:someone-else"},
        {"name": "entra-wrong-audience", "type": "federated", "provider": "entra",
         "token_url": entra.token_url, "client_id": APP, "scope": scope,
         "subject": f"lockgate:credential:{ENTRA_CRED}", "audience": "api://not-entra"},
    ]  # fmt: skip


@pytest.fixture
async def clouds(tmp_path: Path) -> AsyncIterator[Clouds]:
    async with running_clouds(tmp_path, publish_ahead=0) as started:
        yield started


@asynccontextmanager
async def running_clouds(tmp_path: Path, *, publish_ahead: int) -> AsyncIterator[Clouds]:
    lockgate = lockgate_issuer(tmp_path / "tls")
    issuer = lockgate.url
    entra = FakeEntra(federation_ca=lockgate.ca, token_ttl=3600)
    entra.add_federated_credential(
        APP, issuer=issuer, subject=f"lockgate:credential:{ENTRA_CRED}", name="lockgate"
    )
    entra_runner = await start_entra(entra)  # plain HTTP: only the gateway's broker calls it
    databricks = FakeDatabricks(set(), federation_ca=lockgate.ca)  # no client secret at all
    databricks.add_federation_policy(
        issuer=issuer, audiences=[DATABRICKS_AUDIENCE], subject="lockgate:credential:dbx-rs256",
        service_principal=SERVICE_PRINCIPAL,
    )  # fmt: skip
    databricks.principals.add(ACCOUNT_PRINCIPAL)
    databricks.add_federation_policy(issuer=issuer, audiences=[DATABRICKS_AUDIENCE])
    databricks_runner, _ = await start_databricks(databricks)
    api = EntraProtectedApi(entra)
    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", api.handle)
    api_runner, api.url = await _serve(app)
    (tmp_path / "p.yaml").write_text(POLICY)
    cfg = parse_config(
        {"data_dir": str(tmp_path / "data"),
         "listeners": {"control": lockgate.control, "http": {"port": 0}},
         "signing": {"algorithms": ["EdDSA", "RS256", "ES256"], "publish_ahead": publish_ahead},
         "deployments": [{"name": "prod", "dags": ["*"],
                          "proof": {"type": "client_secret", "secret_sha256": "0" * 64}}],
         "resources": [{"name": "orders", "kind": "http", "upstream": api.url,
                        "credential": ENTRA_CRED, "conn_id": "orders_api"},
                       {"name": "orders-misfederated", "kind": "http", "upstream": api.url,
                        "credential": "entra-wrong-subject", "conn_id": "orders_misfederated"}],
         "credentials": _credentials(entra, databricks),
         "policies": [str(tmp_path / "p.yaml")]},
        tmp_path / "lockgate.yaml",
    )  # fmt: skip
    assert cfg.issuer_url == issuer
    gateway = Gateway(cfg)
    await gateway.start()
    try:
        yield Clouds(gateway, entra, databricks, api, issuer)
    finally:
        await gateway.stop()
        await databricks_runner.cleanup()
        await api_runner.cleanup()
        await entra_runner.cleanup()


# -- Entra ID ----------------------------------------------------------------------------------
async def test_entra_rs256_assertion_serves_a_request_through_the_http_engine(
    clouds: Clouds,
) -> None:
    async with aiohttp.ClientSession() as http:
        assert await clouds.get_orders(http) == 200
    assert clouds.api.accepted == [APP]
    [(header, claims)] = clouds.assertions()
    assert header["alg"] == "RS256" and header["kid"] in clouds.published_kids()
    assert header["kid"] == clouds.gateway.state.keys.current("RS256").kid
    assert claims["iss"] == clouds.issuer and claims["aud"] == "api://AzureADTokenExchange"
    assert claims["sub"] == f"lockgate:credential:{ENTRA_CRED}"
    assert claims["exp"] - claims["iat"] == 300 and claims["nbf"] == claims["iat"]
    # Entra fetched Lockgate's discovery and JWKS over HTTPS, as it does a real issuer
    fetched = clouds.entra.issuer_keys.fetched
    assert fetched[:2] == [
        f"{clouds.issuer}/.well-known/openid-configuration",
        f"{clouds.issuer}/.well-known/jwks.json",
    ]
    sent = clouds.entra.token_requests[-1].form
    assert sent["client_assertion"] == "<redacted>" and "client_secret" not in sent
    assert clouds.gateway.state.credentials.names() == []  # nothing stored


async def test_token_cached_then_refreshed_before_expiry(clouds: Clouds) -> None:
    clouds.entra.token_ttl = 2  # refreshed from half its life (refresh_before is capped)
    async with aiohttp.ClientSession() as http:
        for _ in range(5):
            assert await clouds.get_orders(http) == 200
        assert len(clouds.assertions()) == 1  # cached
        await asyncio.sleep(1.2)
        assert await clouds.get_orders(http) == 200
    assertions = clouds.assertions()
    assert len(assertions) == 2
    assert assertions[0][1]["jti"] != assertions[1][1]["jti"]  # a fresh assertion each time


async def test_a_refused_token_is_replaced_by_a_fresh_exchange(clouds: Clouds) -> None:
    async with aiohttp.ClientSession() as http:
        assert await clouds.get_orders(http) == 200
        clouds.api.revoked |= {claims["uti"] for claims in clouds.entra.issued}
        cast(HttpEngine, clouds.gateway.engines["http"]).secrets.invalidate()  # skip 1 s cache
        assert await clouds.get_orders(http) == 200  # retried once with a new token
    assert clouds.api.refused == ["revoked"] and len(clouds.api.accepted) == 2
    assert len(clouds.assertions()) == 2


async def test_a_refused_federation_is_a_503_logged_with_its_reason(
    clouds: Clouds, caplog: pytest.LogCaptureFixture
) -> None:
    async with aiohttp.ClientSession() as http:
        with caplog.at_level(logging.ERROR, logger="lockgate"):
            assert await clouds.get_orders(http, "orders-misfederated") == 503
    [logged] = [r for r in caplog.records if r.getMessage() == "upstream credential unavailable"]
    why = logged.__dict__["fields"]["error"]
    assert "AADSTS70021" in why and "subject lockgate:credential:someone-else" in why
    assert clouds.api.accepted == [] and clouds.api.refused == []  # nothing went upstream
    clouds.gateway.audit.flush(5.0)
    records = clouds.gateway.audit.search(resource="orders-misfederated")
    assert [(r.event, r.status, r.reason) for r in records][-1] == (
        "upstream_error",
        503,
        "credential_unavailable",
    )


async def test_wrong_subject_or_audience_is_a_clear_error(clouds: Clouds) -> None:
    with pytest.raises(CredentialError) as info:
        await clouds.broker.upstream_secret("entra-wrong-subject")
    msg = str(info.value)
    assert "'entra-wrong-subject'" in msg and "HTTP 401, invalid_client, AADSTS70021" in msg
    assert "subject lockgate:credential:someone-else" in msg and clouds.issuer in msg
    with pytest.raises(CredentialError) as info:
        await clouds.broker.upstream_secret("entra-wrong-audience")
    msg = str(info.value)
    assert "AADSTS70021" in msg and "audience api://not-entra" in msg
    assert "eyJ" not in msg  # never the assertion


async def test_entra_refuses_an_eddsa_or_es256_assertion(clouds: Clouds) -> None:
    for alg in ("EdDSA", "ES256"):
        forced = _broker_signing_with(clouds, alg)
        try:
            with pytest.raises(CredentialError, match="AADSTS5002738"):
                await forced.upstream_secret(ENTRA_CRED)
        finally:
            await forced.close()
        assert clouds.assertions()[-1][0]["alg"] == alg


@pytest.mark.parametrize("publish_ahead", [0, 3])
async def test_a_key_published_ahead_of_signing_outlives_a_cloud_s_key_cache(
    tmp_path: Path, publish_ahead: int
) -> None:
    async with running_clouds(tmp_path, publish_ahead=publish_ahead) as clouds:
        clouds.entra.issuer_keys = CachingIssuerKeys(clouds.entra.federation_ca, max_age=3)
        keys = clouds.gateway.state.keys
        assert await clouds.broker.upstream_secret(ENTRA_CRED) is not None  # JWKS cached now
        old_kid = keys.current("RS256").kid
        [rotated] = keys.rotate_each(retire_after=60, algorithms=["RS256"])
        failures: list[str] = []
        deadline = time.monotonic() + publish_ahead + 1.5
        while time.monotonic() < deadline:  # a fresh exchange every 0.2 s
            clouds.broker.invalidate(ENTRA_CRED)
            try:
                await clouds.broker.upstream_secret(ENTRA_CRED)
            except CredentialError as exc:
                failures.append(str(exc))
            await asyncio.sleep(0.2)
        kids = [header["kid"] for header, _ in clouds.assertions()]
    assert kids[0] == old_kid and kids[-1] == rotated.kid
    if publish_ahead == 0:  # signing at once: the cloud's cached key set lacks the key
        assert failures and all("AADSTS700027" in f for f in failures)
    else:  # published 3 s ahead: the cache has been refreshed before the key signs
        assert failures == []


async def test_rotating_the_signing_key_mid_traffic_fails_no_request(clouds: Clouds) -> None:
    clouds.entra.token_ttl = 2  # the broker exchanges a new assertion about every second
    keys = clouds.gateway.state.keys
    before = keys.current("RS256").kid
    statuses: list[int] = []
    async with aiohttp.ClientSession() as http:
        deadline = time.monotonic() + 4.0
        rotated = False
        while time.monotonic() < deadline:
            statuses.append(await clouds.get_orders(http))
            if not rotated and time.monotonic() > deadline - 3.0:
                keys.rotate(retire_after=60, algorithms=["RS256"])
                rotated = True
            await asyncio.sleep(0.05)
    assert statuses and set(statuses) == {200}, statuses
    kids = [header["kid"] for header, _ in clouds.assertions()]
    assert kids[0] == before and kids[-1] == keys.current("RS256").kid != before
    assert clouds.api.refused == []


# -- Databricks -------------------------------------------------------------------------------
async def test_databricks_service_principal_policy_rs256(clouds: Clouds) -> None:
    secret = await clouds.broker.upstream_secret("dbx-rs256")
    assert secret is not None and secret.version == 0
    assert clouds.databricks.token_principals[secret.value] == SERVICE_PRINCIPAL
    [sent] = clouds.databricks.token_requests
    assert sent == {
        "grant_type": "urn:ietf:params:oauth:grant-type:token-exchange",
        "subject_token": "<redacted>",
        "subject_token_type": "urn:ietf:params:oauth:token-type:jwt",
        "scope": "all-apis", "client_id": SERVICE_PRINCIPAL,
    }  # fmt: skip
    again = await clouds.broker.upstream_secret("dbx-rs256")
    assert again is not None and again.value == secret.value  # cached
    assert len(clouds.databricks.token_requests) == 1


async def test_databricks_account_policy_es256(clouds: Clouds) -> None:
    secret = await clouds.broker.upstream_secret("dbx-es256")
    assert secret is not None
    assert clouds.databricks.token_principals[secret.value] == ACCOUNT_PRINCIPAL
    assert "client_id" not in clouds.databricks.token_requests[-1]


async def test_databricks_refuses_eddsa_and_a_wrong_subject(clouds: Clouds) -> None:
    forced = _broker_signing_with(clouds, "EdDSA")
    try:
        with pytest.raises(CredentialError) as info:
            await forced.upstream_secret("dbx-rs256")
    finally:
        await forced.close()
    msg = str(info.value)
    assert "'dbx-rs256'" in msg and "(HTTP 400, invalid_request)" in msg
    assert "Databricks refused the federated assertion" in msg
    with pytest.raises(CredentialError) as info:
        await clouds.broker.upstream_secret("dbx-wrong-subject")
    msg = str(info.value)
    assert f"the federation policy of {SERVICE_PRINCIPAL} must trust issuer" in msg
    assert "subject lockgate:credential:someone-else" in msg
    assert f"audience {DATABRICKS_AUDIENCE} (RS256)" in msg
    assert clouds.databricks.tokens == {}  # nothing issued


async def test_databricks_es256_key_rotation_between_exchanges(clouds: Clouds) -> None:
    keys = clouds.gateway.state.keys
    first = await clouds.broker.upstream_secret("dbx-es256")
    keys.rotate(retire_after=60, algorithms=["ES256"])
    clouds.broker.invalidate("dbx-es256")  # as after an upstream 401
    second = await clouds.broker.upstream_secret("dbx-es256")
    assert first is not None and second is not None and first.value != second.value
    assert clouds.databricks.token_principals[second.value] == ACCOUNT_PRINCIPAL


def _broker_signing_with(clouds: Clouds, forced_alg: str) -> CredentialBroker:
    """A broker whose assertions are signed with ``forced_alg`` whatever the config says."""
    keys = clouds.gateway.state.keys

    def sign(claims: dict[str, Any], _alg: str) -> str:
        return keys.sign(claims, forced_alg)

    return CredentialBroker(
        clouds.gateway.config, clouds.gateway.state.credentials, assertion_signer=sign
    )
