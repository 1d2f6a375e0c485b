"""CredentialStore: upstream secrets, encrypted at rest and versioned, in a Database.

The database is a SQLite file (``data_dir/credentials.db``, one machine) or the shared
PostgreSQL of every replica; the same portable SQL serves both, and only ciphertext is ever
written to either.

Encryption: AES-256-GCM with a key derived from the master key (HKDF-SHA256, so the master
key itself is never used directly and can later derive other keys), a fresh random 96-bit
nonce per version, and AAD ``"{name}:{version}"`` so a ciphertext copied onto another row
(another credential, or an older version) fails to decrypt instead of being served.

Versions: ``set`` and ``rotate`` add version N+1 which is current at once. Only the newest
two versions keep their ciphertext (current and previous, for the rotation overlap);
older ones keep metadata only. Version numbers are never reused, even after ``delete``,
so caches keyed by (name, version) cannot serve a stale value.

Reads come from memory: the newest two rows of every credential, reloaded when the
``credentials`` change version moved (a write here, by the CLI, or by another replica).
:meth:`CredentialStore.stale` says so without touching PostgreSQL, so a server can run
:meth:`CredentialStore.reload` in a worker thread and read with ``fresh=False`` on its event
loop. With a shared database the master key's fingerprint is checked at open
(:func:`~lockgate.credentials.master_key.verify_master_key`).
"""

from __future__ import annotations

import hashlib
import hmac
import os
import re
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from cryptography.exceptions import InvalidTag

from lockgate.config import NAME_RE
from lockgate.credentials.master_key import derived_aead, verify_master_key
from lockgate.credentials.vaults import FetchStatus
from lockgate.errors import CredentialError
from lockgate.store import Database, Migration, open_store, register_domain

_NAME = re.compile(NAME_RE)
_KEEP_VALUES = 2  # current + previous; older ciphertexts are wiped
DOMAIN = TOPIC = "credentials"

MIGRATIONS = (
    Migration(
        1,
        "credential versions (encrypted) and version counters",
        """
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
        """,
    ),
    Migration(
        2,
        "when each vault-held credential was last fetched (no value)",
        """
        CREATE TABLE IF NOT EXISTS vault_fetches (
            name TEXT PRIMARY KEY,
            held_at TEXT NOT NULL,
            vault_version TEXT NOT NULL,
            fetched_at REAL NOT NULL
        );
        """,
    ),
)
register_domain(DOMAIN, MIGRATIONS)

