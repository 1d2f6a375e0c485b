"""Signing keys for Lockgate tokens and assertions (Ed25519, RSA, P-256), rotated with an
overlap.

:class:`KeyStore` holds the key set in memory (the data path never reads storage) over one
of two backends: files under ``data_dir/keys`` (SQLite state, one machine;
:mod:`lockgate.identity.key_files`) or the ``signing_keys`` table of the shared database
(PostgreSQL state, every replica; :mod:`lockgate.identity.key_table`).

Rules:

- A kid is the RFC 7638 thumbprint of the public key (:mod:`lockgate.identity.signing_key`);
  every backend recomputes it from each key it loads and refuses a mismatch, so tampered
  storage cannot make us publish one key under another key's name.
- Token headers never reach the file system: :meth:`public_key` is a dict lookup.
- Each algorithm in use (``algorithms``, plus any with a stored key not retiring) has its
  own current key: :meth:`current` ``(alg)``, :meth:`sign` ``(claims, alg)``. The JWKS
  lists every published key of every algorithm, each with its ``alg``; a verifier accepts
  a key only for that alg.
- :meth:`rotate` makes a new key current and gives the old one a ``retire_at``; until then
  it stays in the JWKS because tokens it signed may still be valid. It rotates every
  algorithm in use, or those named; a rotation of one retires only that one's older keys.
- :meth:`retire` withdraws an algorithm the configuration no longer needs (never EdDSA):
  every key of it retires (at once, for a leaked key, or after an overlap), :meth:`rotate`
  stops rotating it and the JWKS stops listing each key when it retires; otherwise its
  stored key would stay published, and rotated, for as long as clouds may trust it.
- Another process (``lockgate keys rotate``) may rotate; :meth:`reload` re-reads the index
  and :meth:`maybe_reload` does so at most once per ``min_interval`` seconds.

Shared keys publish first and sign later: a rotated key is published (JWKS, accepted by
verifiers) at once but becomes the signing key only ``activation_delay`` seconds later, by
when every replica has loaded it, so a token it signs is never unknown anywhere. Reloads
then follow the ``keys`` change version and run in a worker thread: never on the data path.

RS256 and ES256 keys are for clouds that trust Lockgate as an OIDC issuer (Entra ID,
Databricks), which cache its JWKS for minutes: a rotated key of those is published
``publish_ahead`` seconds before it signs (or the activation delay, if longer), so no cloud
meets an assertion signed with a key its cached JWKS lacks. ``retire_after=0`` (a leaked
key) still switches at once.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

import jwt

from lockgate import _log
from lockgate.errors import ConfigError, LockgateError
from lockgate.identity.key_files import KeyFiles
from lockgate.identity.key_table import KeyTable
from lockgate.identity.signing_key import (
    ALGORITHMS,
    DEFAULT_ALGORITHM,
    KID_RE,
    KeyBackend,
    PublicKey,
    SigningKey,
    b64url,
    kept_algorithms,
    thumbprint,
)
from lockgate.store import Database, PostgresDatabase

#: Publish-to-sign delay of shared keys, at least: past two catch-up polls (1 s by default)
#: plus a 1 s tick, so a lost notification still leaves every replica time to load the key.
SHARED_ACTIVATION_DELAY = 3.0
_RETRY_AFTER_FAILURE = 1.0  # seconds between background reloads while the database is away

log = _log.get("identity")


class KeyStore:
    """Signing keys of this Lockgate installation; thread-safe, multi-process aware.

    ``source``: the data directory (keys as files) or a shared :class:`Database` (keys in
    its ``signing_keys`` table, private halves encrypted under ``master_key``).
    ``algorithms``: those a key is kept for (the first of each is created on open);
    ``publish_ahead``: seconds a rotated RS256/ES256 key is published before it signs;
    ``check_clock``: refuse to rotate shared keys on a clock off PostgreSQL's (default: when
    ``clock`` is the real one)."""

    def __init__(
        self,
        source: Path | Database,
        *,
        algorithms: Sequence[str] = (DEFAULT_ALGORITHM,),
        rsa_key_size: int = 2048,
        publish_ahead: float = 0.0,
        master_key: bytes | None = None,
        clock: Callable[[], float] = time.time,
        activation_delay: float | None = None,
        migrate_schema: bool | None = None,
        check_clock: bool | None = None,
    ) -> None:
        unknown = [alg for alg in algorithms if alg not in ALGORITHMS]
        if unknown or not algorithms:
            raise ConfigError(
                f"signing algorithms {unknown or '[]'}: expected some of {ALGORITHMS}"
            )
        self.algorithms = tuple(alg for alg in ALGORITHMS if alg in algorithms)
        self._clock = clock
        self._mutex = threading.Lock()
        self._backend: KeyBackend
        if isinstance(source, Path | str):
            self.dir: Path | None = Path(source) / "keys"
            self._backend = KeyFiles(self.dir, rsa_key_size=rsa_key_size)
        else:
            if master_key is None:
                raise ConfigError("signing keys in a database need the master key")
            self.dir = None
            self._backend = KeyTable(
                source, master_key, migrate_schema=migrate_schema, rsa_key_size=rsa_key_size,
                # the real clock is checked against PostgreSQL's; a test's clock is its own
                check_clock=clock is time.time if check_clock is None else check_clock,
            )  # fmt: skip
        if activation_delay is None:
            activation_delay = _default_activation_delay(source) if self._backend.shared else 0.0
        self.activation_delay = activation_delay
        self.publish_ahead = publish_ahead
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
            self._keys: dict[str, SigningKey] = self._backend.open(clock(), self.algorithms)
            self.changes += 1

    # -- public API ---------------------------------------------------------------------------
    def current(self, alg: str = DEFAULT_ALGORITHM) -> SigningKey:
        """The signing key of ``alg``: the newest one whose activation time has come.
        ValueError when no key of ``alg`` is kept."""
        self._follow()
        now = self._clock()
        # Stored order breaks ties: a key rotated in within the same clock tick comes later.
        keys = [k for k in self._keys.values() if k.alg == alg]
        if not keys:
            raise ValueError(f"no {alg} signing key (signing.algorithms does not name it)")
        live = [i for i, k in enumerate(keys) if not self._retired(k, now)]
        active = [i for i in live if keys[i].signs_from <= now]
        if active:
            return keys[max(active, key=lambda i: (keys[i].signs_from, keys[i].created, i))]
        # None active yet (a clock behind the rotating replica's): the soonest, else newest.
        if live:
            return keys[min(live, key=lambda i: (keys[i].signs_from, -i))]
        # Every key retired (``lockgate keys retire``): none is published, so none may sign.
        raise ValueError(f"every {alg} signing key is retired (lockgate keys retire)")

    def key(self, kid: str) -> SigningKey | None:
        """The published key named ``kid`` (any algorithm), or ``None`` if unknown or
        retired: a dict lookup, the verifier's only way to a key."""
        self._follow()
        key = self._keys.get(kid)
        if key is None or self._retired(key, self._clock()):
            return None
        return key

    def public_key(self, kid: str) -> PublicKey | None:
        """The published key for ``kid``, or ``None`` if unknown or retired."""
        key = self.key(kid)
        return None if key is None else key.public

    def sign(self, claims: dict[str, Any], alg: str) -> str:
        """``claims`` as a compact JWS signed with the current ``alg`` key, header
        ``{alg, kid, typ: JWT}``. ValueError for an algorithm with no key."""
        key = self.current(alg)
        return jwt.encode(
            claims, key.private, algorithm=alg, headers={"kid": key.kid, "typ": "JWT"}
        )

    def in_use(self) -> tuple[str, ...]:
        """Every algorithm configured or with a stored key not scheduled to retire, in
        :data:`ALGORITHMS` order (one :meth:`retire` withdrew is not, unless configured)."""
        held = kept_algorithms(self._keys) | set(self.algorithms)
        return tuple(alg for alg in ALGORITHMS if alg in held)

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

    def rotate(self, retire_after: int, algorithms: Iterable[str] | None = None) -> SigningKey:
        """Add a fresh key of every algorithm in use (or of those named), each signing after
        its delay (EdDSA: :attr:`activation_delay`, at once for files; RS256/ES256: also at
        least :attr:`publish_ahead`). Older keys of each retire ``retire_after`` s after its
        new one signs at the latest (one an earlier rotation retires sooner keeps its time).
        Returns the first new key (EdDSA when rotated); :meth:`rotate_each` returns them all.
        An algorithm no key is kept for is refused (ConfigError).

        ``retire_after=0`` is the emergency switch (a leaked key): the new key signs and every
        older one stops at once (also one still in an earlier overlap, or published ahead and
        not yet signing), even on shared keys, where another replica may then refuse a new
        token until it has loaded the new key (well under a second)."""
        return self.rotate_each(retire_after, algorithms)[0]

    def rotate_each(
        self, retire_after: int, algorithms: Iterable[str] | None = None
    ) -> list[SigningKey]:
        """:meth:`rotate`, returning the new key of each algorithm rotated (in one write)."""
        if retire_after < 0:
            raise ValueError("retire_after must be >= 0")
        wanted = self.in_use() if algorithms is None else tuple(algorithms)
        unknown = [alg for alg in wanted if alg not in ALGORITHMS]
        if unknown or not wanted:
            raise ValueError(f"cannot rotate {unknown or 'no algorithm'}: one of {ALGORITHMS}")
        unused = [alg for alg in wanted if alg not in self.in_use()]
        if unused:
            # A rotation would create the first key of it: published from then on, and
            # rotated forever, for tokens nothing signs (a typo, most likely).
            raise ConfigError(
                f"no {', '.join(unused)} signing key is kept (signing.algorithms, "
                "signing.audiences or a federated credential must name the algorithm)"
            )
        delays = {alg: self._delay(alg, retire_after) for alg in ALGORITHMS if alg in wanted}
        with self._mutex:
            new, keys = self._backend.rotate(self._keys, self._clock(), retire_after, delays)
            self._keys = keys
            self.changes += 1
        return new

    def retire(self, alg: str, after: float) -> list[SigningKey]:
        """Withdraw ``alg``: every stored key of it retires ``after`` s from now at the latest
        (0: at once, for a leaked key; one retiring sooner keeps its time), through the
        backend's rotation lock. From then on :meth:`rotate` leaves ``alg`` alone and the
        JWKS drops each key when its time comes. Returns the keys of ``alg`` with their
        retirement times.

        Refused (ConfigError): EdDSA, which signs Lockgate's own tokens, and an algorithm
        this store keeps a key for (``algorithms``: the configuration still needs it, so a
        restart would only make a fresh key of it); also an algorithm with no stored key."""
        if after < 0:
            raise ValueError("after must be >= 0")
        if alg not in ALGORITHMS:
            raise ValueError(f"cannot retire {alg!r}: one of {ALGORITHMS}")
        if alg == DEFAULT_ALGORITHM:
            raise ConfigError(
                f"{alg} keys sign Lockgate's own tokens and cannot be retired "
                "(lockgate keys rotate --alg EdDSA --retire-after 0 replaces a leaked one)"
            )
        if alg in self.algorithms:
            raise ConfigError(
                f"{alg} is still needed (signing.algorithms, signing.audiences or a federated "
                "credential names it): take it out of the configuration first"
            )
        with self._mutex:
            now = self._clock()
            retiring, keys = self._backend.retire(self._keys, now, alg, now + after)
            self._keys = keys
            self.changes += 1
        if not retiring:
            raise ConfigError(f"no {alg} signing key is stored: nothing to retire")
        return retiring

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
        """Why a restart would not sign with a current key (a file gone), or None."""
        for alg in self.in_use():
            problem = self._backend.problem(self.current(alg))
            if problem is not None:
                return problem
        return None

    # -- internals ----------------------------------------------------------------------------
    def _delay(self, alg: str, retire_after: int) -> float:
        """Seconds from a rotation until the new ``alg`` key signs."""
        if retire_after == 0:
            return 0.0  # an emergency: the leaked key must stop now
        if alg == DEFAULT_ALGORITHM:
            return self.activation_delay  # Lockgate's own verifiers: today's rule
        # Clouds cache Lockgate's JWKS: publish first, sign once they can have refetched it.
        return max(self.activation_delay, self.publish_ahead)

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
    "ALGORITHMS",
    "DEFAULT_ALGORITHM",
    "KID_RE",
    "SHARED_ACTIVATION_DELAY",
    "KeyBackend",
    "KeyStore",
    "SigningKey",
    "b64url",
    "thumbprint",
]
