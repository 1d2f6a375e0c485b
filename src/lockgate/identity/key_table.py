"""Signing keys in the shared database: the ``signing_keys`` table (schema domain ``keys``).

Each row holds a kid (the RFC 7638 thumbprint), its algorithm (``alg``: EdDSA, RS256 or
ES256; rows from before the column are EdDSA), its times (``created``, ``activate_at`` --
when it starts signing -- and ``retire_at``) and the private key encrypted with AES-256-GCM
under a key derived from the master key (HKDF, its own label): raw Ed25519 bytes, RSA and
P-256 keys as PKCS#8 DER. The AAD binds everything that decides whether a key is trusted:
the algorithm, the kid and the three times; the public key is the private key's, its type
must be the algorithm's and its thumbprint is checked against the kid. So a ciphertext
moved onto another row, or a row whose algorithm or times were altered (a retirement
pushed back or undone), fails to decrypt and is refused. Nothing else about a key is
secret; nothing secret is stored in clear.

A row saved while its key was live can still be put back whole after the key was deleted
(the emergency ``retire_after=0`` deletes at once). Two records refuse it: every deleted
kid is written to ``retired_signing_keys``, which is never pruned (one short row per
rotation), and a key without a ``retire_at`` is only trusted when it is the newest (a
rotation sets, and authenticates, a ``retire_at`` on every older key). Each table also
remembers the kids it saw retired, and the soonest retirement it saw of each key, for as
long as it runs. Still, a process that never saw it would trust the row a withdrawn
algorithm's newest key had before ``keys retire`` (its only row without a ``retire_at``)
until that key is deleted: a leaked key is withdrawn at once (``--after 0``), which deletes
it. A refused row is logged and skipped; the other keys keep serving. What the design
trusts the database with is in docs/state.md: it can deny service; without the master key
it can neither mint a key nor bring a retired one back on its own. All of this holds per
algorithm: each keeps its own newest key, and a rotation of one retires only that
algorithm's older keys.

Every write (the first key, a rotation, a retirement) runs in one transaction that first
takes a lock (PostgreSQL: a transaction-scoped advisory lock; SQLite: ``BEGIN IMMEDIATE``
already serialises), so replicas starting together create exactly one first key of each
algorithm and two rotations never interleave. Writes touch the ``keys`` topic;
:meth:`KeyTable.moved` compares its version (a memory read on PostgreSQL) with the one
last loaded.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable, Mapping

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from lockgate import _log
from lockgate.credentials.master_key import derived_aead, verify_master_key
from lockgate.errors import ConfigError
from lockgate.identity.signing_key import (
    ALGORITHMS,
    KID_RE,
    PrivateKey,
    SigningKey,
    generate_key,
    kept_algorithms,
    load_private,
    retiring_all_by,
    with_retire_at,
)
from lockgate.store import Cursor, Database, Migration, open_store, register_domain

DOMAIN = TOPIC = "keys"
# Any fixed 64-bit number other than the migrations' own: serialises key writes on PostgreSQL.
_WRITE_LOCK_KEY = 0x4C47_4B45_5953  # "LGKEYS"
#: Seconds a rotating process's clock may be off the database's (NTP keeps hosts within ms).
MAX_CLOCK_SKEW = 30.0

MIGRATIONS = (
    Migration(
        1,
        "signing keys, private halves encrypted under the master key",
        """
        CREATE TABLE IF NOT EXISTS signing_keys (
            kid TEXT PRIMARY KEY,
            created REAL NOT NULL,
            activate_at REAL NOT NULL,
            retire_at REAL,
            nonce BLOB NOT NULL,
            ciphertext BLOB NOT NULL
        );
        """,
    ),
    Migration(
        2,
        "kids of deleted signing keys, never pruned: a row put back for one is refused",
        "CREATE TABLE IF NOT EXISTS retired_signing_keys (\n"
        "    kid TEXT PRIMARY KEY, retired_at REAL NOT NULL\n"
        ")",
    ),
    Migration(
        3,
        "signing keys of other algorithms (RS256, ES256): every existing row is EdDSA",
        "ALTER TABLE signing_keys ADD COLUMN alg TEXT NOT NULL DEFAULT 'EdDSA'",
    ),
)
register_domain(DOMAIN, MIGRATIONS)

log = _log.get("identity")

_SELECT = (
    "SELECT kid, alg, created, activate_at, retire_at, nonce, ciphertext FROM signing_keys "
    "ORDER BY activate_at, created, kid"
)
#: What the AAD names each algorithm by (EdDSA's as before the column: old rows decrypt).
_AAD_NAME = {"EdDSA": b"Ed25519", "RS256": b"RS256", "ES256": b"ES256"}


class KeyTable:
    """A :class:`~lockgate.identity.signing_key.KeyBackend` over a :class:`Database`."""

    def __init__(
        self,
        db: Database,
        master_key: bytes,
        *,
        migrate_schema: bool | None = None,
        rsa_key_size: int = 2048,
        check_clock: bool = False,
    ) -> None:
        self.db = db
        self.rsa_key_size = rsa_key_size
        # PostgreSQL: refuse to rotate on a clock off the database's (see _check_clock).
        self.check_clock = check_clock and db.dialect == "postgresql"
        self.shared = db.dialect == "postgresql"
        open_store(db, DOMAIN, MIGRATIONS, migrate_schema=migrate_schema)
        if self.shared:
            verify_master_key(db, master_key)
        self._aead = derived_aead(master_key, b"lockgate signing keys v1")
        self._loaded_version: int | None = None
        # Kids seen retired (tombstoned, or gone from the table) since this table opened:
        # refused even if the database loses its tombstones.
        self._retired: set[str] = set()
        # The soonest retirement seen per kid: likewise, never pushed back by a row put back.
        self._retire_seen: dict[str, float] = {}

    def open(self, now: float, algorithms: tuple[str, ...]) -> dict[str, SigningKey]:
        version = self.db.version(TOPIC)
        # First keys are made before the lock: an RSA key takes seconds on a busy machine,
        # and replicas starting together wait on the lock (SQLite: BEGIN IMMEDIATE, a 5 s
        # busy timeout) while it is held. Under the lock only the still missing are written.
        with self.db.read() as cur:
            had = kept_algorithms(self._read(cur, {}))
        made = {
            alg: generate_key(alg, now, rsa_key_size=self.rsa_key_size)
            for alg in algorithms
            if alg not in had
        }
        with self.db.transaction() as cur:
            self._lock(cur)
            keys = self._read(cur, {})
            # An algorithm withdrawn (every key retiring) and configured again starts afresh.
            have = kept_algorithms(keys)
            missing = [alg for alg in algorithms if alg not in have]
            for alg in missing:  # under the lock: one first key per algorithm, cluster-wide
                first = made.get(alg) or generate_key(alg, now, rsa_key_size=self.rsa_key_size)
                self._write(cur, first)
                keys[first.kid] = first
            if missing:
                cur.touch(TOPIC)
        self._loaded(version)  # as in rotate: a first key written here reads as a move
        return keys

    def moved(self) -> bool:
        return self.db.version(TOPIC) != self._loaded_version

    def load(self, known: dict[str, SigningKey]) -> dict[str, SigningKey]:
        version = self.db.version(TOPIC)  # before the read: a write during it moves it again
        with self.db.read() as cur:
            keys = self._read(cur, known)
        if not keys:
            raise ConfigError(f"{self.db.label}: no signing key in signing_keys")
        self._loaded(version)
        return keys

    def rotate(
        self,
        known: dict[str, SigningKey],
        now: float,
        retire_after: float,
        delays: Mapping[str, float],
    ) -> tuple[list[SigningKey], dict[str, SigningKey]]:
        def add_keys(cur: Cursor, stored: dict[str, SigningKey]) -> list[SigningKey]:
            added: list[SigningKey] = []
            for alg, delay in delays.items():
                # Never before a stored key of its algorithm: "the newest active key signs".
                # Except in an emergency (retire_after=0): every older key ends now, also
                # one published ahead, so the leaked key must not sign until that one would.
                latest = max(
                    (k.signs_from for k in stored.values() if k.alg == alg and retire_after),
                    default=float("-inf"),
                )
                new = generate_key(
                    alg, now, activate_at=max(now + delay, latest), rsa_key_size=self.rsa_key_size
                )
                # Old keys stay published until the new one has signed for retire_after s,
                # so there is a signing key at every instant whatever retire_after is; one
                # already retiring sooner keeps its time.
                self._retire_by(cur, stored, alg, new.signs_from + retire_after)
                self._write(cur, new)  # no retire_at: the deletion of keys due spares it
                added.append(new)
            return added

        return self._change(known, now, add_keys)

    def retire(
        self, known: dict[str, SigningKey], now: float, alg: str, at: float
    ) -> tuple[list[SigningKey], dict[str, SigningKey]]:
        return self._change(known, now, lambda cur, stored: self._retire_by(cur, stored, alg, at))

    def _change(
        self,
        known: dict[str, SigningKey],
        now: float,
        edit: Callable[[Cursor, dict[str, SigningKey]], list[SigningKey]],
    ) -> tuple[list[SigningKey], dict[str, SigningKey]]:
        """One write (a rotation, a retirement): under the lock, on a clock close to the
        database's, ``edit`` the stored keys, delete those whose time is over, touch the
        topic. What ``edit`` returns, and the stored set."""
        version = self.db.version(TOPIC)
        with self.db.transaction() as cur:
            self._lock(cur)
            self._check_clock(cur, now)
            changed = edit(cur, self._read(cur, known))
            self._retire_due(cur, now)
            cur.touch(TOPIC)
            keys = self._read(cur, known)
        # The version from before: our own write reads as a move, costing one spare reload
        # rather than ever missing another replica's write made alongside.
        self._loaded(version)
        return changed, keys

    def _retire_by(
        self, cur: Cursor, stored: dict[str, SigningKey], alg: str, at: float
    ) -> list[SigningKey]:
        """Every stored key of ``alg`` retiring at ``at`` at the latest; the rows whose time
        moved are encrypted again (the retire_at is part of what the AEAD binds)."""
        retiring = retiring_all_by(stored, alg, at)
        for kid, key in retiring.items():
            if key is not stored[kid]:
                self._write(cur, key)
        return list(retiring.values())

    def problem(self, current: SigningKey) -> str | None:
        return None  # every replica reads the same table; a restart finds the same keys

    # -- internals ----------------------------------------------------------------------------
    def _loaded(self, version: int) -> None:
        """Memory now holds the keys as of ``version``. The database hears it too: a reload
        that keeps failing (a locked table) while the change feed answers then counts
        against the staleness bound, as a feed gone quiet would."""
        self._loaded_version = version
        self.db.mark_loaded(self, TOPIC, version)

    def _lock(self, cur: Cursor) -> None:
        if self.db.dialect == "postgresql":
            cur.execute("SELECT pg_advisory_xact_lock(?)", (_WRITE_LOCK_KEY,))

    def _check_clock(self, cur: Cursor, now: float) -> None:
        """A rotation's times (when the new key signs, when older keys retire) are written for
        every replica, in this process's clock. One far behind the database's (a laptop
        running ``lockgate keys rotate``) would make a key sign at once that clouds cannot
        know yet and retire keys whose tokens are still out; one far ahead would delete keys
        other replicas still verify with. Refused, saying by how much."""
        if not self.check_clock:
            return
        row = cur.execute("SELECT EXTRACT(EPOCH FROM clock_timestamp())").fetchone()
        assert row is not None  # one row, always
        skew = now - float(row[0])
        if abs(skew) > MAX_CLOCK_SKEW:
            raise ConfigError(
                f"{self.db.label}: this machine's clock is {skew:+.0f} s off the database's "
                f"(at most {MAX_CLOCK_SKEW:.0f}): a rotation's times would be wrong on every "
                "replica; set the clock (NTP) and rotate again"
            )

    def _retire_due(self, cur: Cursor, now: float) -> None:
        """Delete the keys whose time is over, leaving their kids as tombstones."""
        due = cur.execute("SELECT kid FROM signing_keys WHERE retire_at <= ?", (now,)).fetchall()
        for (kid,) in due:
            cur.execute(
                "INSERT INTO retired_signing_keys (kid, retired_at) VALUES (?, ?) "
                "ON CONFLICT (kid) DO NOTHING",
                (kid, now),
            )
            self._retired.add(kid)
        cur.execute("DELETE FROM signing_keys WHERE retire_at <= ?", (now,))

    def _write(self, cur: Cursor, key: SigningKey) -> None:
        """Insert ``key``'s row, or replace it (its times changed): a fresh nonce each time."""
        nonce = os.urandom(12)
        ciphertext = self._aead.encrypt(
            nonce,
            _private_bytes(key.private),
            _bound(key.alg, key.kid, key.created, key.signs_from, key.retire_at),
        )
        cur.execute(
            "INSERT INTO signing_keys "
            "(kid, alg, created, activate_at, retire_at, nonce, ciphertext) "
            "VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT (kid) DO UPDATE SET "
            "alg = excluded.alg, created = excluded.created, "
            "activate_at = excluded.activate_at, retire_at = excluded.retire_at, "
            "nonce = excluded.nonce, ciphertext = excluded.ciphertext",
            (key.kid, key.alg, key.created, key.signs_from, key.retire_at, nonce, ciphertext),
        )

    def _read(self, cur: Cursor, known: dict[str, SigningKey]) -> dict[str, SigningKey]:
        rows = cur.execute(_SELECT).fetchall()
        tombstones = {
            kid for (kid,) in cur.execute("SELECT kid FROM retired_signing_keys").fetchall()
        }
        self._retired |= tombstones
        # Only the newest key of an algorithm may lack a retire_at: a rotation gives every
        # older one of that algorithm its own. Rows come in signing order: the last wins.
        newest = {row[1]: row[0] for row in rows}
        keys: dict[str, SigningKey] = {}
        for kid, alg, created, activate_at, retire_at, nonce, ct in rows:
            if not isinstance(kid, str) or not KID_RE.match(kid):
                raise ConfigError(f"{self.db.label}: invalid kid in signing_keys")
            if alg not in ALGORITHMS:
                raise ConfigError(f"{self.db.label}: signing key {kid}: unsupported algorithm")
            times = (float(created), float(activate_at), _time(retire_at))
            old = known.get(kid)
            if old is not None and (old.alg, old.created, old.signs_from, old.retire_at) == (
                alg, *times,
            ):  # fmt: skip
                key = old  # same row as loaded before: authenticated then
            else:
                key = self._decrypt(kid, alg, nonce, ct, *times)  # a forged row fails loudly
            if kid in self._retired or (retire_at is None and kid != newest[alg]):
                self._refuse(kid)  # a genuine row, put back after its key was retired
                continue
            keys[kid] = with_retire_at(key, self._earliest_retirement(kid, times[2]))
        # A kid that was loaded and is gone was retired: never trusted again by this table.
        self._retired |= known.keys() - keys.keys()
        return keys

    def _earliest_retirement(self, kid: str, retire_at: float | None) -> float | None:
        """``retire_at``, unless this table saw ``kid`` retiring sooner: every write only
        brings a retirement forward, so a later one (or none) is an older row put back, which
        would push back, or undo, a rotation's or a ``keys retire``'s. The sooner one holds."""
        seen = self._retire_seen.get(kid)
        if seen is None or (retire_at is not None and retire_at <= seen):
            if retire_at is not None:
                self._retire_seen[kid] = retire_at
            return retire_at
        log.error(
            "signing key row refused a later retirement: an older row put back in the database",
            extra={"fields": {"kid": kid, "database": self.db.label}},
        )
        return seen

    def _refuse(self, kid: str) -> None:
        log.error(
            "signing key row refused: its key was retired (a row put back in the database)",
            extra={"fields": {"kid": kid, "database": self.db.label}},
        )

    def _decrypt(
        self, kid: str, alg: str, nonce: bytes, ct: bytes, created: float, activate_at: float,
        retire_at: float | None,
    ) -> SigningKey:  # fmt: skip
        try:
            raw = self._aead.decrypt(
                bytes(nonce), bytes(ct), _bound(alg, kid, created, activate_at, retire_at)
            )
            private = _private_key(alg, raw)
        except (InvalidTag, ValueError):
            raise ConfigError(
                f"{self.db.label}: signing key {kid} cannot be decrypted: another master key, "
                "or the stored row was altered"
            ) from None
        try:
            key = load_private(private, kid, alg)
        except ValueError as exc:
            raise ConfigError(f"{self.db.label}: signing key {kid}: {exc}") from None
        return dataclasses.replace(key, created=created, activate_at=activate_at)


