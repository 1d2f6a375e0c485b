"""``alerts:``: where Lockgate sends alerts (webhook, Slack, PagerDuty) and on what.

Off when no notifier is configured. The room that sends them is :mod:`lockgate.alerts`.
"""

from __future__ import annotations

from lockgate.config._base import Section


class AlertSettings(Section):
    """Notifiers and the events that raise alerts (filled in by the alerts room)."""
