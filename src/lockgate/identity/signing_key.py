"""One signing key and what every key backend shares: the algorithms a key may be for
(Ed25519 ``EdDSA``, RSA ``RS256``, P-256 ``ES256``), the RFC 7638 thumbprint that names a
key (its kid), the JWK a key publishes, and :class:`KeyBackend`, what
:class:`~lockgate.identity.keys.KeyStore` asks of the place its keys are kept (files:
:mod:`lockgate.identity.key_files`; a database table: :mod:`lockgate.identity.key_table`).

A key is for exactly one algorithm: its type says which (an RSA key is only ever RS256, never
PS256 or RS512; a P-256 key only ES256), and the verifier accepts a token only when its
header names that algorithm, so no token can choose how it is checked.
"""

from __future__ import annotations

import base64
import dataclasses
import hashlib
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Protocol

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

KID_RE = re.compile(r"^[A-Za-z0-9_-]{43}\Z")  # base64url of a SHA-256 digest, no padding

#: Every algorithm a Lockgate key may be for, in the order they are listed and rotated.
ALGORITHMS = ("EdDSA", "RS256", "ES256")
DEFAULT_ALGORITHM = "EdDSA"
RSA_KEY_SIZES = (2048, 3072, 4096)
#: RSA keys below this are refused wherever they come from (RFC 7518 §3.3: 2048 at least).
MIN_RSA_BITS = 2048
#: RSA public exponents below this are refused too (NIST SP 800-56B: 65537 at least).
MIN_RSA_EXPONENT = 65537