# (version, created_at, key_id, nonce, ciphertext) as stored, newest first per name
_Row = tuple[int, float, str, bytes | None, bytes | None]


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
        self,
        db: Path | Database,
        master_key: bytes,
        *,
        clock: Callable[[], float] = time.time,
        migrate_schema: bool | None = None,
    ) -> None:
        if len(master_key) != 32:
            raise CredentialError("master key must be exactly 32 bytes")
        if isinstance(db, Path | str):  # it holds (encrypted) secrets: the gateway's alone
            Path(db).parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        self.db, _owned = open_store(db, DOMAIN, MIGRATIONS, migrate_schema=migrate_schema)
        db = self.db
        self.shared = db.dialect == "postgresql"
        self._clock = clock
        self._aead = derived_aead(master_key, b"lockgate credentials v1")
        # shown in errors to tell "wrong key" from "tampered row"; reveals nothing of the key
        self.key_id = hmac.new(master_key, b"lockgate key id", hashlib.sha256).hexdigest()[:16]
        if self.shared:
            verify_master_key(db, master_key)
        self._lock = threading.Lock()
        self._local_writes = 0  # our own writes count before a notification says so
        self._rows: dict[str, tuple[_Row, ...]] = {}
        self._loaded: tuple[int, int] | None = None  # marker the rows were read at
        self._seen = self._marker()
        #: Moves at every reload: a cache of values read from this store (the broker's) is
        #: good for one value of it.
        self.generation = 0
        #: The broker serving from this store sets it: the fetch state of every vault-held
        #: credential in this process (what readiness reports), never a value.
        self.vault_status: Callable[[], dict[str, FetchStatus]] | None = None

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
        with self.db.transaction() as cur:
            # The counter row first: its upsert locks it, so two writers of one name (two
            # replicas) take turns instead of both picking the same version.
            cur.execute(
                "INSERT INTO credential_counters (name, last_version) VALUES (?, 0) "
                "ON CONFLICT (name) DO UPDATE SET last_version = credential_counters.last_version",
                (name,),
            )
            if (
                rotation
                and not cur.execute(
                    "SELECT 1 FROM credential_versions WHERE name = ? LIMIT 1", (name,)
                ).fetchone()
            ):
                raise CredentialError(f"credential {name!r} does not exist; set it before rotating")
            row = cur.execute(
                "SELECT last_version FROM credential_counters WHERE name = ?", (name,)
            ).fetchone()
            version = (int(row[0]) if row else 0) + 1
            nonce = os.urandom(12)
            ct = self._aead.encrypt(nonce, value.encode("utf-8"), _aad(name, version))
            now = self._clock()
            cur.execute(
                "INSERT INTO credential_versions "
                "(name, version, created_at, rotated_at, key_id, nonce, ciphertext) "
                "VALUES (?, ?, ?, ?, ?, ?, ?)",
                (name, version, now, now if rotation else None, self.key_id, nonce, ct),
            )
            cur.execute(
                "UPDATE credential_counters SET last_version = ? WHERE name = ?", (version, name)
            )
            cur.execute(
                "UPDATE credential_versions SET nonce = NULL, ciphertext = NULL "
                "WHERE name = ? AND version <= ? AND ciphertext IS NOT NULL",
                (name, version - _KEEP_VALUES),
            )
            cur.touch(TOPIC)
        self._wrote()
        return version

    def delete(self, name: str) -> bool:
        """Remove every version of ``name``. Returns False when there was none."""
        with self.db.transaction() as cur:
            deleted = cur.execute(
                "DELETE FROM credential_versions WHERE name = ?", (name,)
            ).rowcount
            cur.touch(TOPIC)
        self._wrote()
        return deleted > 0

    def record_fetch(self, name: str, held_at: str, vault_version: str, fetched_at: float) -> None:
        """Note that vault-held credential ``name`` was fetched (where, which version, when;
        never the value), for ``lockgate creds list``. Blocking; no change version moves:
        nothing cached depends on it."""
        with self.db.transaction() as cur:
            cur.execute(
                "INSERT INTO vault_fetches (name, held_at, vault_version, fetched_at) "
                "VALUES (?, ?, ?, ?) ON CONFLICT (name) DO UPDATE SET "
                "held_at = excluded.held_at, vault_version = excluded.vault_version, "
                "fetched_at = excluded.fetched_at",
                (name, held_at, vault_version, fetched_at),
            )

    def fetches(self) -> dict[str, tuple[str, str, float]]:
        """``name -> (held_at, vault_version, fetched_at)`` of vault-held credentials fetched
        by any gateway process sharing this store (the latest fetch wins)."""
        with self.db.read() as cur:
            rows = cur.execute(
                "SELECT name, held_at, vault_version, fetched_at FROM vault_fetches"
            ).fetchall()
        return {str(n): (str(h), str(v), float(t)) for n, h, v, t in rows}

    # -- reads -----------------------------------------------------------------------------
    def current(self, name: str, *, fresh: bool = True) -> Version | None:
        """The newest version, decrypted; None when ``name`` has never been set.

        ``fresh=False``: answer from memory even if a change is pending (an event loop that
        reloads in a worker thread); the first read of a store still loads."""
        rows = self._newest(name, fresh)
        return self._decrypt(name, rows[0]) if rows else None

    def previous(self, name: str, overlap: float, *, fresh: bool = True) -> Version | None:
        """The version before current, only while current is younger than ``overlap`` s."""
        rows = self._newest(name, fresh)
        if len(rows) < 2 or self._clock() - rows[0][1] >= overlap or rows[1][4] is None:
            return None
        return self._decrypt(name, rows[1])

    def names(self, *, fresh: bool = True) -> list[str]:
        self._ensure_loaded(fresh)
        return sorted(self._rows)

    def versions(self, name: str) -> list[VersionInfo]:
        """Metadata of every version of ``name``, oldest first; never a value."""
        with self.db.read() as cur:
            rows = cur.execute(
                "SELECT version, created_at, rotated_at, "
                "CASE WHEN ciphertext IS NULL THEN 0 ELSE 1 END "
                "FROM credential_versions WHERE name = ? ORDER BY version",
                (name,),
            ).fetchall()
        last = rows[-1][0] if rows else None
        return [
            VersionInfo(name, int(v), created, rotated, v == last, bool(has))
            for v, created, rotated, has in rows
        ]

    # -- change tracking -------------------------------------------------------------------
    @property
    def loaded(self) -> bool:
        """Whether memory holds a load at all (the first read must wait for one)."""
        return self._loaded is not None

    def stale(self) -> bool:
        """True when memory may be behind the database (PostgreSQL: a memory read)."""
        return self._loaded != self._marker()

    def reload(self) -> bool:
        """Re-read the newest two rows of every credential if anything changed (blocking:
        run it in a worker thread next to an event loop). Returns True if it re-read.
        Raises StoreUnavailable when the database cannot be reached; memory stays as was."""
        marker = self._marker()  # before the read: a write landing during it moves it again
        if marker == self._loaded:
            return False
        with self.db.read() as cur:
            rows = cur.execute(
                "SELECT name, version, created_at, key_id, nonce, ciphertext "
                "FROM credential_versions v WHERE version >= ("
                "  SELECT max(version) - 1 FROM credential_versions n WHERE n.name = v.name"
                ") ORDER BY name, version DESC"
            ).fetchall()
        by_name: dict[str, list[_Row]] = {}
        for name, version, created, key_id, nonce, ct in rows:
            by_name.setdefault(name, []).append(
                (int(version), float(created), key_id, _bytes(nonce), _bytes(ct))
            )
        with self._lock:
            self._rows = {name: tuple(versions) for name, versions in by_name.items()}
            self._loaded = marker
            self.generation += 1
        # A reload that keeps failing (a locked table) while the change feed answers then
        # counts against the staleness bound, as a feed gone quiet would.
        self.db.mark_loaded(self, TOPIC, marker[0])
        return True

    def changed(self) -> bool:
        """True if anything was written (by this or another process) since the last call."""
        marker = self._marker()
        if marker == self._seen:
            return False
        self._seen = marker
        return True

    def close(self) -> None:
        self.db.close()

    # -- internals -------------------------------------------------------------------------
    def _marker(self) -> tuple[int, int]:
        return (self.db.version(TOPIC), self._local_writes)

    def _wrote(self) -> None:
        with self._lock:
            self._local_writes += 1

    def _ensure_loaded(self, fresh: bool) -> None:
        if self._loaded is None or (fresh and self.stale()):
            self.reload()

    def _newest(self, name: str, fresh: bool) -> tuple[_Row, ...]:
        self._ensure_loaded(fresh)
        return self._rows.get(name, ())

    def _decrypt(self, name: str, row: _Row) -> Version:
        version, created_at, key_id, nonce, ct = row
        if ct is None or nonce is None:
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


def _bytes(value: bytes | memoryview | None) -> bytes | None:
    # psycopg hands BYTEA back as bytes; be explicit for drivers that use memoryview
    return None if value is None else bytes(value)


def _aad(name: str, version: int) -> bytes:
    return f"{name}:{version}".encode()
