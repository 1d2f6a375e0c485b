"""What an alert is, whatever carries it: one :class:`Alert`, formatted per notifier.

An alert names what happened (``kind``, ``summary``), how bad (``severity``: PagerDuty's
``critical | error | warning | info``), who it is about (deployment, DAG, run, task when
known), and where to look: a link into the console when ``alerts.console_url`` is set, else
the exact ``lockgate audit search`` command that lists the records behind it. ``key`` is
what repeats of one condition share (PagerDuty's dedup key): ``kind`` plus the subject (a
DAG, a credential, a signing key), never a run id, so one incident collects them.
"""

from __future__ import annotations

import shlex
import time
from dataclasses import dataclass, field
from typing import Literal
from urllib.parse import urlencode

from lockgate._log import redact

Severity = Literal["critical", "error", "warning", "info"]
Action = Literal["trigger", "resolve"]


@dataclass(frozen=True)
class Alert:
    kind: str
    severity: Severity
    summary: str
    subject: str  # the DAG, credential, key or sink the alert is about
    action: Action = "trigger"
    deployment: str | None = None
    dag_id: str | None = None
    run_id: str | None = None
    task_id: str | None = None
    resource: str | None = None
    #: plain facts (counts, first/last denial, run ids ...): never a secret or a statement
    details: dict[str, object] = field(default_factory=dict)
    #: the audit search filters that show the records behind the alert (empty: none)
    search: dict[str, str] = field(default_factory=dict)
    ts: float = field(default_factory=time.time)

    @property
    def key(self) -> str:
        """Shared by every alert on one condition (PagerDuty ``dedup_key``)."""
        return f"lockgate/{self.kind}/{self.subject}"

    def where_to_look(self, console_url: str | None) -> dict[str, str]:
        """``{"link": ...}`` into the console when configured, else ``{"command": ...}``
        (the ``lockgate audit search`` invocation); empty when no records are behind it."""
        if not self.search:
            return {}
        if console_url:
            return {"link": f"{console_url.rstrip('/')}/audit?{urlencode(self.search)}"}
        args = " ".join(f"--{k} {shlex.quote(v)}" for k, v in self.search.items())
        return {"command": f"lockgate audit search {args}"}

    def context(self) -> dict[str, str]:
        """Deployment, DAG, run, task and resource, those known."""
        pairs = {
            "deployment": self.deployment,
            "dag_id": self.dag_id,
            "run_id": self.run_id,
            "task_id": self.task_id,
            "resource": self.resource,
        }
        return {k: v for k, v in pairs.items() if v}

    def facts(self) -> dict[str, object]:
        """Details with anything secret-shaped withheld (records carry none; a second look)."""
        cleaned = redact(dict(self.details))
        assert isinstance(cleaned, dict)
        return {str(k): v for k, v in cleaned.items()}


__all__ = ["Action", "Alert", "Severity"]
