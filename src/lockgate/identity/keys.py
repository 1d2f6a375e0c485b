"""Ed25519 signing keys for Lockgate tokens, kept on disk and rotated with an overlap.

Layout under ``data_dir/keys/`` (directory 0700, files 0600)::

    index.json          {"current": kid, "keys": [{"kid", "created", "retire_at"}]}
    <kid>.pem           PKCS#8 private key, one per kid
    .lock               flock target so two processes never rotate at once

Rules:

- A kid is the RFC 7638 thumbprint of the public key. Files are named from the index, and
  the thumbprint of each loaded key is recomputed and must equal its kid, so a tampered
  index cannot make us publish one key under another key's name.
- Token headers never reach the file system: :meth:`public_key` is a dict lookup.
- :meth:`rotate` makes a new key current and gives the old one a ``retire_at``; until then
  it stays in the JWKS because tokens it signed may still be valid.
- Another process (``lockgate keys rotate``) may rotate; :meth:`reload` re-reads the index
  and :meth:`maybe_reload` does so at most once per ``min_interval`` seconds.
"""

from __future__ import annotations

import base64
import contextlib
import fcntl
import hashlib
import json
import os
import re
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from lockgate.errors import ConfigError

KID_RE = re.compile(r"^[A-Za-z0-9_-]{43}\Z")  # base64url of a SHA-256 digest, no padding
_INDEX = "index.json"


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

    def jwk(self) -> dict[str, str]:
        return {
            "kty": "OKP",
            "crv": "Ed25519",
            "x": b64url(_raw_public(self.public)),
            "kid": self.kid,
            "alg": "EdDSA",
            "use": "sig",
        }


