"""Attacks on Lockgate as an issuer: leaked keys that outlive an emergency rotation, planted
keys a cloud or a verifier should never meet, and what one Lockgate-signed JWT could pass
for elsewhere (a caller-identity assertion as a Lockgate token).

Each runs against the real key store on files, on SQLite and on a real PostgreSQL
(``open_store``, shared with :mod:`tests.identity.test_keys_algorithms`), with the real
issuer and verifier."""

from __future__ import annotations

import json
import os
import re
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.asymmetric.types import PrivateKeyTypes

from lockgate.config import PostgresStateSettings, SigningSettings
from lockgate.errors import AuthenticationError, ConfigError
from lockgate.identity import KeyStore, TaskIdentity, TokenIssuer, TokenVerifier, thumbprint
from lockgate.identity.upstream_assertion import UpstreamAssertionSigner
from lockgate.store import PostgresDatabase

from .conftest import ISSUER, Clock
from .test_keys_algorithms import ALL, OpenStore, open_store, open_together

__all__ = ["open_store"]  # the fixture, shared

IDENTITY = TaskIdentity("prod", "finance_daily", "load_orders", "r1", 1)
#: Each algorithm's tokens: one resource mapped to each of RS256 and ES256.
SIGNING = SigningSettings(audiences={"orders-api": "RS256", "dbx": "ES256"})
RESOURCE = {"EdDSA": "cosmos", "RS256": "orders-api", "ES256": "dbx"}


# -- the emergency switch (retire_after=0) ends every older key -------------------------------
@pytest.mark.parametrize("alg", ALL)
def test_an_emergency_rotation_retires_keys_still_in_their_overlap(
    open_store: OpenStore, alg: str
) -> None:
    """Day 0 a routine rotation leaves key A published for an hour; then the key directory
    (or the table and master key) leaks and the operator rotates with retire_after=0. A's
    tokens and A itself must stop at once, not when the routine rotation said."""
    clock = Clock()
    keys = open_store(algorithms=ALL, clock=clock, publish_ahead=0, activation_delay=0)
    issuer = TokenIssuer(keys, ISSUER, clock=clock, signing=SIGNING)
    verifier = TokenVerifier(keys, None, ISSUER, clock=clock)
    leaked_a = keys.current(alg).kid
    forged, _ = issuer.mint(IDENTITY, RESOURCE[alg], 3600)  # what the thief can sign with A
    clock.t += 1
    keys.rotate(retire_after=3600, algorithms=[alg])
    leaked_b = keys.current(alg).kid
    assert verifier.verify(forged, RESOURCE[alg]).sub == IDENTITY.principal  # A in overlap
    clock.t += 1
    new = keys.rotate(retire_after=0, algorithms=[alg])
    assert keys.current(alg).kid == new.kid
    published = {k["kid"] for k in keys.jwks()["keys"]}
    assert leaked_a not in published and leaked_b not in published
    assert keys.key(leaked_a) is None and keys.key(leaked_b) is None
    with pytest.raises(AuthenticationError) as refused:
        verifier.verify(forged, RESOURCE[alg])  # also out of the verifier's cache
    assert refused.value.reason == "unknown_kid"
    replica = open_store(algorithms=ALL, clock=clock)  # another replica, or a restart
    assert {k["kid"] for k in replica.jwks()["keys"]} == published
    assert replica.current(alg).kid == new.kid


@pytest.mark.parametrize("alg", ["RS256", "ES256"])
def test_an_emergency_rotation_during_publish_ahead_stops_the_leaked_key_signing_now(
    open_store: OpenStore, alg: str
) -> None:
    """A routine RS256 rotation publishes key B 300 s ahead of signing; A still signs. A
    leaks and the operator rotates with retire_after=0: the new key signs now, and A (still
    signing) and B (not yet signing) leave the JWKS now, not once B would have taken over."""
    clock = Clock()
    keys = open_store(algorithms=ALL, clock=clock, publish_ahead=300, activation_delay=2)
    leaked = keys.current(alg).kid
    pending = keys.rotate(retire_after=3600, algorithms=[alg]).kid
    clock.t += 10
    assert keys.current(alg).kid == leaked  # B not signing yet
    new = keys.rotate(retire_after=0, algorithms=[alg])
    assert new.signs_from <= clock.t and keys.current(alg).kid == new.kid
    assert [k.kid for k in keys.published() if k.alg == alg] == [new.kid]
    assert keys.key(leaked) is None and keys.key(pending) is None
    replica = open_store(algorithms=ALL, clock=clock)
    assert replica.current(alg).kid == new.kid
    assert [k.kid for k in replica.published() if k.alg == alg] == [new.kid]
    if replica.dir is not None:  # files: neither private half is left on disk
        assert not (replica.dir / f"{leaked}.pem").exists()
        assert not (replica.dir / f"{pending}.pem").exists()


