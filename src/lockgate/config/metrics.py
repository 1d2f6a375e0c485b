"""``metrics:``: what the Prometheus metrics label, bounded (the ``dag`` label)."""

from __future__ import annotations

from lockgate.config._base import Section


class MetricsSettings(Section):
    """Which DAGs keep their own ``dag`` label (filled in by the metrics part)."""
