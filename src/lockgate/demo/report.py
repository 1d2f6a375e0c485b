"""What ``lockgate demo`` prints: DAG outcomes with the refusal under each failed DAG, and a
compact audit table per run, every line at most :data:`WIDTH` columns.

Pure text in, text out: the Airflow output is split per DAG by the runner's
``LOCKGATE-DAG <dag_id>`` markers, so a refusal is printed under the DAG that met it.
"""

from __future__ import annotations

import json
import re
import textwrap
import time
from collections.abc import Iterable

from lockgate.audit.record import AuditRecord

WIDTH = 100
DAG_MARKER = "LOCKGATE-DAG "
# Most specific first: the gateway's own sentence, then what each stock client makes of it.
_REASON_PATTERNS = (
    re.compile(r"Lockgate denied.*"),
    re.compile(r"(?i)lockgate.*(refused|denied|not allowed).*"),
    re.compile(r".*\b(403|Forbidden|Unauthorized|access_denied|PermissionDenied)\b.*"),
)
# Log line prefixes Airflow adds ("[2025-01-01T00:00:00.000+0000] {file.py:12} ERROR - ").
_LOG_PREFIX = re.compile(r"^\[[^\]]*\]\s*(\{[^}]*\}\s*)?([A-Z]+\s*-\s*)?")


def split_by_dag(output: str) -> dict[str, list[str]]:
    """Airflow's output, one list of lines per DAG (the lines after its marker)."""
    parts: dict[str, list[str]] = {}
    current: list[str] | None = None
    for line in output.splitlines():
        if line.startswith(DAG_MARKER):
            current = parts.setdefault(line[len(DAG_MARKER) :].strip(), [])
        elif current is not None:
            current.append(line)
    return parts


def refusal_reason(lines: Iterable[str]) -> str | None:
    """The clearest line that says why a DAG was refused, without its log prefix: the
    gateway's sentence, else its 403 body as the stock hook logged it, else the client's
    own error line."""
    lines = list(lines)
    first = _first_match(lines, _REASON_PATTERNS[:2])
    return first or forbidden_body(lines) or _first_match(lines, _REASON_PATTERNS[2:])


def forbidden_body(lines: Iterable[str]) -> str | None:
    """The gateway's JSON 403 body (``{"error": "forbidden", ...}``) found in a log line."""
    for line in lines:
        if '"forbidden"' not in line or '{"' not in line:
            continue
        try:
            body = json.loads(line[line.index('{"') : line.rindex("}") + 1])
        except ValueError:
            continue
        if isinstance(body, dict) and body.get("error") == "forbidden":
            return denial_sentence(
                body.get("action"), body.get("resource"), body.get("object"),
                body.get("principal"), body.get("reason") or body.get("rule"),
            )  # fmt: skip
    return None


def denial_from_audit(rows: Iterable[AuditRecord]) -> str | None:
    """The first refusal the gateway recorded for a run, as a sentence."""
    for r in rows:
        if r.event == "denied":
            return denial_sentence(r.action, r.resource, r.object, r.principal, r.reason or r.rule)
    return None


def denial_sentence(
    action: object, resource: object, obj: object, principal: object, why: object
) -> str:
    where = "/".join(str(x) for x in (resource, obj) if x)
    return f"Lockgate denied {action} on {where} for {principal}: {why}"


def _first_match(lines: list[str], patterns: Iterable[re.Pattern[str]]) -> str | None:
    for pattern in patterns:
        for line in lines:
            found = pattern.search(line)
            if found:
                text = _LOG_PREFIX.sub("", found.group(0).strip())
                return re.sub(r"\s+", " ", text)
    return None


def wrap(text: str, indent: int, *, max_lines: int = 4) -> list[str]:
    """``text`` wrapped to :data:`WIDTH` columns under an ``indent``, cut after ``max_lines``."""
    pad = " " * indent
    return textwrap.wrap(
        text,
        WIDTH,
        initial_indent=pad,
        subsequent_indent=pad,
        max_lines=max_lines,
        placeholder=" …",
        break_long_words=True,
        break_on_hyphens=False,  # names like orders-api stay whole
    )


def fit(line: str) -> str:
    return line if len(line) <= WIDTH else line[: WIDTH - 1] + "…"


def audit_table(rows: Iterable[AuditRecord], indent: int = 4) -> list[str]:
    """The run's records, one line each: time, event, task, action, resource/object, status
    and rule; a refusal's reason wrapped under it. Records alike but for their object (a
    driver's schema reads) fold into one line; the write-ahead ``admitted`` record before
    each ``allowed`` one is counted, not shown."""
    pad = " " * indent
    rows = list(rows)
    shown = [r for r in rows if r.event != "admitted"]
    out = [fit(f"{pad}{'time':8} {'event':13} {'task':20} {'action':6} resource/object [status]")]
    for group in _fold(shown):
        r = group[0]
        clock = time.strftime("%H:%M:%S", time.gmtime(r.ts))
        objects = ", ".join(g.object for g in group if g.object)
        if len(group) > 1:
            objects = f"{len(group)}x {objects}"
        where = "/".join(x for x in (r.resource, objects) if x) or "-"
        status = "" if r.status is None else f" [{r.status}]"
        rule = f"  rule={r.rule}" if r.rule and r.event != "denied" else ""
        head = f"{pad}{clock:8} {r.event:13} {_short(r.task_id, 20):20} {r.action or '-':6} "
        out.append(fit(f"{head}{where}{status}{rule}"))
        if r.event == "denied":
            said = r.reason or ""
            why = " ".join(
                x for x in (r.rule and r.rule not in said and f"rule={r.rule}", said) if x
            )
            out += wrap(f"why: {why or 'no reason recorded'}", indent + 9, max_lines=3)
    if not rows:
        out.append(f"{pad}(no audit records)")
    if len(shown) < len(rows):
        n = len(rows) - len(shown)
        noun = "record" if n == 1 else "records"
        out.append(fit(f"{pad}(and {n} write-ahead 'admitted' {noun}, one before each allowed)"))
    return out


def _fold(rows: list[AuditRecord]) -> list[list[AuditRecord]]:
    """Consecutive records that differ only in their object, grouped."""
    groups: list[list[AuditRecord]] = []
    for r in rows:
        key = (r.event, r.task_id, r.action, r.resource, r.decision, r.rule, r.reason, r.status)
        last = groups[-1][0] if groups else None
        if last is not None and key == (
            last.event, last.task_id, last.action, last.resource, last.decision, last.rule,
            last.reason, last.status,
        ) and r.object:  # fmt: skip
            groups[-1].append(r)
        else:
            groups.append([r])
    return groups


def _short(value: str | None, width: int) -> str:
    if not value:
        return "-"
    return value if len(value) <= width else value[: width - 1] + "…"
