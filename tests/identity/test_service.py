"""The token service over real HTTP on 127.0.0.1, with a local OIDC issuer and Airflow API."""

from __future__ import annotations

import base64
import hashlib
import hmac
import io
import json
import logging
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import jwt
import pytest
from aiohttp import web
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from lockgate import _log, metrics
from lockgate.config import LockgateConfig, parse_config
from lockgate.control.token import add_token_routes
from lockgate.errors import AuthenticationError
from lockgate.identity import (
    KeyStore,
    MintDecision,
    RevocationStore,
    TaskIdentity,
    TokenIssuer,
    TokenService,
    TokenVerifier,
)
from lockgate.identity.keys import b64url

from ._fakes import RSA_KEY, FakeAirflowApi, FakeOidcIssuer, serve

ISSUER = "http://lockgate.test"
SECRET = "s3cret-prod-Zq81"
ATTESTED_SECRET = "s3cret-attested-Lm22"
AIRFLOW_BEARER = "airflow-api-bearer-Xy77"
RUN_ID = "manual__2025-01-01T00:00:00+00:00"
PK_KEY = Ed25519PrivateKey.generate()
TASK = {"dag_id": "finance_daily", "task_id": "load_orders", "run_id": RUN_ID, "try_number": "1"}


@dataclass
class Env:
    url: str
    http: aiohttp.ClientSession
    config: LockgateConfig
    verifier: TokenVerifier
    revocations: RevocationStore
    oidc: FakeOidcIssuer
    airflow: FakeAirflowApi
    service: TokenService
    events: list[tuple[str, dict[str, Any]]] = field(default_factory=list)
    policy_calls: list[tuple[TaskIdentity, str, int | None]] = field(default_factory=list)

    async def post(self, path: str, data: dict[str, Any] | None = None, **kw: Any):
        async with self.http.post(self.url + path, data=data, **kw) as resp:
            return resp.status, await resp.json()

    async def token(self, **fields: Any):
        body = {"client_id": "prod", "client_secret": SECRET, "resource": "orders-api", **TASK}
        body.update(fields)
        return await self.post("/v1/token", {k: v for k, v in body.items() if v is not None})


def mint_policy(env_calls: list) -> Any:
    def decide(identity: TaskIdentity, resource: str, requested_ttl: int | None) -> MintDecision:
        env_calls.append((identity, resource, requested_ttl))
        if resource == "billing-db":
            return MintDecision(False, 0, "no rule allows finance to billing-db", None)
        return MintDecision(True, 600, "allowed by finance-etl", "finance-etl")

    return decide


