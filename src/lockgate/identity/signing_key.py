"""One Ed25519 signing key and what every key backend shares: the RFC 7638 thumbprint that
names a key (its kid), the JWK a key publishes, and :class:`KeyBackend`, what
:class:`~lockgate.identity.keys.KeyStore` asks of the place its keys are kept (files:
:mod:`lockgate.identity.key_files`; a database table: :mod:`lockgate.identity.key_table`).
"""

from __future__ import annotations

import base64
import dataclasses
import hashlib
import json
import re
from dataclasses import dataclass
from typing import Protocol

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

KID_RE = re.compile(r"^[A-Za-z0-9_-]{43}\Z")  # base64url of a SHA-256 digest, no padding


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _raw_public(pub: Ed25519PublicKey) -> bytes:
    return pub.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


def thumbprint(pub: Ed25519PublicKey) -> str:
    """RFC 7638 JWK thumbprint: SHA-256 over the required members in lexicographic order."""
    canonical = json.dumps(
        {"crv": "Ed25519", "kty": "OKP", "x": b64url(_raw_public(pub))},
        separators=(",", ":"),
        sort_keys=True,
    )
    return b64url(hashlib.sha256(canonical.encode("ascii")).digest())


@dataclass(frozen=True, slots=True)
class SigningKey:
    kid: str
    private: Ed25519PrivateKey
    public: Ed25519PublicKey
    created: float
    retire_at: float | None  # None: current (or not yet scheduled for retirement)
    activate_at: float | None = None  # signs from then on; None: from ``created``

    @property
    def signs_from(self) -> float:
        return self.created if self.activate_at is None else self.activate_at

    def jwk(self) -> dict[str, str]:
        return {
            "kty": "OKP",
            "crv": "Ed25519",
            "x": b64url(_raw_public(self.public)),
            "kid": self.kid,
            "alg": "EdDSA",
            "use": "sig",
        }


class KeyBackend(Protocol):
    """Where a :class:`KeyStore` keeps its keys. ``known`` maps kid to the keys already in
    memory so a reload reuses their private halves instead of reading them again."""

    #: True when other machines share the keys: reload in a worker thread, never inline.
    shared: bool

    def open(self, now: float) -> dict[str, SigningKey]:
        """The stored keys, creating the first one (exactly one, however many start)."""
        ...

    def moved(self) -> bool:
        """Cheap: whether the stored keys may differ from the last load."""
        ...

    def load(self, known: dict[str, SigningKey]) -> dict[str, SigningKey]: ...

    def rotate(
        self, known: dict[str, SigningKey], now: float, retire_after: float, delay: float
    ) -> tuple[SigningKey, dict[str, SigningKey]]:
        """Add a key signing from ``now + delay``; keys not yet retiring retire
        ``retire_after`` s after that. Returns the new key and the stored set."""
        ...

    def problem(self, current: SigningKey) -> str | None:
        """Why a restart would not find ``current`` again, or None."""
        ...


def generate_key(now: float, activate_at: float | None = None) -> SigningKey:
    private = Ed25519PrivateKey.generate()
    public = private.public_key()
    return SigningKey(thumbprint(public), private, public, now, None, activate_at)


def with_retire_at(key: SigningKey, retire_at: float | None) -> SigningKey:
    if key.retire_at == retire_at:
        return key
    return dataclasses.replace(key, retire_at=retire_at)
