"""The write-ahead journal: one line per record, marks, replay exactly once, torn tails."""

from __future__ import annotations

import asyncio
import json
import multiprocessing
import os
import time
from pathlib import Path

import pytest

from lockgate.audit import AuditLog, AuditReader, AuditRecord, RemoteAuditLog, chain
from lockgate.audit.journal import Journal, journal_dir, replay
from lockgate.audit.record import sanitize, values
from lockgate.errors import AuditUnavailable


def admitted(i: int, **kw: object) -> AuditRecord:
    base: dict[str, object] = {
        "event": "admitted",
        "decision": "allow",
        "object": f"/o/{i}",
        "run_id": "j",
    }
    base.update(kw)
    return AuditRecord(**base)  # type: ignore[arg-type]


def objects(db: Path) -> list[str | None]:
    return [r.object for r in AuditReader(db).tail(1_000_000)]


def journal_files(db: Path) -> list[Path]:
    d = journal_dir(db)
    return sorted(d.iterdir()) if d.exists() else []


def _crash_after_write_ahead(db: str, n: int, remote: bool) -> None:
    """Child process: write ``n`` records ahead, then die without any clean-up."""
    log = RemoteAuditLog(Path(db)) if remote else AuditLog(Path(db), batch_interval=60)
    for i in range(n):
        log.write_ahead(admitted(i))
    if remote:  # the writer must not get them either: kill it first
        assert log.writer_pid is not None
        os.kill(log.writer_pid, 9)
    os._exit(9)


@pytest.mark.parametrize("remote", [False, True], ids=["thread", "process"])
def test_records_written_ahead_survive_a_crash_and_are_chained_once(
    tmp_path: Path, remote: bool
) -> None:
    db = tmp_path / "audit.db"
    p = multiprocessing.get_context("spawn").Process(
        target=_crash_after_write_ahead, args=(str(db), 300, remote)
    )
    p.start()
    p.join(60)
    assert p.exitcode == 9
    assert journal_files(db), "the journal of the dead process is on disk"
    before = len(objects(db)) if db.exists() else 0
    assert before < 300  # the crash beat the writer to at least some of them
    log = AuditLog(db)  # start-up replays
    log.close()
    assert sorted(objects(db)) == sorted(f"/o/{i}" for i in range(300))
    assert AuditReader(db).verify().ok
    assert journal_files(db) == []
    log = AuditLog(db)  # nothing left to replay: nothing chained twice
    log.close()
    assert len(objects(db)) == 300


def test_clean_close_removes_the_journal_and_chains_each_record_once(tmp_path: Path) -> None:
    db = tmp_path / "audit.db"
    log = AuditLog(db)
    refs = [log.write_ahead(admitted(i)) for i in range(50)]
    assert len(set(refs)) == 50 and refs[0].startswith(log.sender_id + "/")
    assert log.flush(5)
    log.close()
    assert journal_files(db) == []
    assert objects(db) == [f"/o/{i}" for i in range(50)]


def test_no_secret_reaches_the_journal(tmp_path: Path) -> None:
    db = tmp_path / "audit.db"
    jwt = "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJ4In0.c2lnbmF0dXJl"
    log = AuditLog(db, batch_interval=60)
    try:
        log.write_ahead(admitted(1, reason=f"bearer {jwt}", detail={"password": "hunter2"}))
        text = b"".join(p.read_bytes() for p in journal_files(db))
        assert jwt.encode() not in text and b"hunter2" not in text
        assert b"/o/1" in text
    finally:
        log.close()


def _journal(tmp_path: Path, sender: str = "dead-1") -> tuple[Path, Journal]:
    db = tmp_path / "audit.db"
    chain.connect(db).close()
    return db, Journal(journal_dir(db), sender)


def _vals(i: int) -> tuple[object, ...]:
    return values(sanitize(admitted(i), time.time()))


