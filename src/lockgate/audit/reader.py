"""Read side of the audit trail: tail, search, verify and the head anchor.

Every call opens its own short-lived read-only connection, so the CLI (another process) can
query while the server writes: WAL lets readers see the last committed state without
blocking the writer.

With ``shipping`` (``state: postgresql``) tail, search and iter_rows answer from the shared
trail (every replica's records), and verify checks this replica's local chain and then the
shared trail (every replica's chain and every signed checkpoint,
:mod:`lockgate.audit.shared`). The head and the journal backlog stay this replica's own.
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from lockgate.audit import chain
from lockgate.audit import query as sql_query
from lockgate.audit.chain import SELECT_ROWS as LOCAL_SELECT  # the chain's one row select
from lockgate.audit.chain import VerifyResult
from lockgate.audit.journal import Backlog, backlog, journal_dir
from lockgate.audit.query import AuditPage, AuditQuery, HistogramBucket
from lockgate.audit.record import GENESIS, RECORD_FIELDS, AuditRow
from lockgate.audit.shipping import AuditShipping, ShipLag, read_status, ship_lag

if TYPE_CHECKING:
    from lockgate.audit.shared import SharedTrail
    from lockgate.store import Database

_T = TypeVar("_T")
#: the record fields :meth:`AuditReader.usage_rows` yields (what policy suggest/unused read)
USAGE_FIELDS = ("event", "ts", "deployment", "dag_id", "task_id", "run_id", "principal",
                "resource", "action", "object", "decision", "rule")  # fmt: skip
_LOCAL_STORE = sql_query.Store(LOCAL_SELECT, "audit", "sqlite", False, chain.row_from_columns)
# where ts sits in a row of the shared trail's select (replica, seq, *RECORD_FIELDS, ...)
_SHARED_TS = 2 + RECORD_FIELDS.index("ts")


class AuditReader:
    def __init__(self, db_path: Path, *, shipping: AuditShipping | None = None) -> None:
        self.db_path = Path(db_path)
        self.shipping = shipping
        self._shared_db: Database | None = None
        self._trail: SharedTrail | None = None

    def _shared(self) -> SharedTrail | None:
        """The shared trail, or None when it has no tables yet (nothing shipped). A step
        that only adds indexes may be pending (``lockgate db upgrade`` not run yet): readers
        need the tables alone."""
        from lockgate.audit.shared import SharedTrail, readable
        from lockgate.store import PostgresDatabase

        assert self.shipping is not None
        if self._shared_db is None:
            s = self.shipping
            self._shared_db = PostgresDatabase(s.settings, replica_id=s.replica_id)
        if self._trail is None:
            if not readable(self._shared_db):
                return None
            self._trail = SharedTrail(self._shared_db)  # tables never go away: ask once
        return self._trail

    def last_uses(self, tokens: Mapping[str, float]) -> dict[str, tuple[float, str]]:
        """Per token id (jti -> when issued): (ts, event) of its newest record since then
        other than its ``token_issued``; tokens never used are left out."""
        if self.shipping is not None:
            trail = self._shared()
            return trail.last_uses(tokens) if trail is not None else {}
        found: dict[str, tuple[float, str]] = {}
        with self._conn() as conn:
            if conn is None or not _has_schema(conn):
                return found
            for jti, since in tokens.items():  # the audit(jti, seq) index: a probe each
                row = conn.execute(
                    "SELECT ts, event FROM audit WHERE jti = ? AND ts >= ? "
                    "AND event <> 'token_issued' ORDER BY seq DESC LIMIT 1",
                    (jti, since),
                ).fetchone()
                if row is not None:
                    found[jti] = (float(row[0]), str(row[1]))
        return found

    def close_shared(self) -> None:
        db, self._shared_db = self._shared_db, None
        self._trail = None
        if db is not None:
            db.close()

    def __enter__(self) -> AuditReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close_shared()  # a command leaves no pool to the garbage collector

    def shipping_lag(self) -> ShipLag | None:
        """How far this replica's shipping is behind its local chain; None without shipping."""
        return ship_lag(self.db_path) if self.shipping is not None else None

    @contextmanager
    def _conn(self) -> Iterator[sqlite3.Connection | None]:
        if not self.db_path.exists():  # nothing written yet; do not create an empty file
            yield None
            return
        conn = chain.connect(self.db_path, readonly=True)
        try:
            yield conn
        finally:
            conn.close()

    def tail(self, n: int = 20) -> list[AuditRow]:
        if self.shipping is not None:
            return self.search(limit=n)
        with self._conn() as conn:
            return chain.tail(conn, n) if conn and _has_schema(conn) else []

    def search(
        self,
        dag: str | None = None,
        run: str | None = None,
        decision: str | None = None,
        event: str | None = None,
        resource: str | None = None,
        since: float | datetime | None = None,
        limit: int = 100,
        replica: str | None = None,
    ) -> list[AuditRow]:
        """Newest ``limit`` rows matching all given filters, oldest first. ``since``: unix ts.
        ``replica``: only that replica's records (the shared trail; ignored without it)."""
        if isinstance(since, datetime):
            since = since.timestamp()
        q = AuditQuery(dag=dag, run=run, decision=decision, event=event, resource=resource,
                       since=since, replica=replica)  # fmt: skip
        return self.query(q, limit=limit).rows[::-1]

    def query(self, q: AuditQuery, *, limit: int = 100, older: str | None = None) -> AuditPage:
        """Up to ``limit`` records matching ``q``, newest first, and the cursor of the next
        (older) page; ``older``: a cursor from a previous page (ValueError if malformed)."""
        return self._ask(
            lambda run, store: sql_query.page(run, store, q, limit=limit, older=older),
            AuditPage([], None),
        )

    def count(self, q: AuditQuery) -> int:
        """How many records match ``q``."""
        return self._ask(lambda run, store: sql_query.count(run, store, q), 0)

    def count_by(self, q: AuditQuery, fields: Sequence[str]) -> dict[tuple[Any, ...], int]:
        """How many records match ``q`` per distinct value of ``fields`` (filter names, e.g.
        ``("rule", "resource")``): one grouped query."""
        return self._ask(lambda run, store: sql_query.count_by(run, store, q, fields), {})

    def histogram(self, q: AuditQuery, *, bucket: float) -> list[HistogramBucket]:
        """Request outcomes (allowed, denied, throttled, upstream errors) per DAG per
        ``bucket`` seconds, oldest first (see :func:`lockgate.audit.query.histogram`)."""
        return self._ask(lambda run, store: sql_query.histogram(run, store, q, bucket=bucket), [])

    def record(self, seq: int, replica: str | None = None) -> AuditRow | None:
        """One record: ``seq`` of this replica's local chain, or, with shipping and
        ``replica`` given, of that replica's chain in the shared trail."""
        if self.shipping is not None and replica is not None:
            from lockgate.audit.shared import SELECT_ROWS as SHARED_SELECT
            from lockgate.audit.shared import trail_row

            trail = self._shared()
            if trail is None:
                return None
            with trail.db.read() as cur:
                found = cur.execute(
                    f"{SHARED_SELECT} WHERE replica = ? AND seq = ?", (replica, seq)
                ).fetchone()
            return trail_row(found) if found else None
        with self._conn() as conn:
            if not conn or not _has_schema(conn):
                return None
            row = conn.execute(f"{LOCAL_SELECT} WHERE seq = ?", (seq,)).fetchone()
            return chain.row_from_columns(row) if row else None

    def _ask(self, ask: Callable[[sql_query.Execute, sql_query.Store], _T], nothing: _T) -> _T:
        """``ask`` run against the trail this reader reads (the shared trail with shipping,
        else the local chain); ``nothing`` when that holds no records yet."""
        if self.shipping is not None:
            from lockgate.audit.shared import SELECT_ROWS as SHARED_SELECT
            from lockgate.audit.shared import trail_row

            trail = self._shared()
            if trail is None:
                return nothing
            db = trail.db

            def run_shared(sql: str, params: Sequence[object]) -> list[tuple[Any, ...]]:
                with db.read() as cur:
                    return cur.execute(sql, params).fetchall()

            store = sql_query.Store(SHARED_SELECT, "audit_records", db.dialect, True, trail_row)
            return ask(run_shared, store)
        with self._conn() as conn:
            if not conn or not _has_schema(conn):
                return nothing

            def run_local(sql: str, params: Sequence[object]) -> list[tuple[Any, ...]]:
                return conn.execute(sql, params).fetchall()

            return ask(run_local, _LOCAL_STORE)

    def iter_rows(
        self, dag: str | None = None, since: float | datetime | None = None, batch: int = 5000
    ) -> Iterator[AuditRow]:
        """Every row of ``dag`` (every DAG: None) at or after ``since`` (unix ts), oldest
        first, as :meth:`search` returns them, fetched ``batch`` rows a round trip: a window
        of millions is never all in memory. The shared trail is paged by its order
        ``(ts, replica, seq)`` (every replica, interleaved by time); the local chain by seq.
        Each page is its own read: rows written meanwhile past the last page show up."""
        if batch < 1:
            raise ValueError("batch must be at least 1")
        if isinstance(since, datetime):
            since = since.timestamp()
        if self.shipping is not None:
            trail = self._shared()
            if trail is not None:
                yield from _shared_pages(trail, dag, since, batch)
            return
        with self._conn() as conn:
            if conn is not None and _has_schema(conn):
                yield from _local_pages(conn, dag, since, batch)

    def usage_rows(
        self, dag: str | None = None, since: float | None = None, batch: int = 5000
    ) -> Iterator[dict[str, Any]]:
        """What least privilege from use reads (``policy suggest``/``unused``): per record of
        ``dag`` (every DAG: None) at or after ``since``, oldest first, the :data:`USAGE_FIELDS`
        and ``detail`` reduced to whether it follows an admitted record (``{"ref": True}``
        or ``{}``). The local chain is read without building rows or parsing JSON (a
        million rows in a few seconds); the shared trail page by page."""
        if self.shipping is not None:
            for row in self.iter_rows(dag=dag, since=since, batch=batch):
                out = {name: getattr(row, name) for name in USAGE_FIELDS}
                out["detail"] = {"ref": True} if "ref" in row.detail else {}
                yield out
            return
        with self._conn() as conn:
            if conn is None or not _has_schema(conn):
                return
            clause, args = chain.where({"dag_id": dag}, since)
            columns = ", ".join(USAGE_FIELDS)  # constants
            # no ORDER BY: the index that serves the filter reads oldest first already, and
            # a million rows are never sorted
            cur = conn.execute(f"SELECT {columns}, detail FROM audit{clause}", args)  # noqa: S608
            while page := cur.fetchmany(batch):
                for values in page:
                    out = dict(zip(USAGE_FIELDS, values[:-1], strict=True))
                    # only whether the record follows an "admitted" one matters: no JSON parse
                    out["detail"] = {"ref": True} if '"ref":' in (values[-1] or "") else {}
                    yield out

    def verify(self, anchors: Iterable[tuple[int, str]] = ()) -> VerifyResult:
        """Check the whole chain (see :func:`lockgate.audit.chain.verify`); with shipping,
        then the shared trail of every replica."""
        local = self._verify_local(anchors)
        if not local.ok or self.shipping is None:
            return local
        from lockgate.audit.shared import public_key

        trail = self._shared()
        if trail is None:
            return local
        key = self.shipping.signing_key
        shared = trail.verify(public_key(key) if key is not None else None)
        # what this replica found lost comes first: the shared trail's own complaint (a
        # checkpoint gap) says less
        lost = self._lost(shared)
        if lost is not None or not shared.ok:
            return lost or shared
        return self._same_as_local(trail, shared)

    def _lost(self, shared: VerifyResult) -> VerifyResult | None:
        """What this replica's shipper found missing from the shared trail after shipping it
        (it shipped it again; the loss itself stays reported)."""
        assert self.shipping is not None
        replica = self.shipping.replica_id
        lost = (read_status(self.db_path) or {}).get("lost")
        if not (isinstance(lost, list) and lost):
            return None
        first, last, when = lost[0]
        found = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(when))
        return VerifyResult(
            False, shared.checked, int(first),
            f"replica {replica}: the shared trail lost seq {int(first)} to {int(last)} "
            f"after they were shipped (found {found}; shipped again from the local chain)",
            replica, shared.checkpoints,
        )  # fmt: skip

    def _same_as_local(self, trail: SharedTrail, shared: VerifyResult) -> VerifyResult:
        """This replica's shipped rows must be the local chain's first rows, and all of
        those the shipper reported shipped: a tail dropped in PostgreSQL after the newest
        checkpoint shows here (the hash of the shipped head commits to every row before)."""
        assert self.shipping is not None
        replica = self.shipping.replica_id
        # the shipper reports after its commit: read the report first, PostgreSQL second,
        # so a batch shipped in between never looks like a truncation
        reported = ship_lag(self.db_path).shipped_seq
        seq, h = trail.shipped_head(replica)
        problem: str | None = None
        with self._conn() as conn:
            local = None
            if seq and conn is not None and _has_schema(conn):
                row = conn.execute("SELECT hash FROM audit WHERE seq = ?", (seq,)).fetchone()
                local = str(row[0]) if row else None
            if seq and local != h:
                problem = f"shipped seq {seq} differs from this replica's local chain"
        if problem is None and seq < reported:
            problem = f"truncated: seq {reported} was shipped, PostgreSQL ends at {seq}"
            seq += 1
        if problem is None:
            return shared
        return VerifyResult(
            False, shared.checked, seq, f"replica {replica}: {problem}", replica,
            shared.checkpoints,
        )  # fmt: skip

    def _verify_local(self, anchors: Iterable[tuple[int, str]]) -> VerifyResult:
        with self._conn() as conn:
            if not conn or not _has_schema(conn):
                return VerifyResult(ok=True, checked=0)
            # one read transaction: a consistent snapshot while the server keeps appending
            conn.execute("BEGIN")
            try:
                return chain.verify(conn, anchors)
            finally:
                conn.execute("ROLLBACK")

    def journal_backlog(self) -> list[Backlog]:
        """Written-ahead records not in the chain yet, per sender (see :func:`backlog`)."""
        with self._conn() as conn:
            marks = chain.read_senders(conn) if conn and _has_schema(conn) else {}
        return backlog(journal_dir(self.db_path), marks)

    def head(self) -> tuple[int, str]:
        """(last seq, its hash): an anchor worth keeping outside the database."""
        with self._conn() as conn:
            if not conn or not _has_schema(conn):
                return (0, GENESIS)
            return chain.read_head(conn)


