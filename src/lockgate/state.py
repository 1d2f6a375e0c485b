"""The gateway's durable state: signing keys, revocations, the master key, credentials, the
audit trail and the policy files, on the backend ``state:`` names.

``state: sqlite`` (the default): one SQLite file per store under ``data_dir`` with today's
names (``revocations.db``, ``credentials.db``, ``databricks_runs.db``, ``adf_runs.db``,
``assertions.db`` ...) and signing keys as PEM files under ``data_dir/keys``.
``state: {postgresql: ...}``: every store shares one PostgreSQL database with the other
replicas; each replica keeps its own ``data_dir`` for its local audit journal and chain,
which is shipped to the shared trail.

:class:`State` opens them without starting any listener, so the CLI (``token``, ``creds``,
``audit`` ...) and the serving :class:`lockgate.server.Gateway` share one way to reach them.
Importing it does not pull in the engines.
"""

from __future__ import annotations

import os
import re
import socket
from dataclasses import dataclass, field
from pathlib import Path

from lockgate.audit import AuditLog, AuditReader, RemoteAuditLog, ocsf
from lockgate.audit.shipping import AuditShipping, checkpoint_key
from lockgate.config import LockgateConfig, TokenSettings
from lockgate.credentials import CredentialStore, load_or_create_master_key
from lockgate.identity import KeyStore, RevocationStore
from lockgate.identity.once import CLOCK_SKEW_MARGIN
from lockgate.policy import PolicyStore
from lockgate.store import Database, PostgresDatabase, SqliteDatabase

# A database name is a file name under data_dir on SQLite: keep it a plain word.
_DATABASE_NAME = re.compile(r"^[a-z][a-z0-9_]{0,62}$")

#: Schema domains with no SQLite database of their own: on SQLite state their data lives
#: elsewhere. Every other domain lives in the database of its own name (``<domain>.db``).
NOT_ON_SQLITE = {
    "keys": "signing keys are PEM files under data_dir/keys",
    "audit": "the shared trail; with SQLite the chain is data_dir/audit.db alone",
}


def sqlite_path(config: LockgateConfig, name: str) -> Path:
    """The SQLite file of database ``name``: ``data_dir/<name>.db``."""
    if not _DATABASE_NAME.match(name):
        raise ValueError(f"database name {name!r}: expected a lower-case word")
    return config.data_dir / f"{name}.db"


#: Revocations are kept at least this long (seconds), whatever the token settings say: the
#: longest poll token (``poll_token_ttl`` is capped at a day) is revoked by a DAG revocation.
MIN_REVOCATION_RETENTION = 86400


def revocation_retention(tokens: TokenSettings) -> int:
    """Seconds a revocation row is kept: it must outlive every token it can match. A DAG or
    try revocation matches tokens minted before it, which live up to ``tokens.max_ttl`` (no
    upper bound) and verify ``tokens.leeway`` past their ``exp``; the margin covers a
    purging replica whose clock runs ahead of the verifying one."""
    longest = max(MIN_REVOCATION_RETENTION, tokens.max_ttl)
    return longest + tokens.leeway + int(CLOCK_SKEW_MARGIN)


def default_replica_id() -> str:
    """``LOCKGATE_REPLICA_ID``, else the host name (what ``state.postgresql.replica_id``
    defaults to; with SQLite state it only labels this process)."""
    return os.environ.get("LOCKGATE_REPLICA_ID") or socket.gethostname()


def audit_shipping(config: LockgateConfig, master_key: bytes | None = None) -> AuditShipping | None:
    """Where this replica ships its audit chain (None on SQLite: nowhere). The checkpoint
    key derives from the master key, loaded when not given (never created: shared state
    needs it given)."""
    pg = config.state.postgresql
    if pg is None:
        return None
    if master_key is None:
        master_key = load_or_create_master_key(
            config.data_dir, key_file=config.master_key_file, shared=True
        )
    return AuditShipping(pg, pg.resolved_replica_id(), signing_key=checkpoint_key(master_key))


