"""Judge a gateway's audit trail against what the fake node actually executed.

The rule enforcement tests hold a gateway to: every request the node executed must be
covered by an ``allow`` audit record of the principal whose connection carried it, with the
same action and an object list naming every object the node touched; and, when a grant is
given, nothing the node executed may lie outside it. One audit record covers one request
(a QUERY, an EXECUTE, a protocol BATCH or a ``BEGIN BATCH`` text), however many children
it had; it carries the strongest action of the request, so a ``write`` record also covers
the ``read`` of the same table by the same request (a conditional write reads its row).

USE and reads of driver metadata tables (``system.local``, ``system.peers``,
``system.peers_v2``, ``system_schema.*``, ``system_virtual_schema.*``) are allowed to every
principal, so the grant does not limit them; they must still be in the audit like anything
else the node ran (the gateway records them under a built-in rule).

Audit rows are read through attributes (``principal``, ``action``, ``object``,
``decision``), so any record type with those names will do; the node does not import
Lockgate.

Part of a stand-in for demos and tests, written from the public docs: not the service.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from .execlog import Execution

_METADATA_TABLES = frozenset({"system.local", "system.peers", "system.peers_v2"})
_METADATA_KEYSPACES = ("system_schema.", "system_virtual_schema.")


def always_allowed(e: Execution) -> bool:
    """USE and driver metadata reads: allowed to every principal, outside any grant."""
    if e.action == "use":
        return True
    return e.action == "read" and (
        e.object in _METADATA_TABLES or e.object.startswith(_METADATA_KEYSPACES)
    )


def _covers(record: Any, group: list[Execution]) -> bool:
    objects = set(str(record.object or "").split(","))
    done = {(e.action, e.object) for e in group}

    def covered(e: Execution) -> bool:
        if e.object not in objects:
            return False
        # A record names its request's strongest action: the read of a conditional write is
        # covered by the write of the same table in the same request, and by nothing else.
        return e.action == record.action or (
            e.action == "read" and (record.action, e.object) in done
        )

    return all(covered(e) for e in group)


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
        if grant is not None:
            problems.extend(
                f"{principal} got {e.action} on {e.object}, outside the grant: {e.text!r}"
                for e in group
                if (e.action, e.object) not in grant and not always_allowed(e)
            )
        candidates = unused.get(principal, [])
        match = next((r for r in candidates if _covers(r, group)), None)
        if match is None:
            done = sorted({f"{e.action} {e.object}" for e in group})
            problems.append(
                f"no allowed audit record of {principal} covers what the node executed "
                f"({', '.join(done)}) for {group[0].opcode} {text!r}"
            )
        else:
            candidates.remove(match)
    return problems