@pytest.fixture
async def env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[Env]:
    monkeypatch.setenv("LG_TEST_AIRFLOW_BEARER", AIRFLOW_BEARER)
    pem = PK_KEY.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    (tmp_path / "pk.pem").write_bytes(pem)
    oidc, airflow = FakeOidcIssuer(), FakeAirflowApi(AIRFLOW_BEARER)
    async with serve(oidc.app) as oidc_srv, serve(airflow.app) as af_srv:
        oidc.url = str(oidc_srv.make_url("")).rstrip("/")
        sha = hashlib.sha256
        config = parse_config(
            {
                "data_dir": str(tmp_path),
                "issuer": ISSUER,
                "deployments": [
                    {
                        "name": "prod",
                        "proof": {
                            "type": "client_secret",
                            "secret_sha256": sha(SECRET.encode()).hexdigest(),
                        },
                        "dags": ["finance_*"],
                    },
                    {
                        "name": "pk",
                        "proof": {
                            "type": "private_key_jwt",
                            "public_key": str(tmp_path / "pk.pem"),
                        },
                        "dags": ["*"],
                    },
                    {
                        "name": "attested",
                        "proof": {
                            "type": "client_secret",
                            "secret_sha256": sha(ATTESTED_SECRET.encode()).hexdigest(),
                        },
                        "dags": ["finance_*"],
                        "airflow_api": {
                            "url": str(af_srv.make_url("")).rstrip("/"),
                            "token_env": "LG_TEST_AIRFLOW_BEARER",
                        },
                    },
                ],
                "oidc_issuers": [
                    {
                        "issuer": oidc.url,
                        "audience": "api://lockgate",
                        "deployment": "prod",
                        "subjects": ["system:serviceaccount:airflow:*"],
                        "algorithms": ["RS256"],
                    }
                ],
                "resources": [
                    {
                        "name": "orders-api",
                        "kind": "http",
                        "upstream": "https://orders.test",
                        "conn_id": "orders_api",
                    },
                    {"name": "billing-db", "kind": "http", "upstream": "https://billing.test"},
                ],
            }
        )
        keys = KeyStore(tmp_path)
        revocations = RevocationStore(tmp_path / "revocations.db")
        calls: list = []
        events: list = []
        service = TokenService(
            config,
            keys,
            revocations,
            TokenIssuer(keys, ISSUER),
            mint_policy(calls),
            on_event=lambda kind, **f: events.append((kind, f)),
        )
        app = web.Application()
        add_token_routes(app, service)
        async with serve(app) as srv, aiohttp.ClientSession() as http:
            yield Env(
                url=str(srv.make_url("")).rstrip("/"),
                http=http,
                config=config,
                verifier=TokenVerifier(keys, revocations, ISSUER),
                revocations=revocations,
                oidc=oidc,
                airflow=airflow,
                service=service,
                events=events,
                policy_calls=calls,
            )
        revocations.close()


def last_event(env: Env) -> tuple[str, dict[str, Any]]:
    assert env.events, "no event recorded"
    return env.events[-1]


# -- client secret ------------------------------------------------------------------------------


async def test_client_secret_ok(env: Env) -> None:
    before = metrics.TOKENS_ISSUED.labels(
        deployment="prod", resource="orders-api", dag=metrics.dag_label("finance_daily")
    )._value.get()
    status, body = await env.token(requested_ttl="300")
    assert status == 200, body
    assert body["token_type"] == "Bearer"
    assert body["issued_token_type"] == "urn:ietf:params:oauth:token-type:jwt"
    assert body["expires_in"] == 300  # min(policy 600, requested 300)
    assert body["principal"] == "airflow:prod/finance_daily/load_orders"
    claims = env.verifier.verify(body["access_token"], "orders-api")
    assert claims.jti == body["jti"]
    assert (claims.run_id, claims.try_number, claims.map_index) == (RUN_ID, 1, -1)
    identity, resource, ttl = env.policy_calls[-1]
    assert (identity.principal, resource, ttl) == (body["principal"], "orders-api", 300)
    kind, fields = last_event(env)
    assert (
        kind == "token_issued" and fields["jti"] == claims.jti and fields["rule"] == "finance-etl"
    )
    after = metrics.TOKENS_ISSUED.labels(
        deployment="prod", resource="orders-api", dag=metrics.dag_label("finance_daily")
    )._value.get()
    assert after == before + 1


async def test_http_basic_json_body_and_conn_id(env: Env) -> None:
    basic = base64.b64encode(f"prod:{SECRET}".encode()).decode()
    async with env.http.post(
        env.url + "/v1/token",
        json={**TASK, "try_number": 1, "conn_id": "orders_api"},
        headers={"Authorization": f"Basic {basic}"},
    ) as resp:
        body = await resp.json()
    assert resp.status == 200, body
    assert env.verifier.verify(body["access_token"], "orders-api").dag_id == "finance_daily"


async def test_wrong_secret_is_401(env: Env) -> None:
    status, body = await env.token(client_secret="wrong")
    assert status == 401 and body["error"] == "invalid_client"
    kind, fields = last_event(env)
    assert kind == "proof_rejected" and fields["reason"] == "bad_client_secret"


async def test_unknown_client_and_no_auth_are_401(env: Env) -> None:
    assert (await env.token(client_id="nobody"))[0] == 401
    assert (await env.token(client_id=None, client_secret=None))[0] == 401