@dataclass
class State:
    """The durable parts, openable without starting servers (the CLI uses this too)."""

    config: LockgateConfig
    _databases: dict[str, Database] = field(default_factory=dict, init=False, repr=False)
    _shared_db: PostgresDatabase | None = field(default=None, init=False, repr=False)

    def __post_init__(self) -> None:
        data = self.config.data_dir
        data.mkdir(parents=True, exist_ok=True, mode=0o700)
        pg = self.config.state.postgresql
        #: True when the state lives in PostgreSQL, shared with other replicas.
        self.shared = pg is not None
        self.replica_id = pg.resolved_replica_id() if pg is not None else default_replica_id()
        # Shared state never creates a key per replica: without LOCKGATE_MASTER_KEY or
        # master_key_file this refuses to start, saying how to give one.
        self.master_key = load_or_create_master_key(
            data, key_file=self.config.master_key_file, shared=self.shared
        )
        try:
            self._open_stores()
        except BaseException:
            # a store that refuses (an old schema, a wrong master key) must not leave the
            # databases opened before it to the garbage collector
            self.close()
            raise

    def _open_stores(self) -> None:
        signing = self.config.signing
        self.keys = KeyStore(
            # PEM files under data_dir/keys as always, else the shared signing_keys table
            self.database("keys") if self.shared else self.config.data_dir,
            master_key=self.master_key if self.shared else None,
            # a key of every algorithm some token or assertion is signed with (EdDSA always)
            algorithms=self.config.signing_algorithms(),
            rsa_key_size=signing.rsa_key_size,
            publish_ahead=signing.publish_ahead,
        )
        # Every store migrates its schema as the database's settings say
        # (lockgate.store.opening): with migrate_on_start: false it refuses an old schema
        # instead of upgrading it, naming `lockgate db upgrade`.
        self.revocations = RevocationStore(
            self.database("revocations"), retention=revocation_retention(self.config.tokens)
        )
        self.credentials = CredentialStore(self.database("credentials"), self.master_key)

    # -- databases ------------------------------------------------------------------------
    def database(self, name: str) -> Database:
        """The database store ``name`` keeps its tables in: ``data_dir/<name>.db`` on SQLite
        (opened once per State), the one shared PostgreSQL database otherwise."""
        path = sqlite_path(self.config, name)
        pg = self.config.state.postgresql
        if pg is not None:
            if self._shared_db is None:
                self._shared_db = PostgresDatabase(pg, replica_id=self.replica_id)
            return self._shared_db
        db = self._databases.get(name)
        if db is None:
            db = self._databases[name] = SqliteDatabase(path)
        return db

    def start_watching(self) -> None:
        """Follow other replicas' changes (PostgreSQL: LISTEN thread and catch-up poll)."""
        for db in self._open_databases():
            db.start_watching()

    def stale_for(self) -> float:
        """Seconds since the shared state was last reached (0.0 on SQLite)."""
        return self._shared_db.stale_for() if self._shared_db is not None else 0.0

    def close(self) -> None:
        """Close every database this State opened (the stores' handles on them included)."""
        for db in self._open_databases():
            db.close()
        self._databases.clear()
        self._shared_db = None

    def _open_databases(self) -> list[Database]:
        dbs: list[Database] = list(self._databases.values())
        if self._shared_db is not None:
            dbs.append(self._shared_db)
        return dbs

    # -- audit ----------------------------------------------------------------------------
    def audit_shipping(self) -> AuditShipping | None:
        """Where this replica ships its audit chain (None on SQLite: nowhere)."""
        return audit_shipping(self.config, self.master_key)

    def audit_log(self) -> AuditLog:
        """The in-process (thread) audit log: for the CLI and one-off writers."""
        a = self.config.audit
        return AuditLog(
            self.config.data_dir / "audit.db", a.jsonl, a.write_timeout,
            fsync=a.durability == "fsync", shipping=self.audit_shipping(),
            ocsf_path=a.ocsf, datastores=ocsf.datastores(self.config.resources),
        )  # fmt: skip

    def remote_audit_log(self, socket_path: Path | None = None) -> RemoteAuditLog:
        """The gateway's audit log: a writer process does the work (started here unless
        ``socket_path`` names one a supervisor runs)."""
        a = self.config.audit
        return RemoteAuditLog(
            self.config.data_dir / "audit.db", a.jsonl, a.write_timeout, socket_path=socket_path,
            fsync=a.durability == "fsync", shipping=self.audit_shipping(),
            ocsf_path=a.ocsf, datastores=ocsf.datastores(self.config.resources),
        )  # fmt: skip

    def audit_reader(self) -> AuditReader:
        """Reads this replica's chain, or the shared trail of every replica when shared."""
        return AuditReader(self.config.data_dir / "audit.db", shipping=self.audit_shipping())

    def policy_store(self) -> PolicyStore:
        known = {r.name for r in self.config.resources}
        return PolicyStore(self.config.policy_files, known)


__all__ = [
    "MIN_REVOCATION_RETENTION",
    "NOT_ON_SQLITE",
    "State",
    "audit_shipping",
    "default_replica_id",
    "revocation_retention",
    "sqlite_path",
]
