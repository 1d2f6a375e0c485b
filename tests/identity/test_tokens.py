"""Issuer/verifier round trip and the table of attacks the verifier must refuse."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from lockgate.errors import AuthenticationError
from lockgate.identity import (
    KeyStore,
    RevocationStore,
    TaskIdentity,
    TokenIssuer,
    TokenVerifier,
    thumbprint,
)
from lockgate.identity.keys import b64url

from .conftest import ISSUER, Clock

AUD = "orders-api"


def test_round_trip(
    issuer: TokenIssuer, verifier: TokenVerifier, identity: TaskIdentity, keys: KeyStore
) -> None:
    token, minted = issuer.mint(identity, AUD, 600)
    header = json.loads(base64.urlsafe_b64decode(token.split(".")[0] + "=="))
    assert header == {"alg": "EdDSA", "typ": "JWT", "kid": keys.current().kid}
    claims = verifier.verify(token, AUD)
    assert claims == minted
    assert claims.identity == identity
    assert claims.sub == identity.principal == "airflow:prod/finance_daily/load_orders"
    assert claims.ttl == 600
    assert len(claims.jti) == 32
    assert verifier.verify(token, AUD) == minted  # cached path gives the same answer


def test_distinct_jtis(issuer: TokenIssuer, identity: TaskIdentity) -> None:
    assert issuer.mint(identity, AUD, 60)[1].jti != issuer.mint(identity, AUD, 60)[1].jti


def test_cached_token_still_expires_and_revokes(
    issuer: TokenIssuer,
    verifier: TokenVerifier,
    revocations: RevocationStore,
    identity: TaskIdentity,
    clock: Clock,
) -> None:
    token, _claims = issuer.mint(identity, AUD, 60)
    verifier.verify(token, AUD)
    with pytest.raises(AuthenticationError) as exc:
        verifier.verify(token, "other")
    assert exc.value.reason == "wrong_audience"
    revocations.revoke_task_try("prod", "finance_daily", "load_orders", identity.run_id, 1, -1)
    with pytest.raises(AuthenticationError) as exc:
        verifier.verify(token, AUD)
    assert exc.value.reason == "revoked"
    token2, _ = issuer.mint(TaskIdentity("prod", "d", "t", "r", 1), AUD, 60)
    verifier.verify(token2, AUD)
    clock.t += 66
    with pytest.raises(AuthenticationError) as exc:
        verifier.verify(token2, AUD)
    assert exc.value.reason == "expired"


def test_leeway_accepts_small_skew(
    issuer: TokenIssuer, verifier: TokenVerifier, identity: TaskIdentity, clock: Clock
) -> None:
    token, _ = issuer.mint(identity, AUD, 60)
    clock.t -= 4  # verifier's clock slightly behind the issuer's
    assert verifier.verify(token, AUD).aud == AUD
    clock.t += 4 + 60 + 4  # just past exp, within leeway
    assert verifier.verify(token, AUD).aud == AUD


def test_unknown_kid_triggers_reload_of_rotated_keys(
    tmp_path, revocations: RevocationStore, identity: TaskIdentity, clock: Clock
) -> None:
    server_keys = KeyStore(tmp_path, clock=clock)
    verifier = TokenVerifier(server_keys, revocations, ISSUER, clock=clock, reload_interval=0)
    cli_keys = KeyStore(tmp_path, clock=clock)
    cli_keys.rotate(retire_after=600)
    token, _ = TokenIssuer(cli_keys, ISSUER, clock=clock).mint(identity, AUD, 60)
    assert verifier.verify(token, AUD).jti


def test_unknown_kid_reload_is_rate_limited(
    tmp_path, revocations: RevocationStore, identity: TaskIdentity, clock: Clock
) -> None:
    server_keys = KeyStore(tmp_path, clock=clock)
    verifier = TokenVerifier(server_keys, revocations, ISSUER, clock=clock, reload_interval=3600)
    server_keys.reload()  # counts as the last look
    cli_keys = KeyStore(tmp_path, clock=clock)
    cli_keys.rotate(retire_after=600)
    token, _ = TokenIssuer(cli_keys, ISSUER, clock=clock).mint(identity, AUD, 60)
    with pytest.raises(AuthenticationError) as exc:
        verifier.verify(token, AUD)
    assert exc.value.reason == "unknown_kid"


def test_a_retired_key_stops_its_tokens_even_once_verified_and_cached(
    tmp_path, revocations: RevocationStore, identity: TaskIdentity, clock: Clock
) -> None:
    # `keys rotate --retire-after 0` promises every token the old key signed stops working;
    # a token verified before (and so cached) must not outlive its key.
    server_keys = KeyStore(tmp_path, clock=clock)
    verifier = TokenVerifier(server_keys, revocations, ISSUER, clock=clock, reload_interval=0)
    old, _ = TokenIssuer(server_keys, ISSUER, clock=clock).mint(identity, AUD, 600)
    verifier.verify(old, AUD)
    cli_keys = KeyStore(tmp_path, clock=clock)  # the CLI, another process
    cli_keys.rotate(retire_after=0)
    server_keys.maybe_reload(0)  # the gateway's periodic reload
    with pytest.raises(AuthenticationError) as exc:
        verifier.verify(old, AUD)
    assert exc.value.reason == "unknown_kid"
    # and a key retired later: its cached tokens stop when the time comes
    newer, _ = TokenIssuer(server_keys, ISSUER, clock=clock).mint(identity, AUD, 600)
    verifier.verify(newer, AUD)
    server_keys.rotate(retire_after=60)
    clock.t += 30
    assert verifier.verify(newer, AUD).jti
    clock.t += 31
    with pytest.raises(AuthenticationError) as exc:
        verifier.verify(newer, AUD)
    assert exc.value.reason == "unknown_kid"


def test_cached_verification_is_fast(
    issuer: TokenIssuer, verifier: TokenVerifier, identity: TaskIdentity
) -> None:
    token, _ = issuer.mint(identity, AUD, 600)
    verifier.verify(token, AUD)
    n = 50_000
    start = time.perf_counter()
    for _ in range(n):
        verifier.verify(token, AUD)
    elapsed = time.perf_counter() - start
    assert elapsed < 1.0, f"{n / elapsed:.0f} verifications/s from cache"


def test_cache_is_bounded(
    keys: KeyStore, revocations: RevocationStore, issuer: TokenIssuer, clock: Clock
) -> None:
    verifier = TokenVerifier(keys, revocations, ISSUER, clock=clock, cache_size=3)
    tokens = [issuer.mint(TaskIdentity("p", "d", "t", f"r{i}", 1), AUD, 60)[0] for i in range(5)]
    for t in tokens:
        verifier.verify(t, AUD)
    assert len(verifier._cache) == 3
    assert tokens[0] not in verifier._cache and tokens[-1] in verifier._cache


# -- the attack table ---------------------------------------------------------------------------


@dataclass
class Ctx:
    keys: KeyStore
    issuer: TokenIssuer
    revocations: RevocationStore
    clock: Clock
    identity: TaskIdentity

    def good(self, **claims: Any) -> str:
        return self.issuer.mint(self.identity, AUD, 600)[0]

    def payload(self, **changes: Any) -> dict[str, Any]:
        _, claims = self.issuer.mint(self.identity, AUD, 600)
        out = claims.to_payload()
        for k, v in changes.items():
            if v is DROP:
                out.pop(k)
            else:
                out[k] = v
        return out

    def sign_ed(self, header: dict[str, Any], payload: dict[str, Any], key=None) -> str:
        key = key or self.keys.current().private
        signing_input = f"{enc(header)}.{enc(payload)}".encode()
        return signing_input.decode() + "." + b64url(key.sign(signing_input))

    def header(self, **extra: Any) -> dict[str, Any]:
        return {"alg": "EdDSA", "typ": "JWT", "kid": self.keys.current().kid, **extra}


DROP = object()
ATTACKER = Ed25519PrivateKey.generate()
ATTACKER_KID = thumbprint(ATTACKER.public_key())
ATTACKER_JWK = {
    "kty": "OKP",
    "crv": "Ed25519",
    "kid": ATTACKER_KID,
    "x": b64url(
        ATTACKER.public_key().public_bytes(
            serialization.Encoding.Raw, serialization.PublicFormat.Raw
        )
    ),
}


def enc(obj: Any) -> str:
    return b64url(json.dumps(obj).encode() if not isinstance(obj, bytes) else obj)


def swap_payload(token: str, payload: dict[str, Any]) -> str:
    h, _, s = token.split(".")
    return f"{h}.{enc(payload)}.{s}"


def alg_none(alg: str, signature: str) -> Callable[[Ctx], str]:
    return lambda c: (
        f"{enc({'alg': alg, 'typ': 'JWT', 'kid': c.keys.current().kid})}."
        + (f"{enc(c.payload())}.{signature}")
    )


def hs256_with_public_key(c: Ctx) -> str:
    pub = c.keys.current().public.public_bytes(
        serialization.Encoding.Raw, serialization.PublicFormat.Raw
    )
    header = {"alg": "HS256", "typ": "JWT", "kid": c.keys.current().kid}
    signing_input = f"{enc(header)}.{enc(c.payload())}"
    return (
        signing_input + "." + b64url(hmac.new(pub, signing_input.encode(), hashlib.sha256).digest())
    )


def revoked(c: Ctx) -> str:
    token, claims = c.issuer.mint(c.identity, AUD, 600)
    c.revocations.revoke_jti(claims.jti, claims.exp, "test")
    return token


def expired(c: Ctx) -> str:
    old = TokenIssuer(c.keys, ISSUER, clock=lambda: c.clock.t - 700)
    return old.mint(c.identity, AUD, 600)[0]


ATTACKS: list[tuple[str, Callable[[Ctx], str], str]] = [
    ("empty", lambda c: "", "missing"),
    ("expired", expired, "expired"),
    ("nbf in future", lambda c: c.sign_ed(c.header(), c.payload(nbf=int(c.clock.t) + 60)),
     "not_yet_valid"),
    ("iat in future", lambda c: c.sign_ed(c.header(), c.payload(iat=int(c.clock.t) + 60)),
     "not_yet_valid"),
    ("wrong audience", lambda c: c.issuer.mint(c.identity, "billing-db", 600)[0],
     "wrong_audience"),
    ("wrong issuer", lambda c: TokenIssuer(c.keys, "https://evil.test", clock=c.clock)
     .mint(c.identity, AUD, 600)[0], "wrong_issuer"),
    ("alg none, no sig", alg_none("none", ""), "unsupported_alg"),
    ("alg None, no sig", alg_none("None", ""), "unsupported_alg"),
    ("alg NONE, no sig", alg_none("NONE", ""), "unsupported_alg"),
    ("alg nOnE, no sig", alg_none("nOnE", ""), "unsupported_alg"),
    ("alg none, sig", alg_none("none", b64url(b"x" * 64)), "unsupported_alg"),
    ("alg None, sig", alg_none("None", b64url(b"x" * 64)), "unsupported_alg"),
    ("alg NONE, sig", alg_none("NONE", b64url(b"x" * 64)), "unsupported_alg"),
    ("alg nOnE, sig", alg_none("nOnE", b64url(b"x" * 64)), "unsupported_alg"),
    ("alg eddsa lowercase", lambda c: c.sign_ed(c.header(alg="eddsa"), c.payload()),
     "unsupported_alg"),
    ("HS256 with public key as secret", hs256_with_public_key, "unsupported_alg"),
    ("empty signature", lambda c: c.good().rsplit(".", 1)[0] + ".", "bad_signature"),
    ("truncated signature", lambda c: c.good()[:-2], "bad_signature"),
    ("trailing garbage after signature", lambda c: c.good() + "AAAA", "bad_signature"),
    ("non-base64 trailing garbage", lambda c: c.good() + "!!", "malformed"),
    ("extra 4th segment", lambda c: c.good() + ".AAAA", "malformed"),
    ("two segments", lambda c: c.good().rsplit(".", 1)[0], "malformed"),
    ("tampered payload (dag_id)", lambda c: swap_payload(c.good(), c.payload(dag_id="hr_salaries")),
     "bad_signature"),
    ("tampered payload (aud)", lambda c: swap_payload(c.good(), c.payload(aud="billing-db")),
     "bad_signature"),
    ("unknown kid", lambda c: c.sign_ed(c.header(kid=ATTACKER_KID), c.payload(), ATTACKER),
     "unknown_kid"),
    ("kid ../../../dev/null", lambda c: c.sign_ed(c.header(kid="../../../dev/null"), c.payload()),
     "unknown_kid"),
    ("kid /etc/passwd", lambda c: c.sign_ed(c.header(kid="/etc/passwd"), c.payload()),
     "unknown_kid"),
    ("kid with SQL quote", lambda c: c.sign_ed(c.header(kid="x' OR '1'='1"), c.payload()),
     "unknown_kid"),
    ("kid not a string", lambda c: c.sign_ed(c.header(kid=["a"]), c.payload()), "unknown_kid"),
    ("no kid", lambda c: c.sign_ed({"alg": "EdDSA", "typ": "JWT"}, c.payload()), "unknown_kid"),
    ("embedded jwk, attacker kid",
     lambda c: c.sign_ed(c.header(kid=ATTACKER_KID, jwk=ATTACKER_JWK), c.payload(), ATTACKER),
     "unknown_kid"),
    ("embedded jwk, our kid",
     lambda c: c.sign_ed(c.header(jwk=ATTACKER_JWK), c.payload(), ATTACKER), "bad_signature"),
    ("jku to attacker",
     lambda c: c.sign_ed(c.header(jku="https://evil.test/jwks"), c.payload(), ATTACKER),
     "bad_signature"),
    ("x5u to attacker",
     lambda c: c.sign_ed(c.header(x5u="https://evil.test/cert.pem"), c.payload(), ATTACKER),
     "bad_signature"),
    ("x5c attacker chain",
     lambda c: c.sign_ed(c.header(x5c=["MIIBattacker"]), c.payload(), ATTACKER), "bad_signature"),
    ("crit header", lambda c: c.sign_ed(c.header(crit=["exp"]), c.payload()), "bad_header"),
    ("revoked jti", revoked, "revoked"),
    ("oversized", lambda c: c.sign_ed(c.header(), c.payload(pad="A" * 9000)), "oversized"),
    ("non-base64 garbage", lambda c: "not a token at all", "malformed"),
    ("garbage segments", lambda c: "a$b.c%d.e^f", "malformed"),
    ("header not an object (list)",
     lambda c: f"{enc([1, 2])}.{enc(c.payload())}.{b64url(b'x' * 64)}", "bad_header"),
    ("header not an object (string)",
     lambda c: f"{enc('EdDSA')}.{enc(c.payload())}.{b64url(b'x' * 64)}", "bad_header"),
    ("header not JSON", lambda c: f"{enc(b'{alg')}.{enc(c.payload())}.{b64url(b'x' * 64)}",
     "bad_header"),
    ("payload not JSON", lambda c: c.sign_ed(c.header(), {}).split(".")[0]
     + f".{enc(b'not json')}.{b64url(b'x' * 64)}", "bad_signature"),
    ("missing dag_id", lambda c: c.sign_ed(c.header(), c.payload(dag_id=DROP)), "missing_claims"),
    ("missing exp", lambda c: c.sign_ed(c.header(), c.payload(exp=DROP)), "missing_claims"),
    ("try_number as string", lambda c: c.sign_ed(c.header(), c.payload(try_number="1")),
     "missing_claims"),
    ("exp as bool", lambda c: c.sign_ed(c.header(), c.payload(exp=True)), "missing_claims"),
    ("sub not the principal",
     lambda c: c.sign_ed(c.header(), c.payload(sub="airflow:prod/hr/x")), "missing_claims"),
    ("aud as list", lambda c: c.sign_ed(c.header(), c.payload(aud=[AUD])), "missing_claims"),
]  # fmt: skip


@pytest.mark.parametrize(("name", "build", "reason"), ATTACKS, ids=[a[0] for a in ATTACKS])
def test_attack_is_rejected(
    name: str,
    build: Callable[[Ctx], str],
    reason: str,
    keys: KeyStore,
    issuer: TokenIssuer,
    verifier: TokenVerifier,
    revocations: RevocationStore,
    clock: Clock,
    identity: TaskIdentity,
) -> None:
    token = build(Ctx(keys, issuer, revocations, clock, identity))
    with pytest.raises(AuthenticationError) as exc:
        verifier.verify(token, AUD)
    assert exc.value.reason == reason
    assert token[:20] not in str(exc.value) or not token  # messages never echo the token
    # A second try (maybe from cache) is refused the same way.
    with pytest.raises(AuthenticationError) as again:
        verifier.verify(token, AUD)
    assert again.value.reason == reason


def test_controls_for_attack_builders(
    keys: KeyStore, issuer: TokenIssuer, verifier: TokenVerifier, revocations, clock, identity
) -> None:
    """The hand-built tokens are valid when nothing is wrong, so the table tests the attack."""
    c = Ctx(keys, issuer, revocations, clock, identity)
    assert verifier.verify(c.sign_ed(c.header(), c.payload()), AUD).dag_id == "finance_daily"
    assert verifier.verify(c.sign_ed(c.header(jku="https://x"), c.payload()), AUD)


def test_rejections_are_counted(verifier: TokenVerifier) -> None:
    from lockgate import metrics

    counter = metrics.TOKEN_REJECTIONS.labels(reason="malformed")
    before = counter._value.get()
    with pytest.raises(AuthenticationError):
        verifier.verify("a.b", AUD)
    assert counter._value.get() == before + 1


def test_corrupt_key_index_does_not_break_verification(
    tmp_path, keys: KeyStore, issuer: TokenIssuer, revocations, clock, identity
) -> None:
    verifier = TokenVerifier(keys, revocations, ISSUER, clock=clock, reload_interval=0)
    good, _ = issuer.mint(identity, AUD, 60)
    (tmp_path / "keys" / "index.json").write_text("{not json")
    assert verifier.verify(good, AUD).aud == AUD
    attacker = Ctx(keys, issuer, revocations, clock, identity)
    forged = attacker.sign_ed(attacker.header(kid=ATTACKER_KID), attacker.payload(), ATTACKER)
    with pytest.raises(AuthenticationError) as exc:
        verifier.verify(forged, AUD)
    assert exc.value.reason == "unknown_kid"
