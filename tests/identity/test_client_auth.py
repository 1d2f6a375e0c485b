"""The failed-authentication brake of the token service, driven through
:meth:`TokenService.authenticate` with the caller's address as a parameter (no web request:
the address is what the door passes, nothing else)."""

from __future__ import annotations

import pytest

from lockgate.config.identity import RateLimitSettings
from lockgate.identity import OAuthError, TokenService
from lockgate.identity.client_auth import basic_credentials, named_client
from lockgate.identity.rate_limit import FAILED_AUTH_REMOTE, RateLimiter, RateLimits

from . import test_service
from .test_service import SECRET, Env

service_env = test_service.env  # the token service fixture, under the name the tests ask for

WRONG = {"client_id": "prod", "client_secret": "guess"}
RIGHT = {"client_id": "prod", "client_secret": SECRET}


def _braked(env: Env, **settings: float) -> TokenService:
    """A token service over ``env``'s state with failed-authentication limits ``settings``."""
    limits = RateLimits(RateLimiter(None), RateLimitSettings.model_validate(settings))

    def never(*_args: object) -> None:
        raise AssertionError("authentication alone asks no policy")

    return TokenService(
        env.config, env.service.keys, env.revocations, env.service.issuer, never,
        rate_limits=limits,
    )  # fmt: skip


async def test_the_address_passed_is_the_one_that_cools_down(service_env: Env) -> None:
    service = _braked(service_env, failed_auth_per_client=0, failed_auth_per_remote=2)
    assert service.rate_limits is not None
    for _ in range(2):
        with pytest.raises(OAuthError) as wrong:
            await service.authenticate(WRONG, None, "10.0.0.9")
        assert wrong.value.status == 401
    # the right secret from that address gets the cool-down, not a token: no oracle
    with pytest.raises(OAuthError) as cooling:
        await service.authenticate(RIGHT, None, "10.0.0.9")
    assert cooling.value.status == 429 and cooling.value.fields["limit"] == FAILED_AUTH_REMOTE
    # another address, and the same deployment, are served
    assert await service.authenticate(RIGHT, None, "10.0.0.10") == ("prod", "client_secret")
    service.rate_limits.close()


async def test_without_rate_limits_nothing_cools_down(service_env: Env) -> None:
    service = service_env.service
    assert service.rate_limits is None
    for _ in range(50):
        with pytest.raises(OAuthError):
            await service.authenticate(WRONG, None, "10.0.0.9")
    assert await service.authenticate(RIGHT, None, "10.0.0.9") == ("prod", "client_secret")


def test_basic_credentials_and_the_client_they_name(service_env: Env) -> None:
    header = "Basic cHJvZDpzM2NyZXQ="  # prod:s3cret
    assert basic_credentials(header) == ("prod", "s3cret")
    assert basic_credentials(None) is None
    with pytest.raises(OAuthError):
        basic_credentials("Basic !!!")
    assert named_client(service_env.config, {}, header) == "prod"
    # an unknown name may be a secret pasted in the wrong field: never named
    assert named_client(service_env.config, {"client_id": SECRET}, None) is None


async def test_a_deployment_proven_by_its_issuer_only_refuses_secrets_and_assertions(
    tmp_path,
) -> None:
    import time
    import uuid

    import jwt
    from cryptography.hazmat.primitives.asymmetric import ed25519

    from lockgate.config import parse_config
    from lockgate.identity.client_auth import ClientAuthenticator
    from lockgate.identity.proofs import ASSERTION_TYPE
    from lockgate.identity.revocation import RevocationStore

    config = parse_config(
        {"data_dir": str(tmp_path), "deployments": [{"name": "edge", "dags": ["*"]}],
         "oidc_issuers": [{"issuer": "https://cluster.test", "audience": "lockgate",
                           "deployment": "edge"}]},
    )  # fmt: skip
    assert config.deployment("edge").proof is None
    revocations = RevocationStore(tmp_path / "revocations.db")

    async def no_http() -> None:
        raise AssertionError("no issuer is asked for a secret or an assertion")

    auth = ClientAuthenticator(config, revocations, no_http)  # type: ignore[arg-type]
    secret = {"client_id": "edge", "client_secret": "anything"}
    with pytest.raises(OAuthError) as refused:
        await auth.authenticate(secret, None, None)
    assert (refused.value.status, refused.value.error) == (401, "invalid_client")
    assert refused.value.reason == "bad_client_secret"
    now = int(time.time())
    assertion = jwt.encode(
        {"iss": "edge", "sub": "edge", "aud": config.issuer_url, "iat": now,
         "exp": now + 60, "jti": uuid.uuid4().hex},
        ed25519.Ed25519PrivateKey.generate(), algorithm="EdDSA",
    )  # fmt: skip
    body = {"client_id": "edge", "client_assertion_type": ASSERTION_TYPE,
            "client_assertion": assertion}  # fmt: skip
    with pytest.raises(OAuthError) as refused:
        await auth.authenticate(body, None, None)
    assert (refused.value.status, refused.value.error) == (401, "invalid_client")
    assert refused.value.reason == "assertion_bad_assertion"
    revocations.close()
