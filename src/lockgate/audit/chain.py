"""The hash-chained audit table in SQLite: schema, append, verify and queries.

Rules:

- Rows are append-only: ``seq`` is a dense 1, 2, 3 ... sequence, each row stores
  ``prev_hash`` and ``hash = sha256(prev_hash || canonical JSON of the record incl. seq)``.
- A one-row ``audit_head`` table holds the last ``seq`` and ``hash``; it is updated in the
  same transaction as the rows, so a truncated tail shows as head ahead of the rows.
- Triggers refuse UPDATE and DELETE on ``audit`` so a bug cannot rewrite history.
- :func:`append` reads the head inside its write transaction (``BEGIN IMMEDIATE``), so two
  writers on one file (the server and a CLI command) still build one chain.
- ``audit_senders`` holds, per writing process (sender), the highest sender sequence number
  committed, stored with the rows: the mark that makes resends and journal replays
  (:func:`append_after_mark`, see :mod:`lockgate.audit.journal`) exactly-once.

What this does NOT protect against: someone with write access to the whole database file can
drop the triggers, rewrite rows and recompute every hash and the head. The chain makes
tampering *detectable* only against an anchor kept elsewhere: the JSON-lines sink (each line
carries seq and hash) and the ``audit head`` log line written on open and close. Pass such an
anchor to :func:`verify` to check the stored chain still contains it.
"""

from __future__ import annotations

import functools
import json
import sqlite3
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lockgate.audit.record import (
    GENESIS,
    RECORD_FIELDS,
    AuditRecord,
    AuditRow,
    Values,
    canonical_row,
    chain_hash,
    values,
)

_COLUMNS = RECORD_FIELDS  # detail is the last one
assert _COLUMNS[-1] == "detail"

SCHEMA = """
CREATE TABLE IF NOT EXISTS audit (
    seq INTEGER PRIMARY KEY,
    ts REAL NOT NULL,
    event TEXT NOT NULL,
    deployment TEXT, dag_id TEXT, task_id TEXT, run_id TEXT,
    try_number INTEGER, map_index INTEGER,
    principal TEXT, resource TEXT, action TEXT, object TEXT,
    decision TEXT, rule TEXT, reason TEXT,
    status INTEGER, latency_ms REAL, bytes_in INTEGER, bytes_out INTEGER,
    jti TEXT,
    detail TEXT NOT NULL DEFAULT '{}',
    prev_hash TEXT NOT NULL,
    hash TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS audit_dag ON audit(dag_id, seq);
CREATE INDEX IF NOT EXISTS audit_run ON audit(run_id, seq);
CREATE INDEX IF NOT EXISTS audit_ts ON audit(ts);
-- every record of one token (the console's live tokens: each one's last use)
CREATE INDEX IF NOT EXISTS audit_jti ON audit(jti, seq) WHERE jti IS NOT NULL;
CREATE TABLE IF NOT EXISTS audit_head (
    id INTEGER PRIMARY KEY CHECK (id = 1),
    seq INTEGER NOT NULL,
    hash TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS audit_senders (
    sender TEXT PRIMARY KEY,
    seq INTEGER NOT NULL
);
CREATE TRIGGER IF NOT EXISTS audit_no_update BEFORE UPDATE ON audit
BEGIN SELECT RAISE(ABORT, 'audit log is append-only'); END;
CREATE TRIGGER IF NOT EXISTS audit_no_delete BEFORE DELETE ON audit
BEGIN SELECT RAISE(ABORT, 'audit log is append-only'); END;
"""

# Column names come from the dataclass, never from input.
_INSERT = (
    f"INSERT INTO audit (seq, {', '.join(_COLUMNS)}, prev_hash, hash) "  # noqa: S608
    f"VALUES ({', '.join('?' * (len(_COLUMNS) + 3))})"
)


# Many rows per INSERT statement: Python's sqlite3 releases the GIL around every step, and a
# thread that releases the GIL often waits for it again behind a busy event loop (up to the
# switch interval each time), so one step per row starves the writer under load. The same
# rows, the same order, one step per _ROWS_PER_INSERT rows; the rows of one statement are
# hashed just before it runs, so the writer thread holds the GIL for one chunk's Python work
# at a time (well under a millisecond) and the event loop gets it back at every step.
_ROWS_PER_INSERT = 40
_ROW_MARKS = f"({', '.join('?' * (len(_COLUMNS) + 3))})"


