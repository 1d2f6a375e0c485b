"""SCRAM-SHA-256 client and md5 answer: RFC vectors, SASLprep, refusals of a bad server."""

from __future__ import annotations

import base64
import hashlib
import hmac

import pytest

from lockgate.gateway.postgres import scram
from lockgate.gateway.postgres.scram import ScramClient, ScramError

# RFC 7677 §3
NONCE = "rOprNGfwEbeRWgbNEkqO"
SERVER_FIRST = (
    b"r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096"
)
CLIENT_FINAL = (
    b"c=biws,r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,"
    b"p=dHzbZapWIk4jUhN+Ute9ytag9zjfMHgsqmmiz7AndVQ="
)
SERVER_FINAL = b"v=6rriTRBi23WpRR/wtup+mMhUZUn/dB5nLTJRsjl95G4="


@pytest.fixture(autouse=True)
def _empty_cache() -> None:
    scram.forget_salted_passwords()


def test_rfc7677_vector() -> None:
    c = ScramClient("pencil", nonce=NONCE, username="user")
    assert c.client_first() == b"n,,n=user,r=rOprNGfwEbeRWgbNEkqO"
    salt, iterations = c.server_first(SERVER_FIRST)
    assert (salt, iterations) == (base64.b64decode("W22ZaJ0SNY7soEsUEjb6gQ=="), 4096)
    assert c.client_final() == CLIENT_FINAL
    assert not c.done
    c.server_final(SERVER_FINAL)
    assert c.done


def test_postgres_style_client_first_has_an_empty_user_and_a_random_nonce() -> None:
    a, b = ScramClient("pw"), ScramClient("pw")
    first = a.client_first()
    assert first.startswith(b"n,,n=,r=")
    assert len(first) == len(b"n,,n=,r=") + 24  # 18 random bytes, base64
    assert first != b.client_first()
    assert "pw" not in repr(a)


def test_wrong_server_signature_is_refused() -> None:
    c = ScramClient("pencil", nonce=NONCE, username="user")
    c.server_first(SERVER_FIRST)
    c.client_final()
    forged = b"v=" + base64.b64encode(b"\x00" * 32)
    with pytest.raises(ScramError, match="signature"):
        c.server_final(forged)
    assert not c.done


@pytest.mark.parametrize(
    ("message", "match"),
    [
        (b"r=other,s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096", "nonce"),
        (b"r=rOprNGfwEbeRWgbNEkqO,s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096", "nonce"),  # not extended
        (b"r=rOprNGfwEbeRWgbNEkqOx,s=!!!,i=4096", "base64"),
        (b"r=rOprNGfwEbeRWgbNEkqOx,s=,i=4096", "empty"),
        (b"r=rOprNGfwEbeRWgbNEkqOx,s=W22ZaJ0SNY7soEsUEjb6gQ==,i=0", "iteration"),
        (b"r=rOprNGfwEbeRWgbNEkqOx,s=W22ZaJ0SNY7soEsUEjb6gQ==,i=99999999", "iteration"),
        (b"r=rOprNGfwEbeRWgbNEkqOx,s=W22ZaJ0SNY7soEsUEjb6gQ==,i=-1", "iteration"),
        (b"m=ext,r=rOprNGfwEbeRWgbNEkqOx,s=W22Z,i=1", "attributes"),
        (b"r=rOprNGfwEbeRWgbNEkqOx,s=W22ZaJ0SNY7soEsUEjb6gQ==,i=1,m=x", "extension"),
        (b"e=other-error", "other-error"),
        (b"garbage", "malformed"),
        (b"\xff\xfe", "UTF-8"),
    ],
)
def test_bad_server_first_is_refused(message: bytes, match: str) -> None:
    c = ScramClient("pencil", nonce=NONCE)
    with pytest.raises(ScramError, match=match):
        c.server_first(message)


