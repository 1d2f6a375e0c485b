"""Ed25519 signing keys for Lockgate tokens, rotated with an overlap.

:class:`KeyStore` holds the key set in memory (the data path never reads storage) over one
of two backends: files under ``data_dir/keys`` (SQLite state, one machine; this module) or
the ``signing_keys`` table of the shared database (PostgreSQL state, every replica;
:mod:`lockgate.identity.key_table`).

File layout under ``data_dir/keys/`` (directory 0700, files 0600)::

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

Shared keys publish first and sign later: a rotated key is published (JWKS, accepted by
verifiers) at once but becomes the signing key only ``activation_delay`` seconds later, by
when every replica has loaded it, so a token it signs is never unknown anywhere. Reloads
then follow the ``keys`` change version and run in a worker thread: never on the data path.
"""

from __future__ import annotations

import base64
import contextlib
import dataclasses
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
from typing import Any, Protocol

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from lockgate import _log
from lockgate.errors import ConfigError, LockgateError
from lockgate.store import Database, PostgresDatabase

KID_RE = re.compile(r"^[A-Za-z0-9_-]{43}\Z")  # base64url of a SHA-256 digest, no padding
_INDEX = "index.json"
#: Publish-to-sign delay of shared keys, at least: past two catch-up polls (1 s by default)
#: plus a 1 s tick, so a lost notification still leaves every replica time to load the key.
SHARED_ACTIVATION_DELAY = 3.0

log = _log.get("identity")


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


class KeyStore:
    """Signing keys of this Lockgate installation; thread-safe, multi-process aware.

    ``source``: the data directory (keys as files) or a shared :class:`Database` (keys in
    its ``signing_keys`` table, private halves encrypted under ``master_key``)."""

    def __init__(
        self,
        source: Path | Database,
        *,
        master_key: bytes | None = None,
        clock: Callable[[], float] = time.time,
        activation_delay: float | None = None,
        migrate_schema: bool = True,
    ) -> None:
        self._clock = clock
        self._mutex = threading.Lock()
        self._backend: KeyBackend
        if isinstance(source, Path | str):
            self.dir: Path | None = Path(source) / "keys"
            self._backend = KeyFiles(self.dir)
        else:
            from lockgate.identity.key_table import KeyTable  # its schema registers on import

            if master_key is None:
                raise ConfigError("signing keys in a database need the master key")
            self.dir = None
            self._backend = KeyTable(source, master_key, migrate_schema=migrate_schema)
        if activation_delay is None:
            activation_delay = _default_activation_delay(source) if self._backend.shared else 0.0
        self.activation_delay = activation_delay
        self._last_reload = float("-inf")
        # Apart from _mutex, which a reload holds across its query: the data path only ever
        # takes this one, to start a background reload.
        self._spawn = threading.Lock()
        self._reloading: threading.Thread | None = None
        #: Moves whenever the key set or a retirement changes (rotate, a reload that read a
        #: new index): a verifier's cached verdicts are only good for one value of it.
        self.changes = 0
        with self._mutex:
            self._keys: dict[str, SigningKey] = self._backend.open(clock())
            self.changes += 1

    # -- public API ---------------------------------------------------------------------------
    def current(self) -> SigningKey:
        """The signing key: the newest one whose activation time has come."""
        self._follow()
        now = self._clock()
        # Stored order breaks ties: a key rotated in within the same clock tick comes later.
        keys = list(self._keys.values())
        live = [i for i, k in enumerate(keys) if not self._retired(k, now)]
        active = [i for i in live if keys[i].signs_from <= now]
        if active:
            return keys[max(active, key=lambda i: (keys[i].signs_from, keys[i].created, i))]
        # None active yet (a clock behind the rotating replica's): the soonest, else newest.
        if live:
            return keys[min(live, key=lambda i: (keys[i].signs_from, -i))]
        return keys[-1]

    def public_key(self, kid: str) -> Ed25519PublicKey | None:
        """The published key for ``kid``, or ``None`` if unknown or retired."""
        self._follow()
        key = self._keys.get(kid)
        if key is None or self._retired(key, self._clock()):
            return None
        return key.public

    def next_retirement(self) -> float:
        """When the next published key retires (``inf``: none is scheduled)."""
        return min(
            (k.retire_at for k in self.published() if k.retire_at is not None),
            default=float("inf"),
        )

    def published(self) -> list[SigningKey]:
        now = self._clock()
        return [k for k in self._keys.values() if not self._retired(k, now)]

    def jwks(self) -> dict[str, Any]:
        return {"keys": [k.jwk() for k in self.published()]}

    def rotate(self, retire_after: int) -> SigningKey:
        """Add a fresh key; it signs after :attr:`activation_delay` (at once for files).
        Older keys retire ``retire_after`` s after that.

        ``retire_after=0`` is the emergency switch (a leaked key): the new key signs and the
        old ones stop at once, even on shared keys, where another replica may then refuse a
        new token until it has loaded the new key (well under a second)."""
        if retire_after < 0:
            raise ValueError("retire_after must be >= 0")
        delay = self.activation_delay if retire_after > 0 else 0.0
        with self._mutex:
            new, keys = self._backend.rotate(self._keys, self._clock(), retire_after, delay)
            self._keys = keys
            self.changes += 1
        return new

    def reload(self) -> bool:
        """Re-read the stored keys if they changed. Returns True if it did (blocking: with
        shared keys, call it off the event loop)."""
        with self._mutex:
            self._last_reload = time.monotonic()
            if not self._backend.moved():
                return False
            self._keys = self._backend.load(self._keys)
            self.changes += 1
        return True

    def maybe_reload(self, min_interval: float = 1.0) -> bool:
        """:meth:`reload`, but at most once per ``min_interval`` seconds (unknown-kid path).

        Shared keys: when their version moved, a worker thread reloads and this returns
        False at once (the data path never waits on the database)."""
        if self._backend.shared:
            self._follow()
            return False
        if time.monotonic() - self._last_reload < min_interval:
            return False
        return self.reload()

    def reload_pending(self) -> bool:
        """Cheap: whether the stored keys moved since the last load."""
        return self._backend.moved()

    def storage_problem(self) -> str | None:
        """Why a restart would not sign with today's current key (a file gone), or None."""
        return self._backend.problem(self.current())

    # -- internals ----------------------------------------------------------------------------
    @staticmethod
    def _retired(key: SigningKey, now: float) -> bool:
        return key.retire_at is not None and now >= key.retire_at

    def _follow(self) -> None:
        """Shared keys: start one background reload when their version moved (a memory
        read; files are followed by :meth:`maybe_reload` instead)."""
        if not self._backend.shared or not self._backend.moved():
            return
        with self._spawn:
            if self._reloading is not None and self._reloading.is_alive():
                return
            self._reloading = threading.Thread(
                target=self._reload_logged, name="lockgate-keys-reload", daemon=True
            )
            self._reloading.start()

    def _reload_logged(self) -> None:
        try:
            self.reload()
        except LockgateError as exc:
            # Keep serving the keys in memory; the staleness bound refuses past it.
            log.warning("signing keys not reloaded", extra={"fields": {"error": str(exc)}})