def test_a_live_journal_is_never_replayed(tmp_path: Path) -> None:
    db, j = _journal(tmp_path)
    j.append(1, _vals(1))
    conn = chain.connect(db)
    try:
        assert replay(journal_dir(db), conn) == []  # its owner (this process) holds the lock
        assert j.path is not None and j.path.exists()
        j.close(chained_up_to=None)  # the owner goes away without chaining it
        assert [r.object for r in replay(journal_dir(db), conn)] == ["/o/1"]
    finally:
        conn.close()


def test_torn_last_line_is_skipped_and_an_unreadable_line_is_marked(tmp_path: Path) -> None:
    db, j = _journal(tmp_path)
    for i in (1, 2, 3):
        j.append(i, _vals(i))
    path = j.path
    assert path is not None
    j.close(chained_up_to=None)
    lines = path.read_bytes().split(b"\n")
    lines[2] = b"[2,#garbage"  # a complete but unreadable entry (seq 2)
    torn = json.dumps([4, *_vals(4)]).encode()[:40]  # died inside write(): no newline
    path.write_bytes(b"\n".join(lines) + torn)
    conn = chain.connect(db)
    try:
        rows = replay(journal_dir(db), conn)
    finally:
        conn.close()
    assert [r.object for r in rows] == ["/o/1", None, "/o/3"]
    assert rows[1].reason == "unreadable audit journal entry" and rows[1].event == "admitted"
    assert AuditReader(db).verify().ok
    assert journal_files(db) == []


def test_replay_skips_what_the_chain_already_holds(tmp_path: Path) -> None:
    db, j = _journal(tmp_path, sender="s-7")
    for i in range(1, 6):
        j.append(i, _vals(i))
    conn = chain.connect(db)
    try:
        # the writer had committed 1..3 (mark 3) before the sender died
        recs = [sanitize(admitted(i), time.time()) for i in (1, 2, 3)]
        chain.append(conn, recs, {"s-7": 3})
        j.close(chained_up_to=None)
        assert [r.object for r in replay(journal_dir(db), conn)] == ["/o/4", "/o/5"]
        # its journal is gone, its mark stays: a writer process may still hold its records
        assert chain.read_senders(conn) == {"s-7": 5}
        assert chain.append_past_marks(conn, [("s-7", 5, recs[0])]) == ([], [])
    finally:
        conn.close()
    assert objects(db) == [f"/o/{i}" for i in range(1, 6)]


def test_rotated_files_are_removed_once_chained(tmp_path: Path) -> None:
    db, j = _journal(tmp_path, sender="rot")
    j.rotate_bytes = 1_000
    for i in range(1, 40):
        j.append(i, _vals(i))

    def seqs(path: Path) -> list[int]:
        return [json.loads(line)[0] for line in path.read_bytes().splitlines()[1:]]

    files = {p: seqs(p) for p in journal_files(db)}
    assert len(files) >= 4
    j.committed(20)
    left = journal_files(db)
    assert left == [p for p, s in files.items() if max(s) > 20 or p == j.path]
    assert len(left) < len(files)
    j.close(chained_up_to=39)
    assert journal_files(db) == []


def test_unwritable_journal_refuses(tmp_path: Path) -> None:
    db = tmp_path / "audit.db"
    log = AuditLog(db)
    try:
        log.write_ahead(admitted(1))
        log._journal._fd = os.open(os.devnull, os.O_RDONLY)  # every write now fails
        with pytest.raises(AuditUnavailable, match="journal"):
            log.write_ahead(admitted(2))
    finally:
        log.close()


def test_fsync_durability_writes_and_syncs(tmp_path: Path) -> None:
    db = tmp_path / "audit.db"
    log = AuditLog(db, fsync=True)
    try:
        for i in range(20):
            log.write_ahead(admitted(i))
        log._journal.sync()  # blocking form of durable()

        async def forwarded() -> bool:
            log.write_ahead(admitted(20))
            wait = log.durable()
            assert wait is not None  # the line is not on the device yet
            await wait
            return log.durable() is None

        assert asyncio.run(forwarded())
        assert log.flush(5)
    finally:
        log.close()
    assert len(objects(db)) == 21


