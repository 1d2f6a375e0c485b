"""Ed25519 signing keys for Lockgate tokens, rotated with an overlap.

:class:`KeyStore` holds the key set in memory (the data path never reads storage) over one
of two backends: files under ``data_dir/keys`` (SQLite state, one machine;
:mod:`lockgate.identity.key_files`) or the ``signing_keys`` table of the shared database
(PostgreSQL state, every replica; :mod:`lockgate.identity.key_table`).

Rules:

- A kid is the RFC 7638 thumbprint of the public key (:mod:`lockgate.identity.signing_key`);
  every backend recomputes it from each key it loads and refuses a mismatch, so tampered
  storage cannot make us publish one key under another key's name.
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

import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from lockgate import _log
from lockgate.errors import ConfigError, LockgateError
from lockgate.identity.key_files import KeyFiles
from lockgate.identity.key_table import KeyTable
from lockgate.identity.signing_key import KID_RE, KeyBackend, SigningKey, b64url, thumbprint
from lockgate.store import Database, PostgresDatabase

#: Publish-to-sign delay of shared keys, at least: past two catch-up polls (1 s by default)
#: plus a 1 s tick, so a lost notification still leaves every replica time to load the key.
SHARED_ACTIVATION_DELAY = 3.0
_RETRY_AFTER_FAILURE = 1.0  # seconds between background reloads while the database is away

log = _log.get("identity")


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
        migrate_schema: bool | None = None,
    ) -> None:
        self._clock = clock
        self._mutex = threading.Lock()
        self._backend: KeyBackend
        if isinstance(source, Path | str):
            self.dir: Path | None = Path(source) / "keys"
            self._backend = KeyFiles(self.dir)
        else:
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
        self._retry_at = 0.0  # time.monotonic() before which a failed reload is not retried
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
        if time.monotonic() < self._retry_at:
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
            # Keep serving the keys in memory (the staleness bound refuses past it) and let
            # the next attempt wait a little: an outage is not retried per lookup.
            self._retry_at = time.monotonic() + _RETRY_AFTER_FAILURE
            log.warning("signing keys not reloaded", extra={"fields": {"error": str(exc)}})


def _default_activation_delay(db: Path | Database) -> float:
    settings = db.settings if isinstance(db, PostgresDatabase) else None
    poll = settings.catch_up_interval if settings is not None else 1.0
    return max(SHARED_ACTIVATION_DELAY, 2 * poll + 1)


__all__ = [
    "KID_RE",
    "SHARED_ACTIVATION_DELAY",
    "KeyBackend",
    "KeyStore",
    "SigningKey",
    "b64url",
    "thumbprint",
]