def test_out_of_order_steps_are_refused() -> None:
    c = ScramClient("pencil", nonce=NONCE)
    with pytest.raises(ScramError):
        c.client_final()
    with pytest.raises(ScramError):
        c.server_final(SERVER_FINAL)
    c.server_first(SERVER_FIRST)
    with pytest.raises(ScramError):
        c.server_first(SERVER_FIRST)
    with pytest.raises(ScramError):
        c.server_final(SERVER_FINAL)  # before client-final


def test_server_error_in_final_is_refused() -> None:
    c = ScramClient("pencil", nonce=NONCE)
    c.server_first(SERVER_FIRST)
    c.client_final()
    with pytest.raises(ScramError, match="invalid-proof"):
        c.server_final(b"e=invalid-proof")


def test_salted_password_is_remembered_and_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    calls = []
    real = hashlib.pbkdf2_hmac

    def counting(*args: object) -> bytes:
        calls.append(args)
        return real(*args)  # type: ignore[arg-type]

    monkeypatch.setattr(hashlib, "pbkdf2_hmac", counting)
    assert scram.cached_salted_password("pw", b"salt", 4096) is None
    first = scram.salted_password("pw", b"salt", 4096)
    assert scram.salted_password("pw", b"salt", 4096) == first
    assert scram.cached_salted_password("pw", b"salt", 4096) == first
    assert len(calls) == 1
    assert scram.salted_password("pw2", b"salt", 4096) != first  # keyed by password too
    for i in range(scram.SALTED_CACHE_SIZE + 5):
        scram.salted_password("pw", i.to_bytes(4, "big"), 1)
    assert len(scram._salted) == scram.SALTED_CACHE_SIZE
    # the table never holds the password itself
    assert all(b"pw" not in k[0] for k in scram._salted)


@pytest.mark.parametrize(
    ("password", "prepared"),
    [
        ("pencil", b"pencil"),
        ("I\u00adX", b"IX"),  # soft hyphen maps to nothing
        ("user\u00a0pw", b"user pw"),  # no-break space -> space
        ("\u2168", b"IX"),  # ROMAN NUMERAL NINE, NFKC
        ("\u00aa", b"a"),  # FEMININE ORDINAL, NFKC
        ("caf\u00e9", "caf\u00e9".encode()),
        # prohibited (control character): PostgreSQL keeps the raw bytes
        ("caf\u00e9\u0007", "caf\u00e9\u0007".encode()),
        # bidi: RandAL with L is refused -> raw bytes
        ("\u0627a\u0627", "\u0627a\u0627".encode()),
        ("\u0627\u0628", "\u0627\u0628".encode()),
        # ASCII passes as is, control characters included (pg_saslprep's fast path)
        ("a\tb", b"a\tb"),
    ],
)
def test_saslprep(password: str, prepared: bytes) -> None:
    assert scram.saslprep(password) == prepared


def test_md5_answer() -> None:
    # as libpq: md5(md5(password || user) || salt)
    salt = b"\x01\x02\x03\x04"
    inner = hashlib.md5(b"secretalice", usedforsecurity=False).hexdigest().encode()
    assert (
        scram.md5_password("secret", "alice", salt)
        == "md5" + hashlib.md5(inner + salt, usedforsecurity=False).hexdigest()
    )
    assert scram.md5_password("secret", "alice", salt).startswith("md5")
    assert len(scram.md5_password("secret", "alice", salt)) == 35


