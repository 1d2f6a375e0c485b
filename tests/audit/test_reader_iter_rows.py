"""``AuditReader.iter_rows``: every matching row, oldest first, a batch per round trip, from
the local chain (by seq) and from the shared trail on a real PostgreSQL server (by ts,
replica, seq across every replica), with the ``dag`` and ``since`` filters, the same rows
in the same order as ``search`` and never more than one batch held."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from lockgate.audit import AuditLog, AuditReader, AuditRecord
from lockgate.audit.record import AuditRow
from lockgate.config import PostgresStateSettings
from lockgate.store.postgres import PostgresCursor
from tests.audit.shared_helpers import record, shipping
from tests.pgserver.fixtures import SharedStateFactory

BATCHES = (1, 3, 7, 1000)  # one row a page, pages ending inside and at ties, one page


def _records(replica: str, count: int) -> list[AuditRecord]:
    """``count`` records at ts 1000, 1001, ...; three share ts 1004 (a tie inside the
    replica) and every third is another DAG's."""
    out = []
    for i in range(count):
        ts = 1000.0 + (4 if 4 <= i <= 6 else i)
        dag = "other" if i % 3 == 2 else "etl"
        out.append(dataclasses.replace(record(i, replica), ts=ts, dag_id=dag))
    return out


def _write(db_path: Path, records: list[AuditRecord], settings: PostgresStateSettings | None,
           replica: str = "r") -> None:  # fmt: skip
    log = AuditLog(db_path, shipping=shipping(replica, settings) if settings else None)
    try:
        for r in records:
            log.emit(r)
        assert log.flush(10)
    finally:
        log.close()  # with shipping: ships what is committed before it returns


def _keys(rows: list[AuditRow]) -> list[tuple[float, str | None, int]]:
    return [(r.ts, r.replica, r.seq) for r in rows]


@pytest.fixture
def two_replicas(tmp_path: Path, pg_state: SharedStateFactory) -> Iterator[AuditReader]:
    """r1 (20 records) and r2 (15) shipped to one shared trail; r2's ts equal r1's."""
    settings = pg_state()
    _write(tmp_path / "r1" / "audit.db", _records("r1", 20), settings, "r1")
    _write(tmp_path / "r2" / "audit.db", _records("r2", 15), settings, "r2")
    reader = AuditReader(tmp_path / "r1" / "audit.db", shipping=shipping("r1", settings))
    try:
        yield reader
    finally:
        reader.close_shared()


def test_shared_trail_every_replica_in_order_across_batches(two_replicas: AuditReader) -> None:
    reader = two_replicas
    everything = reader.search(limit=1000)
    assert len(everything) == 35 and {r.replica for r in everything} == {"r1", "r2"}
    expected = sorted(_keys(everything))
    for batch in BATCHES:
        rows = list(reader.iter_rows(batch=batch))
        assert _keys(rows) == expected, batch
        assert [r.to_dict() for r in rows] == [r.to_dict() for r in everything], batch


def test_shared_trail_dag_and_since(two_replicas: AuditReader) -> None:
    reader = two_replicas
    for dag, since in (("etl", None), (None, 1004.0), ("etl", 1004.0), ("other", 1010.5)):
        expected = _keys(reader.search(dag=dag, since=since, limit=1000))
        assert expected, (dag, since)
        for batch in BATCHES:
            rows = list(reader.iter_rows(dag=dag, since=since, batch=batch))
            assert _keys(rows) == expected, (dag, since, batch)
            assert all(r.ts >= (since or 0) and r.dag_id == (dag or r.dag_id) for r in rows)
    assert list(reader.iter_rows(dag="nobody")) == []
    assert list(reader.iter_rows(since=2000.0, batch=1)) == []


def test_shared_trail_holds_one_batch_at_most(
    two_replicas: AuditReader, monkeypatch: pytest.MonkeyPatch
) -> None:
    fetched: list[int] = []  # rows of each page of the trail read from PostgreSQL
    execute, fetchall = PostgresCursor.execute, PostgresCursor.fetchall
    paging: set[int] = set()  # the cursors whose statement reads a page of audit_records

    def noting(self: PostgresCursor, sql: str, params: Any = ()) -> PostgresCursor:
        if "FROM audit_records" in sql and "ORDER BY ts" in sql:
            paging.add(id(self))
        return execute(self, sql, params)

    def counting(self: PostgresCursor) -> list[tuple[Any, ...]]:
        rows = fetchall(self)
        if id(self) in paging:
            paging.discard(id(self))
            fetched.append(len(rows))
        return rows

    monkeypatch.setattr(PostgresCursor, "execute", noting)
    monkeypatch.setattr(PostgresCursor, "fetchall", counting)
    batch, taken = 4, 0
    for _ in two_replicas.iter_rows(batch=batch):
        taken += 1
        # rows read from PostgreSQL and not handed on yet: at most the page being handed on
        assert 0 <= sum(fetched) - taken < batch
    assert taken == 35 and sum(fetched) == 35
    assert max(fetched) == batch and len(fetched) == 35 // batch + 1


def test_shared_trail_not_created_yet(tmp_path: Path, pg_state: SharedStateFactory) -> None:
    reader = AuditReader(tmp_path / "audit.db", shipping=shipping("r1", pg_state()))
    try:
        assert list(reader.iter_rows()) == []
    finally:
        reader.close_shared()


def test_local_chain_by_seq(tmp_path: Path) -> None:
    db_path = tmp_path / "audit.db"
    reader = AuditReader(db_path)
    assert list(reader.iter_rows()) == []  # nothing written: no file created
    assert not db_path.exists()
    _write(db_path, _records("r", 20), None)
    for dag, since in ((None, None), ("etl", None), (None, 1004.0), ("other", 1010.5)):
        expected = [r.seq for r in reader.search(dag=dag, since=since, limit=1000)]
        assert expected, (dag, since)
        for batch in BATCHES:
            rows = list(reader.iter_rows(dag=dag, since=since, batch=batch))
            assert [r.seq for r in rows] == expected, (dag, since, batch)
    assert [r.seq for r in reader.iter_rows(batch=3)] == list(range(1, 21))
    with pytest.raises(ValueError, match="batch"):
        next(reader.iter_rows(batch=0))
