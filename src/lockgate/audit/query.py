"""Queries of the audit trail for people: filters, pages, counts and histograms.

One :class:`AuditQuery` (every field optional, all given must match) runs over either
store the trail lives in: the local SQLite chain (``audit``, ordered by ``seq``) or the
shared trail on PostgreSQL (``audit_records``, every replica, ordered by
``(ts, replica, seq)``). :class:`~lockgate.audit.reader.AuditReader` picks the store;
this module builds the SQL (parameterised; column names come from the constants below,
never from input) and reads the answers.

A page is newest first and carries an opaque cursor for the next, older page: the position
of its last row (``seq`` locally, ``(ts, replica, seq)`` on the shared trail), so pages
never skip or repeat a row while new records arrive. A cursor only selects rows the same
reader could select anyway; one that is malformed or from the other store is a
:class:`ValueError` (a 400 for the console).
"""

from __future__ import annotations

import base64
import json
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from lockgate.audit.record import AuditRow

#: AuditQuery field -> column; column names are these constants, never input
_EQUAL_COLUMNS: tuple[tuple[str, str], ...] = (
    ("deployment", "deployment"),
    ("dag", "dag_id"),
    ("run", "run_id"),
    ("task", "task_id"),
    ("try_number", "try_number"),
    ("resource", "resource"),
    ("action", "action"),
    ("decision", "decision"),
    ("event", "event"),
    ("principal", "principal"),
    ("jti", "jti"),
    ("rule", "rule"),
)
#: what :func:`count_by` may group by: the filters' names (and their columns' names)
_GROUP_COLUMNS = {**dict(_EQUAL_COLUMNS), **{c: c for _, c in _EQUAL_COLUMNS}}
#: the outcome events of a request (``admitted`` is written ahead of its outcome: counting
#: it too would count an allowed request twice)
REQUEST_OUTCOMES = ("allowed", "denied", "throttled", "upstream_error")
#: a histogram asked for more buckets than this is refused (a chart has no room for them)
MAX_BUCKETS = 500
# Records carrying a shadow verdict: ``detail.shadow`` is an object (gateway/records.py).
# The LIKE is a cheap first cut; the JSON test is the one to trust (a value that merely
# contains the text "shadow" does not pass it). PostgreSQL refuses to parse a \u0000
# escape (which a detail string may hold): it is read as \u0020, the same length with the
# backslash kept, so the JSON keeps its structure (an escaped backslash before "u0000" too).
_SHADOW_LIKE = '%"shadow"%'
_SHADOW_TEST = {
    "sqlite": "json_type(detail, '$.shadow') = 'object'",
    "postgresql": (
        "json_typeof(replace(detail, '\\u0000', '\\u0020')::json -> 'shadow') = 'object'"
    ),
}
# the bucket number of a row: PostgreSQL's cast rounds, SQLite's truncates (ts > 0: floor)
_BUCKET_OF = {
    "sqlite": "CAST(ts / ? AS INTEGER)",
    "postgresql": "CAST(floor(ts / ?) AS BIGINT)",
}


@dataclass(frozen=True)
class AuditQuery:
    """Which records: every field optional; all given must match. ``since``/``until`` are
    unix seconds (``since`` inclusive, ``until`` exclusive); ``shadow``: only records with a
    shadow verdict; ``replica``: only that replica's (the shared trail; ignored locally)."""

    deployment: str | None = None
    dag: str | None = None
    run: str | None = None
    task: str | None = None
    try_number: int | None = None
    resource: str | None = None
    action: str | None = None
    decision: str | None = None
    event: str | None = None
    principal: str | None = None
    jti: str | None = None
    since: float | None = None
    until: float | None = None
    shadow: bool = False
    replica: str | None = None
    rule: str | None = None  # the rule that decided


@dataclass(frozen=True)
class AuditPage:
    """Rows newest first; ``older``: the cursor of the next (older) page, None at the end."""

    rows: list[AuditRow]
    older: str | None


@dataclass(frozen=True)
class HistogramBucket:
    """Request outcomes of one DAG in ``[start, start + bucket)``."""

    start: float
    dag: str | None
    allowed: int
    denied: int
    throttled: int
    upstream_errors: int = 0


Execute = Callable[[str, Sequence[object]], list[tuple[Any, ...]]]


