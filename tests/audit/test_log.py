"""AuditLog writer: fail closed on a failing or hung sink, recover by itself, lose nothing."""

from __future__ import annotations

import asyncio
import errno
import json
import sqlite3
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from lockgate.audit import AuditLog, AuditReader, AuditRecord, format_records
from lockgate.errors import AuditUnavailable
from lockgate.metrics import REGISTRY

JWT = "eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiJ0YXNrIn0.c2lnbmF0dXJlLWJ5dGVz"


def wait_until(pred: Callable[[], bool], timeout: float = 5.0) -> float:
    start = time.monotonic()
    while not pred():
        if time.monotonic() - start > timeout:
            raise AssertionError("condition not reached in time")
        time.sleep(0.005)
    return time.monotonic() - start


def failures() -> float:
    return REGISTRY.get_sample_value("lockgate_audit_write_failures_total") or 0.0


class Fault:
    """Injected before each commit: raise while ``error`` is set, sleep ``hang`` once."""

    def __init__(self) -> None:
        self.error: BaseException | None = None
        self.hang = 0.0
        self.calls = 0

    def __call__(self) -> None:
        self.calls += 1
        if self.hang:
            h, self.hang = self.hang, 0.0
            time.sleep(h)
        if self.error is not None:
            raise self.error


@pytest.fixture
def fault() -> Fault:
    return Fault()


def rec(i: int = 0, **kw: object) -> AuditRecord:
    base: dict[str, object] = {"event": "allowed", "decision": "allow", "run_id": f"r{i}"}
    base.update(kw)
    return AuditRecord(**base)  # type: ignore[arg-type]


def test_emit_then_flush_writes_everything(tmp_path: Path) -> None:
    log = AuditLog(tmp_path / "audit.db")
    try:
        log.check_writable()
        for i in range(1000):
            log.emit(rec(i))
        assert log.flush(5)
        rows = log.tail(1000)
        assert [r.seq for r in rows] == list(range(1, 1001))
        assert [r.run_id for r in rows] == [f"r{i}" for i in range(1000)]
        assert rows[0].ts > 0
        assert log.verify().ok
    finally:
        log.close()


def test_disk_full_fails_closed_then_recovers_without_loss(tmp_path: Path, fault: Fault) -> None:
    log = AuditLog(tmp_path / "audit.db", write_timeout=0.3, _fault=fault)
    try:
        log.emit(rec(0))
        assert log.flush(2)
        before = failures()
        fault.error = OSError(errno.ENOSPC, "No space left on device")
        for i in range(1, 51):
            log.emit(rec(i))
        elapsed = wait_until(lambda: not log.healthy, timeout=2)
        assert elapsed < 0.5
        with pytest.raises(AuditUnavailable, match="No space left"):
            log.check_writable()
        assert failures() > before
        time.sleep(0.2)
        assert not log.healthy  # still failing: stays closed
        assert len(log.tail(100)) == 1
        fault.error = None  # disk freed
        wait_until(lambda: log.healthy, timeout=3)
        assert log.flush(3)
        rows = log.tail(100)
        assert [r.run_id for r in rows] == [f"r{i}" for i in range(51)]
        assert log.verify().ok
        assert log.dropped == 0
    finally:
        log.close()


def test_hanging_write_fails_closed_then_recovers(tmp_path: Path, fault: Fault) -> None:
    log = AuditLog(tmp_path / "audit.db", write_timeout=0.2, _fault=fault)
    try:
        log.check_writable()
        fault.hang = 2.0
        log.emit(rec(0))
        elapsed = wait_until(lambda: not log.healthy, timeout=1)
        assert 0.15 < elapsed < 0.6
        with pytest.raises(AuditUnavailable, match="pending"):
            log.check_writable()
        for i in range(1, 10):  # queued behind the hung write
            log.emit(rec(i))
        wait_until(lambda: log.healthy, timeout=4)
        assert log.flush(2)
        assert [r.run_id for r in log.tail(100)] == [f"r{i}" for i in range(10)]
    finally:
        log.close()


def test_database_locked_by_another_process_fails_closed(tmp_path: Path) -> None:
    db = tmp_path / "audit.db"
    log = AuditLog(db, write_timeout=0.2)
    other = sqlite3.connect(db, isolation_level=None)
    try:
        other.execute("BEGIN IMMEDIATE")  # holds the write lock
        log.emit(rec(1))
        wait_until(lambda: not log.healthy, timeout=2)
        with pytest.raises(AuditUnavailable):
            log.check_writable()
        other.execute("ROLLBACK")
        wait_until(lambda: log.healthy, timeout=3)
        assert log.flush(2)
        assert [r.run_id for r in log.tail()] == ["r1"]
    finally:
        other.close()
        log.close()