def _shared_pages(
    trail: SharedTrail, dag: str | None, since: float | None, batch: int
) -> Iterator[AuditRow]:
    """Keyset pages of the shared trail in ``(ts, replica, seq)`` order ((replica, seq) is
    its key, so the order is total and no row is skipped or repeated at a page's edge);
    ``ts >= last ts`` leads the cursor condition so the ``ts`` / ``(dag_id, ts)`` index
    serves it."""
    # one definition of the shared trail's select and row (NUL-safe) for search and this
    from lockgate.audit.shared import SELECT_ROWS as SHARED_SELECT
    from lockgate.audit.shared import trail_row as shared_row

    clause, args = chain.where({"dag_id": dag}, since)
    after: tuple[float, str, int] | None = None
    while True:
        sql, params = SHARED_SELECT + clause, list(args)
        if after is not None:
            sql += " AND " if clause else " WHERE "
            sql += "ts >= ? AND (ts > ? OR replica > ? OR (replica = ? AND seq > ?))"
            ts, replica, seq = after
            params += [ts, ts, replica, replica, seq]
        with trail.db.read() as cur:
            page = cur.execute(
                f"{sql} ORDER BY ts, replica, seq LIMIT ?", (*params, batch)
            ).fetchall()
        for r in page:
            yield shared_row(r)
        if len(page) < batch:
            return
        last = page[-1]  # (replica, seq, *RECORD_FIELDS, ...): the shared select's columns
        after = (float(last[_SHARED_TS]), str(last[0]), int(last[1]))


def _local_pages(
    conn: sqlite3.Connection, dag: str | None, since: float | None, batch: int
) -> Iterator[AuditRow]:
    """Pages of the local chain by seq (its key and its order)."""
    clause, args = chain.where({"dag_id": dag}, since)
    sql = LOCAL_SELECT + clause + (" AND " if clause else " WHERE ") + "seq > ?"
    after = 0
    while True:
        page = conn.execute(f"{sql} ORDER BY seq LIMIT ?", (*args, after, batch)).fetchall()
        for r in page:
            yield chain.row_from_columns(r)
        if len(page) < batch:
            return
        after = int(page[-1][0])


def _has_schema(conn: sqlite3.Connection) -> bool:
    row = conn.execute("SELECT 1 FROM sqlite_master WHERE type='table' AND name='audit'")
    return row.fetchone() is not None
