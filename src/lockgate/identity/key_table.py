"""Signing keys in the shared database: the ``signing_keys`` table (schema domain ``keys``).

Each row holds a kid (the RFC 7638 thumbprint), its times (``created``, ``activate_at`` --
when it starts signing -- and ``retire_at``) and the raw Ed25519 private key encrypted with
AES-256-GCM under a key derived from the master key (HKDF, its own label), AAD = the kid: a
ciphertext moved onto another row fails to decrypt, and the thumbprint of every decrypted
key is checked against its kid. Nothing else about a key is secret; nothing secret is
stored in clear.

Every write (the first key, a rotation) runs in one transaction that first takes a lock
(PostgreSQL: a transaction-scoped advisory lock; SQLite: ``BEGIN IMMEDIATE`` already
serialises), so replicas starting together create exactly one first key and two rotations
never interleave. Writes touch the ``keys`` topic; :meth:`KeyTable.moved` compares its
version (a memory read on PostgreSQL) with the one last loaded.
"""

from __future__ import annotations

import os

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from lockgate.credentials.master_key import derived_aead, verify_master_key
from lockgate.errors import ConfigError
from lockgate.identity.signing_key import KID_RE, SigningKey, generate_key, thumbprint
from lockgate.store import Cursor, Database, Migration, open_store, register_domain

DOMAIN = TOPIC = "keys"
# Any fixed 64-bit number other than the migrations' own: serialises key writes on PostgreSQL.
_WRITE_LOCK_KEY = 0x4C47_4B45_5953  # "LGKEYS"

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
)
register_domain(DOMAIN, MIGRATIONS)

_SELECT = (
    "SELECT kid, created, activate_at, retire_at, nonce, ciphertext FROM signing_keys "
    "ORDER BY activate_at, created, kid"
)


class KeyTable:
    """A :class:`~lockgate.identity.signing_key.KeyBackend` over a :class:`Database`."""

    def __init__(
        self, db: Database, master_key: bytes, *, migrate_schema: bool | None = None
    ) -> None:
        self.db = db
        self.shared = db.dialect == "postgresql"
        open_store(db, DOMAIN, MIGRATIONS, migrate_schema=migrate_schema)
        if self.shared:
            verify_master_key(db, master_key)
        self._aead = derived_aead(master_key, b"lockgate signing keys v1")
        self._loaded_version: int | None = None

    def open(self, now: float) -> dict[str, SigningKey]:
        version = self.db.version(TOPIC)
        with self.db.transaction() as cur:
            self._lock(cur)
            keys = self._read(cur, {})
            if not keys:
                first = generate_key(now)
                self._insert(cur, first)
                cur.touch(TOPIC)
                keys = {first.kid: first}
        self._loaded_version = version  # as in rotate: a first key written here reads as a move
        return keys

    def moved(self) -> bool:
        return self.db.version(TOPIC) != self._loaded_version

    def load(self, known: dict[str, SigningKey]) -> dict[str, SigningKey]:
        version = self.db.version(TOPIC)  # before the read: a write during it moves it again
        with self.db.read() as cur:
            keys = self._read(cur, known)
        if not keys:
            raise ConfigError(f"{self.db.label}: no signing key in signing_keys")
        self._loaded_version = version
        return keys

    def rotate(
        self, known: dict[str, SigningKey], now: float, retire_after: float, delay: float
    ) -> tuple[SigningKey, dict[str, SigningKey]]:
        version = self.db.version(TOPIC)
        with self.db.transaction() as cur:
            self._lock(cur)
            row = cur.execute("SELECT max(activate_at) FROM signing_keys").fetchone()
            latest = float(row[0]) if row and row[0] is not None else float("-inf")
            # Never before a stored key: "the newest active key signs" stays true.
            new = generate_key(now, activate_at=max(now + delay, latest))
            # Old keys stay published until the new one has signed for retire_after s, so
            # there is a signing key at every instant whatever retire_after is.
            cur.execute(
                "UPDATE signing_keys SET retire_at = ? WHERE retire_at IS NULL",
                (new.signs_from + retire_after,),
            )
            cur.execute("DELETE FROM signing_keys WHERE retire_at <= ?", (now,))
            self._insert(cur, new)
            cur.touch(TOPIC)
            keys = self._read(cur, known)
        # The version from before: our own write reads as a move, costing one spare reload
        # rather than ever missing another replica's write made alongside.
        self._loaded_version = version
        return new, keys

    def problem(self, current: SigningKey) -> str | None:
        return None  # every replica reads the same table; a restart finds the same keys

    # -- internals ----------------------------------------------------------------------------
    def _lock(self, cur: Cursor) -> None:
        if self.db.dialect == "postgresql":
            cur.execute("SELECT pg_advisory_xact_lock(?)", (_WRITE_LOCK_KEY,))

    def _insert(self, cur: Cursor, key: SigningKey) -> None:
        raw = key.private.private_bytes(
            serialization.Encoding.Raw,
            serialization.PrivateFormat.Raw,
            serialization.NoEncryption(),
        )
        nonce = os.urandom(12)
        cur.execute(
            "INSERT INTO signing_keys (kid, created, activate_at, retire_at, nonce, ciphertext) "
            "VALUES (?, ?, ?, ?, ?, ?)",
            (
                key.kid, key.created, key.signs_from, key.retire_at, nonce,
                self._aead.encrypt(nonce, raw, key.kid.encode("ascii")),
            ),
        )  # fmt: skip

    def _read(self, cur: Cursor, known: dict[str, SigningKey]) -> dict[str, SigningKey]:
        keys: dict[str, SigningKey] = {}
        for kid, created, activate_at, retire_at, nonce, ct in cur.execute(_SELECT).fetchall():
            if not isinstance(kid, str) or not KID_RE.match(kid):
                raise ConfigError(f"{self.db.label}: invalid kid in signing_keys")
            old = known.get(kid)
            private = old.private if old is not None else self._decrypt(kid, nonce, ct)
            keys[kid] = SigningKey(
                kid, private, private.public_key(), float(created),
                None if retire_at is None else float(retire_at), float(activate_at),
            )  # fmt: skip
        return keys

    def _decrypt(self, kid: str, nonce: bytes, ct: bytes) -> Ed25519PrivateKey:
        try:
            raw = self._aead.decrypt(bytes(nonce), bytes(ct), kid.encode("ascii"))
            key = Ed25519PrivateKey.from_private_bytes(raw)
        except (InvalidTag, ValueError):
            raise ConfigError(
                f"{self.db.label}: signing key {kid} cannot be decrypted: another master key, "
                "or the stored row was altered"
            ) from None
        if thumbprint(key.public_key()) != kid:
            raise ConfigError(f"{self.db.label}: signing key {kid} does not match its kid")
        return key