async def test_dag_not_delegated_is_403(env: Env) -> None:
    status, body = await env.token(dag_id="hr_salaries")
    assert status == 403 and body["error"] == "access_denied"
    assert body["reason"] == "dag_not_delegated"
    assert env.policy_calls == []  # refused before policy is asked


async def test_policy_deny_is_403_with_reason(env: Env) -> None:
    status, body = await env.token(resource="billing-db")
    assert status == 403
    assert body == {
        "error": "access_denied",
        "error_description": "no rule allows finance to billing-db",
        "principal": "airflow:prod/finance_daily/load_orders",
        "resource": "billing-db",
        "reason": "no rule allows finance to billing-db",
    }
    kind, fields = last_event(env)
    assert kind == "token_denied" and fields["reason"] == "policy_denied"


async def test_unknown_resource_is_404(env: Env) -> None:
    status, body = await env.token(resource="nope")
    assert status == 404 and body["error"] == "unknown_resource"
    status, body = await env.token(resource=None, conn_id="nope")
    assert status == 404 and body["error"] == "unknown_resource"


@pytest.mark.parametrize(
    "fields",
    [
        {"dag_id": None},
        {"try_number": "one"},
        {"map_index": "-2"},
        {"dag_id": "a/b"},
        {"run_id": "bad\nrun"},
        {"requested_ttl": "0"},
        {"resource": None},
        {"conn_id": "orders_api"},  # both resource and conn_id
    ],
)
async def test_invalid_request_is_400(env: Env, fields: dict[str, Any]) -> None:
    status, body = await env.token(**fields)
    assert status == 400 and body["error"] == "invalid_request"


async def test_repeated_form_field_is_400(env: Env) -> None:
    data = [("client_id", "prod"), ("client_secret", SECRET), ("resource", "orders-api")]
    data += [(k, v) for k, v in TASK.items()] + [("dag_id", "finance_other")]
    status, body = await env.post("/v1/token", data)
    assert status == 400 and body["error"] == "invalid_request"


async def test_audit_failure_withholds_the_token(env: Env, tmp_path: Path) -> None:
    def broken(kind: str, **fields: Any) -> None:
        if kind == "token_issued":
            raise RuntimeError("disk full")

    env_service_events = broken
    app = web.Application()
    keys = KeyStore(tmp_path / "b")
    service = TokenService(
        env.config,
        keys,
        env.revocations,
        TokenIssuer(keys, ISSUER),
        mint_policy([]),
        on_event=env_service_events,
    )
    add_token_routes(app, service)
    async with serve(app) as srv:
        body = {"client_id": "prod", "client_secret": SECRET, "resource": "orders-api", **TASK}
        async with env.http.post(srv.make_url("/v1/token"), data=body) as resp:
            assert resp.status == 503
            assert "access_token" not in await resp.json()


# -- private_key_jwt ----------------------------------------------------------------------------


def assertion(**overrides: Any) -> str:
    now = int(time.time())
    claims = {
        "iss": "pk",
        "sub": "pk",
        "aud": f"{ISSUER}/v1/token",
        "exp": now + 60,
        "iat": now,
        "jti": uuid.uuid4().hex,
    }
    key = overrides.pop("_key", PK_KEY)
    alg = overrides.pop("_alg", "EdDSA")
    claims.update(overrides)
    return jwt.encode(claims, key, algorithm=alg)


def pk_body(client_assertion: str, **extra: Any) -> dict[str, Any]:
    return {
        "client_assertion_type": "urn:ietf:params:oauth:client-assertion-type:jwt-bearer",
        "client_assertion": client_assertion,
        "resource": "orders-api",
        **TASK,
        **extra,
    }