def test_a_routine_rotation_never_pushes_a_retirement_back(open_store: OpenStore) -> None:
    """Two routine rotations in a row: the first key keeps the retirement the first gave it
    (the control of the emergency tests: retirements only ever come forward)."""
    clock = Clock()
    keys = open_store(algorithms=ALL, clock=clock, publish_ahead=0, activation_delay=0)
    first = keys.current("RS256").kid
    clock.t += 1
    keys.rotate(retire_after=600, algorithms=["RS256"])
    clock.t += 100
    keys.rotate(retire_after=600, algorithms=["RS256"])
    clock.t += 500  # 600 s after the first rotation
    assert keys.key(first) is None
    assert len([k for k in keys.published() if k.alg == "RS256"]) == 2


def test_rotating_an_algorithm_no_key_is_kept_for_is_refused(open_store: OpenStore) -> None:
    """``lockgate keys rotate --alg ES256`` on an installation that signs nothing with ES256
    would publish a key of it from then on (and rotate it forever): refused, nothing
    written; the algorithms in use still rotate."""
    keys = open_store(algorithms=("EdDSA", "RS256"))
    before = keys.jwks()
    with pytest.raises(ConfigError, match="no ES256 signing key is kept"):
        keys.rotate_each(retire_after=60, algorithms=["ES256"])
    with pytest.raises(ConfigError, match="ES256"):
        keys.rotate_each(retire_after=60, algorithms=["RS256", "ES256"])
    assert keys.jwks() == before and open_store(algorithms=("EdDSA",)).in_use() == (
        "EdDSA", "RS256",
    )  # fmt: skip
    assert [k.alg for k in keys.rotate_each(retire_after=60)] == ["EdDSA", "RS256"]


# -- a rotation from a machine whose clock is off the database's ------------------------------
@pytest.mark.parametrize("skew", [-3600, 7200], ids=["behind", "ahead"])
def test_a_rotation_on_a_clock_off_the_databases_is_refused(
    pg_state: Callable[..., PostgresStateSettings], skew: int
) -> None:
    """``lockgate keys rotate`` from a laptop an hour behind: its times would make the new
    RS256 key sign at once on every replica (no cloud's cached JWKS knows it) and retire the
    old key, whose tokens are still out; two hours ahead, it would delete keys replicas still
    verify with. Refused with the skew named; the replicas keep their keys. The control: a
    replica on the right clock rotates, publishing ahead as configured."""
    settings, master_key = pg_state(), os.urandom(32)
    dbs = [PostgresDatabase(settings, replica_id=f"r{i}") for i in range(2)]
    try:
        replica = KeyStore(dbs[0], master_key=master_key, algorithms=ALL, publish_ahead=300)
        laptop = KeyStore(
            dbs[1], master_key=master_key, algorithms=ALL, publish_ahead=300,
            clock=lambda: time.time() + skew, check_clock=True,
        )  # fmt: skip
        old = replica.current("RS256").kid
        with pytest.raises(ConfigError, match=re.escape(f"clock is {skew:+d} s off")):
            laptop.rotate_each(retire_after=900, algorithms=["RS256"])
        replica.reload()
        assert replica.current("RS256").kid == old
        assert [k.kid for k in replica.published() if k.alg == "RS256"] == [old]
        new = replica.rotate_each(retire_after=900, algorithms=["RS256"])[0]
        assert replica.current("RS256").kid == old and new.signs_from >= time.time() + 290
    finally:
        for db in dbs:
            db.close()


# -- first keys: exactly one per algorithm, however many start at once -------------------------
def test_replicas_starting_together_create_one_first_key_per_algorithm(
    open_store: OpenStore,
) -> None:
    """Not a hole: six processes or replicas open the same keys at once, on a key set that
    so far holds only EdDSA, each configured for all three algorithms: one RS256 and one
    ES256 key are made, and every replica signs each algorithm with the same one (two would
    leave a cloud's cached JWKS missing the key of whichever replica signs)."""
    open_store()  # an EdDSA-only installation before RS256 and ES256 were configured
    opened = open_together(open_store, 6)
    for alg in ALL:
        assert len({store.current(alg).kid for store in opened}) == 1
        assert len([k for k in open_store(algorithms=ALL).published() if k.alg == alg]) == 1


# -- planted keys -----------------------------------------------------------------------------
def _plant(directory: Path, private: PrivateKeyTypes, alg: str = "RS256") -> str:
    """Write ``private`` into a file key store as its current ``alg`` key (the index and the
    PEM as the store writes them): what someone with write access to the directory could do."""
    try:
        kid = thumbprint(private.public_key())  # type: ignore[arg-type]
    except ValueError:  # a key type no kid is computed for: any well-formed name
        kid = "A" * 43
    pem = private.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )  # fmt: skip
    (directory / f"{kid}.pem").write_bytes(pem)
    index = json.loads((directory / "index.json").read_text())
    index["keys"].append({"kid": kid, "alg": alg, "created": 1.0, "retire_at": None})
    (directory / "index.json").write_text(json.dumps(index))
    return kid


