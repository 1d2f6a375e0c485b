"""What in the audit trail raises an alert, and how a storm becomes a handful of them.

- ``denials``: ``denied`` records, gathered per DAG (per principal when no DAG) for
  ``alerts.denials.window`` seconds from the first one, then one alert with the count, the
  first and last denial (principal, action, object, reason) and the run and task ids seen.
  At most ``max_groups`` DAGs are alerted on by name per window (counted from the first
  alert, whenever each DAG's own window ends); the rest become one summary alert.
- ``credential_failure``: the gateway could not use its upstream credential: an
  ``upstream_error`` whose reason names the credential (``credential_unavailable``: none
  stored, the token endpoint or federation refused), an upstream that refused the
  gateway's login (a PostgreSQL 28xxx, a CQL authentication error: ``upstream_error`` whose
  error says so), or an upstream answer 401 relayed after the retry with the rotated or
  previous version (the credential itself is wrong). Gathered per resource like denials.
- ``rotation_failure``: a rotation or refresh recorded as failed (``credential_rotated``,
  ``credential_set``, ``key_rotated`` with decision ``error``, or a reason saying failed).

A storm is bounded in memory as in alerts: a group keeps its first and last record cut
to what an alert shows (texts of :data:`lockgate.alerts.model.MAX_TEXT` characters, no
detail), and at most :data:`MAX_OPEN` subjects are gathered by name per window; records of
further subjects are only counted, into the window's summary alert.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Callable
from dataclasses import dataclass, field

from lockgate.alerts.model import MAX_ITEMS, MAX_TEXT, Alert, Severity
from lockgate.audit.record import AuditRow

#: How many run and task ids a grouped alert lists.
MAX_IDS = 10
#: Subjects gathered by name at once; records of more are counted into the summary alert.
MAX_OPEN = 10_000
_TEXT_FIELDS = ("deployment", "dag_id", "task_id", "run_id", "principal", "resource",
                "action", "object", "rule", "reason")  # fmt: skip
_AUTH_ERROR = re.compile(
    r"(?i)\b(28P01|28000|authenticat\w*|password|credential|unauthori[sz]ed|invalid_client|"
    r"bad credentials|permission denied)"
)
_ROTATIONS = frozenset({"credential_rotated", "credential_set", "key_rotated"})
#: The records any rule below may take, as SQL on the audit columns: the trail is read
#: through it, so a busy gateway's allowed requests are never fetched.
SQL_CANDIDATES = (
    "(event IN ('denied', 'upstream_error', "
    + ", ".join(f"'{e}'" for e in sorted(_ROTATIONS))
    + ") OR (event = 'allowed' AND status = 401))"
)


def is_denial(row: AuditRow) -> bool:
    return row.event == "denied"


def is_credential_failure(row: AuditRow) -> bool:
    reason = row.reason or ""
    if row.event == "upstream_error":
        if "credential" in reason:
            return True
        error = row.detail.get("error") if isinstance(row.detail, dict) else None
        return isinstance(error, str) and bool(_AUTH_ERROR.search(error))
    # the upstream refused the gateway's own credential (the client's token was verified)
    return row.event == "allowed" and row.status == 401


def is_rotation_failure(row: AuditRow) -> bool:
    if row.event not in _ROTATIONS:
        return False
    return row.decision in {"error", "deny"} or "fail" in (row.reason or "")


def _moment(row: AuditRow) -> dict[str, object]:
    """What an alert shows of one record (the record carries no secret or literal)."""
    out = {
        "ts": row.ts,
        "principal": row.principal,
        "action": row.action,
        "object": row.object,
        "reason": row.reason,
        "status": row.status,
    }
    return {k: v for k, v in out.items() if v is not None}


def _kept(row: AuditRow) -> AuditRow:
    """What a group keeps of ``row``: its texts capped, no detail (a request can make its
    object megabytes long; a thousand open groups must not hold a thousand of those)."""
    long = {n: getattr(row, n)[:MAX_TEXT] for n in _TEXT_FIELDS
            if isinstance(getattr(row, n), str) and len(getattr(row, n)) > MAX_TEXT}  # fmt: skip
    if not long and not row.detail:
        return row
    return dataclasses.replace(row, detail={}, **long)


@dataclass
class Group:
    """Records of one subject gathered in one window."""

    subject: str
    opened: float
    first: AuditRow
    last: AuditRow
    count: int = 1
    runs: list[str] = field(default_factory=list)
    tasks: list[str] = field(default_factory=list)
    resources: list[str] = field(default_factory=list)

    def add(self, row: AuditRow) -> None:
        self.count += 1
        self.last = _kept(row)
        self.note(row)

    def note(self, row: AuditRow) -> None:
        for value, seen in ((row.run_id, self.runs), (row.task_id, self.tasks),
                            (row.resource, self.resources)):  # fmt: skip
            if value and len(seen) < MAX_IDS and value[:MAX_TEXT] not in seen:
                seen.append(value[:MAX_TEXT])


class Grouper:
    """Gathers matching records per subject for ``window`` seconds, then makes one alert."""

    def __init__(
        self,
        kind: str,
        severity: Severity,
        window: float,
        subject_of: Callable[[AuditRow], str],
        describe: Callable[[Group], str],
        search: Callable[[Group], dict[str, str]],
        *,
        max_groups: int = 1000,
    ) -> None:
        self.kind = kind
        self.severity: Severity = severity
        self.window = window
        self.subject_of = subject_of
        self.describe = describe
        self.search = search
        self.max_groups = max_groups
        self.max_open = MAX_OPEN
        self.open: dict[str, Group] = {}
        # records of subjects past max_open: (opened, count, first subjects seen)
        self._spilled: tuple[float, int, list[str]] | None = None
        # the window of alerts (from the first one): when it began, how many subjects it
        # named, whether its summary went out; what was due beyond max_groups (records,
        # subjects, first names, their search) waits for the next summary
        self._since: float | None = None
        self._named = 0
        self._summarized = False
        self._held: tuple[int, int, list[str], dict[str, str]] | None = None

    def add(self, row: AuditRow, now: float) -> None:
        subject = self.subject_of(row)
        group = self.open.get(subject)
        if group is not None:
            group.add(row)
        elif len(self.open) < self.max_open:
            kept = _kept(row)
            group = self.open[subject] = Group(subject, now, kept, kept)
            group.note(row)
        else:
            opened, count, names = self._spilled or (now, 0, [])
            if len(names) < MAX_ITEMS and subject[:MAX_TEXT] not in names:
                names.append(subject[:MAX_TEXT])
            self._spilled = (opened, count + 1, names)

    def due(self, now: float, *, everything: bool = False) -> list[Alert]:
        """Alerts of the groups whose window has passed (all of them with ``everything``).
        Groups' windows end at their own times, so the bound is kept across calls: within
        ``window`` seconds of the first alert, at most ``max_groups`` subjects are named and
        one summary alert carries the rest; what is due after that summary waits for the
        next window's."""
        done = [g for g in self.open.values() if everything or now - g.opened >= self.window]
        for g in done:
            del self.open[g.subject]
        if self._since is not None and now - self._since >= self.window:
            self._since = None  # the next alert begins a new window
        alerts: list[Alert] = []
        if done:
            self._begin(now)
            done.sort(key=lambda g: -g.count)
            room = max(0, self.max_groups - self._named)
            alerts += [self._alert(g) for g in done[:room]]
            self._named += min(room, len(done))
            for g in done[room:]:
                self._hold(g)
        if everything or self._since is None or not self._summarized:
            summary = self._summary(now, force=everything)
            if summary:
                self._begin(now)
                self._summarized = True
                alerts += summary
        return alerts

    def _begin(self, now: float) -> None:
        if self._since is None:
            self._since, self._named, self._summarized = now, 0, False

    def _hold(self, g: Group) -> None:
        count, subjects, names, search = self._held or (0, 0, [], {})
        if len(names) < MAX_ITEMS:
            names.append(g.subject)
        if not search:  # what the named groups are searched by, without the one subject
            search = {k: v for k, v in self.search(g).items() if k in {"event", "decision"}}
        self._held = (count + g.count, subjects + 1, names, search)

    def _summary(self, now: float, *, force: bool) -> list[Alert]:
        """The one alert for what was held and spilled (spilled records once their own
        window passed, or ``force``); none when there is nothing."""
        spilled = self._spilled
        if spilled is not None and not (force or now - spilled[0] >= self.window):
            spilled = None
        if spilled is not None:
            self._spilled = None
        held, self._held = self._held, None
        if held is None and spilled is None:
            return []
        total, subjects, names, search = held or (0, 0, [], {})
        more = str(subjects)
        if spilled is not None:  # subjects never gathered by name: counted, some named
            total += spilled[1]
            names = names + spilled[2][: MAX_ITEMS - len(names)]
            more = f"at least {subjects + len(spilled[2])}"
            search = search or ({"event": "denied"} if self.kind == "denials" else {})
        return [
            Alert(
                kind=self.kind,
                severity=self.severity,
                summary=f"{total} more {self.kind} records in {more} more subjects "
                f"(beyond the {self.max_groups} alerted on by name)",
                subject="_more",
                details={"count": total, "subjects": names},
                search=search,
            )
        ]

    def _alert(self, g: Group) -> Alert:
        one_run = g.runs[0] if len(g.runs) == 1 else None
        one_task = g.tasks[0] if len(g.tasks) == 1 else None
        details: dict[str, object] = {
            "count": g.count,
            "window_seconds": self.window,
            "first": _moment(g.first),
            "last": _moment(g.last),
        }
        if g.runs:
            details["run_ids"] = list(g.runs)
        if g.tasks:
            details["task_ids"] = list(g.tasks)
        if len(g.resources) > 1:
            details["resources"] = list(g.resources)
        return Alert(
            kind=self.kind,
            severity=self.severity,
            summary=self.describe(g),
            subject=g.subject,
            deployment=g.last.deployment,
            dag_id=g.last.dag_id,
            run_id=one_run,
            task_id=one_task,
            resource=g.resources[0] if len(g.resources) == 1 else None,
            details=details,
            search=self.search(g),
        )