async def test_private_key_jwt_ok_and_replay_refused(env: Env) -> None:
    a = assertion()
    status, body = await env.post("/v1/token", pk_body(a))
    assert status == 200, body
    assert body["principal"] == "airflow:pk/finance_daily/load_orders"
    status, body = await env.post("/v1/token", pk_body(a))
    assert status == 401 and body["error"] == "invalid_client"
    assert last_event(env)[1]["reason"] == "assertion_replayed"


@pytest.mark.parametrize(
    ("overrides", "reason"),
    [
        ({"_key": Ed25519PrivateKey.generate()}, "assertion_bad_signature"),
        ({"aud": "https://elsewhere.test/token"}, "assertion_bad_assertion"),
        ({"sub": "prod"}, "assertion_bad_assertion"),
        ({"iss": "prod", "sub": "prod"}, "assertion_bad_assertion"),  # prod uses a secret
        ({"exp": int(time.time()) + 3600}, "assertion_lifetime_too_long"),
        ({"exp": int(time.time()) - 60}, "assertion_expired"),
        (
            {"_alg": "HS256", "_key": "pk-shared-secret-that-is-long-enough"},
            "assertion_unsupported_alg",
        ),
        ({"jti": None}, "assertion_missing_claims"),
    ],
)
async def test_private_key_jwt_rejections(env: Env, overrides: dict[str, Any], reason: str) -> None:
    a = assertion(**overrides)
    status, body = await env.post("/v1/token", pk_body(a))
    assert status == 401 and body["error"] == "invalid_client"
    assert last_event(env)[1]["reason"] == reason


async def test_private_key_jwt_issuer_as_audience(env: Env) -> None:
    status, body = await env.post("/v1/token", pk_body(assertion(aud=ISSUER), client_id="pk"))
    assert status == 200, body


# -- token exchange -----------------------------------------------------------------------------


def exchange_body(subject_token: str, **extra: Any) -> dict[str, Any]:
    return {
        "grant_type": "urn:ietf:params:oauth:grant-type:token-exchange",
        "subject_token": subject_token,
        "subject_token_type": "urn:ietf:params:oauth:token-type:jwt",
        "resource": "orders-api",
        **TASK,
        **extra,
    }


async def test_token_exchange_ok_and_keys_cached(env: Env) -> None:
    for _ in range(2):
        status, body = await env.post("/v1/token", exchange_body(env.oidc.token()))
        assert status == 200, body
        assert body["principal"] == "airflow:prod/finance_daily/load_orders"
    assert env.oidc.jwks_hits == 1


@pytest.mark.parametrize(
    ("make", "reason"),
    [
        (lambda o: o.token(aud="api://other"), "oidc_wrong_audience"),
        (lambda o: o.token(iss="https://evil.test"), "oidc_wrong_issuer"),
        (lambda o: o.token(exp=int(time.time()) - 120), "oidc_expired"),
        (lambda o: o.token(sub="system:serviceaccount:default:x"), "oidc_subject_not_allowed"),
        (
            lambda o: o.token(_alg="HS256", _key="a-guessable-shared-secret-value!!"),
            "oidc_unsupported_alg",
        ),
        (lambda o: o.token(_kid="no-such-kid"), "oidc_unknown_kid"),
        (lambda o: "garbage", "oidc_malformed"),
    ],
)
async def test_token_exchange_rejections(env: Env, make: Any, reason: str) -> None:
    status, body = await env.post("/v1/token", exchange_body(make(env.oidc)))
    assert status == 400 and body["error"] == "invalid_grant"
    kind, fields = last_event(env)
    assert kind == "proof_rejected" and fields["reason"] == reason


async def test_token_exchange_hs256_signed_with_public_key_is_rejected(env: Env) -> None:
    """Classic key confusion: HMAC keyed with the issuer's public RSA key as the secret."""
    pem = RSA_KEY.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    now = int(time.time())
    claims = {
        "iss": env.oidc.url,
        "aud": "api://lockgate",
        "sub": "system:serviceaccount:airflow:w",
        "exp": now + 60,
    }
    header = {"alg": "HS256", "kid": env.oidc.kid}
    signing_input = f"{b64url(json.dumps(header).encode())}.{b64url(json.dumps(claims).encode())}"
    sig = b64url(hmac.new(pem, signing_input.encode(), hashlib.sha256).digest())
    status, _ = await env.post("/v1/token", exchange_body(f"{signing_input}.{sig}"))
    assert status == 400 and last_event(env)[1]["reason"] == "oidc_unsupported_alg"