@functools.lru_cache(maxsize=_ROWS_PER_INSERT)
def _insert_sql(rows: int) -> str:
    return _INSERT.rsplit("VALUES", 1)[0] + "VALUES " + ", ".join([_ROW_MARKS] * rows)


@dataclass(frozen=True, slots=True)
class VerifyResult:
    ok: bool
    checked: int
    first_bad_seq: int | None = None
    problem: str | None = None
    replica: str | None = None  # whose chain broke (the shared trail holds several)
    checkpoints: int = 0  # signed checkpoints checked (the shared trail)


def connect(db_path: Path, *, timeout: float = 5.0, readonly: bool = False) -> sqlite3.Connection:
    """Open the audit DB (WAL, synchronous=NORMAL), creating the schema unless ``readonly``."""
    conn = sqlite3.connect(db_path, timeout=timeout, isolation_level=None)
    if readonly:
        conn.execute("PRAGMA query_only=ON")
        return conn
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=NORMAL")
    conn.executescript(SCHEMA)
    return conn


def read_head(conn: sqlite3.Connection) -> tuple[int, str]:
    row = conn.execute("SELECT seq, hash FROM audit_head WHERE id = 1").fetchone()
    return (int(row[0]), str(row[1])) if row else (0, GENESIS)


def read_senders(conn: sqlite3.Connection) -> dict[str, int]:
    """Per-sender sequence numbers already committed (out-of-process writer dedupe)."""
    return {str(s): int(n) for s, n in conn.execute("SELECT sender, seq FROM audit_senders")}


def append(
    conn: sqlite3.Connection,
    records: Sequence[AuditRecord | Values],
    senders: dict[str, int] | None = None,
    lines: Sequence[str | None] | None = None,
) -> list[tuple[int, str, str]]:
    """Append already-sanitized ``records`` (or their :func:`values`) in one transaction;
    return (seq, prev_hash, hash) per record. ``lines``: per record, its journal line or None.

    ``senders`` (sender id → last sender sequence number in this batch) is stored in the same
    transaction, so a restarted writer knows exactly which resent records it already has.
    The caller commits nothing: this function commits or rolls back itself.
    """
    rows = [r if isinstance(r, tuple) else values(r) for r in records]
    conn.execute("BEGIN IMMEDIATE")
    try:
        out = _append_rows(conn, rows, lines)
        if senders:
            _set_marks(conn, senders)
        conn.execute("COMMIT")
    except BaseException:
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        raise
    return out


def append_past_marks(
    conn: sqlite3.Connection, entries: Sequence[tuple[str, int, AuditRecord]]
) -> tuple[list[AuditRecord], list[tuple[int, str, str]]]:
    """Append the sanitized records of ``entries`` ((sender, sender seq, record)) that lie
    past their sender's committed mark, and move the marks, in one transaction.

    The writer process commits what senders sent it this way: a journal replay by another
    process (a CLI command's audit log starting just after a worker died) may have chained
    the same entries from the worker's journal while the writer still held them. Returns
    the records kept and their (seq, prev_hash, hash)."""
    conn.execute("BEGIN IMMEDIATE")
    try:
        names = sorted({sender for sender, _, _ in entries})
        marks = dict(
            conn.execute(
                f"SELECT sender, seq FROM audit_senders WHERE sender IN ({','.join('?' * len(names))})",  # noqa: E501, S608 - placeholders only
                names,
            ).fetchall()
        )
        kept = [(sender, seq, r) for sender, seq, r in entries if seq > marks.get(sender, 0)]
        records = [r for _, _, r in kept]
        placed = _append_rows(conn, [values(r) for r in records]) if records else []
        if kept:
            _set_marks(conn, {sender: seq for sender, seq, _ in kept})
        conn.execute("COMMIT")
    except BaseException:
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        raise
    return records, placed


def append_after_mark(
    conn: sqlite3.Connection, sender: str, entries: Sequence[tuple[float, AuditRecord]]
) -> list[AuditRow]:
    """Append the sanitized records of ``entries`` ((sender seq, record), in seq order) that
    lie past ``sender``'s committed mark, and move the mark, in one transaction.

    The mark is read inside the write transaction, so two processes replaying the same
    journal (or a replay racing the writer) can never chain an entry twice.
    """
    conn.execute("BEGIN IMMEDIATE")
    try:
        row = conn.execute("SELECT seq FROM audit_senders WHERE sender = ?", (sender,)).fetchone()
        mark = int(row[0]) if row else 0
        new = [(s, r) for s, r in entries if s > mark]
        records = [r for _, r in new]
        placed = _append_rows(conn, [values(r) for r in records]) if records else []
        if new:
            _set_marks(conn, {sender: int(new[-1][0])})
        conn.execute("COMMIT")
    except BaseException:
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        raise
    return [
        AuditRow(**r.to_dict(), seq=s, prev_hash=p, hash=h)
        for r, (s, p, h) in zip(records, placed, strict=True)
    ]