PrivateKey = Ed25519PrivateKey | rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey
PublicKey = Ed25519PublicKey | rsa.RSAPublicKey | ec.EllipticCurvePublicKey


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _uint(value: int, length: int | None = None) -> str:
    """An unsigned big-endian integer as RFC 7518 writes it (``length``: fixed width)."""
    size = length if length is not None else max(1, (value.bit_length() + 7) // 8)
    return b64url(value.to_bytes(size, "big"))


def algorithm_of(public: PublicKey) -> str:
    """The one algorithm a public key signs for; ValueError for any other key (an RSA key
    under 2048 bits or with a small public exponent, an EC key off P-256)."""
    if isinstance(public, Ed25519PublicKey):
        return "EdDSA"
    if isinstance(public, rsa.RSAPublicKey):
        if public.key_size < MIN_RSA_BITS:
            raise ValueError(f"RSA key of {public.key_size} bits (at least {MIN_RSA_BITS})")
        exponent = public.public_numbers().e
        if exponent < MIN_RSA_EXPONENT or exponent % 2 == 0:
            # e=3 invites forgeries against relying parties that check padding loosely.
            raise ValueError(f"RSA key with public exponent {exponent} (at least 65537, odd)")
        return "RS256"
    if isinstance(public, ec.EllipticCurvePublicKey) and isinstance(public.curve, ec.SECP256R1):
        return "ES256"
    raise ValueError(f"unsupported signing key type {type(public).__name__}")


def required_members(public: PublicKey) -> dict[str, str]:
    """The JWK members RFC 7638 §3.2 hashes for the key's type (public values only)."""
    if isinstance(public, Ed25519PublicKey):
        raw = public.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
        return {"crv": "Ed25519", "kty": "OKP", "x": b64url(raw)}
    if isinstance(public, rsa.RSAPublicKey):
        numbers = public.public_numbers()
        return {"e": _uint(numbers.e), "kty": "RSA", "n": _uint(numbers.n)}
    if isinstance(public, ec.EllipticCurvePublicKey) and isinstance(public.curve, ec.SECP256R1):
        point = public.public_numbers()
        # RFC 7518 §6.2.1.2: coordinates are the full field size, leading zeros kept.
        return {"crv": "P-256", "kty": "EC", "x": _uint(point.x, 32), "y": _uint(point.y, 32)}
    raise ValueError(f"unsupported signing key type {type(public).__name__}")


def thumbprint(pub: PublicKey) -> str:
    """RFC 7638 JWK thumbprint: SHA-256 over the required members in lexicographic order."""
    canonical = json.dumps(required_members(pub), separators=(",", ":"), sort_keys=True)
    return b64url(hashlib.sha256(canonical.encode("ascii")).digest())


@dataclass(frozen=True, slots=True)
class SigningKey:
    kid: str
    private: PrivateKey
    public: PublicKey
    created: float
    retire_at: float | None  # None: current (or not yet scheduled for retirement)
    activate_at: float | None = None  # signs from then on; None: from ``created``
    alg: str = DEFAULT_ALGORITHM

    @property
    def signs_from(self) -> float:
        return self.created if self.activate_at is None else self.activate_at

    @property
    def signature_length(self) -> int:
        """Bytes of every signature this key makes (JWS: ES256 is raw r||s, never DER)."""
        if isinstance(self.public, rsa.RSAPublicKey):
            return (self.public.key_size + 7) // 8
        return 64  # Ed25519, and P-256's two 32-byte integers

    def jwk(self) -> dict[str, str]:
        """The public JWK (RFC 7517/7518): never a private member (d, p, q, dp, dq, qi)."""
        return {**required_members(self.public), "kid": self.kid, "alg": self.alg, "use": "sig"}


def load_private(private: object, kid: str, alg: str) -> SigningKey:
    """A stored private key as a :class:`SigningKey` of ``alg`` named ``kid`` (times unset),
    or ValueError when its type is not ``alg``'s or its thumbprint is not ``kid``: storage
    cannot publish one key under another key's name or algorithm."""
    if not isinstance(private, Ed25519PrivateKey | rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey):
        raise ValueError("not a signing key")
    public = private.public_key()
    if algorithm_of(public) != alg:
        raise ValueError(f"key is not an {alg} key")
    if thumbprint(public) != kid:
        raise ValueError("key does not match its kid")
    return SigningKey(kid, private, public, 0.0, None, None, alg)


class KeyBackend(Protocol):
    """Where a :class:`KeyStore` keeps its keys. ``known`` maps kid to the keys already in
    memory so a reload reuses their private halves instead of reading them again."""

    #: True when other machines share the keys: reload in a worker thread, never inline.
    shared: bool

    def open(self, now: float, algorithms: tuple[str, ...]) -> dict[str, SigningKey]:
        """The stored keys, creating the first key of each of ``algorithms`` that has none
        (exactly one each, however many start)."""
        ...

    def moved(self) -> bool:
        """Cheap: whether the stored keys may differ from the last load."""
        ...

    def load(self, known: dict[str, SigningKey]) -> dict[str, SigningKey]: ...

    def rotate(
        self,
        known: dict[str, SigningKey],
        now: float,
        retire_after: float,
        delays: Mapping[str, float],
    ) -> tuple[list[SigningKey], dict[str, SigningKey]]:
        """For each algorithm of ``delays``, add a key signing from ``now + delay``; keys of
        that algorithm not yet retiring retire ``retire_after`` s after that. Returns the
        new keys and the stored set."""
        ...

    def retire(
        self, known: dict[str, SigningKey], now: float, alg: str, at: float
    ) -> tuple[list[SigningKey], dict[str, SigningKey]]:
        """Every stored key of ``alg`` retires at ``at`` at the latest (under the same lock
        as a rotation; keys whose time is over are deleted). Returns the keys of ``alg``
        with their retirement times, and the stored set."""
        ...

    def problem(self, current: SigningKey) -> str | None:
        """Why a restart would not find ``current`` again, or None."""
        ...


def generate_key(
    alg: str, now: float, activate_at: float | None = None, *, rsa_key_size: int = 2048
) -> SigningKey:
    """A fresh key of ``alg`` created at ``now``."""
    private: PrivateKey
    if alg == "EdDSA":
        private = Ed25519PrivateKey.generate()
    elif alg == "RS256":
        if rsa_key_size not in RSA_KEY_SIZES:
            raise ValueError(f"rsa_key_size must be one of {RSA_KEY_SIZES}")
        private = rsa.generate_private_key(public_exponent=65537, key_size=rsa_key_size)
    elif alg == "ES256":
        private = ec.generate_private_key(ec.SECP256R1())
    else:
        raise ValueError(f"unsupported signing algorithm {alg!r} (one of {ALGORITHMS})")
    public = private.public_key()
    return SigningKey(thumbprint(public), private, public, now, None, activate_at, alg)


def with_retire_at(key: SigningKey, retire_at: float | None) -> SigningKey:
    if key.retire_at == retire_at:
        return key
    return dataclasses.replace(key, retire_at=retire_at)


def retiring_by(key: SigningKey, at: float) -> SigningKey:
    """``key`` retiring at ``at`` at the latest: a rotation only ever brings a retirement
    forward, so an emergency one (``retire_after=0``) ends every older key at once, also
    those an earlier rotation had left published for a while."""
    if key.retire_at is not None and key.retire_at <= at:
        return key
    return with_retire_at(key, at)


def retiring_all_by(keys: Mapping[str, SigningKey], alg: str, at: float) -> dict[str, SigningKey]:
    """kid -> key for every key of ``alg`` in ``keys``, each retiring at ``at`` at the latest
    (:func:`retiring_by`: a key already retiring sooner keeps its time)."""
    return {kid: retiring_by(key, at) for kid, key in keys.items() if key.alg == alg}


def kept_algorithms(keys: Mapping[str, SigningKey]) -> set[str]:
    """The algorithms some key is kept for: those with a key not scheduled to retire. A
    rotation leaves its new key so; ``lockgate keys retire`` schedules every key of an
    algorithm, which withdraws it (no longer rotated, gone from the JWKS once retired)."""
    return {key.alg for key in keys.values() if key.retire_at is None}


def newest_per_algorithm(keys: Mapping[str, SigningKey]) -> dict[str, str]:
    """alg -> kid of the key of that algorithm that signs last (stored order breaks ties)."""
    newest: dict[str, tuple[float, float, int, str]] = {}
    for i, key in enumerate(keys.values()):
        rank = (key.signs_from, key.created, i, key.kid)
        if key.alg not in newest or rank > newest[key.alg]:
            newest[key.alg] = rank
    return {alg: rank[3] for alg, rank in newest.items()}