async def test_wrong_subject_token_type_is_400(env: Env) -> None:
    body = exchange_body(env.oidc.token(), subject_token_type="urn:x:saml")
    status, answer = await env.post("/v1/token", body)
    assert status == 400 and answer["error"] == "invalid_request"


# -- attestation --------------------------------------------------------------------------------


async def test_attestation(env: Env) -> None:
    key = ("finance_daily", RUN_ID, "load_orders", -1)
    body = {"client_id": "attested", "client_secret": ATTESTED_SECRET}
    env.airflow.instances[key] = {"state": "running", "try_number": 1}
    status, answer = await env.token(**body)
    assert status == 200, answer
    env.airflow.instances[key] = {"state": "success", "try_number": 1}
    status, answer = await env.token(**body)
    assert status == 403 and answer["error"] == "attestation_failed"
    env.airflow.instances[key] = {"state": "running", "try_number": 2}
    assert (await env.token(**body))[0] == 403
    env.airflow.instances[("finance_daily", RUN_ID, "load_orders", 3)] = {
        "state": "running",
        "try_number": 1,
    }
    assert (await env.token(**body, map_index="3"))[0] == 200
    assert (await env.token(**body, map_index="4"))[0] == 403  # Airflow says 404


@pytest.mark.parametrize(
    "other",
    [
        {"dag_id": "finance_other"},
        {"dag_run_id": "manual__2025-01-02"},
        {"task_id": "load_refunds"},
        {"map_index": 3},
        {"map_index": None},
    ],
)
async def test_attestation_answer_must_name_the_asserted_task(
    env: Env, other: dict[str, Any]
) -> None:
    """Airflow's answer must describe the task try the token is for: an API that answers a
    URL with another instance (a dot segment a proxy resolved, a mapped task answered for
    its parent) attests nothing about this one."""
    key = ("finance_daily", RUN_ID, "load_orders", -1)
    env.airflow.instances[key] = {"state": "running", "try_number": 1, **other}
    status, answer = await env.token(client_id="attested", client_secret=ATTESTED_SECRET)
    assert status == 403 and answer["error"] == "attestation_failed", answer
    assert "access_token" not in answer


async def test_attestation_with_wrong_airflow_bearer_fails_closed(
    env: Env, monkeypatch: pytest.MonkeyPatch
) -> None:
    env.airflow.instances[("finance_daily", RUN_ID, "load_orders", -1)] = {
        "state": "running",
        "try_number": 1,
    }
    monkeypatch.setenv("LG_TEST_AIRFLOW_BEARER", "wrong")
    status, body = await env.token(client_id="attested", client_secret=ATTESTED_SECRET)
    assert status == 503 and body["error"] == "temporarily_unavailable"


# -- revocation ---------------------------------------------------------------------------------


async def test_revoke_task_try_dag_and_jti(env: Env) -> None:
    auth = {"client_id": "prod", "client_secret": SECRET}
    _, t1 = await env.token()
    env.verifier.verify(t1["access_token"], "orders-api")
    status, body = await env.post("/v1/revoke", {**auth, **TASK, "map_index": "-1"})
    assert (status, body) == (200, {"revoked": "task_try"})
    with pytest.raises(AuthenticationError, match="revoked"):
        env.verifier.verify(t1["access_token"], "orders-api")

    _, t2 = await env.token(try_number="2")
    status, _ = await env.post("/v1/revoke", {**auth, "jti": t2["jti"]})
    assert status == 200
    with pytest.raises(AuthenticationError, match="revoked"):
        env.verifier.verify(t2["access_token"], "orders-api")

    _, t3 = await env.token(try_number="3")
    status, _ = await env.post("/v1/revoke", {**auth, "dag_id": "finance_daily", "run_id": RUN_ID})
    assert status == 200
    with pytest.raises(AuthenticationError, match="revoked"):
        env.verifier.verify(t3["access_token"], "orders-api")


