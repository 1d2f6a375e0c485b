"""``metrics:``: what the Prometheus metrics label, bounded (the ``dag`` label).

::

    metrics:
      dag_label:
        allow: ["finance_*", "orders_daily"]   # these DAGs always keep their own label
        top: 20                                # plus the first 20 other DAGs seen
"""

from __future__ import annotations

import re

from pydantic import Field, field_validator

from lockgate.config._base import Section

#: The characters of a glob in ``dag_label.allow`` (a DAG id's, plus ``*``, ``?`` and ``[]``).
_GLOB_RE = re.compile(r"^[A-Za-z0-9_.*?\[\]-]{1,100}$")


class DagLabelSettings(Section):
    """Which DAG ids keep their own value in the ``dag`` label of
    ``lockgate_requests_total``; every other one is ``_other``, so a fleet of thousands of
    DAGs does not make thousands of series per resource, action and decision."""

    # Globs (fnmatch, case-sensitive) of DAG ids that always keep their name.
    allow: list[str] = []
    # Besides those, the first ``top`` distinct DAG ids each process sees keep theirs (0: none).
    top: int = Field(default=20, ge=0, le=1000)

    @field_validator("allow")
    @classmethod
    def _globs(cls, globs: list[str]) -> list[str]:
        for glob in globs:
            if not _GLOB_RE.match(glob):
                raise ValueError(
                    f"expected a glob of DAG ids (letters, digits, _ . - * ? []), got {glob!r}"
                )
        return globs


class MetricsSettings(Section):
    """What the metrics label; see docs/metrics.md."""

    dag_label: DagLabelSettings = DagLabelSettings()
