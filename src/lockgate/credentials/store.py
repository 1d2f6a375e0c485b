"""CredentialStore: upstream secrets, encrypted at rest and versioned, in SQLite.

Encryption: AES-256-GCM with a key derived from the master key (HKDF-SHA256, so the master
key itself is never used directly and can later derive other keys), a fresh random 96-bit
nonce per version, and AAD ``"{name}:{version}"`` so a ciphertext copied onto another row
(another credential, or an older version) fails to decrypt instead of being served.

Versions: ``set`` and ``rotate`` add version N+1 which is current at once. Only the newest
two versions keep their ciphertext (current and previous, for the rotation overlap);
older ones keep metadata only. Version numbers are never reused, even after ``delete``,
so caches keyed by (name, version) cannot serve a stale value.

Several processes share the file (the server reads, the CLI rotates): WAL mode, every
write in ``BEGIN IMMEDIATE``, and :meth:`CredentialStore.changed` (``PRAGMA data_version``
plus a local counter) tells a long-lived reader cheaply that it must reload.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import re
import sqlite3
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from lockgate.config import NAME_RE
from lockgate.errors import CredentialError

_NAME = re.compile(NAME_RE)
_KEEP_VALUES = 2  # current + previous; older ciphertexts are wiped

SCHEMA = """
CREATE TABLE IF NOT EXISTS credential_versions (
    name TEXT NOT NULL,
    version INTEGER NOT NULL,
    created_at REAL NOT NULL,
    rotated_at REAL,
    key_id TEXT NOT NULL,
    nonce BLOB,
    ciphertext BLOB,
    PRIMARY KEY (name, version)
);
CREATE TABLE IF NOT EXISTS credential_counters (
    name TEXT PRIMARY KEY,
    last_version INTEGER NOT NULL
);
"""


@dataclass(frozen=True, slots=True)
class Version:
    """One decrypted version. ``value`` is kept out of repr so it never lands in a log."""

    name: str
    version: int
    value: str = field(repr=False)
    created_at: float


@dataclass(frozen=True, slots=True)
class VersionInfo:
    """Metadata of a version; no value."""

    name: str
    version: int
    created_at: float
    rotated_at: float | None
    current: bool
    has_value: bool


class CredentialStore:
    def __init__(
        self, db_path: Path, master_key: bytes, *, clock: Callable[[], float] = time.time
    ) -> None:
        if len(master_key) != 32:
            raise CredentialError("master key must be exactly 32 bytes")
        self.db_path = Path(db_path)
        self._clock = clock
        self._aead = AESGCM(
            HKDF(
                algorithm=hashes.SHA256(), length=32, salt=None, info=b"lockgate credentials v1"
            ).derive(master_key)
        )
        # shown in errors to tell "wrong key" from "tampered row"; reveals nothing of the key
        self.key_id = hmac.new(master_key, b"lockgate key id", hashlib.sha256).hexdigest()[:16]
        self.db_path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        if not self.db_path.exists():  # create 0600 before SQLite does (it copies the mode)
            os.close(os.open(self.db_path, os.O_WRONLY | os.O_CREAT, 0o600))
        self._lock = threading.Lock()
        self._conn = sqlite3.connect(
            self.db_path, timeout=5.0, isolation_level=None, check_same_thread=False
        )
        with self._lock:
            self._conn.execute("PRAGMA journal_mode=WAL")
            self._conn.execute("PRAGMA synchronous=FULL")  # rare writes; durability first
            self._conn.executescript(SCHEMA)
        self._local_writes = 0
        self._seen = self._marker()

    # -- writes ----------------------------------------------------------------------------
    def set(self, name: str, value: str) -> int:
        """Store ``value`` as a new version of ``name``, current at once. Returns the version."""
        return self._add(name, value, rotation=False)

    def rotate(self, name: str, value: str) -> int:
        """Like set, but ``name`` must exist; the previous version stays for the overlap."""
        return self._add(name, value, rotation=True)

    def _add(self, name: str, value: str, rotation: bool) -> int:
        if not isinstance(name, str) or not _NAME.match(name):
            raise CredentialError(f"invalid credential name {name!r}")
        if not isinstance(value, str) or not value:
            raise CredentialError(f"credential {name!r}: the value must be a non-empty string")
        with self._lock, self._tx():
            c = self._conn
            if (
                rotation
                and not c.execute(
                    "SELECT 1 FROM credential_versions WHERE name = ? LIMIT 1", (name,)
                ).fetchone()
            ):
                raise CredentialError(f"credential {name!r} does not exist; set it before rotating")
            row = c.execute(
                "SELECT last_version FROM credential_counters WHERE name = ?", (name,)
            ).fetchone()
            version = (row[0] if row else 0) + 1
            nonce = os.urandom(12)
            ct = self._aead.encrypt(nonce, value.encode("utf-8"), _aad(name, version))
            now = self._clock()
            c.execute(
                "INSERT INTO credential_versions "
                "(name, version, created_at, rotated_at, key_id, nonce, ciphertext) "
                "VALUES (?, ?, ?, ?, ?, ?, ?)",
                (name, version, now, now if rotation else None, self.key_id, nonce, ct),
            )
            c.execute(
                "INSERT INTO credential_counters (name, last_version) VALUES (?, ?) "
                "ON CONFLICT(name) DO UPDATE SET last_version = excluded.last_version",
                (name, version),
            )
            c.execute(
                "UPDATE credential_versions SET nonce = NULL, ciphertext = NULL "
                "WHERE name = ? AND version <= ? AND ciphertext IS NOT NULL",
                (name, version - _KEEP_VALUES),
            )
            self._local_writes += 1
        return version

    def delete(self, name: str) -> bool:
        """Remove every version of ``name``. Returns False when there was none."""
        with self._lock, self._tx():
            cur = self._conn.execute("DELETE FROM credential_versions WHERE name = ?", (name,))
            self._local_writes += 1
            return cur.rowcount > 0

    # -- reads -----------------------------------------------------------------------------
    def current(self, name: str) -> Version | None:
        """The newest version, decrypted; None when ``name`` has never been set."""
        rows = self._newest(name, 1)
        return self._decrypt(name, rows[0]) if rows else None

    def previous(self, name: str, overlap: float) -> Version | None:
        """The version before current, only while current is younger than ``overlap`` s."""
        rows = self._newest(name, 2)
        if len(rows) < 2 or self._clock() - rows[0][1] >= overlap or rows[1][4] is None:
            return None
        return self._decrypt(name, rows[1])

    def _newest(self, name: str, count: int) -> list[tuple[int, float, str, bytes, bytes]]:
        """The newest ``count`` versions of ``name`` as stored (encrypted), newest first."""
        with self._lock:
            rows: list[tuple[int, float, str, bytes, bytes]] = self._conn.execute(
                "SELECT version, created_at, key_id, nonce, ciphertext FROM credential_versions "
                "WHERE name = ? ORDER BY version DESC LIMIT ?",
                (name, count),
            ).fetchall()
        return rows

    def versions(self, name: str) -> list[VersionInfo]:
        """Metadata of every version of ``name``, oldest first; never a value."""
        with self._lock:
            rows = self._conn.execute(
                "SELECT version, created_at, rotated_at, ciphertext IS NOT NULL "
                "FROM credential_versions WHERE name = ? ORDER BY version",
                (name,),
            ).fetchall()
        last = rows[-1][0] if rows else None
        return [
            VersionInfo(name, v, created, rotated, v == last, bool(has))
            for v, created, rotated, has in rows
        ]

    def names(self) -> list[str]:
        with self._lock:
            rows = self._conn.execute(
                "SELECT DISTINCT name FROM credential_versions ORDER BY name"
            ).fetchall()
        return [r[0] for r in rows]

    def changed(self) -> bool:
        """True if anything was written (by this or another process) since the last call."""
        marker = self._marker()
        if marker == self._seen:
            return False
        self._seen = marker
        return True

    def close(self) -> None:
        with self._lock:
            self._conn.close()

    # -- internals -------------------------------------------------------------------------
    def _marker(self) -> tuple[int, int]:
        with self._lock:
            (dv,) = self._conn.execute("PRAGMA data_version").fetchone()
        return (int(dv), self._local_writes)

    def _tx(self) -> _Tx:
        return _Tx(self._conn)

    def _decrypt(self, name: str, row: tuple[int, float, str, bytes, bytes]) -> Version:
        version, created_at, key_id, nonce, ct = row
        if ct is None:
            raise CredentialError(f"credential {name!r} version {version} has no stored value")
        if not hmac.compare_digest(key_id, self.key_id):
            raise CredentialError(
                f"credential {name!r} version {version} was encrypted with another master key "
                f"(key id {key_id}, this gateway has {self.key_id})"
            )
        try:
            plain = self._aead.decrypt(nonce, ct, _aad(name, version))
        except InvalidTag:
            raise CredentialError(
                f"credential {name!r} version {version} cannot be decrypted: wrong master key "
                "or the stored row was altered"
            ) from None
        return Version(
            name=name, version=version, value=plain.decode("utf-8"), created_at=created_at
        )


class _Tx:
    """BEGIN IMMEDIATE ... COMMIT, ROLLBACK on any error (the caller holds the lock)."""

    def __init__(self, conn: sqlite3.Connection) -> None:
        self._conn = conn

    def __enter__(self) -> None:
        self._conn.execute("BEGIN IMMEDIATE")

    def __exit__(self, exc_type: object, exc: object, tb: object) -> None:
        self._conn.execute("ROLLBACK" if exc_type else "COMMIT")


def _aad(name: str, version: int) -> bytes:
    return f"{name}:{version}".encode()
