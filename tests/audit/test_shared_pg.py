"""Replicas shipping their chains to a real PostgreSQL server: the trail covers all of them,
verifies as a whole, catches tampering in the shared tables, loses and doubles nothing when
the shipper is killed, and catches up by itself after PostgreSQL was down."""

from __future__ import annotations

import multiprocessing
import os
import signal
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from lockgate.audit import AuditLog, AuditReader, AuditRecord, RemoteAuditLog
from lockgate.audit.shared import SharedTrail
from lockgate.audit.shipping import AuditShipping, ship_lag
from lockgate.config import PostgresStateSettings
from lockgate.store import Database, PostgresDatabase
from tests.audit.shared_helpers import local_count, record, shipping
from tests.pgserver import PgServer
from tests.pgserver.fixtures import PgServerFactory, SharedStateFactory
from tests.pgserver.state import shared_state_settings


def _wait(cond: Callable[[], bool], timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        time.sleep(0.05)


def _run_replica(db_path: Path, replica: str, settings: PostgresStateSettings, n: int) -> None:
    log = AuditLog(db_path, shipping=shipping(replica, settings))
    try:
        for i in range(n):
            log.emit(record(i, replica))
        assert log.flush(10)
    finally:
        log.close()  # ships what is committed before it returns


def _shipped(db: Database, replica: str) -> list[int]:
    with db.read() as cur:
        rows = cur.execute(
            "SELECT seq FROM audit_records WHERE replica = ? ORDER BY seq", (replica,)
        ).fetchall()
    return [int(r[0]) for r in rows]


def _sql(db: Database, sql: str, params: tuple[object, ...] = ()) -> None:
    with db.transaction() as cur:
        cur.execute(sql, params)


def test_two_replicas_one_trail_and_tampering(tmp_path: Path, pg_state: SharedStateFactory) -> None:
    settings = pg_state()
    _run_replica(tmp_path / "r1" / "audit.db", "r1", settings, 40)
    _run_replica(tmp_path / "r2" / "audit.db", "r2", settings, 25)

    reader = AuditReader(tmp_path / "r1" / "audit.db", shipping=shipping("r1", settings))
    try:
        rows = reader.search(dag="etl", limit=1000)
        assert len(rows) == 65 and {r.replica for r in rows} == {"r1", "r2"}
        assert len(reader.tail(5)) == 5
        result = reader.verify()
        assert result.ok, result
        assert result.checked == 65 and result.checkpoints >= 2

        db = PostgresDatabase(settings, replica_id="tamper")
        trail = SharedTrail(db)
        try:
            # a changed field
            (original,) = trail.search(replica="r2", run="run-r2", limit=1000)[6:7]
            _sql(db, "UPDATE audit_records SET status = 500 WHERE replica = 'r2' AND seq = 7")
            result = reader.verify()
            assert (result.ok, result.replica, result.first_bad_seq) == (False, "r2", 7)
            _sql(db, "UPDATE audit_records SET status = ? WHERE replica = 'r2' AND seq = 7",
                 (original.status,))  # fmt: skip
            assert reader.verify().ok

            # a deleted middle row
            _sql(db, "DELETE FROM audit_records WHERE replica = 'r1' AND seq = 20")
            result = reader.verify()
            assert (result.ok, result.replica, result.first_bad_seq) == (False, "r1", 20)
            assert "missing" in (result.problem or "")

            # the tail dropped after a checkpoint named it
            _sql(db, "DELETE FROM audit_records WHERE replica = 'r1' AND seq > 19")
            result = reader.verify()
            assert (result.ok, result.replica, result.first_bad_seq) == (False, "r1", 20)
            assert "truncated" in (result.problem or "")
        finally:
            db.close()
    finally:
        reader.close_shared()


def test_killed_writer_loses_and_doubles_nothing(
    tmp_path: Path, pg_state: SharedStateFactory
) -> None:
    """The writer process ships; kill -9 it mid-load, twice: after the restarts the shared
    trail holds exactly the local chain, seq 1..N once each, and verifies."""
    settings = pg_state()
    db_path = tmp_path / "r1" / "audit.db"
    log = RemoteAuditLog(db_path, shipping=shipping("r1", settings, interval=0.05))
    stop = threading.Event()

    def load() -> None:
        i = 0
        while not stop.is_set():
            log.emit(record(i, "r1"))
            i += 1
            if i % 50 == 0:
                time.sleep(0.005)

    t = threading.Thread(target=load)
    t.start()
    try:
        for _ in range(2):
            time.sleep(0.6)
            pid = log.writer_pid
            assert pid is not None
            os.kill(pid, signal.SIGKILL)
        time.sleep(0.6)
    finally:
        stop.set()
        t.join()
    assert log.flush(20)
    log.close()

    db = PostgresDatabase(settings, replica_id="check")
    try:
        total = local_count(db_path)
        assert total > 200
        if len(_shipped(db, "r1")) != total:
            # what close could not ship in its drain time waits in the local chain for the
            # next start (a slow machine): the next start ships exactly the rest
            AuditLog(db_path, shipping=shipping("r1", settings)).close()
        shipped = _shipped(db, "r1")
        assert shipped == list(range(1, total + 1)), (len(shipped), total, ship_lag(db_path))
    finally:
        db.close()
    reader = AuditReader(db_path, shipping=shipping("r1", settings))
    try:
        result = reader.verify()
        assert result.ok and result.checked == total, result
    finally:
        reader.close_shared()


def _pause(server: PgServer) -> None:
    server._pg_ctl("stop", "-w", "-m", "fast", "-t", "15", timeout=20)
    server._running = False


def test_postgres_down_then_up_catches_up(
    tmp_path: Path, pg_server_factory: PgServerFactory
) -> None:
    server = pg_server_factory()
    settings = shared_state_settings(server, tmp_path / "pg", connect_timeout=1)
    db_path = tmp_path / "r1" / "audit.db"
    log = AuditLog(db_path, shipping=shipping("r1", settings))
    try:
        for i in range(20):
            log.emit(record(i, "r1"))
        assert log.flush(10)
        _wait(lambda: ship_lag(db_path).shipped_seq == 20)

        _pause(server)
        for i in range(20, 50):
            log.emit(record(i, "r1"))
        assert log.flush(10)
        log.check_writable()  # nothing refused because of shipping alone
        _wait(lambda: ship_lag(db_path).error is not None)
        lag = log.shipping_lag()
        assert lag is not None and lag.records == 30 and lag.shipped_seq == 20

        server._start()
        _wait(lambda: ship_lag(db_path).shipped_seq == 50, timeout=30)
        assert ship_lag(db_path).error is None
    finally:
        log.close()
    reader = AuditReader(db_path, shipping=shipping("r1", settings))
    try:
        result = reader.verify()
        assert result.ok and result.checked == 50, result
    finally:
        reader.close_shared()


def test_without_key_rows_ship_but_no_checkpoint(
    tmp_path: Path, pg_state: SharedStateFactory
) -> None:
    """No checkpoint names the tail; the replica's own chain still catches it cut short."""
    seed = None
    settings = pg_state()
    db_path = tmp_path / "r1" / "audit.db"
    log = AuditLog(db_path, shipping=shipping("r1", settings, seed=seed))
    for i in range(5):
        log.emit(record(i))
    assert log.flush(10)
    log.close()
    reader = AuditReader(db_path, shipping=shipping("r1", settings, seed=seed))
    try:
        result = reader.verify()
        assert result.ok and result.checked == 5 and result.checkpoints == 0
        db = PostgresDatabase(settings, replica_id="tamper")
        try:
            _sql(db, "DELETE FROM audit_records WHERE replica = 'r1' AND seq > 3")
        finally:
            db.close()
        result = reader.verify()
        assert (result.ok, result.replica, result.first_bad_seq) == (False, "r1", 4)
        assert "truncated" in (result.problem or "")
    finally:
        reader.close_shared()


def test_odd_values_round_trip_and_verify(tmp_path: Path, pg_state: SharedStateFactory) -> None:
    """What PostgreSQL stores differently (a NUL in text, floats, big integers, any Unicode)
    still re-hashes to the chain's hashes."""
    settings = pg_state()
    db_path = tmp_path / "r1" / "audit.db"
    log = AuditLog(db_path, shipping=shipping("r1", settings))
    odd = [
        record(1),
        AuditRecord(event="denied", object="ks.t\x00able", principal="ünï\u2028cødé 🙂",
                    reason="nul\x00here", detail={"q": "SELECT '\x00'", "n": [1, 2.5, None]}),
        AuditRecord(event="allowed", ts=1764921234.1234567, latency_ms=0.1 + 0.2,
                    bytes_in=2**62, bytes_out=-(2**63), status=599, try_number=0),
        AuditRecord(event="allowed", detail={"deep": {"a": [{"b": "\\u0000"}]}, "e": 1e-300}),
    ]  # fmt: skip
    for rec in odd:
        log.emit(rec)
    assert log.flush(10)
    log.close()
    reader = AuditReader(db_path, shipping=shipping("r1", settings))
    try:
        result = reader.verify()
        assert result.ok and result.checked == 4, result
        rows = sorted(reader.search(limit=10), key=lambda r: r.seq)
        assert rows[1].object == "ks.t\x00able" and rows[1].principal == "ünï\u2028cødé 🙂"
        assert rows[2].bytes_out == -(2**63) and rows[2].latency_ms == 0.1 + 0.2
        assert reader.search(event="denied", limit=10)[0].reason == "nul\x00here"
    finally:
        reader.close_shared()


@pytest.mark.slow
def test_verify_while_replicas_ship_sees_no_false_break(
    tmp_path: Path, pg_state: SharedStateFactory
) -> None:
    settings = pg_state()
    logs = {
        r: AuditLog(tmp_path / r / "audit.db", shipping=shipping(r, settings, interval=0.05))
        for r in ("r1", "r2")
    }
    stop = threading.Event()

    def load(replica: str) -> None:
        i = 0
        while not stop.is_set():
            logs[replica].emit(record(i, replica))
            i += 1
            if i % 20 == 0:
                time.sleep(0.002)

    threads = [threading.Thread(target=load, args=(r,)) for r in logs]
    for t in threads:
        t.start()
    reader = AuditReader(tmp_path / "r1" / "audit.db", shipping=shipping("r1", settings))
    try:
        checks = 0
        deadline = time.monotonic() + 3.0
        while time.monotonic() < deadline:
            result = reader.verify()
            assert result.ok, result
            checks += 1
        assert checks >= 3
    finally:
        stop.set()
        for t in threads:
            t.join()
        for log in logs.values():
            log.close()
    try:
        result = reader.verify()
        assert result.ok and result.checked > 0 and result.checkpoints > 2, result
    finally:
        reader.close_shared()


def _crash_replica(db: str, shipping_json: str, n: int) -> None:
    """Child: a replica whose writer ships; it writes ``n`` records ahead, lets some of them
    reach PostgreSQL, then it and its writer die without any clean-up."""
    log = RemoteAuditLog(Path(db), shipping=AuditShipping.from_json(shipping_json))
    for i in range(n):
        log.write_ahead(AuditRecord(event="admitted", decision="allow", object=f"/o/{i}"))
        if i == n // 2:
            assert log.flush(10)
            _wait(lambda: ship_lag(Path(db)).shipped_seq >= n // 2)
    assert log.writer_pid is not None
    os.kill(log.writer_pid, signal.SIGKILL)
    os._exit(9)


def test_a_crashed_replica_restarted_on_its_data_dir_ships_everything_once(
    tmp_path: Path, pg_state: SharedStateFactory
) -> None:
    settings = pg_state()
    db_path = tmp_path / "r1" / "audit.db"
    ship = shipping("r1", settings)
    p = multiprocessing.get_context("spawn").Process(
        target=_crash_replica, args=(str(db_path), ship.to_json(), 300)
    )
    p.start()
    p.join(60)
    assert p.exitcode == 9
    db = PostgresDatabase(settings, replica_id="check")
    try:
        assert 150 <= len(_shipped(db, "r1")) < 300  # some shipped, the rest in the journal
        RemoteAuditLog(db_path, shipping=ship).close()  # the successor: replay, then ship
        with db.read() as cur:
            objects = [r[0] for r in cur.execute(
                "SELECT object FROM audit_records WHERE replica = 'r1' AND event = 'admitted'"
            ).fetchall()]  # fmt: skip
        assert sorted(objects) == sorted(f"/o/{i}" for i in range(300))
        assert _shipped(db, "r1") == list(range(1, local_count(db_path) + 1))
    finally:
        db.close()
    reader = AuditReader(db_path, shipping=ship)
    try:
        assert reader.verify().ok
    finally:
        reader.close_shared()


def test_a_rolled_back_shared_trail_shows_once_the_replica_ships_again(
    tmp_path: Path, pg_state: SharedStateFactory
) -> None:
    """Rows and the checkpoints naming them dropped together: a valid earlier state of the
    shared tables, so PostgreSQL alone cannot tell (test_attack_shared_trail). The replica
    that wrote them can: its shipped position and checkpoint count live outside PostgreSQL.
    It ships the rows again, its next checkpoint leaves the gap visible to every verifier,
    and its own ``audit verify`` names what was lost."""
    settings = pg_state()
    db_path = tmp_path / "r1" / "audit.db"
    for start in (0, 5, 10, 15):
        _run_replica_from(db_path, "r1", settings, start)
    db = PostgresDatabase(settings, replica_id="tamper")
    try:
        assert SharedTrail(db).verify(None).ok
        _sql(db, "DELETE FROM audit_checkpoints WHERE n > 1")
        _sql(db, "DELETE FROM audit_records WHERE seq > 5")
        assert SharedTrail(db).verify(None).ok  # nothing in PostgreSQL contradicts it

        _run_replica_from(db_path, "r1", settings, 20)  # the replica serves and ships again
        assert _shipped(db, "r1") == list(range(1, 26))  # nothing missing from search
        result = SharedTrail(db).verify(None)
        assert not result.ok and "checkpoint 2 of replica r1 is missing" in (result.problem or "")
    finally:
        db.close()
    reader = AuditReader(db_path, shipping=shipping("r1", settings))
    try:
        result = reader.verify()
        assert not result.ok and result.first_bad_seq == 6, result
        assert "lost seq 6 to 20" in (result.problem or "")
    finally:
        reader.close_shared()


def _run_replica_from(
    db_path: Path, replica: str, settings: PostgresStateSettings, start: int
) -> None:
    log = AuditLog(db_path, shipping=shipping(replica, settings))
    try:
        for i in range(start, start + 5):
            log.emit(record(i, replica))
        assert log.flush(10)
    finally:
        log.close()