@dataclass(frozen=True)
class Store:
    """Where a query runs: the table's select, its dialect and whether it is the shared
    trail (ordered by (ts, replica, seq); else the local chain, ordered by seq)."""

    select: str
    table: str
    dialect: str
    shared: bool
    to_row: Callable[[tuple[Any, ...]], AuditRow]


def where(q: AuditQuery, store: Store) -> tuple[list[str], list[object]]:
    """The conditions of ``q`` (ANDed) and their parameters."""
    clauses: list[str] = []
    args: list[object] = []
    for name, column in _EQUAL_COLUMNS:
        value = getattr(q, name)
        if value is not None:
            clauses.append(f"{column} = ?")
            args.append(value)
    if q.replica is not None and store.shared:
        clauses.append("replica = ?")
        args.append(q.replica)
    if q.since is not None:
        clauses.append("ts >= ?")
        args.append(float(q.since))
    if q.until is not None:
        clauses.append("ts < ?")
        args.append(float(q.until))
    if q.shadow:
        clauses += ["detail LIKE ?", _SHADOW_TEST[store.dialect]]
        args.append(_SHADOW_LIKE)
    return clauses, args


def _sql_where(clauses: list[str]) -> str:
    return f" WHERE {' AND '.join(clauses)}" if clauses else ""


def page(
    execute: Execute, store: Store, q: AuditQuery, *, limit: int, older: str | None
) -> AuditPage:
    """Up to ``limit`` rows matching ``q``, newest first, older than the cursor ``older``."""
    if limit < 1:
        raise ValueError("limit must be at least 1")
    clauses, args = where(q, store)
    if q.since is not None and not store.shared:
        # newest first by seq: with few matches in a recent window the scan would walk the
        # whole chain back; the window's first seq (read off the ts index: "+ 0" keeps the
        # planner from taking min over the rowid) bounds it. A bound, not a filter: every
        # row at or after since has a seq at least that (ts need not grow with seq).
        clauses.append(f"seq >= (SELECT min(seq + 0) FROM {store.table} WHERE ts >= ?)")  # noqa: S608
        args.append(float(q.since))
    if older is not None:
        position = decode_cursor(older, shared=store.shared)
        if store.shared:
            ts, replica, seq = position
            # ts <= leads so the ts / (dag_id, ts) index serves it; the rest breaks ties
            clauses.append("ts <= ? AND (ts < ? OR replica < ? OR (replica = ? AND seq < ?))")
            args += [ts, ts, replica, replica, seq]
        else:
            clauses.append("seq < ?")
            args.append(position[0])
    order = "ts DESC, replica DESC, seq DESC" if store.shared else "seq DESC"
    sql = f"{store.select}{_sql_where(clauses)} ORDER BY {order} LIMIT ?"
    raw = execute(sql, [*args, limit + 1])  # one more: is there an older page?
    rows = [store.to_row(r) for r in raw[:limit]]
    cursor = None
    if len(raw) > limit and rows:
        last = rows[-1]
        cursor = encode_cursor(
            ["s", last.ts, last.replica or "", last.seq] if store.shared else ["l", last.seq]
        )
    return AuditPage(rows, cursor)


def count(execute: Execute, store: Store, q: AuditQuery) -> int:
    clauses, args = where(q, store)
    sql = f"SELECT count(*) FROM {store.table}{_sql_where(clauses)}"  # noqa: S608
    (row,) = execute(sql, args)
    return int(row[0])


def count_by(
    execute: Execute, store: Store, q: AuditQuery, fields: Sequence[str]
) -> dict[tuple[Any, ...], int]:
    """How many records match ``q`` per distinct value of ``fields`` (filter names such as
    ``dag``, ``rule``, ``resource``, or their columns); ValueError for any other name."""
    unknown = [f for f in fields if f not in _GROUP_COLUMNS]
    if unknown or not fields:
        raise ValueError(f"cannot count by {unknown or 'nothing'}")
    columns = ", ".join(_GROUP_COLUMNS[f] for f in fields)  # names from the table above
    clauses, args = where(q, store)
    sql = f"SELECT {columns}, count(*) FROM {store.table}{_sql_where(clauses)}"  # noqa: S608
    sql += f" GROUP BY {columns}"
    return {tuple(r[:-1]): int(r[-1]) for r in execute(sql, args)}