async def test_revoke_requires_auth_and_delegation(env: Env) -> None:
    status, _ = await env.post("/v1/revoke", {"dag_id": "finance_daily"})
    assert status == 401
    auth = {"client_id": "prod", "client_secret": SECRET}
    status, body = await env.post("/v1/revoke", {**auth, "dag_id": "hr_salaries"})
    assert status == 403 and body["error"] == "access_denied"
    status, body = await env.post("/v1/revoke", {**auth, "jti": "../../etc"})
    assert status == 400


async def test_an_id_with_a_trailing_newline_is_refused_not_a_way_past_a_block(
    env: Env,
) -> None:
    # "$" matches before a final newline: "finance_daily\n" passed the id check, still
    # matched the deployment's "finance_*" delegation, and was not the blocked DAG.
    env.revocations.block("prod", "finance_daily", "operator", "incident")
    status, body = await env.token()
    assert status == 403, body
    for name in ("dag_id", "task_id", "run_id"):
        status, body = await env.token(**{name: TASK[name] + "\n"})
        assert status == 400 and body["error"] == "invalid_request", (name, body)
    async with env.http.post(
        env.url + "/v1/token",
        json={"client_id": "prod", "client_secret": SECRET, "resource": "orders-api",
              **TASK, "dag_id": "finance_daily\n"},
    ) as resp:  # fmt: skip
        assert resp.status == 400
    status, _ = await env.post(
        "/v1/revoke", {"client_id": "prod", "client_secret": SECRET, "jti": "a" * 32 + "\n"}
    )
    assert status == 400


async def test_a_json_body_naming_a_field_twice_is_refused(env: Env) -> None:
    body = (
        f'{{"client_id": "prod", "client_secret": "{SECRET}", "resource": "orders-api", '
        '"dag_id": "finance_daily", "task_id": "load_orders", "task_id": "other", '
        f'"run_id": "{RUN_ID}", "try_number": 1}}'
    )
    headers = {"Content-Type": "application/json"}
    async with env.http.post(env.url + "/v1/token", data=body, headers=headers) as resp:
        answer = await resp.json()
        assert resp.status == 400 and "more than once" in answer["error_description"], answer


async def test_revoke_by_jti_reaches_only_the_callers_tokens(env: Env) -> None:
    # A jti is no secret (task logs and audit records show it): another deployment that
    # names it must not kill this deployment's token, and must not learn whether it exists.
    _, ours = await env.token()
    other = {"client_id": "attested", "client_secret": ATTESTED_SECRET}
    status, body = await env.post("/v1/revoke", {**other, "jti": ours["jti"]})
    assert (status, body) == (200, {"revoked": "jti"})
    env.revocations.refresh(force=True)
    env.verifier.verify(ours["access_token"], "orders-api")  # still valid
    status, _ = await env.post(
        "/v1/revoke", {"client_id": "prod", "client_secret": SECRET, "jti": ours["jti"]}
    )
    assert status == 200
    with pytest.raises(AuthenticationError, match="revoked"):
        env.verifier.verify(ours["access_token"], "orders-api")


# -- discovery ----------------------------------------------------------------------------------


async def test_jwks_and_discovery(env: Env) -> None:
    async with env.http.get(env.url + "/.well-known/jwks.json") as resp:
        jwks = await resp.json()
    assert [set(k) for k in jwks["keys"]] == [{"kty", "crv", "x", "kid", "alg", "use"}]
    async with env.http.get(env.url + "/.well-known/openid-configuration") as resp:
        doc = await resp.json()
    assert doc["issuer"] == ISSUER
    assert doc["jwks_uri"] == f"{ISSUER}/.well-known/jwks.json"
    assert doc["token_endpoint"] == f"{ISSUER}/v1/token"
    assert doc["revocation_endpoint"] == f"{ISSUER}/v1/revoke"
    assert doc["id_token_signing_alg_values_supported"] == ["EdDSA"]
    assert "private_key_jwt" in doc["token_endpoint_auth_methods_supported"]
    assert "urn:ietf:params:oauth:grant-type:token-exchange" in doc["grant_types_supported"]


