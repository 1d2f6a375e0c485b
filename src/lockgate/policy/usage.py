"""Grants never exercised: each allow rule of a policy against the audit trail's use of it.

Input is the audit trail as plain rows (mappings with the record's field names), streamed by
the caller. A rule is *used* when an allowed request (``admitted``, or ``allowed`` without a
``ref``) names it in ``rule``. "By whom": the principals seen in the window (any record,
token issued included) that the rule's principal globs match but that never had a request
allowed by it. Nothing here reads a file or a database.
"""

from __future__ import annotations

import re
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from lockgate.policy.engine import PolicySet
from lockgate.policy.globs import Matcher
from lockgate.policy.suggest import USE_EVENTS, Seen


@dataclass(slots=True)
class RuleUse:
    """One allow rule: what it grants, how often it decided, who could and who did."""

    id: str
    source: str
    principals: list[str]
    resources: list[str]
    actions: list[str]
    objects: list[str]
    seen: Seen = field(default_factory=Seen)
    used_by: dict[str, int] = field(default_factory=dict)
    unused_by: list[str] = field(default_factory=list)

    @property
    def used(self) -> bool:
        return self.seen.count > 0

    def to_dict(self) -> dict[str, Any]:
        return {
            "rule": self.id,
            "source": self.source,
            "principals": self.principals,
            "resources": self.resources,
            "actions": self.actions,
            "objects": self.objects,
            "uses": self.seen.count,
            "first_used": self.seen.first if self.used else None,
            "last_used": self.seen.last if self.used else None,
            "used_by": dict(sorted(self.used_by.items())),
            "unused_by": self.unused_by,
        }


def rule_usage(
    policy_set: PolicySet, rows: Iterable[Mapping[str, Any]], *, deployment: str | None = None
) -> list[RuleUse]:
    """Every allow rule of ``policy_set`` with its use in ``rows``; never-used rules first.

    ``deployment``: only principals of that deployment count (``airflow:<deployment>/...``).
    """
    uses = {
        r.id: RuleUse(
            r.id,
            r.source,
            list(r.principals.patterns),
            list(r.resources.patterns),
            sorted(r.actions),
            list(r.objects.patterns),
        )
        for r in policy_set.rules
        if r.effect == "allow"
    }
    prefix = f"airflow:{deployment}/" if deployment else ""
    principals: set[str] = set()
    for row in rows:
        principal = row.get("principal")
        if not principal or not principal.startswith(prefix):
            continue
        principals.add(principal)
        rule = uses.get(row.get("rule") or "")
        if rule is None or row.get("decision") != "allow" or row.get("event") not in USE_EVENTS:
            continue
        detail = row.get("detail") or {}
        if row.get("event") == "allowed" and isinstance(detail, Mapping) and "ref" in detail:
            continue  # the outcome of an "admitted" record already counted
        rule.seen.add(float(row.get("ts") or 0.0), row.get("run_id"))
        rule.used_by[principal] = rule.used_by.get(principal, 0) + 1
    for rule in uses.values():
        could = Matcher(rule.principals, "name")
        rule.unused_by = sorted(p for p in principals if could(p) and p not in rule.used_by)
    return sorted(uses.values(), key=lambda u: (u.used, u.source, u.id))


def format_usage(uses: list[RuleUse]) -> str:
    """The report ``lockgate policy unused`` prints."""
    never = [u for u in uses if not u.used]
    lines = [f"{len(never)} of {len(uses)} allow rule(s) never used in the window"]
    for u in uses:
        grant = (f"{','.join(u.principals)} {','.join(u.actions)} {','.join(u.resources)} "
                 f"{','.join(u.objects)}")  # fmt: skip
        state = "NEVER USED" if not u.used else u.seen.describe()
        lines.append(f"{u.id} ({u.source}): {state}")
        lines.append(f"    grants {grant}")
        if u.used_by:
            lines.append(
                "    used by " + ", ".join(f"{p} ({n:,})" for p, n in sorted(u.used_by.items()))
            )
        if u.unused_by:
            lines.append("    never used by " + ", ".join(u.unused_by))
    return "\n".join(lines)


_AGO = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([smhdw])\s*$")
_UNIT = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}


def parse_since(text: str, now: float | None = None, *, name: str = "--since") -> float:
    """``30d``, ``12h``, ``2w`` (ago), unix seconds or ISO 8601 (UTC when it names no
    offset) -> unix seconds. ``name``: how the error names the field."""
    now = time.time() if now is None else now
    if m := _AGO.match(text):
        return now - float(m.group(1)) * _UNIT[m.group(2)]
    try:
        return float(text)
    except ValueError:
        pass
    try:
        at = datetime.fromisoformat(text)
    except ValueError:
        raise ValueError(
            f"bad {name} {text!r}: expected a span like 30d or 12h, unix seconds or ISO 8601"
        ) from None
    return (at if at.tzinfo is not None else at.replace(tzinfo=UTC)).timestamp()