def histogram(
    execute: Execute, store: Store, q: AuditQuery, *, bucket: float
) -> list[HistogramBucket]:
    """Request outcomes per DAG per ``bucket`` seconds (aligned to the epoch), oldest bucket
    first; only buckets with a record. At most :data:`MAX_BUCKETS` buckets over the window
    (``since``..``until``, else the matching records' first..last): ValueError beyond."""
    if not (isinstance(bucket, int | float) and math.isfinite(bucket) and bucket >= 1):
        raise ValueError("bucket must be at least 1 second")
    clauses, args = where(q, store)
    clauses.append(f"event IN ({', '.join('?' * len(REQUEST_OUTCOMES))})")
    args += REQUEST_OUTCOMES
    sql_where = _sql_where(clauses)
    if q.since is not None and q.until is not None:  # refused before anything is read
        _check_buckets(math.floor(q.since / bucket), math.floor(q.until / bucket), bucket)
    outcome = ", ".join(
        f"sum(CASE WHEN event = '{e}' THEN 1 ELSE 0 END)"  # constants, never input
        for e in REQUEST_OUTCOMES
    )
    sql = (
        f"SELECT {_BUCKET_OF[store.dialect]} AS b, dag_id, {outcome} "  # noqa: S608
        f"FROM {store.table}{sql_where} GROUP BY b, dag_id"
    )
    rows = execute(sql, [float(bucket), *args])
    if not rows:
        return []
    # an open end of the window is the matching records' first or last bucket (one
    # grouped read, no scan for min/max first)
    first = math.floor(q.since / bucket) if q.since is not None else min(int(r[0]) for r in rows)
    last = math.floor(q.until / bucket) if q.until is not None else max(int(r[0]) for r in rows)
    _check_buckets(first, last, bucket)
    out = [
        HistogramBucket(int(b) * bucket, dag, int(a), int(d), int(t), int(e))
        for b, dag, a, d, t, e in rows
    ]
    out.sort(key=lambda h: (h.start, h.dag is not None, h.dag or ""))
    return out


def _check_buckets(first: int, last: int, bucket: float) -> None:
    buckets = last - first + 1
    if buckets > MAX_BUCKETS:
        raise ValueError(
            f"{buckets} buckets of {bucket:g} s: at most {MAX_BUCKETS} (a wider bucket, "
            "or a shorter window)"
        )


def parse_time(text: str) -> float:
    """A time as people write it: unix seconds, or ISO 8601 (``2026-12-05T13:00:00Z``, or
    an HTML ``datetime-local`` value); a time without an offset is UTC. ValueError else."""
    try:
        return float(text)
    except ValueError:
        pass
    when = datetime.fromisoformat(text)  # ValueError names what it cannot read
    return (when if when.tzinfo else when.replace(tzinfo=UTC)).timestamp()


def encode_cursor(position: list[object]) -> str:
    text = json.dumps(position, separators=(",", ":"), allow_nan=False)
    return base64.urlsafe_b64encode(text.encode()).decode().rstrip("=")


def decode_cursor(cursor: str, *, shared: bool) -> tuple[Any, ...]:
    """The position a cursor names: ``(seq,)`` locally, ``(ts, replica, seq)`` on the
    shared trail; ValueError for anything else."""
    try:
        padded = cursor + "=" * (-len(cursor) % 4)
        position = json.loads(base64.urlsafe_b64decode(padded.encode("ascii")))
    except (ValueError, UnicodeError) as exc:
        raise ValueError("malformed page cursor") from exc
    if not isinstance(position, list) or not position:
        raise ValueError("malformed page cursor")
    kind, *rest = position
    if shared and kind == "s" and len(rest) == 3:
        ts, replica, seq = rest
        if (
            isinstance(ts, int | float)
            and not isinstance(ts, bool)
            and math.isfinite(ts)
            and isinstance(replica, str)
            and _is_int(seq)
        ):
            return (float(ts), replica, seq)
    if not shared and kind == "l" and len(rest) == 1 and _is_int(rest[0]):
        return (rest[0],)
    raise ValueError("page cursor is not one of this trail's")


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and 0 <= value < 2**63


__all__ = [
    "MAX_BUCKETS",
    "REQUEST_OUTCOMES",
    "AuditPage",
    "AuditQuery",
    "HistogramBucket",
    "Store",
    "count",
    "count_by",
    "decode_cursor",
    "encode_cursor",
    "histogram",
    "page",
    "parse_time",
    "where",
]
