"""The front door both audit logs share (lockgate.audit.door): one numbering for every record,
write-ahead refs, a mark in the chain that covers emitted and written-ahead records alike,
and a full queue that drops an emitted record but refuses a written-ahead or awaited one."""

from __future__ import annotations

import asyncio
import sqlite3
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from lockgate.audit import AuditLog, AuditRecord, RemoteAuditLog
from lockgate.audit.door import AuditDoor
from lockgate.errors import AuditUnavailable


@pytest.fixture(params=["thread", "process"])
def door(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[AuditDoor]:
    db = tmp_path / "audit.db"
    log: AuditDoor = AuditLog(db) if request.param == "thread" else RemoteAuditLog(db)
    try:
        yield log
    finally:
        log.close()


def test_emitted_and_written_ahead_records_share_one_numbering(door: AuditDoor) -> None:
    door.emit(AuditRecord(event="denied", run_id="r0"))
    ref = door.write_ahead(AuditRecord(event="admitted", decision="allow", run_id="r1"))
    door.emit(AuditRecord(event="allowed", run_id="r1", detail={"ref": ref}))
    assert ref == f"{door.sender_id}/2"
    assert door.flush(10)
    assert [r.run_id for r in door.tail(10)] == ["r0", "r1", "r1"]
    conn = sqlite3.connect(door.db_path)
    marks = dict(conn.execute("SELECT sender, seq FROM audit_senders").fetchall())
    assert marks[door.sender_id] == 3  # everything up to the last record is committed
    assert door.verify().ok


def test_unknown_events_are_refused_before_anything_is_queued(door: AuditDoor) -> None:
    with pytest.raises(ValueError):
        door.emit(AuditRecord(event="nonsense"))
    with pytest.raises(ValueError):
        door.write_ahead(AuditRecord(event="nonsense"))
    assert door.flush(5) and door.tail(5) == []


def test_a_full_queue_drops_emits_and_refuses_write_ahead_and_write(tmp_path: Path) -> None:
    log = AuditLog(tmp_path / "audit.db", write_timeout=5, max_queue=3)
    try:
        log.inject_fault("hang", 1.0)  # the next batch stalls while the queue fills up
        log.emit(AuditRecord(event="denied", run_id="stalled"))
        deadline = time.monotonic() + 5
        while log._busy_since is None:  # until the writer took it (and stalls writing it)
            assert time.monotonic() < deadline
            time.sleep(0.005)
        for i in range(6):
            log.emit(AuditRecord(event="denied", run_id=f"r{i}"))
        assert log.dropped == 3
        with pytest.raises(AuditUnavailable):
            log.write_ahead(AuditRecord(event="admitted"))
        with pytest.raises(AuditUnavailable):
            asyncio.run(log.write(AuditRecord(event="token_issued")))
        assert log.flush(5)
        assert [r.run_id for r in log.tail(10)] == ["stalled", "r0", "r1", "r2"]
        assert log.verify().ok
    finally:
        log.close()
