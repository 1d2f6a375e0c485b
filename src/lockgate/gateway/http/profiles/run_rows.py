"""Rows of runs a profile started through Lockgate, written behind and read through a cache.

The Databricks run registry and the Data Factory run table keep the same kind of row: written
once when the upstream answers a start (never changed but by a rewrite of the whole row),
read on the data path to decide who owns a run. :class:`RunRows` is what both share: an
in-memory cache of recent rows (a miss is one primary-key read), rows committed before the
client learns the run id (so another replica's next read finds them), and never a wait on an
unreachable PostgreSQL: while the database has been out of touch for more than
:data:`UNREACHABLE_AFTER` seconds (or a call just failed) a miss answers "unknown" (the
caller refuses: deny by default) and a started run is kept in memory and written when the
database answers again.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Hashable
from typing import Any, Generic, Protocol, TypeVar

from lockgate.identity.once import LedgerUnavailable
from lockgate.store import Database

#: seconds out of touch after which the database is not asked on the data path
UNREACHABLE_AFTER = 3.0
#: seconds the database is not asked again after a call failed
BACKOFF = 5.0
_CACHE_MAX = 4096
TOPIC = "runs"


class RunRow(Protocol):
    @property
    def key(self) -> Hashable: ...

    def row(self) -> tuple[object, ...]: ...


R = TypeVar("R", bound=RunRow)


class RunRows(Generic[R]):
    """The cache, the write-behind queue and the database of one kind of run row."""

    def __init__(
        self, db: Database, owned: bool, *, insert: str, select: str, what: str,
        log: logging.Logger | logging.LoggerAdapter[Any],
    ) -> None:  # fmt: skip
        self.db, self._owned = db, owned
        self._insert, self._select, self._what, self._log = insert, select, what, log
        self._lock = threading.Lock()
        self._cache: dict[Hashable, R] = {}
        self._unwritten: dict[Hashable, R] = {}  # kept while the database is away
        self._failed_at = float("-inf")

    def keep(self, rec: R) -> None:
        """Remember ``rec`` and write it now (or once the database answers again)."""
        self.remember(rec)
        with self._lock:
            self._unwritten[rec.key] = rec
        self.flush()

    def cached(self, key: Hashable) -> R | None:
        """The cached row of ``key``; writes what waits first if the database is back."""
        rec = self._cache.get(key)
        if self._unwritten:
            self.flush()  # the database is back: other replicas learn these runs now
        return rec

    def read(self, key: tuple[object, ...]) -> tuple[Any, ...] | None:
        """The stored row of ``key`` (the SELECT's parameters); None when absent or the
        database cannot say right now."""
        if not self._reachable():
            return None
        try:
            with self.db.read() as cur:
                return cur.execute(self._select, key).fetchone()
        except LedgerUnavailable as exc:
            self._failed(exc)
            return None

    def flush(self) -> None:
        """Write the rows kept in memory (the one just started, and any the database missed)."""
        with self._lock:
            pending = list(self._unwritten.values())
        if not pending or not self._reachable():
            return
        try:
            with self.db.transaction() as cur:
                for rec in pending:
                    cur.execute(self._insert, rec.row())
                cur.touch(TOPIC)
        except LedgerUnavailable as exc:
            self._failed(exc)
            return
        with self._lock:
            for rec in pending:
                if self._unwritten.get(rec.key) is rec:
                    del self._unwritten[rec.key]

    def close(self) -> None:
        self.flush()
        if self._owned:
            self.db.close()

    def _reachable(self) -> bool:
        return (
            self.db.unreached_for() <= UNREACHABLE_AFTER
            and time.monotonic() - self._failed_at >= BACKOFF
        )

    def _failed(self, exc: BaseException) -> None:
        self._failed_at = time.monotonic()
        self._log.warning(
            f"{self._what} unavailable: runs are kept in memory and written later",
            extra={"fields": {"database": self.db.label, "error": str(exc)}},
        )

    def remember(self, rec: R) -> None:
        """Cache a row read from the database (rows do not change under the cache)."""
        with self._lock:
            if len(self._cache) >= _CACHE_MAX:
                self._cache.clear()
            self._cache[rec.key] = rec


__all__ = ["BACKOFF", "TOPIC", "UNREACHABLE_AFTER", "RunRow", "RunRows"]