class KeyFiles:
    """Keys as files under ``data_dir/keys`` (the module docstring's layout)."""

    shared = False

    def __init__(self, directory: Path) -> None:
        self.dir = directory
        self._mutex = threading.Lock()
        self._index_stamp: tuple[int, int] | None = None

    def open(self, now: float) -> dict[str, SigningKey]:
        self.dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        os.chmod(self.dir, 0o700)  # mkdir honours umask; be explicit
        with self._locked():
            if (self.dir / _INDEX).exists():
                return self._read_index({})
            first = _generate(now)
            self._write_pem(first)
            keys = {first.kid: first}
            self._write_index(keys, first.kid)
            return keys

    def moved(self) -> bool:
        return self._stamp() != self._index_stamp

    def load(self, known: dict[str, SigningKey]) -> dict[str, SigningKey]:
        with self._locked():
            return self._read_index(known)

    def rotate(
        self, known: dict[str, SigningKey], now: float, retire_after: float, delay: float
    ) -> tuple[SigningKey, dict[str, SigningKey]]:
        with self._locked():
            keys = self._read_index(known)  # another process may have rotated since
            new = _generate(now, activate_at=now + delay if delay else None)
            self._write_pem(new)
            for kid, key in list(keys.items()):
                if key.retire_at is None:
                    keys[kid] = _replace_retire(key, new.signs_from + retire_after)
            keys[new.kid] = new
            self._prune(keys, new.kid, now)
            self._write_index(keys, new.kid)
            return new, keys

    def problem(self, current: SigningKey) -> str | None:
        for path in (self.dir / _INDEX, self.dir / f"{current.kid}.pem"):
            if not path.is_file():
                return f"{path} is missing (a restart would mint with a new key)"
        return None

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

    def _read_index(self, known: dict[str, SigningKey]) -> dict[str, SigningKey]:
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
            old = known.get(kid)
            if old is None:
                private = self._read_pem(kid)
                created = float(entry.get("created") or 0)
                activate = entry.get("activate_at")
                old = SigningKey(
                    kid, private, private.public_key(), created, None,
                    None if activate is None else float(activate),
                )  # fmt: skip
            keys[kid] = _replace_retire(old, entry.get("retire_at"))
        if current not in keys:
            raise ConfigError(f"{path}: current kid is not in the key index")
        self._index_stamp = stamp
        return keys

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

    def _write_index(self, keys: dict[str, SigningKey], current: str) -> None:
        entries: list[dict[str, object]] = []
        for k in keys.values():
            entry: dict[str, object] = {
                "kid": k.kid,
                "created": k.created,
                "retire_at": k.retire_at,
            }
            if k.activate_at is not None:
                entry["activate_at"] = k.activate_at
            entries.append(entry)
        index = {"current": current, "keys": entries}
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

    def _prune(self, keys: dict[str, SigningKey], current: str, now: float) -> None:
        """Forget keys whose retirement time has passed and delete their private halves."""
        for kid, key in list(keys.items()):
            if kid != current and key.retire_at is not None and now >= key.retire_at:
                del keys[kid]
                with contextlib.suppress(FileNotFoundError):
                    (self.dir / f"{kid}.pem").unlink()


def _default_activation_delay(db: Path | Database) -> float:
    settings = db.settings if isinstance(db, PostgresDatabase) else None
    poll = settings.catch_up_interval if settings is not None else 1.0
    return max(SHARED_ACTIVATION_DELAY, 2 * poll + 1)


def _generate(now: float, activate_at: float | None = None) -> SigningKey:
    private = Ed25519PrivateKey.generate()
    public = private.public_key()
    return SigningKey(thumbprint(public), private, public, now, None, activate_at)


def _replace_retire(key: SigningKey, retire_at: float | None) -> SigningKey:
    if key.retire_at == retire_at:
        return key
    return dataclasses.replace(key, retire_at=retire_at)