# -- secrets stay out of logs and events --------------------------------------------------------


async def test_tokens_and_secrets_never_logged(env: Env) -> None:
    stream = io.StringIO()
    root = logging.getLogger("lockgate")
    saved = (root.handlers[:], root.level, root.propagate)
    _log.setup("debug", stream=stream)
    try:
        env.airflow.instances[("finance_daily", RUN_ID, "load_orders", -1)] = {
            "state": "running",
            "try_number": 1,
        }
        _, ok = await env.token()
        await env.token(client_secret=SECRET + "x")  # wrong secret, close to the real one
        await env.token(resource="billing-db")
        await env.token(client_id="attested", client_secret=ATTESTED_SECRET)
        subject = env.oidc.token(aud="api://other")
        await env.post("/v1/token", exchange_body(subject))
        a = assertion()
        await env.post("/v1/token", pk_body(a))
        await env.post("/v1/token", pk_body(a))
        await env.post(
            "/v1/revoke", {"client_id": "prod", "client_secret": SECRET, "jti": ok["jti"]}
        )
    finally:
        root.handlers[:], root.level, root.propagate = saved
    output = stream.getvalue()
    assert "token issued" in output and "token request refused" in output  # logging happened
    everything = output + repr(env.events)
    for secret in (ok["access_token"], SECRET, ATTESTED_SECRET, AIRFLOW_BEARER, subject, a):
        assert secret not in everything
    for part in (ok["access_token"].split(".")[2], subject.split(".")[2], a.split(".")[2]):
        assert part not in everything  # not even a signature


async def test_a_secret_given_as_the_client_id_is_not_recorded(env: Env) -> None:
    # Id and secret swapped (a common slip): the "client id" is the secret, and a refusal
    # that records the client id as given would write the secret into audit and logs.
    stream = io.StringIO()
    root = logging.getLogger("lockgate")
    saved = (root.handlers[:], root.level, root.propagate)
    _log.setup("debug", stream=stream)
    try:
        status, _ = await env.token(client_id=SECRET, client_secret="prod")
        basic = base64.b64encode(f"{SECRET}:prod".encode()).decode()
        async with env.http.post(
            env.url + "/v1/token", data={"resource": "orders-api", **TASK},
            headers={"Authorization": f"Basic {basic}"},
        ) as resp:  # fmt: skip
            assert resp.status == 401
    finally:
        root.handlers[:], root.level, root.propagate = saved
    assert status == 401
    refusals = [f for kind, f in env.events if f.get("reason") == "bad_client_secret"]
    assert len(refusals) == 2
    assert SECRET not in stream.getvalue() + repr(env.events)
    await env.token(client_secret=SECRET + "x")  # a known id is still recorded
    assert last_event(env)[1]["client_id"] == "prod"


async def test_failing_mint_policy_denies(env: Env, tmp_path: Path) -> None:
    def broken(identity: TaskIdentity, resource: str, ttl: int | None) -> MintDecision:
        raise RuntimeError("policy store down")

    app = web.Application()
    keys = KeyStore(tmp_path / "c")
    service = TokenService(env.config, keys, env.revocations, TokenIssuer(keys, ISSUER), broken)
    add_token_routes(app, service)
    async with serve(app) as srv:
        body = {"client_id": "prod", "client_secret": SECRET, "resource": "orders-api", **TASK}
        async with env.http.post(srv.make_url("/v1/token"), data=body) as resp:
            assert resp.status == 503
            assert "access_token" not in await resp.json()
