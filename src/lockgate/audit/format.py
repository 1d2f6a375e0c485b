"""Render audit rows for the CLI: aligned text lines, or JSON lines for piping to jq."""

from __future__ import annotations

import json
import time
from collections.abc import Iterable

from lockgate.audit.record import AuditRecord, AuditRow

_COLUMNS = (
    "time",
    "event",
    "decision",
    "principal",
    "resource",
    "action",
    "object",
    "status",
    "run_id",
    "why",
)
_MAX_WIDTH = 48  # long objects/principals are cut so one record stays one line


def format_records(rows: Iterable[AuditRecord], as_json: bool = False) -> str:
    """One line per record; with ``as_json`` each line is the record as a JSON object."""
    rows = list(rows)
    if as_json:
        return "\n".join(
            json.dumps(r.to_dict(), separators=(",", ":"), ensure_ascii=False, default=str)
            for r in rows
        )
    if not rows:
        return "(no audit records)"
    table = [_COLUMNS, *(_cells(r) for r in rows)]
    widths = [max(len(line[i]) for line in table) for i in range(len(_COLUMNS) - 1)]
    out = []
    for line in table:
        head = "  ".join(c.ljust(w) for c, w in zip(line[:-1], widths, strict=True))
        out.append(f"{head}  {line[-1]}".rstrip())
    return "\n".join(out)


def _cells(r: AuditRecord) -> tuple[str, ...]:
    ts = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(r.ts)) + f".{int(r.ts % 1 * 1000):03d}Z"
    if isinstance(r, AuditRow) and r.seq:
        ts = f"#{r.replica}/{r.seq} {ts}" if r.replica else f"#{r.seq} {ts}"
    why = " ".join(x for x in (r.rule and f"rule={r.rule}", r.reason) if x)
    return (
        ts,
        r.event,
        r.decision or "-",
        _cut(r.principal),
        _cut(r.resource),
        r.action or "-",
        _cut(r.object),
        "-" if r.status is None else str(r.status),
        _cut(r.run_id),
        why,
    )


def _cut(v: str | None) -> str:
    if not v:
        return "-"
    return v if len(v) <= _MAX_WIDTH else v[: _MAX_WIDTH - 1] + "…"