def _time(value: float | None) -> float | None:
    return None if value is None else float(value)


def _private_bytes(private: PrivateKey) -> bytes:
    """What is encrypted: raw Ed25519 bytes (as rows always held them), else PKCS#8 DER."""
    if isinstance(private, Ed25519PrivateKey):
        return private.private_bytes(
            serialization.Encoding.Raw, serialization.PrivateFormat.Raw,
            serialization.NoEncryption(),
        )  # fmt: skip
    return private.private_bytes(
        serialization.Encoding.DER, serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )  # fmt: skip


def _private_key(alg: str, raw: bytes) -> object:
    """The inverse of :func:`_private_bytes` (ValueError when the bytes are no key)."""
    if alg == "EdDSA":
        return Ed25519PrivateKey.from_private_bytes(raw)
    return serialization.load_der_private_key(raw, password=None)


def _bound(
    alg: str, kid: str, created: float, activate_at: float, retire_at: float | None
) -> bytes:
    """The AEAD's associated data: everything about a row that decides whether it is trusted
    (exact float spellings: the same on SQLite and PostgreSQL)."""
    retire = "-" if retire_at is None else retire_at.hex()
    return b"\0".join(
        (_AAD_NAME[alg], kid.encode("ascii"), created.hex().encode(),
         activate_at.hex().encode(), retire.encode())
    )  # fmt: skip
