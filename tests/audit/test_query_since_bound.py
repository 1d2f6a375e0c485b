"""A page of the local chain with ``since`` is bounded by the window's first seq (read off
the ts index) so a recent window with few matches does not walk the whole chain back; the
bound must never drop a record, even when ts does not grow with seq."""

from __future__ import annotations

import sqlite3
from pathlib import Path

from lockgate.audit import AuditQuery, AuditReader, AuditRecord, chain

# ts goes back now and then (records chained in arrival order, stamped where they began)
TIMES = [100.0, 105.0, 90.0, 110.0, 95.0, 120.0, 80.0, 130.0, 125.0, 140.0, 60.0, 150.0]


def _trail(path: Path) -> None:
    conn = chain.connect(path)
    try:
        records = [
            AuditRecord(event=("denied", "allowed")[i % 2], ts=ts, dag_id=("a", "b")[i % 3 % 2])
            for i, ts in enumerate(TIMES)
        ]
        chain.append(conn, records)
    finally:
        conn.close()


def _every_page(reader: AuditReader, q: AuditQuery, limit: int) -> list[int]:
    seqs: list[int] = []
    older = None
    while True:
        page = reader.query(q, limit=limit, older=older)
        seqs += [row.seq for row in page.rows]
        if page.older is None:
            return seqs
        older = page.older


def test_a_since_window_keeps_every_record_at_or_after_it(tmp_path: Path) -> None:
    _trail(tmp_path / "audit.db")
    reader = AuditReader(tmp_path / "audit.db")
    for since in sorted({*TIMES, 0.0, 97.5, 1000.0}):
        for event in (None, "denied"):
            for dag in (None, "a"):
                expected = [
                    seq
                    for seq, ts in reversed(list(enumerate(TIMES, start=1)))
                    if ts >= since
                    and (event is None or ("denied", "allowed")[(seq - 1) % 2] == event)
                    and (dag is None or ("a", "b")[(seq - 1) % 3 % 2] == dag)
                ]
                q = AuditQuery(since=since, event=event, dag=dag)
                for limit in (1, 2, 100):
                    assert _every_page(reader, q, limit) == expected, (since, event, dag, limit)


def test_the_bound_is_read_off_the_ts_index(tmp_path: Path) -> None:
    """The plan the page runs: the bound's min is a covering read of audit_ts, and the
    table is searched by seq range (not scanned)."""
    _trail(tmp_path / "audit.db")
    seen: list[str] = []
    conn = sqlite3.connect(tmp_path / "audit.db")
    conn.set_trace_callback(seen.append)
    from lockgate.audit import query as sql_query
    from lockgate.audit.reader import _LOCAL_STORE

    def run(sql: str, args: object) -> list[tuple[object, ...]]:
        return conn.execute(sql, args).fetchall()  # type: ignore[arg-type]

    sql_query.page(run, _LOCAL_STORE, AuditQuery(event="denied", since=125.0), limit=5,
                   older=None)  # fmt: skip
    sql = seen[-1]
    plan = " ".join(r[-1] for r in conn.execute(f"EXPLAIN QUERY PLAN {sql}"))
    conn.close()
    assert "audit_ts" in plan and "SCAN audit" not in plan.replace("SCAN audit_", "")