def test_verifier_matches_a_server_computed_one() -> None:
    """The proof a server derives from a stored verifier accepts our client-final."""
    password, salt, iterations = "s\u00e9cret", b"0123456789abcdef", 4096
    salted = hashlib.pbkdf2_hmac("sha256", scram.saslprep(password), salt, iterations)
    stored_key = hashlib.sha256(hmac.new(salted, b"Client Key", hashlib.sha256).digest()).digest()
    server_key = hmac.new(salted, b"Server Key", hashlib.sha256).digest()

    c = ScramClient(password)
    bare = c.client_first()[3:]
    nonce = bare.split(b"r=")[1]
    server_first = b"r=" + nonce + b"SRV,s=" + base64.b64encode(salt) + b",i=4096"
    c.server_first(server_first)
    final = c.client_final()
    without_proof, _, proof_b64 = final.rpartition(b",p=")
    auth = bare + b"," + server_first + b"," + without_proof
    client_key = bytes(
        a ^ b
        for a, b in zip(
            base64.b64decode(proof_b64),
            hmac.new(stored_key, auth, hashlib.sha256).digest(),
            strict=True,
        )
    )
    assert hashlib.sha256(client_key).digest() == stored_key
    c.server_final(b"v=" + base64.b64encode(hmac.new(server_key, auth, hashlib.sha256).digest()))
    assert c.done


def _certificate(key: object, algorithm: object) -> bytes:
    import datetime as dt

    from cryptography import x509
    from cryptography.hazmat.primitives.serialization import Encoding
    from cryptography.x509.oid import NameOID

    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "db")])
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())  # type: ignore[attr-defined]
        .serial_number(1)
        .not_valid_before(now)
        .not_valid_after(now + dt.timedelta(days=1))
        .sign(key, algorithm)  # type: ignore[arg-type]
    )
    return cert.public_bytes(Encoding.DER)


def test_tls_server_end_point_hashes_with_the_signatures_hash() -> None:
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import ec, ed25519

    ec_key = ec.generate_private_key(ec.SECP256R1())
    der = _certificate(ec_key, hashes.SHA384())
    assert scram.tls_server_end_point(der) == hashlib.sha384(der).digest()
    der = _certificate(ec_key, hashes.SHA256())
    assert scram.tls_server_end_point(der) == hashlib.sha256(der).digest()
    der = _certificate(ec_key, hashes.SHA512())
    assert scram.tls_server_end_point(der) == hashlib.sha512(der).digest()
    # (SHA-1 and MD5 signatures bind with SHA-256; this OpenSSL no longer makes them)
    # no separate hash: nothing to bind
    assert (
        scram.tls_server_end_point(_certificate(ed25519.Ed25519PrivateKey.generate(), None)) is None
    )
    assert scram.tls_server_end_point(b"not a certificate") is None


def test_choose_mechanism() -> None:
    both = ["SCRAM-SHA-256-PLUS", "SCRAM-SHA-256"]
    assert scram.choose_mechanism(both, b"cb") == ("SCRAM-SHA-256-PLUS", b"cb")
    assert scram.choose_mechanism(both, None) == ("SCRAM-SHA-256", None)
    assert scram.choose_mechanism(["SCRAM-SHA-256"], b"cb") == ("SCRAM-SHA-256", None)
    with pytest.raises(ScramError, match="none supported"):
        scram.choose_mechanism(["SCRAM-SHA-256-PLUS"], None)
    with pytest.raises(ScramError, match="none supported"):
        scram.choose_mechanism(["OAUTHBEARER"], b"cb")


def test_channel_binding_goes_into_the_proof() -> None:
    bound = ScramClient("pencil", nonce=NONCE, channel_binding=b"\x01\x02")
    assert bound.mechanism == "SCRAM-SHA-256-PLUS"
    assert bound.client_first() == b"p=tls-server-end-point,,n=,r=" + NONCE.encode()
    bound.server_first(SERVER_FIRST)
    final = bound.client_final()
    assert final.startswith(b"c=" + base64.b64encode(b"p=tls-server-end-point,,\x01\x02") + b",")
    could = ScramClient("pencil", nonce=NONCE, could_bind=True)
    assert could.client_first().startswith(b"y,,") and could.mechanism == "SCRAM-SHA-256"
    could.server_first(SERVER_FIRST)
    assert could.client_final().startswith(b"c=eSws,")  # base64("y,,")
