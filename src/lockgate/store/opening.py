"""How a store gets its database: what every store's constructor does the same way.

A store is given ``Path | Database | None``: the State's database (shared or a SQLite file
the State opened: the State closes it), a SQLite path (the store opens and closes it), or
``None`` (a private in-memory database: tests). Whether it may apply missing migrations is
the caller's word when given, else the database's own settings (``migrate_on_start`` on
PostgreSQL; SQLite always may). A shared database is never waited on by the event loop:
:func:`off_loop` runs a store call in a worker thread there, inline on SQLite (a local file
write is quicker than the thread hop).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import ParamSpec, TypeVar

from lockgate.store.base import Database
from lockgate.store.migrations import Migration, migrate
from lockgate.store.sqlite import SqliteDatabase

_P = ParamSpec("_P")
_T = TypeVar("_T")


def open_database(where: Path | Database | None) -> tuple[Database, bool]:
    """``where`` as a :class:`Database`, and whether the caller owns (closes) it: a path is
    a SQLite file (made 0600: state names deployments), ``None`` a private in-memory
    database, a database is the State's."""
    if where is None:
        return SqliteDatabase(None), True
    if isinstance(where, str | Path):
        return SqliteDatabase(Path(where)), True
    return where, False


def upgrade_allowed(db: Database, migrate_schema: bool | None) -> bool:
    """May a store opening ``db`` apply missing migrations: ``migrate_schema`` when given,
    else what the database's settings say (``migrate_on_start`` on PostgreSQL; SQLite: yes)."""
    if migrate_schema is not None:
        return migrate_schema
    settings = getattr(db, "settings", None)
    return bool(getattr(settings, "migrate_on_start", True))


def open_store(
    where: Path | Database | None,
    domain: str,
    migrations: Sequence[Migration],
    *,
    migrate_schema: bool | None = None,
) -> tuple[Database, bool]:
    """:func:`open_database`, then the store's schema brought up to date (or, when
    upgrades are not allowed, :class:`~lockgate.errors.StoreUnavailable` naming what is
    missing)."""
    db, owned = open_database(where)
    migrate(db, domain, migrations, allowed=upgrade_allowed(db, migrate_schema))
    return db, owned


async def off_loop(db: Database, fn: Callable[_P, _T], *args: _P.args, **kwargs: _P.kwargs) -> _T:
    """``fn(*args, **kwargs)`` in a worker thread when ``db`` is shared, inline on SQLite."""
    if db.dialect == "postgresql":
        return await asyncio.to_thread(fn, *args, **kwargs)
    return fn(*args, **kwargs)


__all__ = ["off_loop", "open_database", "open_store", "upgrade_allowed"]