def forget_sender(conn: sqlite3.Connection, sender: str) -> None:
    """Drop the mark of a sender whose journal is gone (it will never send again)."""
    conn.execute("DELETE FROM audit_senders WHERE sender = ?", (sender,))


def _append_rows(
    conn: sqlite3.Connection, rows: Sequence[Values], lines: Sequence[str | None] | None = None
) -> list[tuple[int, str, str]]:
    """Hash-chain ``rows`` (sanitised record values) after the head and insert them (inside a
    transaction); return (seq, prev_hash, hash) per row. ``lines``: per row, its journal line
    when it has one (see :func:`canonical_row`)."""
    seq, prev = read_head(conn)
    out: list[tuple[int, str, str]] = []
    for start in range(0, len(rows), _ROWS_PER_INSERT):
        chunk = rows[start : start + _ROWS_PER_INSERT]
        chunk_lines = lines[start : start + _ROWS_PER_INSERT] if lines else [None] * len(chunk)
        params: list[Any] = []
        for vals, line in zip(chunk, chunk_lines, strict=True):
            seq += 1
            detail, h = canonical_row(prev, vals, seq, line)
            params += (seq, *vals[:-1], detail, prev, h)
            out.append((seq, prev, h))
            prev = h
        conn.execute(_insert_sql(len(chunk)), params)
    conn.execute(
        "INSERT INTO audit_head (id, seq, hash) VALUES (1, ?, ?) "
        "ON CONFLICT(id) DO UPDATE SET seq = excluded.seq, hash = excluded.hash",
        (seq, prev),
    )
    return out


def _set_marks(conn: sqlite3.Connection, senders: dict[str, int]) -> None:
    conn.executemany(
        "INSERT INTO audit_senders (sender, seq) VALUES (?, ?) "
        "ON CONFLICT(sender) DO UPDATE SET seq = max(seq, excluded.seq)",
        list(senders.items()),
    )


_loads = json.loads  # a global, looked up once per row


def row_from_columns(r: sqlite3.Row | tuple[Any, ...]) -> AuditRow:
    """An AuditRow from (seq, *record columns, prev_hash, hash), as stored.

    Positional: the columns are the record's fields in order, detail last (asserted above);
    a page or an export builds a row per record, and keywords cost twice as much. An empty
    detail (most records but requests) is not parsed."""
    text = r[-3]
    detail = _loads(text) if text and text != "{}" else {}
    # mypy cannot count a slice's length: the columns are the fields (asserted above)
    return AuditRow(*r[1:-3], detail, seq=r[0], prev_hash=r[-2], hash=r[-1])  # type: ignore[call-arg, misc]


SELECT_ROWS = f"SELECT seq, {', '.join(_COLUMNS)}, prev_hash, hash FROM audit"  # noqa: S608


def iter_rows(conn: sqlite3.Connection) -> Iterator[AuditRow]:
    for r in conn.execute(f"{SELECT_ROWS} ORDER BY seq"):
        yield row_from_columns(r)


def stored_after(conn: sqlite3.Connection, seq: int, limit: int) -> list[tuple[Any, ...]]:
    """Up to ``limit`` rows past ``seq`` in chain order, as stored: (seq, *record columns
    with ``detail`` as its canonical JSON text, prev_hash, hash). What the shipper copies,
    untouched: no parsing and re-encoding per row."""
    rows = conn.execute(f"{SELECT_ROWS} WHERE seq > ? ORDER BY seq LIMIT ?", (seq, limit))
    return rows.fetchall()


def tail(conn: sqlite3.Connection, n: int = 20) -> list[AuditRow]:
    rows = conn.execute(f"{SELECT_ROWS} ORDER BY seq DESC LIMIT ?", (n,)).fetchall()
    return [row_from_columns(r) for r in reversed(rows)]