async def test_write_awaits_durability(tmp_path: Path) -> None:
    log = AuditLog(tmp_path / "audit.db")
    try:
        await log.write(rec(7, event="token_issued", jti="j-1"))
        # durable: visible to an independent reader the moment write() returns
        rows = AuditReader(tmp_path / "audit.db").tail()
        assert [(r.event, r.jti) for r in rows] == [("token_issued", "j-1")]
    finally:
        log.close()


async def test_write_times_out_on_hang_and_fails_fast_when_unhealthy(
    tmp_path: Path, fault: Fault
) -> None:
    log = AuditLog(tmp_path / "audit.db", write_timeout=0.2, _fault=fault)
    try:
        fault.hang = 1.0
        t0 = time.monotonic()
        with pytest.raises(AuditUnavailable, match="durable"):
            await log.write(rec(1, event="token_issued"))
        assert time.monotonic() - t0 < 0.5
        await asyncio.sleep(0.1)
        t0 = time.monotonic()
        with pytest.raises(AuditUnavailable):
            await log.write(rec(2, event="token_issued"))
        assert time.monotonic() - t0 < 0.05  # unhealthy: no point waiting
        await asyncio.to_thread(wait_until, lambda: log.healthy, 3)
        await log.write(rec(3, event="token_issued"))
    finally:
        log.close()


def test_queue_overflow_drops_counts_and_fails_closed(tmp_path: Path, fault: Fault) -> None:
    log = AuditLog(tmp_path / "audit.db", write_timeout=5, max_queue=10, _fault=fault)
    try:
        fault.hang = 0.5
        log.emit(rec(0))
        wait_until(lambda: fault.calls == 1)  # writer is stuck on record 0
        for i in range(1, 16):
            log.emit(rec(i))
        assert log.dropped == 5
        with pytest.raises(AuditUnavailable, match="full"):
            log.check_writable()
        assert log.flush(3)
        assert log.healthy
        assert len(log.tail(100)) == 11
    finally:
        log.close()


def test_search_filters(tmp_path: Path) -> None:
    log = AuditLog(tmp_path / "audit.db")
    try:
        t_mid = 0.0
        for i in range(30):
            if i == 20:
                t_mid = time.time()
                time.sleep(0.01)
            log.emit(
                AuditRecord(
                    event="allowed" if i % 2 else "denied",
                    decision="allow" if i % 2 else "deny",
                    dag_id=f"dag{i % 3}",
                    run_id=f"run{i % 5}",
                    resource="orders" if i < 10 else "billing",
                )
            )
        assert log.flush(5)
        assert {r.dag_id for r in log.search(dag="dag1")} == {"dag1"}
        assert len(log.search(dag="dag1")) == 10
        assert len(log.search(run="run2")) == 6
        assert len(log.search(decision="deny")) == 15
        assert len(log.search(event="allowed", dag="dag0")) == 5
        assert len(log.search(resource="orders", decision="allow")) == 5
        assert len(log.search(since=t_mid)) == 10
        newest = log.search(limit=3)
        assert [r.seq for r in newest] == [28, 29, 30]
        assert log.search(dag="nope") == []
    finally:
        log.close()


def test_concurrent_reader_sees_consistent_chain(tmp_path: Path) -> None:
    db = tmp_path / "audit.db"
    log = AuditLog(db)
    total = 20_000

    def produce() -> None:
        for i in range(total):
            log.emit(rec(i))
            if i % 500 == 0:
                time.sleep(0.002)

    t = threading.Thread(target=produce)
    t.start()
    try:
        reader = sqlite3.connect(db)  # an independent connection, as the CLI would have
        seen = []
        while t.is_alive() or len(seen) < 3:
            (n,) = reader.execute("SELECT count(*) FROM audit").fetchone()
            seen.append(n)
            if len(seen) % 10 == 1:
                assert AuditReader(db).verify().ok  # every committed snapshot is a valid chain
            time.sleep(0.005)
        reader.close()
        assert seen == sorted(seen)
        assert len(set(seen)) > 2  # really read while the writer was writing
    finally:
        t.join()
        assert log.flush(5)
        log.close()
    res = AuditReader(db).verify()
    assert res.ok and res.checked == total


def test_jsonl_sink_mirrors_committed_records(tmp_path: Path) -> None:
    db, js = tmp_path / "audit.db", tmp_path / "sink" / "audit.jsonl"
    log = AuditLog(db, js)
    try:
        for i in range(25):
            log.emit(rec(i, dag_id="d"))
        assert log.flush(5)
    finally:
        log.close()
    lines = [json.loads(x) for x in js.read_text().splitlines()]
    rows = AuditReader(db).tail(100)
    assert [(x["seq"], x["hash"], x["run_id"]) for x in lines] == [
        (r.seq, r.hash, r.run_id) for r in rows
    ]
    assert js.stat().st_mode & 0o077 == 0
    assert AuditReader(db).verify([(x["seq"], x["hash"]) for x in lines]).ok


