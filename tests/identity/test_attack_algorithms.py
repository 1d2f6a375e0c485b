"""Algorithm confusion against every kind of signing key (EdDSA, RS256, ES256).

The verifier pins the algorithm per key: a token is checked only by the algorithm of the key
its kid names, never by what its header asks for. Each attack below is built with real keys
and refused with its own reason slug; each builder first makes a token that verifies, so a
test fails if the attack stops being the only thing wrong with the token.
"""

from __future__ import annotations

import base64
import dataclasses
import hashlib
import hmac
import json
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature

from lockgate.errors import AuthenticationError, ConfigError
from lockgate.identity import KeyStore, TaskIdentity, TokenIssuer, TokenVerifier
from lockgate.identity.key_table import KeyTable
from lockgate.identity.signing_key import PrivateKey, SigningKey, generate_key
from lockgate.store import Database
from tests.store import conftest as store_fixtures
from tests.store.conftest import OpenDatabase

from .conftest import ISSUER, Clock

open_db = store_fixtures.open_db  # the table attack runs on SQLite and on PostgreSQL
ALL = ("EdDSA", "RS256", "ES256")
AUD = "orders-api"
IDENTITY = TaskIdentity("prod", "finance_daily", "load_orders", "r1", 1)


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def enc(obj: Any) -> str:
    return b64(json.dumps(obj).encode())


HASHES: dict[str, hashes.HashAlgorithm] = {
    "RS256": hashes.SHA256(), "RS512": hashes.SHA512(), "PS256": hashes.SHA256(),
    "ES256": hashes.SHA256(), "ES384": hashes.SHA384(), "ES512": hashes.SHA512(),
}  # fmt: skip


def raw_signature(alg: str, private: Any, signing_input: bytes) -> bytes:
    """A JWS signature of ``signing_input`` by ``private`` under ``alg`` (RFC 7518): ECDSA
    as raw r||s, each integer the curve's size."""
    if alg == "EdDSA":
        return bytes(private.sign(signing_input))
    if alg.startswith("RS"):
        return bytes(private.sign(signing_input, padding.PKCS1v15(), HASHES[alg]))
    if alg == "PS256":
        pss = padding.PSS(mgf=padding.MGF1(hashes.SHA256()), salt_length=32)
        return bytes(private.sign(signing_input, pss, HASHES[alg]))
    if alg.startswith("ES"):
        r, s = decode_dss_signature(private.sign(signing_input, ec.ECDSA(HASHES[alg])))
        size = (private.curve.key_size + 7) // 8
        return r.to_bytes(size, "big") + s.to_bytes(size, "big")
    raise AssertionError(alg)


@dataclass
class Ctx:
    """One key store holding a key of every algorithm; ``alg`` is the one under attack."""

    alg: str
    keys: KeyStore
    clock: Clock
    verifier: TokenVerifier

    @property
    def key(self) -> SigningKey:
        return self.keys.current(self.alg)

    def payload(self) -> dict[str, Any]:
        issuer = TokenIssuer(self.keys, ISSUER, clock=self.clock)
        return issuer.mint(IDENTITY, AUD, 600)[1].to_payload()

    def header(self, **extra: Any) -> dict[str, Any]:
        return {"alg": self.alg, "typ": "JWT", "kid": self.key.kid, **extra}

    def forge(
        self,
        header: dict[str, Any] | None = None,
        private: PrivateKey | Any | None = None,
        sign_as: str | None = None,
        signature: bytes | None = None,
    ) -> str:
        """A token with ``header`` (default: the honest one), signed by ``private`` (default:
        the real key) under ``sign_as`` (default: the header's alg), or with ``signature``."""
        header = self.header() if header is None else header
        signing_input = f"{enc(header)}.{enc(self.payload())}".encode()
        if signature is None:
            key = self.key.private if private is None else private
            signature = raw_signature(sign_as or header["alg"], key, signing_input)
        return f"{signing_input.decode()}.{b64(signature)}"

    def refused(self, token: str) -> str:
        """The reason slug ``token`` is refused with (the same twice: cache or not)."""
        reasons = []
        for _ in range(2):
            with pytest.raises(AuthenticationError) as caught:
                self.verifier.verify(token, AUD)
            assert caught.value.claims is None  # nothing in a forged token is recorded
            reasons.append(caught.value.reason)
        assert reasons[0] == reasons[1]
        return reasons[0]


def make_ctx(tmp_path: Path, alg: str) -> Ctx:
    clock = Clock()
    keys = KeyStore(tmp_path, algorithms=ALL, clock=clock)
    ctx = Ctx(alg, keys, clock, TokenVerifier(keys, None, ISSUER, clock=clock))
    # The control: the honest token of this algorithm, built the way every attack is, verifies.
    assert ctx.verifier.verify(ctx.forge(), AUD).dag_id == "finance_daily"
    return ctx


