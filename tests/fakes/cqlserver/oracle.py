"""Judge a gateway's audit trail against what the fake node actually executed.

The rule enforcement tests hold a gateway to: every request the node executed must be
covered by an ``allow`` audit record of the principal whose connection carried it, with the
same action and an object list naming every object the node touched; and, when a grant is
given, nothing the node executed may lie outside it. One audit record covers one request
(a QUERY, an EXECUTE, a protocol BATCH or a ``BEGIN BATCH`` text), however many children
it had. USE is not judged against the audit: it touches no data, and the gateway lets it
through unaudited by design; its effect is judged through the statements that follow it.

Audit rows are read through attributes (``principal``, ``action``, ``object``,
``decision``), so any record type with those names will do; the node does not import
Lockgate.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from .execlog import Execution


def _covers(record: Any, group: list[Execution]) -> bool:
    objects = set(str(record.object or "").split(","))
    return all(e.action == record.action and e.object in objects for e in group)


def judge(
    executions: Iterable[Execution],
    principal_of: Mapping[int, str],
    audit: Iterable[Any],
    grant: set[tuple[str, str]] | None = None,
) -> list[str]:
    """Every breach found, as readable lines; empty when the audit explains the node."""
    groups: dict[tuple[int, int], list[Execution]] = {}
    for e in executions:
        groups.setdefault((e.connection, e.request), []).append(e)
    unused: dict[str, list[Any]] = {}
    for rec in audit:
        if rec.decision == "allow" and rec.principal is not None:
            unused.setdefault(rec.principal, []).append(rec)
    problems: list[str] = []
    for (connection, _), group in groups.items():
        text = group[0].text
        principal = principal_of.get(connection)
        if principal is None:
            problems.append(f"node connection {connection} (no client) executed {text!r}")
            continue
        judged = [e for e in group if e.action != "use"]
        if grant is not None:
            problems.extend(
                f"{principal} got {e.action} on {e.object}, outside the grant: {e.text!r}"
                for e in judged
                if (e.action, e.object) not in grant
            )
        if not judged:
            continue
        candidates = unused.get(principal, [])
        match = next((r for r in candidates if _covers(r, judged)), None)
        if match is None:
            done = sorted({f"{e.action} {e.object}" for e in judged})
            problems.append(
                f"no allowed audit record of {principal} covers what the node executed "
                f"({', '.join(done)}) for {group[0].opcode} {text!r}"
            )
        else:
            candidates.remove(match)
    return problems
