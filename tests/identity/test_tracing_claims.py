"""The ``traceparent`` claim: minted when valid, verified and passed through, an invalid one
dropped (never a refusal), tokens without it as before."""

from __future__ import annotations

import jwt
import pytest

from lockgate.identity import Claims, KeyStore, TaskIdentity, TokenIssuer, TokenVerifier
from lockgate.identity.tokens import unverified_claims

AUD = "orders-api"
TRACEPARENT = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
INVALID = [
    "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",  # uppercase
    "00-00000000000000000000000000000000-00f067aa0ba902b7-01",  # all-zero trace id
    "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",  # all-zero span id
    "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",  # version ff
    "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7",  # no flags
    "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01\n",
    "x" * 55,
]


def test_minted_with_a_traceparent_verifies_with_it(
    issuer: TokenIssuer, verifier: TokenVerifier, identity: TaskIdentity
) -> None:
    token, minted = issuer.mint(identity, AUD, 600, traceparent=TRACEPARENT)
    assert minted.traceparent == TRACEPARENT
    assert unverified_claims(token)["traceparent"] == TRACEPARENT
    claims = verifier.verify(token, AUD)
    assert claims == minted and claims.traceparent == TRACEPARENT
    assert verifier.verify(token, AUD).traceparent == TRACEPARENT  # the cached path too


def test_without_one_the_token_is_as_before(
    issuer: TokenIssuer, verifier: TokenVerifier, identity: TaskIdentity
) -> None:
    token, minted = issuer.mint(identity, AUD, 600)
    assert "traceparent" not in unverified_claims(token)
    assert minted.traceparent is None
    assert verifier.verify(token, AUD).traceparent is None


@pytest.mark.parametrize("bad", INVALID)
def test_an_invalid_one_is_never_minted(
    issuer: TokenIssuer, verifier: TokenVerifier, identity: TaskIdentity, bad: str
) -> None:
    token, minted = issuer.mint(identity, AUD, 600, traceparent=bad)
    assert minted.traceparent is None
    assert "traceparent" not in unverified_claims(token)
    assert verifier.verify(token, AUD).traceparent is None


@pytest.mark.parametrize("bad", [*INVALID, 7, ["00"], {"a": 1}, None])
def test_an_invalid_one_in_a_signed_token_is_dropped_not_refused(
    keys: KeyStore,
    issuer: TokenIssuer,
    verifier: TokenVerifier,
    identity: TaskIdentity,
    bad: object,
) -> None:
    _token, claims = issuer.mint(identity, AUD, 600)
    payload = {**claims.to_payload(), "traceparent": bad}
    key = keys.current()
    token = jwt.encode(payload, key.private, algorithm="EdDSA", headers={"kid": key.kid})
    verified = verifier.verify(token, AUD)
    assert verified.traceparent is None
    assert verified.jti == claims.jti


def test_from_payload_and_to_payload() -> None:
    base = {"iss": "i", "sub": "airflow:d/g/t", "aud": "a", "exp": 2, "iat": 1, "nbf": 1,
            "jti": "j", "deployment": "d", "dag_id": "g", "task_id": "t", "run_id": "r",
            "try_number": 1, "map_index": -1}  # fmt: skip
    claims = Claims.from_payload({**base, "traceparent": TRACEPARENT})
    assert claims is not None and claims.traceparent == TRACEPARENT
    assert claims.to_payload() == {**base, "traceparent": TRACEPARENT}
    plain = Claims.from_payload(base)
    assert plain is not None and plain.to_payload() == base
