"""Signing keys of every algorithm (EdDSA, RS256, ES256) with real keys: round trip, the JWKS
a cloud reads (RFC 7517/7518 members only, verified with PyJWT's JWK set as a relying party
would), rotation and retirement per algorithm on files and on the shared table (SQLite and a
real PostgreSQL), restarts, and data written before other algorithms existed."""

from __future__ import annotations

import base64
import hashlib
import json
import os
import threading
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from lockgate.credentials.master_key import derived_aead
from lockgate.identity import KeyStore, TaskIdentity, TokenIssuer, TokenVerifier, thumbprint
from lockgate.identity.key_table import MIGRATIONS
from lockgate.identity.signing_key import ALGORITHMS, generate_key
from lockgate.store import (
    CORE_DOMAIN,
    CORE_MIGRATIONS,
    Database,
    PostgresDatabase,
    SqliteDatabase,
    migrate,
)

from .conftest import ISSUER, Clock

ALL = ("EdDSA", "RS256", "ES256")
#: The public members RFC 7518 §6 defines for each key type, plus kid/alg/use.
JWK_MEMBERS = {
    "EdDSA": {"kty", "crv", "x", "kid", "alg", "use"},
    "RS256": {"kty", "n", "e", "kid", "alg", "use"},
    "ES256": {"kty", "crv", "x", "y", "kid", "alg", "use"},
}
PRIVATE_MEMBERS = {"d", "p", "q", "dp", "dq", "qi", "oth", "k"}
KEY_TYPES = {
    "EdDSA": Ed25519PublicKey,
    "RS256": rsa.RSAPublicKey,
    "ES256": ec.EllipticCurvePublicKey,
}

OpenStore = Callable[..., KeyStore]


