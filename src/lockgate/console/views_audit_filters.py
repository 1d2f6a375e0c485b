"""The audit explorer's filters and the small helpers its pages and exports share: reading
the query string into an :class:`~lockgate.audit.AuditQuery`, links, times, badges."""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from datetime import UTC, datetime
from urllib.parse import urlencode

from lockgate.audit import AuditQuery, AuditRow
from lockgate.audit.query import parse_time as read_time

#: records per page of the explorer
PAGE_SIZE = 50
#: an export holds at most this many records (the newest that match)
EXPORT_CAP = 1_000_000
#: the DAG and resource fields suggest names seen this long ago or later, re-read this often
SUGGEST_WINDOW = 30 * 86_400.0
SUGGEST_TTL = 60.0
SUGGEST_MAX = 500
#: a run's timeline shows at most this many of its newest records
TIMELINE_MAX = 2_000
#: how long a POST to /audit/verify waits for the verification before answering (it goes on)
VERIFY_WAIT = 5.0
#: the query-string names of the filters, in the form's order
FILTERS = ("deployment", "dag", "run", "task", "try", "resource", "action", "decision",
           "event", "principal", "jti", "since", "until", "shadow", "replica")  # fmt: skip
DECISIONS = ("allow", "deny", "error")
_TRUE = {"1", "on", "true", "yes"}
#: a try number: what an Airflow task could reach, and within SQLite's integers
_TRY = re.compile(r"[0-9]{1,6}")
#: the last time a filter may name: 9999-12-31T23:59:59Z
LAST_TIME = 253_402_300_799.0


class BadFilter(ValueError):
    """A filter the explorer cannot read (the message names it)."""


# -- filters ---------------------------------------------------------------------------


def parse_time(text: str, name: str) -> float:
    """A time filter: unix seconds, or ISO 8601 / ``datetime-local`` (no offset: UTC), from
    1970 to the year 9999 (a time past any calendar cannot be shown back in the form)."""
    try:
        ts = read_time(text)
    except (ValueError, OverflowError):
        ts = math.nan
    if not 0 <= ts <= LAST_TIME:  # NaN fails this too
        raise BadFilter(f"{name}: {short(text, 40)!r} is not a time (2026-12-05T13:00 UTC)")
    return ts


def form_time(ts: float | None) -> str:
    """A time as a ``datetime-local`` input holds it (UTC, to the second)."""
    if ts is None:
        return ""
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%dT%H:%M:%S")


def filters_of(params: Mapping[str, str]) -> tuple[AuditQuery, dict[str, str]]:
    """The query the page's parameters ask for, and the form's values (blank left out)."""
    values = {k: params.get(k, "").strip() for k in FILTERS}
    values = {k: v for k, v in values.items() if v}
    text = {k: values.get(k) for k in FILTERS}
    try_number = None
    if "try" in values:
        if not _TRY.fullmatch(values["try"]):  # ASCII digits: "²" is a digit to isdigit()
            raise BadFilter(f"try: {short(values['try'], 40)!r} is not a whole number")
        try_number = int(values["try"])
    since = parse_time(values["since"], "since") if "since" in values else None
    until = parse_time(values["until"], "until") if "until" in values else None
    shadow = values.get("shadow", "").lower() in _TRUE
    q = AuditQuery(
        deployment=text["deployment"], dag=text["dag"], run=text["run"], task=text["task"],
        try_number=try_number, resource=text["resource"], action=text["action"],
        decision=text["decision"], event=text["event"], principal=text["principal"],
        jti=text["jti"], since=since, until=until, shadow=shadow, replica=text["replica"],
    )  # fmt: skip
    if since is not None:
        values["since"] = form_time(since)
    if until is not None:
        values["until"] = form_time(until)
    if shadow:
        values["shadow"] = "1"
    else:
        values.pop("shadow", None)
    return q, values


def href(path: str, values: Mapping[str, str], **more: str | int | None) -> str:
    """``/console<path>`` with the filter ``values`` and ``more`` (None left out)."""
    params = {**values, **{k: str(v) for k, v in more.items() if v is not None}}
    params = {k: v for k, v in params.items() if v}
    return f"/console{path}" + (f"?{urlencode(params)}" if params else "")


# -- display helpers (templates call these) --------------------------------------------


def utc(ts: float | None) -> str:
    if ts is None:
        return ""
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%d %H:%M:%S.%f")[:-3]


def record_href(row: AuditRow) -> str:
    return href(f"/audit/record/{row.seq}", {"replica": row.replica or ""})


def run_href(dag: str | None, run: str | None) -> str:
    return href("/audit/run", {"dag": dag or "", "run": run or ""})


def badge(row: AuditRow) -> str:
    """The CSS class of a record's decision badge."""
    return row.decision if row.decision in DECISIONS else ""


def shadow_of(row: AuditRow) -> dict[str, str] | None:
    """A record's shadow verdict (decision, rule, reason; "" where it has none), or None."""
    verdict = row.detail.get("shadow")
    if not isinstance(verdict, dict):
        return None
    return {k: str(verdict.get(k) or "") for k in ("decision", "rule", "reason")}


def short(text: str | None, most: int = 60) -> str:
    if text is None:
        return ""
    return text if len(text) <= most else text[: most - 1] + "…"
