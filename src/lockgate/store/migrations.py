"""Versioned schemas: each store declares its tables as numbered :class:`Migration` steps
of one *domain* (``revocations``, ``credentials`` ...), registers them at import, and calls
:func:`migrate` when it opens its database.

``lockgate_schema(domain, version, description, applied_at)`` records what was applied, in
the same database, so a PostgreSQL shared by every replica is migrated once: the first
replica takes a transaction-scoped advisory lock, the others wait for it and then find
nothing left to do. With ``migrate_on_start: false`` a replica only checks
(``allowed=False``) and refuses to start on an old schema, naming ``lockgate db upgrade``.
"""

from __future__ import annotations

import re
import time
from collections.abc import Sequence
from dataclasses import dataclass

from lockgate.errors import StoreUnavailable
from lockgate.store.base import Cursor, Database
from lockgate.store.sql import split_statements, to_postgres_ddl

# Any fixed 64-bit number: the key of the advisory lock serialising migrations on PostgreSQL.
_ADVISORY_LOCK_KEY = 0x4C6F636B67617465  # "Lockgate"
_DOMAIN_RE = re.compile(r"^[a-z][a-z0-9_]{0,62}$")
UPGRADE_COMMAND = "lockgate db upgrade"


@dataclass(frozen=True)
class Migration:
    """Step ``version`` (1, 2, ... in order) of a domain's schema. ``ddl`` is SQLite-flavoured
    SQL (several statements allowed); PostgreSQL gets INTEGER->BIGINT, REAL->DOUBLE PRECISION,
    BLOB->BYTEA. Write ``CREATE TABLE IF NOT EXISTS`` where files made before versioning may
    already hold the table."""

    version: int
    description: str
    ddl: str


# The tables of the store layer itself: the schema ledger, change versions, and facts the
# whole deployment agrees on (e.g. the master key's fingerprint).
CORE_DOMAIN = "lockgate"
CORE_MIGRATIONS: tuple[Migration, ...] = (
    Migration(
        1,
        "schema ledger, change versions, shared facts",
        """
        CREATE TABLE IF NOT EXISTS lockgate_schema (
            domain TEXT NOT NULL, version INTEGER NOT NULL, description TEXT NOT NULL,
            applied_at REAL NOT NULL, PRIMARY KEY (domain, version));
        CREATE TABLE IF NOT EXISTS lockgate_changes (
            topic TEXT PRIMARY KEY, version INTEGER NOT NULL);
        CREATE TABLE IF NOT EXISTS lockgate_meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
        """,
    ),
)

_registry: dict[str, tuple[Migration, ...]] = {}


def _checked(domain: str, migrations: Sequence[Migration]) -> tuple[Migration, ...]:
    if not _DOMAIN_RE.match(domain):
        raise ValueError(f"schema domain {domain!r}: expected lower-case letters, digits, _")
    steps = tuple(migrations)
    if [m.version for m in steps] != list(range(1, len(steps) + 1)):
        raise ValueError(f"schema domain {domain!r}: versions must be 1, 2, ... in order")
    return steps


def register_domain(domain: str, migrations: Sequence[Migration]) -> None:
    """Make ``domain`` known to ``lockgate db upgrade/check`` (call at import of the store).
    Registering the same steps again is harmless; different ones under one name are a bug."""
    steps = _checked(domain, migrations)
    known = _registry.get(domain)
    if known is not None and known != steps:
        raise ValueError(f"schema domain {domain!r} is registered twice with other steps")
    _registry[domain] = steps


def registered_domains() -> dict[str, tuple[Migration, ...]]:
    """Every registered domain (the core one first) and its steps."""
    return {CORE_DOMAIN: CORE_MIGRATIONS, **_registry}


def _ledger_exists(cur: Cursor, dialect: str) -> bool:
    if dialect == "postgresql":
        cur.execute("SELECT to_regclass('lockgate_schema') IS NOT NULL")
        row = cur.fetchone()
        return bool(row and row[0])
    cur.execute("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'lockgate_schema'")
    return cur.fetchone() is not None


def _applied(cur: Cursor, dialect: str, domain: str) -> set[int]:
    if not _ledger_exists(cur, dialect):
        return set()
    cur.execute("SELECT version FROM lockgate_schema WHERE domain = ?", (domain,))
    return {int(row[0]) for row in cur.fetchall()}


def pending(db: Database, domain: str, migrations: Sequence[Migration]) -> list[Migration]:
    """The steps of ``domain`` not applied to ``db`` yet (the core tables' included when
    they are missing, as the core domain's own)."""
    steps = _checked(domain, migrations)
    with db.read() as cur:
        done = _applied(cur, db.dialect, domain)
    return [m for m in steps if m.version not in done]


def _apply(cur: Cursor, db: Database, domain: str, steps: Sequence[Migration]) -> list[Migration]:
    done = _applied(cur, db.dialect, domain)
    applied: list[Migration] = []
    for step in steps:
        if step.version in done:
            continue
        ddl = to_postgres_ddl(step.ddl) if db.dialect == "postgresql" else step.ddl
        for statement in split_statements(ddl):
            cur.execute(statement)
        cur.execute(
            "INSERT INTO lockgate_schema (domain, version, description, applied_at) "
            "VALUES (?, ?, ?, ?)",
            (domain, step.version, step.description, time.time()),
        )
        applied.append(step)
    return applied


def migrate(
    db: Database, domain: str, migrations: Sequence[Migration], *, allowed: bool = True
) -> list[Migration]:
    """Apply the steps of ``domain`` that ``db`` lacks, in one transaction (the core tables
    first); returns what was applied. ``allowed=False``: apply nothing, raise
    :class:`StoreUnavailable` naming what is missing and the command that applies it."""
    steps = _checked(domain, migrations)
    if not allowed:
        missing = [
            (name, m)
            for name, domain_steps in ((CORE_DOMAIN, CORE_MIGRATIONS), (domain, steps))
            for m in pending(db, name, domain_steps)
        ]
        if missing:
            raise StoreUnavailable(
                f"{db.label}: the schema is not current ("
                + ", ".join(f"{name} {m.version}: {m.description}" for name, m in missing)
                + f"); run `{UPGRADE_COMMAND}`"
            )
        return []
    with db.transaction() as cur:
        if db.dialect == "postgresql":
            # Held to commit: a second replica starting now waits, then finds nothing to do.
            cur.execute("SELECT pg_advisory_xact_lock(?)", (_ADVISORY_LOCK_KEY,))
        _apply(cur, db, CORE_DOMAIN, CORE_MIGRATIONS)
        return _apply(cur, db, domain, steps)


__all__ = [
    "CORE_DOMAIN",
    "CORE_MIGRATIONS",
    "UPGRADE_COMMAND",
    "Migration",
    "migrate",
    "pending",
    "register_domain",
    "registered_domains",
]
