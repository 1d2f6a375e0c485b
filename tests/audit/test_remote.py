"""RemoteAuditLog + writer process: same contract as the thread writer, across processes.

Fail closed on write errors, hangs, a dead writer and overflow; recover by itself; after a
writer crash every record is in the chain exactly once; several senders share one chain.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from lockgate.audit import AuditReader, AuditRecord
from lockgate.audit.remote import RemoteAuditLog, WriterProcess
from lockgate.errors import AuditUnavailable

JWT = "eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiJ0YXNrIn0.c2lnbmF0dXJlLWJ5dGVz"


def wait_until(pred: Callable[[], bool], timeout: float = 5.0) -> float:
    start = time.monotonic()
    while not pred():
        if time.monotonic() - start > timeout:
            raise AssertionError("condition not reached in time")
        time.sleep(0.005)
    return time.monotonic() - start


def rec(i: int = 0, **kw: object) -> AuditRecord:
    base: dict[str, object] = {"event": "allowed", "decision": "allow", "run_id": f"r{i}"}
    base.update(kw)
    return AuditRecord(**base)  # type: ignore[arg-type]


@pytest.fixture
def log(tmp_path: Path) -> Iterator[RemoteAuditLog]:
    a = RemoteAuditLog(tmp_path / "audit.db", tmp_path / "audit.jsonl", write_timeout=0.3)
    try:
        yield a
    finally:
        a.close()


def run_ids(db: Path) -> list[str | None]:
    return [r.run_id for r in AuditReader(db).tail(100_000)]


def test_emit_flush_verify_and_mirror(log: RemoteAuditLog, tmp_path: Path) -> None:
    assert log.healthy and log.writer_pid != os.getpid()
    for i in range(3000):
        log.emit(rec(i, reason=f"Bearer {JWT}" if i == 5 else None))
    assert log.flush(10)
    rows = log.tail(5000)
    assert [r.seq for r in rows] == list(range(1, 3001))
    assert [r.run_id for r in rows] == [f"r{i}" for i in range(3000)]
    assert rows[5].reason == "Bearer [redacted]"  # sanitised in the writer
    lines = [json.loads(x) for x in (tmp_path / "audit.jsonl").read_text().splitlines()]
    assert [x["hash"] for x in lines] == [r.hash for r in rows]
    assert log.verify([(x["seq"], x["hash"]) for x in lines]).ok


async def test_write_resolves_when_durable(log: RemoteAuditLog, tmp_path: Path) -> None:
    t0 = time.monotonic()
    await log.write(rec(1, event="token_issued", jti="j-1"))
    assert time.monotonic() - t0 < 0.2  # urgent: not held back by batching
    rows = AuditReader(tmp_path / "audit.db").tail()
    assert [(r.event, r.jti) for r in rows] == [("token_issued", "j-1")]


async def test_write_error_fails_closed_then_recovers_without_loss(
    log: RemoteAuditLog, tmp_path: Path
) -> None:
    await log.write(rec(0))
    log.inject_fault("error", "No space left on device")
    for i in range(1, 51):
        log.emit(rec(i))
    elapsed = await asyncio.to_thread(wait_until, lambda: not log.healthy, 2)
    assert elapsed < 0.5  # the writer reports the error at once
    with pytest.raises(AuditUnavailable, match="No space left"):
        log.check_writable()
    t0 = time.monotonic()
    with pytest.raises(AuditUnavailable):
        await log.write(rec(99, event="token_issued"))
    assert time.monotonic() - t0 < 0.05  # unhealthy: refused without waiting
    assert len(log.tail(100)) == 1
    log.inject_fault("clear")
    await asyncio.to_thread(wait_until, lambda: log.healthy, 3)
    assert await asyncio.to_thread(log.flush, 3)
    assert run_ids(tmp_path / "audit.db") == [f"r{i}" for i in range(51)]
    assert log.verify().ok and log.dropped == 0


def test_hanging_writer_fails_closed_within_write_timeout(
    log: RemoteAuditLog, tmp_path: Path
) -> None:
    log.inject_fault("hang", 1.5)
    log.emit(rec(0))
    elapsed = wait_until(lambda: not log.healthy, 2)
    assert 0.2 < elapsed < 0.8  # write_timeout is 0.3 s
    with pytest.raises(AuditUnavailable, match="pending"):
        log.check_writable()
    for i in range(1, 10):
        log.emit(rec(i))
    wait_until(lambda: log.healthy, 4)
    assert log.flush(3)
    assert run_ids(tmp_path / "audit.db") == [f"r{i}" for i in range(10)]


@pytest.mark.parametrize("how", ["exit", "sigkill"])
def test_writer_crash_restarts_no_loss_no_duplicate(
    log: RemoteAuditLog, tmp_path: Path, how: str
) -> None:
    for i in range(500):
        log.emit(rec(i))
    first = log.writer_pid
    assert first is not None
    if how == "exit":  # dies between receiving records and committing some of them
        log.inject_fault("hang", 0.2)
        log.inject_fault("exit")
    else:
        os.kill(first, signal.SIGKILL)
    for i in range(500, 1000):
        log.emit(rec(i))
    wait_until(lambda: log.writer_pid != first, 5)
    assert log.flush(10)
    assert log.healthy
    assert run_ids(tmp_path / "audit.db") == [f"r{i}" for i in range(1000)]
    assert log.verify().ok
    assert log.writer is not None and log.writer.restarts == 1


def test_dead_writer_is_unhealthy_until_restarted(log: RemoteAuditLog) -> None:
    pid = log.writer_pid
    assert pid is not None
    os.kill(pid, signal.SIGSTOP)  # alive but stuck: only the age check can tell
    try:
        log.emit(rec(1))
        wait_until(lambda: not log.healthy, 2)
    finally:
        os.kill(pid, signal.SIGKILL)
    wait_until(lambda: log.writer_pid != pid and log.healthy, 5)
    assert log.flush(3)
    assert [r.run_id for r in log.tail()] == ["r1"]


def test_queue_overflow_drops_counts_and_fails_closed(tmp_path: Path) -> None:
    log = RemoteAuditLog(tmp_path / "audit.db", write_timeout=5, max_queue=10)
    try:
        log.inject_fault("hang", 0.6)
        log.emit(rec(0))
        time.sleep(0.1)  # record 0 is with the stalled writer
        for i in range(1, 16):
            log.emit(rec(i))
        assert log.dropped == 6  # the fault marker took one place in the queue
        with pytest.raises(AuditUnavailable, match="full"):
            log.check_writable()
        assert log.flush(3)
        assert log.healthy
        assert len(log.tail(100)) == 10
    finally:
        log.close()


def test_two_senders_share_one_writer_and_one_chain(tmp_path: Path) -> None:
    db = tmp_path / "audit.db"
    writer = WriterProcess(db)
    writer.start()
    logs = [RemoteAuditLog(db, socket_path=writer.socket_path) for _ in range(2)]
    try:
        for i in range(400):
            logs[i % 2].emit(rec(i, dag_id=f"s{i % 2}"))
        assert all(x.flush(5) for x in logs)
        os.kill(writer.pid or 0, signal.SIGKILL)  # a supervisor restarts it; senders reconnect
        writer.proc.wait()  # type: ignore[union-attr]
        for i in range(400, 500):
            logs[i % 2].emit(rec(i, dag_id=f"s{i % 2}"))
        time.sleep(0.2)
        assert not logs[0].healthy
        writer.ensure_running()
        assert all(x.flush(5) for x in logs)
        rows = AuditReader(db).tail(1000)
        assert sorted(r.run_id for r in rows) == sorted(f"r{i}" for i in range(500))
        for s in ("s0", "s1"):  # each sender's order is kept
            mine = [int(r.run_id[1:]) for r in rows if r.dag_id == s]  # type: ignore[index]
            assert mine == sorted(mine)
        assert AuditReader(db).verify().ok
    finally:
        for x in logs:
            x.close()
        writer.stop()


def test_odd_values_are_normalised_in_the_sender(log: RemoteAuditLog) -> None:
    class Boom:
        def __str__(self) -> str:
            raise RuntimeError("no")

    log.emit(rec(1, latency_ms=float("nan"), status=2**70, object="bad \udcff surrogate"))
    log.emit(rec(2, detail=["not", "a", "dict"], try_number="3"))  # type: ignore[arg-type]
    log.emit(rec(3, principal=Boom()))  # type: ignore[arg-type]
    log.emit(rec(4, detail={"nan": float("nan"), "when": time}))
    assert log.flush(3)
    assert log.healthy
    rows = log.tail()
    assert len(rows) == 4
    assert rows[0].latency_ms is None and rows[0].status is None
    assert rows[0].object == "bad ? surrogate"
    assert rows[1].detail == {"detail": ["not", "a", "dict"]} and rows[1].try_number == 3
    assert rows[2].reason == "audit record could not be normalised"
    assert log.verify().ok


def test_close_drains_then_refuses(tmp_path: Path) -> None:
    log = RemoteAuditLog(tmp_path / "audit.db")
    writer = log.writer
    for i in range(100):
        log.emit(rec(i))
    log.close()
    assert writer is not None and not writer.alive()
    assert len(AuditReader(tmp_path / "audit.db").tail(1000)) == 100
    with pytest.raises(AuditUnavailable, match="closed"):
        log.check_writable()
    with pytest.raises(ValueError, match="unknown audit event"):
        log.emit(AuditRecord(event="whatever"))


def test_written_ahead_and_emitted_records_are_both_stored_sanitised(
    log: RemoteAuditLog, tmp_path: Path
) -> None:
    """A written-ahead record is sanitised by the sender (the writer takes it as it is); an
    emitted one by the writer: either way no token reaches the chain, mirror or journal."""
    ref = log.write_ahead(rec(1, event="admitted", reason=f"Bearer {JWT}", detail={"t": JWT}))
    log.emit(rec(2, reason=f"Bearer {JWT}", detail={"ref": ref, "token": "x", "t": JWT}))
    assert log.flush(10)
    admitted, allowed = log.tail(2)
    assert (admitted.event, admitted.run_id, allowed.run_id) == ("admitted", "r1", "r2")
    for row in (admitted, allowed):
        assert row.reason == "Bearer [redacted]" and row.detail["t"] == "[redacted]"
    assert allowed.detail["token"] == "[redacted]" and allowed.detail["ref"] == ref
    assert JWT not in (tmp_path / "audit.jsonl").read_text()
    assert log.verify().ok
