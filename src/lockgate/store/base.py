"""What every store codes against: a :class:`Database` that hands out transactions whose
:class:`Cursor` speaks the portable SQL subset (:mod:`lockgate.store.sql`), and change
versions per topic so a process learns cheaply that another one wrote.

A write transaction calls ``cur.touch(topic)`` for each topic it changed; ``version(topic)``
then moves in every process watching the same database (at once on SQLite, which reads it
from the file; on PostgreSQL through LISTEN/NOTIFY and a catch-up poll, from memory).
"""

from __future__ import annotations

from collections.abc import Sequence
from contextlib import AbstractContextManager
from typing import Any, Literal, Protocol

Dialect = Literal["sqlite", "postgresql"]

#: The topics stores touch (free-form strings; these are the ones in use).
TOPICS = ("revocations", "keys", "credentials", "roles", "runs")


class Cursor(Protocol):
    """One transaction's cursor."""

    @property
    def rowcount(self) -> int: ...

    def execute(self, sql: str, params: Sequence[object] = ()) -> Cursor:
        """Run one statement of the portable subset (``?`` placeholders)."""
        ...

    def fetchone(self) -> tuple[Any, ...] | None: ...

    def fetchall(self) -> list[tuple[Any, ...]]: ...

    def touch(self, topic: str) -> None:
        """This transaction changed ``topic``: its version moves when the transaction
        commits (once however often it is touched)."""
        ...


class Database(Protocol):
    """A SQLite file or the shared PostgreSQL database."""

    dialect: Dialect
    label: str  # for messages: the file path, or the DSN without its password

    def transaction(self) -> AbstractContextManager[Cursor]:
        """Commit on success, roll back on error. Raises StoreUnavailable when the database
        cannot be reached or refuses (never a driver exception)."""
        ...

    def read(self) -> AbstractContextManager[Cursor]:
        """A read-only transaction (one consistent snapshot)."""
        ...

    def version(self, topic: str) -> int:
        """How often ``topic`` changed (0: never). PostgreSQL: a memory read."""
        ...

    def stale_for(self) -> float:
        """How old what memory holds may be: seconds since the change versions were last
        read, or since they moved past what a store that called :meth:`mark_loaded` could
        reload, whichever is longer (0.0 for SQLite). The staleness bound reads this."""
        ...

    def unreached_for(self) -> float:
        """Seconds since the database last answered anything: whether asking it now is
        worth a wait (0.0 for SQLite). Not a freshness measure: a store stuck on one locked
        table leaves it low while :meth:`stale_for` climbs."""
        ...

    def mark_loaded(self, follower: object, topic: str, version: int) -> None:
        """``follower`` (a store) now holds ``topic`` as of ``version``, read before its
        rows. While the feed has moved past that, :meth:`stale_for` counts from when it did,
        so a reload that keeps failing is as stale as a feed that went quiet (SQLite: no-op,
        every read is of the file itself)."""
        ...

    def start_watching(self) -> None:
        """Follow other processes' changes (PostgreSQL: LISTEN thread + catch-up poll)."""
        ...

    def close(self) -> None: ...


__all__ = ["TOPICS", "Cursor", "Database", "Dialect"]