class KeyStore:
    """Signing keys of this Lockgate installation; thread-safe, multi-process aware."""

    def __init__(self, data_dir: Path, *, clock: Callable[[], float] = time.time) -> None:
        self.dir = Path(data_dir) / "keys"
        self._clock = clock
        self._mutex = threading.Lock()
        self._keys: dict[str, SigningKey] = {}
        self._current: str | None = None
        self._index_stamp: tuple[int, int] | None = None
        self._last_reload = float("-inf")
        #: Moves whenever the key set or a retirement changes (rotate, a reload that read a
        #: new index): a verifier's cached verdicts are only good for one value of it.
        self.changes = 0
        self._load_or_create()

    # -- public API ---------------------------------------------------------------------------
    def current(self) -> SigningKey:
        assert self._current is not None  # set by _load_or_create
        return self._keys[self._current]

    def public_key(self, kid: str) -> Ed25519PublicKey | None:
        """The published key for ``kid``, or ``None`` if unknown or retired."""
        key = self._keys.get(kid)
        if key is None or self._retired(key):
            return None
        return key.public

    def next_retirement(self) -> float:
        """When the next published key retires (``inf``: none is scheduled)."""
        return min(
            (k.retire_at for k in self.published() if k.retire_at is not None),
            default=float("inf"),
        )

    def published(self) -> list[SigningKey]:
        return [k for k in self._keys.values() if not self._retired(k)]

    def jwks(self) -> dict[str, Any]:
        return {"keys": [k.jwk() for k in self.published()]}

    def rotate(self, retire_after: int) -> SigningKey:
        """Add a fresh key and make it current; older keys retire ``retire_after`` s from now."""
        if retire_after < 0:
            raise ValueError("retire_after must be >= 0")
        with self._locked():
            self._read_index()  # another process may have rotated since we last looked
            now = self._clock()
            new = _generate(now)
            self._write_pem(new)
            for kid, key in list(self._keys.items()):
                if key.retire_at is None:
                    self._keys[kid] = _replace_retire(key, now + retire_after)
            self._keys[new.kid] = new
            self._current = new.kid
            self._prune(now)
            self._write_index()
            self.changes += 1
            return new

    def reload(self) -> bool:
        """Re-read the index if it changed on disk. Returns True if it did."""
        with self._mutex:
            self._last_reload = time.monotonic()
            stamp = self._stamp()
            if stamp == self._index_stamp:
                return False
        with self._locked():
            self._read_index()
        return True

    def maybe_reload(self, min_interval: float = 1.0) -> bool:
        """:meth:`reload`, but at most once per ``min_interval`` seconds (unknown-kid path)."""
        if time.monotonic() - self._last_reload < min_interval:
            return False
        return self.reload()

    # -- internals ----------------------------------------------------------------------------
    def _retired(self, key: SigningKey) -> bool:
        return key.retire_at is not None and self._clock() >= key.retire_at

    def _load_or_create(self) -> None:
        self.dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        os.chmod(self.dir, 0o700)  # mkdir honours umask; be explicit
        with self._locked():
            if (self.dir / _INDEX).exists():
                self._read_index()
            else:
                first = _generate(self._clock())
                self._write_pem(first)
                self._keys = {first.kid: first}
                self._current = first.kid
                self._write_index()

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        # flock serialises processes; the mutex serialises threads of this process.
        with self._mutex:
            fd = os.open(self.dir / ".lock", os.O_RDWR | os.O_CREAT, 0o600)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX)
                yield
            finally:
                fcntl.flock(fd, fcntl.LOCK_UN)
                os.close(fd)

    def _stamp(self) -> tuple[int, int] | None:
        try:
            st = (self.dir / _INDEX).stat()
        except FileNotFoundError:
            return None
        return (st.st_mtime_ns, st.st_ino)

    def _read_index(self) -> None:
        path = self.dir / _INDEX
        try:
            stamp = self._stamp()
            index = json.loads(path.read_text(encoding="utf-8"))
            current = index["current"]
            entries = index["keys"]
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise ConfigError(f"{path}: unreadable key index ({type(exc).__name__})") from None
        keys: dict[str, SigningKey] = {}
        for entry in entries:
            kid = entry.get("kid") if isinstance(entry, dict) else None
            if not isinstance(kid, str) or not KID_RE.match(kid):
                raise ConfigError(f"{path}: invalid kid in key index")
            old = self._keys.get(kid)
            if old is None:
                private = self._read_pem(kid)
                created = float(entry.get("created") or 0)
                old = SigningKey(kid, private, private.public_key(), created, None)
            keys[kid] = _replace_retire(old, entry.get("retire_at"))
        if current not in keys:
            raise ConfigError(f"{path}: current kid is not in the key index")
        self._keys, self._current, self._index_stamp = keys, current, stamp
        self.changes += 1

    def _read_pem(self, kid: str) -> Ed25519PrivateKey:
        path = self.dir / f"{kid}.pem"
        try:
            key = serialization.load_pem_private_key(path.read_bytes(), password=None)
        except (OSError, ValueError) as exc:
            raise ConfigError(f"{path}: unreadable signing key ({type(exc).__name__})") from None
        if not isinstance(key, Ed25519PrivateKey) or thumbprint(key.public_key()) != kid:
            raise ConfigError(f"{path}: key does not match its kid")
        return key

    def _write_pem(self, key: SigningKey) -> None:
        pem = key.private.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
        self._atomic_write(self.dir / f"{key.kid}.pem", pem)

    def _write_index(self) -> None:
        index = {
            "current": self._current,
            "keys": [
                {"kid": k.kid, "created": k.created, "retire_at": k.retire_at}
                for k in self._keys.values()
            ],
        }
        self._atomic_write(self.dir / _INDEX, json.dumps(index, indent=2).encode())
        self._index_stamp = self._stamp()

    def _atomic_write(self, path: Path, data: bytes) -> None:
        # mkstemp creates the file 0600; rename makes readers see old or new, never half.
        fd, tmp = tempfile.mkstemp(dir=self.dir, prefix=".tmp-")
        try:
            with os.fdopen(fd, "wb") as fh:
                fh.write(data)
                fh.flush()
                os.fsync(fh.fileno())
            os.replace(tmp, path)
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
            raise

    def _prune(self, now: float) -> None:
        """Forget keys whose retirement time has passed and delete their private halves."""
        for kid, key in list(self._keys.items()):
            if kid != self._current and key.retire_at is not None and now >= key.retire_at:
                del self._keys[kid]
                with contextlib.suppress(FileNotFoundError):
                    (self.dir / f"{kid}.pem").unlink()


def _generate(now: float) -> SigningKey:
    private = Ed25519PrivateKey.generate()
    public = private.public_key()
    return SigningKey(thumbprint(public), private, public, now, None)


def _replace_retire(key: SigningKey, retire_at: float | None) -> SigningKey:
    if key.retire_at == retire_at:
        return key
    return SigningKey(key.kid, key.private, key.public, key.created, retire_at)