def where(equal: Mapping[str, object], since: float | None) -> tuple[str, list[object]]:
    """`` WHERE col = ? AND ... AND ts >= ?`` for the filters given (None: not filtered) and
    its parameters; column names come from the callers' constants, never from input."""
    clauses: list[str] = []
    args: list[object] = []
    for col, val in equal.items():
        if val is not None:
            clauses.append(f"{col} = ?")
            args.append(val)
    if since is not None:
        clauses.append("ts >= ?")
        args.append(float(since))
    return (f" WHERE {' AND '.join(clauses)}" if clauses else ""), args


def search(
    conn: sqlite3.Connection,
    *,
    dag: str | None = None,
    run: str | None = None,
    decision: str | None = None,
    event: str | None = None,
    resource: str | None = None,
    since: float | None = None,
    limit: int = 100,
) -> list[AuditRow]:
    """Newest ``limit`` rows matching every given filter, returned oldest first."""
    equal = {"dag_id": dag, "run_id": run, "decision": decision, "event": event,
             "resource": resource}  # fmt: skip
    clause, args = where(equal, since)
    sql = f"{SELECT_ROWS}{clause} ORDER BY seq DESC LIMIT ?"
    rows = conn.execute(sql, (*args, int(limit))).fetchall()
    return [row_from_columns(r) for r in reversed(rows)]


@dataclass(slots=True)
class Walk:
    """How far :func:`walk` got along a chain."""

    checked: int = 0
    last_seq: int = 0
    last_hash: str = GENESIS
    broken: tuple[int, str] | None = None  # (first bad seq, what is wrong)


def walk(
    rows: Iterable[AuditRow],
    anchors: dict[int, str],
    anchor_name: Callable[[int], str] = lambda seq: "the anchor recorded outside the database",
) -> Walk:
    """Follow a chain from seq 1 and stop at the first row that breaks it: a gap or a
    reordering (seq), a row deleted or inserted (prev_hash), an edit (hash), or a hash other
    than an ``anchor`` recorded elsewhere names for its seq. Anchors met are popped, so what
    is left in ``anchors`` lies beyond the chain's end."""
    w = Walk()
    for row in rows:
        expected = w.last_seq + 1
        if row.seq != expected:
            what = "missing row(s)" if row.seq > expected else "out-of-order row"
            w.broken = (expected, f"{what}: expected seq {expected}, found {row.seq}")
        elif row.prev_hash != w.last_hash:
            w.broken = (
                row.seq,
                "prev_hash does not match the previous row (row deleted, inserted or reordered)",
            )
        elif chain_hash(w.last_hash, row, row.seq) != row.hash:
            w.broken = (row.seq, "hash mismatch (row edited)")
        elif row.seq in anchors and anchors.pop(row.seq) != row.hash:
            w.broken = (row.seq, f"hash differs from {anchor_name(row.seq)} (chain rewritten)")
        if w.broken is not None:
            return w
        w.last_seq, w.last_hash, w.checked = row.seq, row.hash, w.checked + 1
    return w


def verify(conn: sqlite3.Connection, anchors: Iterable[tuple[int, str]] = ()) -> VerifyResult:
    """Walk the whole chain; report the first row that breaks it.

    Detects an edited row (hash mismatch), a deleted or reordered row (gap in seq or
    prev_hash mismatch), a truncated tail (head ahead of the last row) and rows appended
    without the head. ``anchors`` are (seq, hash) pairs recorded elsewhere (JSON-lines sink,
    logs); each must still be in the chain.
    """
    want = dict(anchors)
    w = walk(iter_rows(conn), want)
    checked, last = w.checked, w.last_seq
    if w.broken is not None:
        return VerifyResult(False, checked, *w.broken)
    head_row = conn.execute("SELECT seq, hash FROM audit_head WHERE id = 1").fetchone()
    if head_row is None:
        if last:
            return VerifyResult(False, checked, 1, "head row missing")
    else:
        head_seq, head_hash = int(head_row[0]), str(head_row[1])
        if head_seq > last:
            return VerifyResult(
                False,
                checked,
                last + 1,
                f"truncated: head says seq {head_seq} but the last row is {last}",
            )
        if head_seq < last:
            return VerifyResult(False, checked, head_seq + 1, "rows after the recorded head")
        if head_hash != w.last_hash:
            return VerifyResult(False, checked, last, "head hash does not match the last row")
    if want:
        s = min(want)
        return VerifyResult(
            False, checked, s, f"anchor seq {s} is beyond the stored chain (truncated)"
        )
    return VerifyResult(True, checked)