def test_jsonl_sink_failure_fails_closed_then_catches_up(tmp_path: Path) -> None:
    js = tmp_path / "audit.jsonl"
    js.mkdir()  # cannot open a directory for append: the sink fails
    log = AuditLog(tmp_path / "audit.db", js, write_timeout=0.3)
    try:
        log.emit(rec(1))
        wait_until(lambda: not log.healthy, timeout=2)
        with pytest.raises(AuditUnavailable):
            log.check_writable()
        js.rmdir()
        wait_until(lambda: log.healthy, timeout=3)
        log.emit(rec(2))
        assert log.flush(3)
    finally:
        log.close()
    lines = [json.loads(x) for x in js.read_text().splitlines()]
    assert [x["seq"] for x in lines] == [1, 2]  # DB row written once, mirrored once


def test_secrets_are_redacted_before_storage(tmp_path: Path) -> None:
    db, js = tmp_path / "audit.db", tmp_path / "audit.jsonl"
    log = AuditLog(db, js)
    try:
        log.emit(
            rec(
                1,
                reason=f"bad header Bearer {JWT}",
                jti="tok-123",
                detail={"note": f"got {JWT}", "client_secret": "hunter2", "nested": [JWT]},
            )
        )
        assert log.flush(5)
    finally:
        log.close()
    (row,) = AuditReader(db).tail()
    assert row.reason == "bad header Bearer [redacted]"
    assert row.jti == "tok-123"
    assert row.detail == {
        "note": "got [redacted]",
        "client_secret": "[redacted]",
        "nested": ["[redacted]"],
    }
    for f in (db, js, tmp_path / "audit.db-wal"):
        if f.exists():
            raw = f.read_bytes()
            assert JWT.encode() not in raw and b"hunter2" not in raw
    assert AuditReader(db).verify().ok


def test_unknown_event_is_a_bug(tmp_path: Path) -> None:
    log = AuditLog(tmp_path / "audit.db")
    try:
        with pytest.raises(ValueError, match="unknown audit event"):
            log.emit(AuditRecord(event="whatever"))
    finally:
        log.close()


def test_closed_log_is_unwritable(tmp_path: Path) -> None:
    log = AuditLog(tmp_path / "audit.db")
    log.emit(rec(1))
    log.close()
    assert len(log.tail()) == 1  # close drains the queue
    with pytest.raises(AuditUnavailable, match="closed"):
        log.check_writable()


def test_format_records(tmp_path: Path) -> None:
    log = AuditLog(tmp_path / "audit.db")
    try:
        log.emit(
            AuditRecord(
                event="denied",
                decision="deny",
                principal="airflow:prod/finance_daily/load",
                resource="orders-api",
                action="write",
                object="/orders/1",
                status=403,
                run_id="manual__1",
                rule="no-writes",
                reason="explicit deny",
            )
        )
        assert log.flush(5)
        rows = log.tail()
    finally:
        log.close()
    text = format_records(rows, as_json=False)
    header, line = text.splitlines()
    assert header.split()[:3] == ["time", "event", "decision"]
    for part in (
        "#1 ",
        "denied",
        "deny",
        "orders-api",
        "/orders/1",
        "403",
        "manual__1",
        "rule=no-writes explicit deny",
    ):
        assert part in line
    (obj,) = [json.loads(x) for x in format_records(rows, as_json=True).splitlines()]
    assert obj["seq"] == 1 and obj["status"] == 403 and len(obj["hash"]) == 64
    assert format_records([], as_json=False) == "(no audit records)"


def test_odd_values_never_block_the_writer(tmp_path: Path) -> None:
    class Boom:
        def __str__(self) -> str:
            raise RuntimeError("no")

    log = AuditLog(tmp_path / "audit.db", write_timeout=0.5)
    try:
        log.emit(rec(1, latency_ms=float("nan"), status=2**70, object="bad \udcff surrogate"))
        log.emit(rec(2, detail=["not", "a", "dict"], try_number="3"))  # type: ignore[arg-type]
        log.emit(rec(3, principal=Boom()))  # type: ignore[arg-type]
        log.emit(rec(4, detail={"nan": float("nan"), "when": time}))
        assert log.flush(3)
        assert log.healthy
        rows = log.tail()
    finally:
        log.close()
    assert len(rows) == 4
    assert rows[0].latency_ms is None and rows[0].status is None
    assert rows[0].object == "bad ? surrogate"
    assert rows[1].detail == {"detail": ["not", "a", "dict"]} and rows[1].try_number == 3
    assert rows[2].reason == "audit record could not be normalised"
    assert AuditReader(tmp_path / "audit.db").verify().ok
