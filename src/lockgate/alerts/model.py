"""What an alert is, whatever carries it: one :class:`Alert`, formatted per notifier.

An alert names what happened (``kind``, ``summary``), how bad (``severity``: PagerDuty's
``critical | error | warning | info``), who it is about (deployment, DAG, run, task when
known), and where to look: a link into the console when ``alerts.console_url`` is set, else
the exact ``lockgate audit search`` command that lists the records behind it. ``key`` is
what repeats of one condition share (PagerDuty's dedup key): ``kind`` plus the subject (a
DAG, a credential, a signing key), never a run id, so one incident collects them.

Much of what an alert says comes from requests (an object path, a CQL identifier, a run id a
deployment chose): every value is capped (:data:`MAX_TEXT` characters, :data:`MAX_ITEMS`
list items), so a crafted megabyte never makes a body a receiver refuses (PagerDuty takes at
most 512 KB) and the alert about it with it; a key past PagerDuty's 255 characters keeps its
start and ends with a digest of the whole subject, so it still names one condition.
"""

from __future__ import annotations

import hashlib
import secrets
import shlex
import time
from dataclasses import dataclass, field
from typing import Literal
from urllib.parse import urlencode

from lockgate._log import redact

#: Characters of any one text an alert carries (summary, ids, a denial's object ...).
MAX_TEXT = 1000
#: Items of any one list an alert carries; nesting past MAX_DEPTH is cut too.
MAX_ITEMS = 50
MAX_DEPTH = 4
#: PagerDuty's limit on ``dedup_key``.
MAX_KEY = 255

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
    #: this alert, the same in every retry: a receiver drops a request it has seen
    id: str = field(default_factory=lambda: secrets.token_hex(16), compare=False)
    _key: str = field(init=False, repr=False, compare=False, default="")

    def __post_init__(self) -> None:
        subject = self.subject
        for name in ("summary", "subject", "deployment", "dag_id", "run_id", "task_id",
                     "resource"):  # fmt: skip
            value = getattr(self, name)
            if not isinstance(value, str):
                continue
            if "eyJ" in value:  # a token in a logged failure's text: withheld, as in the log
                value = str(redact(value))
            if name == "subject":
                subject = value
            object.__setattr__(self, name, _cap_text(value))
        # the key is made of the whole subject (withheld tokens withheld), not the shown one
        object.__setattr__(self, "_key", _key(self.kind, subject))

    @property
    def key(self) -> str:
        """Shared by every alert on one condition (PagerDuty ``dedup_key``): ``lockgate/
        <kind>/<subject>``, at most :data:`MAX_KEY` characters."""
        return self._key

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
        return {_cap_text(str(k)): _capped(v) for k, v in list(cleaned.items())[:MAX_ITEMS]}


def _key(kind: str, subject: str) -> str:
    key = f"lockgate/{kind}/{subject}"
    if len(key) <= MAX_KEY:
        return key
    digest = hashlib.sha256(subject.encode("utf-8", "replace")).hexdigest()[:16]
    return f"{key[: MAX_KEY - 17]}~{digest}"


def _cap_text(text: str) -> str:
    return text if len(text) <= MAX_TEXT else text[: MAX_TEXT - 1] + "…"


def _capped(value: object, depth: int = 0) -> object:
    """``value`` with every text, list and mapping in it cut to the caps above."""
    if isinstance(value, str):
        return _cap_text(value)
    if depth >= MAX_DEPTH and isinstance(value, (dict, list, tuple)):
        return "…"
    if isinstance(value, dict):
        items = list(value.items())[:MAX_ITEMS]
        return {_cap_text(str(k)): _capped(v, depth + 1) for k, v in items}
    if isinstance(value, (list, tuple)):
        return [_capped(v, depth + 1) for v in value[:MAX_ITEMS]]
    return value


__all__ = ["Action", "Alert", "Severity"]