def b64url_decode(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def claims(**extra: Any) -> dict[str, Any]:
    return {"iss": ISSUER, "sub": "lockgate:credential:orders", "aud": "api://x", **extra}


@pytest.fixture(params=["files", "sqlite", "postgresql"])
def open_store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[OpenStore]:
    """``open_store(**kw)``: another KeyStore on the same keys (another process or replica):
    files under one data dir, or one signing_keys table on SQLite or a real PostgreSQL."""
    master_key = os.urandom(32)
    opened: list[Database] = []
    if request.param == "files":

        def make(**kw: Any) -> KeyStore:
            return KeyStore(tmp_path, **kw)

    else:
        if request.param == "sqlite":

            def handle() -> Database:
                return SqliteDatabase(tmp_path / "state.db")

        else:
            settings = request.getfixturevalue("pg_state")()

            def handle() -> Database:
                return PostgresDatabase(settings, replica_id=f"r{len(opened)}")

        def make(**kw: Any) -> KeyStore:
            db = handle()
            opened.append(db)
            kw.setdefault("activation_delay", 2.0)
            return KeyStore(db, master_key=master_key, **kw)

    yield make
    for db in opened:
        db.close()


# -- one key per algorithm: round trip and the published JWK ---------------------------------
@pytest.mark.parametrize("alg", ALL)
def test_a_key_of_each_algorithm_signs_and_verifies_from_the_jwks(tmp_path: Path, alg: str) -> None:
    keys = KeyStore(tmp_path, algorithms=ALL)
    key = keys.current(alg)
    assert key.alg == alg and isinstance(key.public, KEY_TYPES[alg])
    assert key.kid == thumbprint(key.public) and keys.key(key.kid) is key
    token = keys.sign(claims(), alg)
    assert jwt.get_unverified_header(token) == {"alg": alg, "kid": key.kid, "typ": "JWT"}

    # A relying party (Entra ID, Databricks) reads the JWKS as JSON and picks the key by kid.
    served = json.loads(json.dumps(keys.jwks()))
    jwk = next(k for k in served["keys"] if k["kid"] == key.kid)
    assert set(jwk) == JWK_MEMBERS[alg] and not PRIVATE_MEMBERS & set(jwk)
    assert (jwk["alg"], jwk["use"]) == (alg, "sig")
    relying = jwt.PyJWKSet.from_dict(served)[key.kid]
    assert relying.algorithm_name == alg
    verified = jwt.decode(token, relying.key, algorithms=[alg], audience="api://x")
    assert verified == claims()
    with pytest.raises(jwt.InvalidSignatureError):  # the check can fail: another key
        other = KeyStore(tmp_path / "other", algorithms=ALL).sign(claims(), alg)
        jwt.decode(other, relying.key, algorithms=[alg], audience="api://x")


def test_the_jwks_lists_every_algorithm_and_the_key_sizes_are_the_configured_ones(
    tmp_path: Path,
) -> None:
    keys = KeyStore(tmp_path, algorithms=["ES256", "EdDSA", "RS256"], rsa_key_size=3072)
    assert keys.algorithms == ALL  # listed and rotated in one order
    assert [k["alg"] for k in keys.jwks()["keys"]] == list(ALL)
    rsa_jwk = next(k for k in keys.jwks()["keys"] if k["alg"] == "RS256")
    assert len(b64url_decode(rsa_jwk["n"])) == 384 and rsa_jwk["e"] == "AQAB"
    ec_jwk = next(k for k in keys.jwks()["keys"] if k["alg"] == "ES256")
    assert ec_jwk["crv"] == "P-256"


def test_rsa_thumbprint_is_rfc7638s_example() -> None:
    # RFC 7638 §3.1: the example RSA key and its thumbprint.
    n = (
        "0vx7agoebGcQSuuPiLJXZptN9nndrQmbXEps2aiAFbWhM78LhWx4cbbfAAtVT86zwu1RK7aPFFxuhDR1L6tSoc_B"
        "JECPebWKRXjBZCiFV4n3oknjhMstn64tZ_2W-5JsGY4Hc5n9yBXArwl93lqt7_RN5w6Cf0h4QyQ5v-65YGjQR0_"
        "FDW2QvzqY368QQMicAtaSqzs8KJZgnYb9c7d0zgdAZHzu6qMQvRL5hajrn1n91CbOpbISD08qNLyrdkt-bFTWhA"
        "I4vMQFh6WeZu0fM4lFd2NcRwr3XPksINHaQ-G_xBniIqbw0Ls1jF44-csFCur-kEgU8awapJzKnqDKgw"
    )
    public = rsa.RSAPublicNumbers(65537, int.from_bytes(b64url_decode(n), "big")).public_key()
    assert thumbprint(public) == "NzbLsXh8uDCcd-6MNwXF4W_7noWXFZAfHkxZsRGC9Xs"


def test_ec_coordinates_keep_their_leading_zeros_in_jwk_and_thumbprint() -> None:
    # RFC 7518 §6.2.1.2: x and y are always 32 bytes for P-256; a short encoding would give
    # another thumbprint than every other implementation computes.
    for _ in range(5000):
        key = generate_key("ES256", 0.0)
        assert isinstance(key.public, ec.EllipticCurvePublicKey)
        numbers = key.public.public_numbers()
        if numbers.x < 1 << 248 or numbers.y < 1 << 248:
            break
    else:
        pytest.skip("no coordinate with a leading zero byte in 5000 keys")
    jwk = key.jwk()
    assert len(b64url_decode(jwk["x"])) == len(b64url_decode(jwk["y"])) == 32
    canonical = json.dumps({m: jwk[m] for m in ("crv", "kty", "x", "y")}, separators=(",", ":"))
    digest = base64.urlsafe_b64encode(hashlib.sha256(canonical.encode()).digest()).rstrip(b"=")
    assert key.kid == digest.decode()


def test_sign_refuses_an_algorithm_with_no_key(tmp_path: Path) -> None:
    keys = KeyStore(tmp_path)  # EdDSA only
    with pytest.raises(ValueError, match="RS256"):
        keys.sign(claims(), "RS256")
    with pytest.raises(ValueError):
        keys.sign(claims(), "HS256")
    with pytest.raises(ValueError):
        generate_key("RS256", 0.0, rsa_key_size=1024)


def test_issuer_signs_each_audience_with_its_algorithm_and_the_verifier_accepts_it(
    tmp_path: Path,
) -> None:
    from lockgate.config import SigningSettings

    clock = Clock()
    keys = KeyStore(tmp_path, algorithms=ALL, clock=clock)
    signing = SigningSettings(
        algorithms=["EdDSA"], audiences={"orders-api": "RS256", "dbx-*": "ES256"}
    )
    issuer = TokenIssuer(keys, ISSUER, clock=clock, signing=signing)
    verifier = TokenVerifier(keys, None, ISSUER, clock=clock)
    identity = TaskIdentity("prod", "finance_daily", "load_orders", "r1", 1)
    for audience, alg in (("orders-api", "RS256"), ("dbx-west", "ES256"), ("cosmos", "EdDSA")):
        token, minted = issuer.mint(identity, audience, 600)
        assert jwt.get_unverified_header(token)["alg"] == alg
        assert jwt.get_unverified_header(token)["kid"] == keys.current(alg).kid
        assert verifier.verify(token, audience) == minted


# -- rotation, retirement and restarts per algorithm (files, SQLite, PostgreSQL) -------------
def test_first_open_creates_one_key_per_algorithm_and_a_restart_finds_them(
    open_store: OpenStore,
) -> None:
    first = open_store(algorithms=ALL)
    kids = {alg: first.current(alg).kid for alg in ALL}
    assert len(set(kids.values())) == 3 and len(first.published()) == 3
    again = open_store(algorithms=ALL)  # a restart, or another replica
    assert {alg: again.current(alg).kid for alg in ALL} == kids
    assert len(again.published()) == 3
    token = first.sign(claims(), "ES256")
    public = again.public_key(kids["ES256"])
    assert public is not None
    assert jwt.decode(token, public, algorithms=["ES256"], audience="api://x")["iss"] == ISSUER


def test_an_algorithm_added_later_gets_its_first_key_and_keeps_the_others(
    open_store: OpenStore,
) -> None:
    before = open_store().current().kid
    later = open_store(algorithms=("EdDSA", "RS256"))
    assert later.current().kid == before
    assert later.current("RS256").alg == "RS256"
    assert open_store().current("RS256").kid == later.current("RS256").kid  # stored, kept
    assert open_store().in_use() == ("EdDSA", "RS256")


def test_rotating_one_algorithm_retires_only_its_own_keys(open_store: OpenStore) -> None:
    clock = Clock()
    keys = open_store(algorithms=ALL, clock=clock, publish_ahead=0, activation_delay=0)
    old = {alg: keys.current(alg).kid for alg in ALL}
    clock.t += 1
    new = keys.rotate(retire_after=600, algorithms=["RS256"])
    assert new.alg == "RS256" and keys.current("RS256").kid == new.kid
    assert keys.current("EdDSA").kid == old["EdDSA"] and keys.current("ES256").kid == old["ES256"]
    clock.t += 601
    assert keys.key(old["RS256"]) is None  # retired
    assert keys.key(old["EdDSA"]) is not None and keys.key(old["ES256"]) is not None
    assert {k["alg"] for k in keys.jwks()["keys"]} == set(ALL)
    other = open_store(algorithms=ALL, clock=clock)
    assert {alg: other.current(alg).kid for alg in ALL} == {**old, "RS256": new.kid}


def test_rotate_covers_every_algorithm_in_use(open_store: OpenStore) -> None:
    clock = Clock()
    keys = open_store(algorithms=("EdDSA", "ES256"), clock=clock, activation_delay=0)
    old = {alg: keys.current(alg).kid for alg in ("EdDSA", "ES256")}
    clock.t += 1
    rotated = keys.rotate_each(retire_after=0)
    assert [k.alg for k in rotated] == ["EdDSA", "ES256"]
    assert {k.alg: k.kid for k in rotated} == {a: keys.current(a).kid for a in ("EdDSA", "ES256")}
    assert not {k.kid for k in keys.published()} & set(old.values())  # retire_after=0: gone


def test_rs256_and_es256_keys_are_published_ahead_of_signing(open_store: OpenStore) -> None:
    clock = Clock()
    keys = open_store(algorithms=ALL, clock=clock, publish_ahead=300, activation_delay=2)
    old = {alg: keys.current(alg).kid for alg in ALL}
    rotated = {k.alg: k for k in keys.rotate_each(retire_after=900)}
    published = {k["kid"] for k in keys.jwks()["keys"]}
    assert {k.kid for k in rotated.values()} <= published  # clouds may fetch them now
    clock.t += 2
    assert keys.current("EdDSA").kid == rotated["EdDSA"].kid  # EdDSA: today's delay
    for alg in ("RS256", "ES256"):
        assert keys.current(alg).kid == old[alg]  # still the old key: clouds may not know it
        assert rotated[alg].signs_from == Clock().t + 300
    clock.t += 298
    assert {keys.current(alg).kid for alg in ALL} == {k.kid for k in rotated.values()}
    clock.t += 899
    assert keys.key(old["RS256"]) is not None  # retires 900 s after the new one signs
    clock.t += 2
    assert keys.key(old["RS256"]) is None and keys.key(old["ES256"]) is None


def test_an_emergency_rotation_switches_every_algorithm_at_once(open_store: OpenStore) -> None:
    clock = Clock()
    keys = open_store(algorithms=ALL, clock=clock, publish_ahead=300, activation_delay=2)
    old = {alg: keys.current(alg).kid for alg in ALL}
    clock.t += 1
    keys.rotate(retire_after=0, algorithms=["RS256"])
    assert keys.current("RS256").kid != old["RS256"] and keys.key(old["RS256"]) is None
    assert keys.current("EdDSA").kid == old["EdDSA"]


def open_together(open_store: OpenStore, replicas: int) -> list[KeyStore]:
    """``replicas`` key stores of every algorithm opened at the same instant (threads behind
    a barrier, each with its own handle: processes or replicas starting together)."""
    start = threading.Barrier(replicas)
    stores: list[KeyStore] = []
    errors: list[BaseException] = []

    def replica() -> None:
        start.wait()
        try:
            stores.append(open_store(algorithms=ALL))
        except BaseException as exc:  # reported below
            errors.append(exc)

    threads = [threading.Thread(target=replica) for _ in range(replicas)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not errors and len(stores) == replicas
    return stores


def test_concurrent_first_start_creates_exactly_one_key_per_algorithm(
    open_store: OpenStore,
) -> None:
    stores = open_together(open_store, 3)
    for alg in ALL:
        assert len({s.current(alg).kid for s in stores}) == 1, alg
    assert len(open_store().published()) == 3


# -- data written before other algorithms existed --------------------------------------------
def test_an_eddsa_only_data_dir_keeps_its_key_and_gains_the_new_algorithms(
    tmp_path: Path,
) -> None:
    kdir = tmp_path / "keys"
    kdir.mkdir(mode=0o700)
    private = Ed25519PrivateKey.generate()
    kid = thumbprint(private.public_key())
    (kdir / f"{kid}.pem").write_bytes(
        private.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )  # fmt: skip
    old_index = {"current": kid, "keys": [{"kid": kid, "created": 1.0, "retire_at": None}]}
    (kdir / "index.json").write_text(json.dumps(old_index))
    keys = KeyStore(tmp_path, algorithms=ALL)
    assert keys.current().kid == kid and keys.current().alg == "EdDSA"
    index = json.loads((kdir / "index.json").read_text())
    assert index["current"] == kid
    assert sorted(e["alg"] for e in index["keys"]) == sorted(ALL)
    restarted = KeyStore(tmp_path, algorithms=ALL)
    assert {a: restarted.current(a).kid for a in ALL} == {a: keys.current(a).kid for a in ALL}


def _old_row_bound(kid: str, created: float, activate_at: float) -> bytes:
    """The AAD rows were encrypted under before the alg column (written out here, not
    imported: what old replicas wrote must keep decrypting)."""
    return b"\0".join(
        (b"Ed25519", kid.encode(), created.hex().encode(), activate_at.hex().encode(), b"-")
    )


@pytest.mark.parametrize("dialect", ["sqlite", "postgresql"])
def test_an_eddsa_only_table_is_migrated_and_its_row_still_decrypts(
    request: pytest.FixtureRequest, tmp_path: Path, dialect: str
) -> None:
    master_key = os.urandom(32)
    if dialect == "sqlite":
        db: Database = SqliteDatabase(tmp_path / "state.db")
    else:
        db = PostgresDatabase(request.getfixturevalue("pg_state")(), replica_id="old")
    try:
        migrate(db, CORE_DOMAIN, CORE_MIGRATIONS)
        migrate(db, "keys", MIGRATIONS[:2])  # the schema before other algorithms
        private = Ed25519PrivateKey.generate()
        kid = thumbprint(private.public_key())
        raw = private.private_bytes(
            serialization.Encoding.Raw, serialization.PrivateFormat.Raw,
            serialization.NoEncryption(),
        )  # fmt: skip
        nonce = os.urandom(12)
        aead = derived_aead(master_key, b"lockgate signing keys v1")
        ct = aead.encrypt(nonce, raw, _old_row_bound(kid, 5.0, 5.0))
        with db.transaction() as cur:
            cur.execute(
                "INSERT INTO signing_keys (kid, created, activate_at, retire_at, nonce, "
                "ciphertext) VALUES (?, ?, ?, ?, ?, ?)",
                (kid, 5.0, 5.0, None, nonce, ct),
            )
        keys = KeyStore(db, master_key=master_key, algorithms=ALL, activation_delay=0)
        assert keys.current().kid == kid
        assert {k.alg for k in keys.published()} == set(ALL)
        with db.read() as cur:
            algs = dict(cur.execute("SELECT kid, alg FROM signing_keys").fetchall())
        assert algs[kid] == "EdDSA" and sorted(algs.values()) == sorted(ALL)
        token = keys.sign(claims(), "EdDSA")
        assert jwt.decode(token, private.public_key(), algorithms=["EdDSA"], audience="api://x")
    finally:
        db.close()


def test_every_algorithm_listed_is_one_a_key_can_be_for() -> None:
    assert ALGORITHMS == ALL


def _get_json(url: str) -> Any:
    with urllib.request.urlopen(url) as answer:
        return json.loads(answer.read())


# -- what the control listener serves --------------------------------------------------------
async def test_the_served_jwks_and_discovery_let_a_relying_party_verify_each_algorithm(
    tmp_path: Path,
) -> None:
    import asyncio

    from tests.control._stack import basic, deployment, post_form, running_gateway

    secret = "keys-secret-Ja9"
    policy = (
        "rules:\n  - id: all\n    effect: allow\n    principals: ['airflow:prod/*']\n"
        "    actions: [read]\n    resources: ['*']\n"
    )
    resources = [
        {"name": name, "kind": "http", "upstream": "http://127.0.0.1:9", "conn_id": name}
        for name in ("orders-api", "dbx-west", "cosmos")
    ]
    signing = {"algorithms": ["EdDSA"], "audiences": {"orders-api": "RS256", "dbx-*": "ES256"}}
    async with running_gateway(
        tmp_path, policy=policy, deployments=[deployment("prod", secret)],
        resources=resources, signing=signing,
    ) as gw:  # fmt: skip
        base = f"http://127.0.0.1:{gw.control_port}"
        # The relying party's own HTTP client, off the loop that serves it.
        discovery = await asyncio.to_thread(_get_json, f"{base}/.well-known/openid-configuration")
        assert discovery["id_token_signing_alg_values_supported"] == list(ALL)
        client = jwt.PyJWKClient(f"{base}/.well-known/jwks.json", cache_keys=False)
        task = {"dag_id": "etl", "task_id": "load", "run_id": "r1", "try_number": "1"}
        for resource, alg in (("orders-api", "RS256"), ("dbx-west", "ES256"), ("cosmos", "EdDSA")):
            status, body = await post_form(
                gw, "/v1/token", basic("prod", secret), resource=resource, **task
            )
            assert status == 200, body
            token = body["access_token"]
            signing_key = await asyncio.to_thread(client.get_signing_key_from_jwt, token)
            assert signing_key.algorithm_name == alg
            verified = jwt.decode(token, signing_key.key, algorithms=[alg], audience=resource)
            assert verified["sub"] == "airflow:prod/etl/load"
            assert gw.verifier.verify(token, resource).aud == resource
