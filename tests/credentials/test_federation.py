"""Federated credentials through the real broker against a token endpoint on 127.0.0.1 that
checks each assertion's signature against a JWKS of real RSA and P-256 keys, as a cloud does.

The end-to-end tests against the Entra ID and Databricks test services, with Lockgate's own
keys served over discovery, are in ``test_federation_clouds.py``.
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import jwt
import pytest
from aiohttp import web
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from lockgate.config import LockgateConfig
from lockgate.credentials import CredentialBroker, CredentialStore
from lockgate.credentials.federation import (
    JWT_TOKEN_TYPE,
    TOKEN_EXCHANGE_GRANT,
    assertion_claims,
    exchange_form,
)
from lockgate.credentials.oauth2 import ASSERTION_TYPE
from lockgate.errors import CredentialError

ISSUER = "https://lockgate.example.com"
START = 1_700_000_000.0


class Clock:
    def __init__(self) -> None:
        self.t = START

    def __call__(self) -> float:
        return self.t


class Signer:
    """Stands for ``KeyStore.sign``: one RSA and one P-256 key, swappable (rotation)."""

    def __init__(self) -> None:
        self.keys: dict[str, tuple[str, Any]] = {}
        self.published: dict[str, Any] = {}  # kid -> public key (what a JWKS would carry)
        self.calls: list[tuple[dict[str, Any], str]] = []
        for alg in ("RS256", "ES256"):
            self.rotate(alg)

    def rotate(self, alg: str) -> None:
        key: Any = (
            rsa.generate_private_key(public_exponent=65537, key_size=2048)
            if alg == "RS256"
            else ec.generate_private_key(ec.SECP256R1())
        )
        kid = f"{alg}-{len(self.published)}"
        self.keys[alg] = (kid, key)
        self.published[kid] = key.public_key()

    def __call__(self, claims: dict[str, Any], alg: str) -> str:
        self.calls.append((claims, alg))
        if alg not in self.keys:
            raise ValueError(f"no {alg} key")
        kid, key = self.keys[alg]
        return jwt.encode(claims, key, algorithm=alg, headers={"kid": kid, "typ": "JWT"})


class Cloud:
    """Both token endpoints: ``/entra`` (client_assertion) and ``/oidc/v1/token`` (RFC 8693).

    Verifies every assertion against ``signer.published`` with the test clock, pins the
    algorithms a provider accepts, and refuses a replayed ``jti``."""

    def __init__(self, signer: Signer, clock: Clock) -> None:
        self.signer = signer
        self.clock = clock
        self.forms: list[dict[str, str]] = []
        self.assertions: list[tuple[dict[str, Any], dict[str, Any]]] = []  # (header, claims)
        self.subject = "lockgate:credential:cosmos-fed"
        self.expires_in = 3600
        self.status: int | None = None
        self.delay = 0.0
        self.jtis: set[str] = set()
        self.base = ""

    def _verify(self, token: str, algorithms: list[str], audience: str) -> str | None:
        try:
            header = jwt.get_unverified_header(token)
            key = self.signer.published.get(str(header.get("kid")))
            if key is None or header.get("alg") not in algorithms:
                return "unsupported key or algorithm"
            claims = jwt.decode(
                token, key, algorithms=algorithms, audience=audience, issuer=ISSUER,
                options={"verify_exp": False, "verify_nbf": False, "verify_iat": False},
            )  # fmt: skip
        except jwt.PyJWTError as exc:
            return type(exc).__name__
        self.assertions.append((header, claims))
        if not claims["nbf"] <= self.clock() < claims["exp"]:
            return "expired"
        if claims["sub"] != self.subject:
            return "subject"
        if claims["jti"] in self.jtis:
            return "replayed"
        self.jtis.add(claims["jti"])
        return None

    def _answer(self, why: str | None, aadsts: str = "") -> web.Response:
        if self.status:
            return web.json_response({"error": "temporarily_unavailable"}, status=self.status)
        if why is not None:
            body: dict[str, Any] = {"error": "invalid_client", "error_description": why}
            if aadsts:
                body["error_codes"] = [int(aadsts)]
                body["error_description"] = f"AADSTS{aadsts}: {why} (assertion was rejected)"
            return web.json_response(body, status=401)
        return web.json_response(
            {"access_token": f"access-{len(self.forms)}", "token_type": "Bearer",
             "expires_in": self.expires_in}
        )  # fmt: skip

    async def entra(self, request: web.Request) -> web.Response:
        form = {k: str(v) for k, v in (await request.post()).items()}
        self.forms.append(form)
        if self.delay:
            await asyncio.sleep(self.delay)
        why = self._verify(
            form.get("client_assertion", ""), ["RS256"], "api://AzureADTokenExchange"
        )
        return self._answer(why, aadsts="700213" if why else "")

    async def databricks(self, request: web.Request) -> web.Response:
        form = {k: str(v) for k, v in (await request.post()).items()}
        self.forms.append(form)
        why = self._verify(form.get("subject_token", ""), ["RS256", "ES256"], "acct-123")
        return self._answer(why)


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def signer() -> Signer:
    return Signer()


@pytest.fixture
async def cloud(signer: Signer, clock: Clock) -> AsyncIterator[Cloud]:
    c = Cloud(signer, clock)
    app = web.Application()
    app.router.add_post("/entra", c.entra)
    app.router.add_post("/oidc/v1/token", c.databricks)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    c.base = f"http://127.0.0.1:{runner.addresses[0][1]}"
    yield c
    await runner.cleanup()


def make_config(base: str, **databricks: Any) -> LockgateConfig:
    return LockgateConfig.model_validate(
        {
            "issuer": ISSUER + "/",
            "credentials": [
                {"name": "cosmos-fed", "type": "federated", "provider": "entra",
                 "token_url": f"{base}/entra", "client_id": "app-1",
                 "scope": "https://acct.documents.azure.com/.default", "refresh_before": 5},
                {"name": "dbx-fed", "type": "federated", "provider": "databricks",
                 "token_url": f"{base}/oidc/v1/token", "audience": "acct-123",
                 "subject": "lockgate:credential:cosmos-fed", **databricks},
            ],
        }
    )  # fmt: skip


@pytest.fixture
def store(tmp_path: Path, clock: Clock) -> CredentialStore:
    return CredentialStore(tmp_path / "credentials.db", os.urandom(32), clock=clock)


@pytest.fixture
async def broker(
    cloud: Cloud, store: CredentialStore, clock: Clock, signer: Signer
) -> AsyncIterator[CredentialBroker]:
    b = CredentialBroker(make_config(cloud.base), store, clock=clock, assertion_signer=signer)
    yield b
    await b.close()


# -- the request -----------------------------------------------------------------------------
def test_assertion_claims_are_the_pinned_ones() -> None:
    cfg = make_config("https://x")
    cred = cfg.credential("cosmos-fed")
    assert cred is not None and cred.type == "federated"
    claims = assertion_claims(cred, cfg.issuer_url, now=START + 0.7)
    jti = claims.pop("jti")
    assert claims == {
        "iss": ISSUER, "sub": "lockgate:credential:cosmos-fed",
        "aud": "api://AzureADTokenExchange", "iat": int(START), "nbf": int(START),
        "exp": int(START) + 300,
    }  # fmt: skip
    assert len(jti) >= 22 and assertion_claims(cred, ISSUER, now=START)["jti"] != jti


def test_exchange_forms_per_provider() -> None:
    cfg = make_config("https://x", client_id="sp-9")
    entra, dbx = cfg.credential("cosmos-fed"), cfg.credential("dbx-fed")
    assert entra is not None and entra.type == "federated"
    assert dbx is not None and dbx.type == "federated"
    assert exchange_form(entra, "J") == {
        "grant_type": "client_credentials", "client_id": "app-1",
        "scope": "https://acct.documents.azure.com/.default",
        "client_assertion_type": ASSERTION_TYPE, "client_assertion": "J",
    }  # fmt: skip
    assert exchange_form(dbx, "J") == {
        "grant_type": TOKEN_EXCHANGE_GRANT, "subject_token": "J",
        "subject_token_type": JWT_TOKEN_TYPE, "scope": "all-apis", "client_id": "sp-9",
    }  # fmt: skip


async def test_entra_exchange_signs_rs256_with_current_key(
    broker: CredentialBroker, cloud: Cloud, signer: Signer, clock: Clock
) -> None:
    secret = await broker.upstream_secret("cosmos-fed")
    assert secret is not None
    assert (secret.value, secret.version, secret.credential) == ("access-1", 0, "cosmos-fed")
    assert secret.expires_at == clock.t + 3600
    header, claims = cloud.assertions[0]
    assert header["alg"] == "RS256" and header["kid"] == signer.keys["RS256"][0]
    assert claims["iss"] == ISSUER and claims["aud"] == "api://AzureADTokenExchange"
    assert cloud.forms[0]["client_id"] == "app-1"
    assert "client_secret" not in cloud.forms[0]


async def test_databricks_exchange_rs256_default_es256_when_configured(
    cloud: Cloud, store: CredentialStore, clock: Clock, signer: Signer
) -> None:
    for algorithm, expected in ((None, "RS256"), ("ES256", "ES256")):
        extra = {"algorithm": algorithm} if algorithm else {}
        b = CredentialBroker(
            make_config(cloud.base, **extra), store, clock=clock, assertion_signer=signer
        )
        try:
            secret = await b.upstream_secret("dbx-fed")
            assert secret is not None and secret.value.startswith("access-")
        finally:
            await b.close()
        header, _ = cloud.assertions[-1]
        assert header["alg"] == expected
        assert cloud.forms[-1]["grant_type"] == TOKEN_EXCHANGE_GRANT


async def test_audience_mapping_chooses_es256(
    cloud: Cloud, store: CredentialStore, clock: Clock, signer: Signer
) -> None:
    cfg = make_config(cloud.base).model_copy(deep=True)
    cfg.signing.audiences["acct-*"] = "ES256"
    b = CredentialBroker(cfg, store, clock=clock, assertion_signer=signer)
    try:
        await b.upstream_secret("dbx-fed")
    finally:
        await b.close()
    assert cloud.assertions[-1][0]["alg"] == "ES256"


# -- caching, refresh, single flight -----------------------------------------------------------
async def test_token_cached_then_refreshed_with_a_fresh_assertion(
    broker: CredentialBroker, cloud: Cloud, clock: Clock
) -> None:
    cloud.expires_in = 20  # refresh_before=5: refreshed from t+15
    first = await broker.upstream_secret("cosmos-fed")
    clock.t += 14
    again = await broker.upstream_secret("cosmos-fed")
    assert first is not None and again is not None and again.value == first.value
    assert len(cloud.forms) == 1
    clock.t += 2
    fresh = await broker.upstream_secret("cosmos-fed")
    assert fresh is not None and fresh.value == "access-2"
    jtis = [claims["jti"] for _, claims in cloud.assertions]
    assert len(jtis) == 2 and len(set(jtis)) == 2
    assert cloud.assertions[1][1]["iat"] == int(clock.t)  # signed now, not reused


async def test_single_flight(broker: CredentialBroker, cloud: Cloud) -> None:
    cloud.delay = 0.1
    got = await asyncio.gather(*(broker.upstream_secret("cosmos-fed") for _ in range(40)))
    assert len(cloud.forms) == 1 and {s.value for s in got if s} == {"access-1"}


async def test_failed_refresh_serves_cached_token_while_valid(
    broker: CredentialBroker, cloud: Cloud, clock: Clock, caplog: pytest.LogCaptureFixture
) -> None:
    cloud.expires_in = 20
    await broker.upstream_secret("cosmos-fed")
    cloud.status = 503
    clock.t += 16
    with caplog.at_level(logging.WARNING, logger="lockgate"):
        kept = await broker.upstream_secret("cosmos-fed")
    assert kept is not None and kept.value == "access-1"
    [warned] = [r for r in caplog.records if "refresh failed" in r.getMessage()]
    assert "HTTP 503" in str(warned.__dict__) and "access-1" not in caplog.text
    clock.t += 5
    with pytest.raises(CredentialError, match=r"token endpoint failed \(HTTP 503\)"):
        await broker.upstream_secret("cosmos-fed")


async def test_invalidate_fetches_a_new_token(broker: CredentialBroker, cloud: Cloud) -> None:
    first = await broker.upstream_secret("cosmos-fed")
    assert first is not None
    broker.invalidate("cosmos-fed", first.version)  # the upstream refused it
    second = await broker.upstream_secret("cosmos-fed")
    assert second is not None and second.value != first.value and len(cloud.forms) == 2


async def test_no_previous_version_and_no_fallback(broker: CredentialBroker) -> None:
    secret = await broker.upstream_secret("cosmos-fed")
    assert secret is not None
    assert await broker.upstream_secret("cosmos-fed", previous=True) is None
    assert await broker.fallback_secret("cosmos-fed", secret) is None


async def test_signing_key_rotation_between_exchanges(
    broker: CredentialBroker, cloud: Cloud, signer: Signer
) -> None:
    await broker.upstream_secret("cosmos-fed")
    old_kid = signer.keys["RS256"][0]
    signer.rotate("RS256")  # published (the cloud knows it) and now signing
    broker.invalidate("cosmos-fed")
    secret = await broker.upstream_secret("cosmos-fed")
    assert secret is not None and secret.value == "access-2"
    assert cloud.assertions[-1][0]["kid"] != old_kid


# -- refusals ----------------------------------------------------------------------------------
async def test_refusal_names_credential_status_codes_and_what_to_trust(
    broker: CredentialBroker, cloud: Cloud, signer: Signer
) -> None:
    cloud.subject = "lockgate:credential:someone-else"
    with pytest.raises(CredentialError) as info:
        await broker.upstream_secret("cosmos-fed")
    msg = str(info.value)
    assert msg.startswith(
        "credential 'cosmos-fed': token endpoint refused the client "
        "(HTTP 401, invalid_client, AADSTS700213): Entra ID refused the federated assertion"
    )
    assert f"issuer {ISSUER}," in msg and "subject lockgate:credential:cosmos-fed," in msg
    assert "audience api://AzureADTokenExchange" in msg and "app app-1" in msg
    assert "assertion was rejected" not in msg  # the description is never repeated
    sent = signer.calls[-1]
    assert sent[0]["jti"] not in msg and "eyJ" not in msg


async def test_eddsa_only_signer_or_none_is_a_clear_error(
    cloud: Cloud, store: CredentialStore, clock: Clock, signer: Signer
) -> None:
    del signer.keys["RS256"]
    b = CredentialBroker(make_config(cloud.base), store, clock=clock, assertion_signer=signer)
    unsigned = CredentialBroker(make_config(cloud.base), store, clock=clock)
    try:
        with pytest.raises(CredentialError, match="no RS256 signing key"):
            await b.upstream_secret("cosmos-fed")
        with pytest.raises(CredentialError, match="needs the gateway's signing keys"):
            await unsigned.upstream_secret("dbx-fed")
    finally:
        await b.close()
        await unsigned.close()
    assert cloud.forms == []  # nothing unsigned ever left


async def test_unreachable_token_endpoint(
    store: CredentialStore, clock: Clock, signer: Signer
) -> None:
    b = CredentialBroker(
        make_config("http://127.0.0.1:1"), store, clock=clock, assertion_signer=signer
    )
    try:
        with pytest.raises(CredentialError, match=r"'dbx-fed': token endpoint unreachable"):
            await b.upstream_secret("dbx-fed")
    finally:
        await b.close()