@pytest.fixture(params=ALL)
def c(request: pytest.FixtureRequest, tmp_path: Path) -> Ctx:
    return make_ctx(tmp_path, str(request.param))


def _public_bytes(c: Ctx, encoding: serialization.Encoding) -> bytes:
    fmt = (
        serialization.PublicFormat.Raw
        if encoding is serialization.Encoding.Raw
        else serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return c.key.public.public_bytes(encoding, fmt)


def _hmac(secret: bytes) -> Callable[[bytes], bytes]:
    return lambda data: hmac.new(secret, data, hashlib.sha256).digest()


# -- the header's algorithm ------------------------------------------------------------------
@pytest.mark.parametrize("encoding", ["PEM", "DER"])
def test_hs256_keyed_with_the_public_key_is_refused(c: Ctx, encoding: str) -> None:
    secret = _public_bytes(c, getattr(serialization.Encoding, encoding))
    header = c.header(alg="HS256")
    signing_input = f"{enc(header)}.{enc(c.payload())}".encode()
    token = c.forge(header, signature=_hmac(secret)(signing_input))
    assert c.refused(token) == "unsupported_alg"


def test_hs256_keyed_with_the_raw_ed25519_key_is_refused(tmp_path: Path) -> None:
    c = make_ctx(tmp_path, "EdDSA")  # raw public bytes exist for Ed25519 only
    header = c.header(alg="HS256")
    signing_input = f"{enc(header)}.{enc(c.payload())}".encode()
    token = c.forge(
        header, signature=_hmac(_public_bytes(c, serialization.Encoding.Raw))(signing_input)
    )
    assert c.refused(token) == "unsupported_alg"


@pytest.mark.parametrize(("alg", "other"), [(a, b) for a in ALL for b in ALL if a != b])
def test_another_accepted_algorithm_for_the_same_kid_is_refused(
    tmp_path: Path, alg: str, other: str
) -> None:
    c = make_ctx(tmp_path, alg)
    # Signed for real under the other algorithm by the key Lockgate holds for it: a valid
    # signature, but not by the key the kid names, under that key's algorithm.
    header = c.header(alg=other)
    token = c.forge(header, private=c.keys.current(other).private)
    assert c.refused(token) == "alg_mismatch"
    # Same token, honest kid of the other key: accepted, so the kid/alg pairing alone decided.
    assert c.verifier.verify(c.forge(c.header(alg=other, kid=c.keys.current(other).kid),
                                     private=c.keys.current(other).private), AUD)  # fmt: skip


@pytest.mark.parametrize("alg", ["none", "None", "NONE", ""])
def test_alg_none_is_refused(c: Ctx, alg: str) -> None:
    header = c.header(alg=alg)
    assert c.refused(c.forge(header, signature=b"")) == "unsupported_alg"
    assert c.refused(c.forge(header, signature=b"\0" * c.key.signature_length)) == (
        "unsupported_alg"
    )


def _signer_for(c: Ctx, foreign: str) -> Any:
    """A key that really signs under ``foreign``: our own RSA key when the RSA key is under
    attack (a genuine signature by it, under another RSA scheme), else a key of that kind."""
    if foreign in ("PS256", "RS512"):
        if c.alg == "RS256":
            return c.key.private
        return rsa.generate_private_key(public_exponent=65537, key_size=2048)
    return ec.generate_private_key(ec.SECP384R1() if foreign == "ES384" else ec.SECP521R1())


@pytest.mark.parametrize("foreign", ["PS256", "ES384", "ES512", "RS512"])
def test_algorithms_lockgate_never_signs_with_are_refused(c: Ctx, foreign: str) -> None:
    token = c.forge(c.header(alg=foreign), private=_signer_for(c, foreign))
    assert c.refused(token) == "unsupported_alg"


@pytest.mark.parametrize("spelling", ["eddsa", "EdDSA ", "rs256", "Es256", "RS384", "HS512"])
def test_other_spellings_of_an_algorithm_are_refused(c: Ctx, spelling: str) -> None:
    token = c.forge(c.header(alg=spelling), signature=b"\1" * c.key.signature_length)
    assert c.refused(token) == "unsupported_alg"


def test_an_es256_signature_in_der_is_refused(tmp_path: Path) -> None:
    c = make_ctx(tmp_path, "ES256")
    header = c.header()
    signing_input = f"{enc(header)}.{enc(c.payload())}".encode()
    private = c.key.private
    assert isinstance(private, ec.EllipticCurvePrivateKey)
    der = private.sign(signing_input, ec.ECDSA(hashes.SHA256()))  # genuine, but ASN.1 DER
    assert c.refused(c.forge(header, signature=der)) == "bad_signature"


# -- where the key comes from ----------------------------------------------------------------
def _attacker_jwk(c: Ctx) -> tuple[SigningKey, dict[str, str]]:
    attacker = generate_key(c.alg, 0.0)
    return attacker, attacker.jwk()


@pytest.mark.parametrize("member", ["jwk", "jku", "x5u", "x5c"])
def test_embedded_keys_and_key_urls_are_ignored(c: Ctx, member: str) -> None:
    attacker, jwk = _attacker_jwk(c)
    value: Any = {
        "jwk": jwk,
        "jku": "https://evil.test/jwks.json",
        "x5u": "https://evil.test/cert.pem",
        "x5c": [base64.b64encode(os.urandom(64)).decode()],
    }[member]
    # Under our kid: the signature is checked with our key, and fails.
    ours = c.forge(c.header(**{member: value}), private=attacker.private)
    assert c.refused(ours) == "bad_signature"
    # Under the attacker's own kid: no such key is published.
    theirs = c.forge(c.header(kid=attacker.kid, **{member: value}), private=attacker.private)
    assert c.refused(theirs) == "unknown_kid"
    # The header members alone change nothing for an honest token.
    assert c.verifier.verify(c.forge(c.header(**{member: value})), AUD)


def test_a_valid_signature_by_an_unknown_key_under_a_known_kid_is_refused(c: Ctx) -> None:
    attacker = generate_key(c.alg, 0.0)
    assert c.refused(c.forge(private=attacker.private)) == "bad_signature"


def test_a_retired_keys_kid_is_refused(c: Ctx) -> None:
    old = c.forge()  # signed by the key about to retire
    c.clock.t += 1
    c.keys.rotate(retire_after=60, algorithms=[c.alg])
    assert c.verifier.verify(old, AUD)  # within the overlap: still published
    c.clock.t += 61
    fresh = TokenVerifier(c.keys, None, ISSUER, clock=c.clock)  # no cached verdict
    with pytest.raises(AuthenticationError) as caught:
        fresh.verify(old, AUD)
    assert caught.value.reason == "unknown_kid"
    c.verifier = fresh
    assert c.refused(old) == "unknown_kid"


# -- the shared table ------------------------------------------------------------------------
def _set_alg(db: Database, kid: str, alg: str) -> None:
    with db.transaction() as cur:
        cur.execute("UPDATE signing_keys SET alg = ? WHERE kid = ?", (alg, kid))
        cur.touch("keys")


@pytest.mark.parametrize("alg", ALL)
def test_a_table_row_whose_alg_was_changed_is_refused(open_db: OpenDatabase, alg: str) -> None:
    master_key = os.urandom(32)
    db = open_db()
    keys = KeyStore(db, master_key=master_key, algorithms=ALL, activation_delay=0)
    verifier = TokenVerifier(keys, None, ISSUER)
    kid = keys.current(alg).kid
    issuer = TokenIssuer(keys, ISSUER)
    token, _ = issuer.mint(IDENTITY, AUD, 600)
    assert verifier.verify(token, AUD)
    for other in (*[a for a in ALL if a != alg], "HS256"):
        _set_alg(db, kid, other)
        # A replica starting now refuses the table outright: the AAD binds the algorithm.
        with pytest.raises(ConfigError, match=f"signing key {kid}"):
            KeyStore(open_db(), master_key=master_key, algorithms=ALL)
        # A running one keeps the keys it authenticated, with their own algorithm.
        with pytest.raises(ConfigError):
            keys.reload()
        assert keys.key(kid) is not None and keys.key(kid).alg == alg  # type: ignore[union-attr]
    _set_alg(db, kid, alg)  # put back: the row decrypts again
    assert KeyStore(open_db(), master_key=master_key, algorithms=ALL).current(alg).kid == kid


def test_a_table_row_of_another_type_under_an_algorithm_is_refused(
    open_db: OpenDatabase,
) -> None:
    """Even with the master key, a row cannot hold an RSA key as ES256: the key's type is
    checked against the row's algorithm after decryption."""
    master_key = os.urandom(32)
    db = open_db()
    KeyStore(db, master_key=master_key, algorithms=("EdDSA",))
    table = KeyTable(open_db(), master_key)
    rsa_key = dataclasses.replace(generate_key("RS256", 2.0), alg="ES256")
    with db.transaction() as cur:
        table._write(cur, rsa_key)  # what a writer holding the master key could store
        cur.touch("keys")
    with pytest.raises(ConfigError, match="not an ES256 key"):
        KeyStore(open_db(), master_key=master_key)


def test_a_key_file_of_another_type_than_its_alg_is_refused(tmp_path: Path) -> None:
    """An Ed25519 private key in the RS256 slot of the files is refused on load, too."""
    keys = KeyStore(tmp_path, algorithms=ALL)
    rs_kid = keys.current("RS256").kid
    ed = Ed25519PrivateKey.generate()
    (tmp_path / "keys" / f"{rs_kid}.pem").write_bytes(
        ed.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )  # fmt: skip
    with pytest.raises(ConfigError, match="not an RS256 key"):
        KeyStore(tmp_path, algorithms=ALL)
