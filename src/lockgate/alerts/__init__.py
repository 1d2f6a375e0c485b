"""Alerts: notifiers (webhook with an HMAC signature, Slack, PagerDuty Events v2) told about
denials, audit refusing records, upstream credential failures, rotation failures, aging
credentials and signing keys near expiry.

The door: :class:`Alerts`, run by the serving process that runs the control plane.
Inside: :mod:`.model` (an alert), :mod:`.trail_rules` (which records raise one, grouped per
DAG), :mod:`.checks` (conditions looked at periodically), :mod:`.trail` (the cursor and the
sender lease), :mod:`.senders` (the three formats, signing, retries) and :mod:`.dispatch`
(bounded queues, rate limits, the metric).
"""

from __future__ import annotations

from lockgate.alerts.model import Alert
from lockgate.alerts.service import Alerts

__all__ = ["Alert", "Alerts"]
