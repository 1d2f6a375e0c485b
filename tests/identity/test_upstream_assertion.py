"""The caller-identity assertion an upstream gets: the task's coordinates, never longer-lived
than its token, verifiable with the published key."""

from __future__ import annotations

from pathlib import Path

import jwt

from lockgate.identity import KeyStore, TaskIdentity, TokenIssuer, UpstreamAssertionSigner

ISSUER = "https://lockgate.test"


def test_an_assertion_names_the_task_and_ends_with_its_token(tmp_path: Path) -> None:
    keys = KeyStore(tmp_path)
    now = [1_000_000.0]
    token, claims = TokenIssuer(keys, ISSUER).mint(
        TaskIdentity("prod", "d", "t", "r", 2), "api", 60
    )
    signer = UpstreamAssertionSigner(keys, ISSUER, clock=lambda: now[0])
    now[0] = claims.iat
    assertion = signer(claims, "api")
    kid = jwt.get_unverified_header(assertion)["kid"]
    public = keys.public_key(kid)
    assert public is not None
    audience = f"{ISSUER}/upstream/api"
    payload = jwt.decode(
        assertion, public, algorithms=["EdDSA"], audience=audience, options={"verify_exp": False}
    )
    assert payload["sub"] == claims.sub and payload["token_jti"] == claims.jti
    assert (payload["dag_id"], payload["task_id"], payload["try_number"]) == ("d", "t", 2)
    assert payload["exp"] == claims.exp  # the token (60 s) ends before the 300 s cap
    assert token not in assertion


def test_an_upstream_mapped_to_rs256_gets_an_rs256_assertion(tmp_path: Path) -> None:
    from lockgate.config import SigningSettings

    keys = KeyStore(tmp_path, algorithms=("EdDSA", "RS256"))
    _, claims = TokenIssuer(keys, ISSUER).mint(TaskIdentity("prod", "d", "t", "r", 2), "api", 60)
    signing = SigningSettings(audiences={f"{ISSUER}/upstream/legacy-*": "RS256"})
    signer = UpstreamAssertionSigner(keys, ISSUER, clock=lambda: claims.iat, signing=signing)
    for resource, alg in (("legacy-erp", "RS256"), ("api", "EdDSA")):
        assertion = signer(claims, resource)
        header = jwt.get_unverified_header(assertion)
        assert (header["alg"], header["kid"]) == (alg, keys.current(alg).kid)
        public = keys.public_key(header["kid"])
        assert public is not None
        payload = jwt.decode(
            assertion, public, algorithms=[alg], audience=f"{ISSUER}/upstream/{resource}",
            options={"verify_exp": False},
        )  # fmt: skip
        assert payload["token_jti"] == claims.jti