def denial_grouper(window: float, max_groups: int) -> Grouper:
    def subject(row: AuditRow) -> str:
        return row.dag_id or f"principal:{row.principal or 'unknown'}"

    def describe(g: Group) -> str:
        who = f"DAG {g.last.dag_id}" if g.last.dag_id else f"{g.last.principal or 'unknown'}"
        last = g.last
        what = f"{last.action or '?'} on {last.resource or '?'}"
        if last.object:
            what += f" {last.object}"
        times = "denial" if g.count == 1 else "denials"
        return f"{g.count} {times} for {who} in {g.first.deployment or '?'}; last: {what} " \
               f"({last.reason or 'denied'})"  # fmt: skip

    def search(g: Group) -> dict[str, str]:
        filters: dict[str, str] = {}
        if g.last.dag_id:
            filters["dag"] = g.last.dag_id
        if len(g.runs) == 1:
            filters["run"] = g.runs[0]
        filters["event"] = "denied"
        return filters

    return Grouper("denials", "warning", window, subject, describe, search,
                   max_groups=max_groups)  # fmt: skip


def credential_grouper(window: float) -> Grouper:
    def describe(g: Group) -> str:
        return (
            f"upstream credential of {g.subject} failing: {g.count} request(s) could not "
            f"use it (last: {g.last.reason or g.last.status or 'refused'})"
        )

    def search(g: Group) -> dict[str, str]:
        # a relayed 401 is an "allowed" record: only the resource finds both kinds
        return {"resource": g.subject, "event": g.last.event}

    return Grouper("credential_failure", "error", window,
                   lambda r: r.resource or "unknown", describe, search)  # fmt: skip


def rotation_alert(row: AuditRow) -> Alert:
    """One alert per failed rotation record (they are rare, and each matters)."""
    name = row.object or row.resource or "unknown"
    return Alert(
        kind="rotation_failure",
        severity="error",
        summary=f"{row.event.replace('_', ' ')} failed for {name}: {row.reason or 'error'}",
        subject=name,
        deployment=row.deployment,
        resource=row.resource,
        details={"event": row.event, **_moment(row)},
        search={"event": row.event},
    )


__all__ = [
    "SQL_CANDIDATES",
    "Group",
    "Grouper",
    "credential_grouper",
    "denial_grouper",
    "is_credential_failure",
    "is_denial",
    "is_rotation_failure",
    "rotation_alert",
]
