"""Deciding in this process's memory while the shared state database cannot answer.

A room that keeps counters in the state database (quotas, rate limits) falls back to memory
when a call fails with :class:`~lockgate.errors.StoreUnavailable`, and shares again once the
database answers. :class:`MemoryFallback` is that switch: it logs once each way (an error
going down, an info coming back), and spares each call the connect timeout while a shared
database is known down (not reached for a few catch-up intervals).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

from lockgate.errors import StoreUnavailable
from lockgate.store.base import Database


class MemoryFallback:
    """Whether a room decides in memory now; ``lock`` is the room's lock over its memory
    state, ``on_recovery`` runs under it when the database answers again (to drop what
    memory decided meanwhile)."""

    def __init__(
        self,
        db: Database,
        lock: threading.Lock,
        log: logging.Logger,
        *,
        fell_back: str,
        recovered: str,
        on_recovery: Callable[[], None] | None = None,
    ) -> None:
        self._db = db
        self._lock = lock
        self._log = log
        self._fell_back_message = fell_back
        self._recovered_message = recovered
        self._on_recovery = on_recovery
        self.shared = db.dialect == "postgresql"
        settings = getattr(db, "settings", None)
        self._known_down_after = 3 * float(getattr(settings, "catch_up_interval", 1.0))
        self.degraded = False

    def refuse_if_known_down(self) -> None:
        """Raise :class:`StoreUnavailable` when a shared database has not answered for a few
        catch-up intervals (each ask would wait out the connect timeout): memory decides.
        Reachability, not freshness: a store stuck behind one locked table leaves the
        room's own table worth asking."""
        if not self.shared:
            return
        age = self._db.unreached_for()
        if age > self._known_down_after:
            raise StoreUnavailable(f"{self._db.label}: not reached for {age:.0f} s")

    def fell_back(self, exc: StoreUnavailable) -> None:
        """A call failed: memory decides (logged the first time)."""
        with self._lock:
            first, self.degraded = not self.degraded, True
        if first:
            self._log.error(self._fell_back_message, extra={"fields": {"error": str(exc)}})

    def recovered(self) -> None:
        """A call succeeded: shared again (logged when it was not)."""
        if self.degraded:
            with self._lock:
                self.degraded = False
                if self._on_recovery is not None:
                    self._on_recovery()
            self._log.info(self._recovered_message)


__all__ = ["MemoryFallback"]
