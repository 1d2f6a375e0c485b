"""How long a replica may decide from memory while the shared PostgreSQL is unreachable.

With ``state: {postgresql: ...}`` every replica holds revocations, signing keys and
credentials in memory and follows the database's changes. When the database cannot be
reached, what a replica holds may miss a revocation made elsewhere. For up to
``max_staleness`` seconds (default 30) requests are still decided from memory; past it,
every decision stops — deny by default under partial failure:

- token verification (:class:`lockgate.identity.tokens.TokenVerifier`, the one check every
  engine makes) refuses with reason :data:`STALE_REASON`, audited like any refusal;
- the token service refuses to mint (:class:`lockgate.identity.service.TokenService`);
- ``/readyz`` answers 503 (:mod:`lockgate.readiness`).

The database's ``stale_for()`` is a memory read (seconds since the last notification or
catch-up poll that reached it, or since the change feed moved past revocations that could
not be reloaded, whichever is longer), so the check costs next to nothing on the request
path.
With SQLite state there is no bound: the file is local.
"""

from __future__ import annotations

from dataclasses import dataclass

from lockgate.config import LockgateConfig
from lockgate.store import Database

#: The refusal reason (audit records, metrics, engines' error messages).
STALE_REASON = "shared_state_stale"


@dataclass(frozen=True, slots=True)
class StalenessBound:
    """``database`` may be out of reach for ``max_staleness`` seconds before decisions stop."""

    database: Database
    max_staleness: float
    catch_up_interval: float = 1.0  # the longest silence of a database that is reached

    @classmethod
    def for_config(cls, config: LockgateConfig, database: Database) -> StalenessBound | None:
        """The bound of a shared ``state:``; None for SQLite (nothing to go stale)."""
        settings = config.state.postgresql
        if not config.state.shared or settings is None:
            return None
        return cls(database, settings.max_staleness, settings.catch_up_interval)

    def stale_for(self) -> float:
        return self.database.stale_for()

    def refusal(self) -> str | None:
        """Why decisions stop now, or None while within the bound."""
        age = self.database.stale_for()
        if age <= self.max_staleness:
            return None
        return (
            f"shared state (PostgreSQL) unreachable for {age:.0f} s; decisions stop after "
            f"max_staleness {self.max_staleness:g} s"
        )

    def status(self) -> tuple[bool, str]:
        """(still within the bound, what ``/readyz`` says): ``ok`` while the database is
        reached as expected (a catch-up poll apart), else for how long it has not been."""
        age = self.database.stale_for()
        if age > self.max_staleness:
            return False, (
                f"unreachable for {age:.0f} s, past the bound of {self.max_staleness:g} s: "
                "every request is refused"
            )
        if age >= 2 * self.catch_up_interval:  # a poll missed: say so while still ready
            return True, (
                f"unreachable for {age:.0f} s, serving from memory (bound {self.max_staleness:g} s)"
            )
        return True, "ok"


__all__ = ["STALE_REASON", "StalenessBound"]