def _rsa_with_exponent(e: int, bits: int = 2048) -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=e, key_size=bits)


@pytest.mark.parametrize(("exponent", "bits"), [(3, 2048), (65537, 1024)], ids=["e3", "1024bit"])
def test_a_weak_rsa_key_planted_in_the_key_directory_is_refused(
    tmp_path: Path, exponent: int, bits: int
) -> None:
    """A small public exponent (Bleichenbacher's e=3 forgeries against lax verifiers) or a
    short modulus is never published: the directory is refused as a whole, loudly."""
    KeyStore(tmp_path, algorithms=ALL)
    kid = _plant(tmp_path / "keys", _rsa_with_exponent(exponent, bits))
    with pytest.raises(ConfigError) as refused:
        KeyStore(tmp_path, algorithms=ALL)
    assert kid in str(refused.value) and "BEGIN" not in str(refused.value)


@pytest.mark.parametrize(
    "curve", [ec.SECP384R1(), ec.SECP256K1(), ec.SECP521R1()], ids=lambda c: c.name
)
def test_an_ec_key_off_p256_planted_as_es256_is_refused(
    tmp_path: Path, curve: ec.EllipticCurve
) -> None:
    """Not a hole: a P-384 or secp256k1 key named ES256 in the index is never published (a
    verifier would check ES256 signatures with the wrong curve; a cloud would refuse the
    whole key set)."""
    KeyStore(tmp_path, algorithms=ALL)
    _plant(tmp_path / "keys", ec.generate_private_key(curve), "ES256")
    with pytest.raises(ConfigError, match=r"ES256|unsupported"):
        KeyStore(tmp_path, algorithms=ALL)


def test_a_strong_rsa_key_in_the_key_directory_is_loaded(tmp_path: Path) -> None:
    """The control: the same planting with a 2048-bit, e=65537 key loads."""
    KeyStore(tmp_path, algorithms=ALL)
    kid = _plant(tmp_path / "keys", _rsa_with_exponent(65537))
    assert KeyStore(tmp_path, algorithms=ALL).key(kid) is not None


# -- what a Lockgate-signed JWT could pass for ------------------------------------------------
@pytest.mark.parametrize("alg", ALL)
def test_a_caller_identity_assertion_is_no_lockgate_token(tmp_path: Path, alg: str) -> None:
    """An upstream that receives a caller-identity assertion (same issuer, same keys, the
    task's coordinates) cannot present it back to the gateway as the task's token: not for
    its own resource, not for any other. Not a hole: its audience is no resource name and it
    lacks a token's jti and nbf."""
    clock = Clock()
    keys = KeyStore(tmp_path, algorithms=ALL, clock=clock)
    issuer = TokenIssuer(keys, ISSUER, clock=clock, signing=SIGNING)
    verifier = TokenVerifier(keys, None, ISSUER, clock=clock)
    signing = SigningSettings(audiences={f"{ISSUER}/upstream/*": alg})
    sign_assertion = UpstreamAssertionSigner(keys, ISSUER, clock=clock, signing=signing)
    token, claims = issuer.mint(IDENTITY, RESOURCE[alg], 600)
    assertion = sign_assertion(claims, RESOURCE[alg])
    for resource in (*RESOURCE.values(), f"{ISSUER}/upstream/{RESOURCE[alg]}"):
        with pytest.raises(AuthenticationError) as refused:
            verifier.verify(assertion, resource)
        assert refused.value.reason == "missing_claims" and refused.value.claims is None
    assert verifier.verify(token, RESOURCE[alg]) == claims  # the control


@pytest.mark.parametrize("alg", ["RS256", "ES256"])
def test_a_federation_assertion_is_no_lockgate_token(tmp_path: Path, alg: str) -> None:
    """Not a hole: the JWT the gateway sends Entra ID or Databricks (same issuer and keys)
    is refused by the gateway's own verifier for every resource, whoever saw it on the way:
    it carries no task, and its audience is no resource name."""
    from lockgate.config import FederatedCredential
    from lockgate.credentials.federation import assertion_claims

    clock = Clock()
    keys = KeyStore(tmp_path, algorithms=ALL, clock=clock)
    verifier = TokenVerifier(keys, None, ISSUER, clock=clock)
    cred = FederatedCredential(
        name="dbx-fed", type="federated", provider="databricks",
        token_url="https://adb-1.azuredatabricks.net/oidc/v1/token", audience="cosmos",
    )  # fmt: skip
    assertion = keys.sign(assertion_claims(cred, ISSUER, now=clock()), alg)
    for resource in (*RESOURCE.values(), cred.assertion_audience):
        with pytest.raises(AuthenticationError) as refused:
            verifier.verify(assertion, resource)
        assert refused.value.reason == "missing_claims" and refused.value.claims is None
