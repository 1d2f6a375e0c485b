"""Durable state behind one interface, on SQLite (embedded, the default) or PostgreSQL
(shared by any number of replicas).

Stores (revocations, keys, credentials, run registries ...) code against
:class:`Database`: ``transaction()`` / ``read()`` hand out a :class:`Cursor` that speaks a
portable SQL subset (:mod:`lockgate.store.sql`), ``cur.touch(topic)`` marks what a write
changed, and ``version(topic)`` tells a store cheaply whether to reload. Schemas are
versioned :class:`Migration` steps per domain (:func:`migrate`, ``lockgate db upgrade``).
Driver errors surface as :class:`~lockgate.errors.StoreUnavailable`. How a store opens its
database, migrates it and keeps calls off the event loop is :mod:`lockgate.store.opening`.

Layer: with errors and config; it imports nothing above them.
"""

from lockgate.errors import StoreUnavailable
from lockgate.store.base import TOPICS, Cursor, Database, Dialect
from lockgate.store.migrations import (
    CORE_DOMAIN,
    CORE_MIGRATIONS,
    UPGRADE_COMMAND,
    Migration,
    migrate,
    pending,
    register_domain,
    registered_domains,
)
from lockgate.store.opening import off_loop, open_database, open_store, upgrade_allowed
from lockgate.store.postgres import PostgresDatabase
from lockgate.store.sqlite import SqliteDatabase

__all__ = [
    "CORE_DOMAIN",
    "CORE_MIGRATIONS",
    "TOPICS",
    "UPGRADE_COMMAND",
    "Cursor",
    "Database",
    "Dialect",
    "Migration",
    "PostgresDatabase",
    "SqliteDatabase",
    "StoreUnavailable",
    "migrate",
    "off_loop",
    "open_database",
    "open_store",
    "pending",
    "register_domain",
    "registered_domains",
    "upgrade_allowed",
]