def _worker_dies(db: str, socket_path: str, n: int) -> None:
    """A worker process of ``serve --workers``: journals, never sends, dies."""
    log = RemoteAuditLog(Path(db), socket_path=Path(socket_path), batch_interval=60)
    for i in range(n):
        log.write_ahead(admitted(i, run_id="worker"))
    os._exit(9)


def test_writer_process_replays_a_dead_worker_while_it_runs(tmp_path: Path) -> None:
    db = tmp_path / "audit.db"
    owner = RemoteAuditLog(db)
    try:
        p = multiprocessing.get_context("spawn").Process(
            target=_worker_dies, args=(str(db), str(owner.socket_path), 100)
        )
        p.start()
        p.join(60)
        assert p.exitcode == 9
        deadline = time.monotonic() + 10
        while len(AuditReader(db).search(run="worker", limit=1000)) < 100:
            assert time.monotonic() < deadline, "dead worker's journal not replayed"
            time.sleep(0.2)
        assert journal_files(db) == [owner._journal.path]
    finally:
        owner.close()
    assert len(AuditReader(db).search(run="worker", limit=1000)) == 100
    assert AuditReader(db).verify().ok


def _worker_sends_then_dies(db: str, socket_path: str, n: int) -> None:
    """A worker whose records reach the writer, which holds them (a slow commit), then dies."""
    log = RemoteAuditLog(Path(db), socket_path=Path(socket_path))
    log.inject_fault("hang", 4.0)  # the writer's next commit waits 4 s holding the batch
    for i in range(n):
        log.write_ahead(admitted(i, run_id="held"))
    time.sleep(1.0)  # sent (the sender flushes every few ms), not committed
    os._exit(9)


@pytest.mark.slow
def test_a_replay_racing_the_writer_chains_a_dead_workers_records_once(tmp_path: Path) -> None:
    """A CLI command's audit log starts while the writer still holds a dead worker's records:
    the CLI replays the worker's journal, then the writer commits what it held."""
    db = tmp_path / "audit.db"
    owner = RemoteAuditLog(db)
    try:
        p = multiprocessing.get_context("spawn").Process(
            target=_worker_sends_then_dies, args=(str(db), str(owner.socket_path), 50)
        )
        p.start()
        p.join(60)
        assert p.exitcode == 9
        cli = AuditLog(db)  # replays the dead worker's journal at start
        cli.close()
        assert len(AuditReader(db).search(run="held", limit=1000)) == 50
        time.sleep(4.0)  # the writer wakes and commits what it held
        owner.flush(5.0)
    finally:
        owner.close()
    rows = AuditReader(db).search(run="held", limit=1000)
    assert sorted(r.object for r in rows) == sorted(f"/o/{i}" for i in range(50))
    assert AuditReader(db).verify().ok


def test_a_journal_file_another_user_could_have_written_is_not_replayed(
    tmp_path: Path,
) -> None:
    # Replay turns journal lines into chained `admitted` records, so only files this
    # process's user wrote and nobody else could: a group- or world-writable file, or a
    # symlink (planted while a pre-existing directory was loose), is left alone.
    db, j = _journal(tmp_path, sender="real")
    j.append(1, _vals(1))
    real = j.path
    assert real is not None
    j.close(chained_up_to=None)
    directory = journal_dir(db)
    forged = directory / "forged.000001.journal"
    forged.write_bytes(real.read_bytes().replace(b"/o/1", b"/o/forged"))
    forged.chmod(0o666)
    outside = tmp_path / "elsewhere.journal"
    outside.write_bytes(real.read_bytes().replace(b"/o/1", b"/o/linked"))
    (directory / "linked.000001.journal").symlink_to(outside)
    directory.chmod(0o777)
    Journal(directory, "next").close(chained_up_to=None)
    assert directory.stat().st_mode & 0o777 == 0o700  # tightened by the next journal
    conn = chain.connect(db)
    try:
        rows = replay(directory, conn)
    finally:
        conn.close()
    assert [r.object for r in rows] == ["/o/1"]
    assert forged.exists()  # left for an operator to look at, never chained
