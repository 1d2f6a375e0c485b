"""The alerts on shared state (a real PostgreSQL server): the sender lease is held by one
replica at a time and passes on when its holder stops renewing; the trail follower reads
every replica's shipped chain past the stored cursor, starting at the tail; two replicas
refusing one DAG raise one alert, sent by one of them."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from lockgate.alerts import Alerts
from lockgate.alerts.trail import Lease, TrailFollower, open_alerts_db
from lockgate.audit import AuditLog, AuditRecord
from lockgate.store import PostgresDatabase
from tests.audit.shared_helpers import ship_all, shipper_for
from tests.fakes.alert_receivers import WebhookReceiver
from tests.pgserver.fixtures import SharedStateFactory
from tests.pgserver.state import replica_states


@pytest.fixture
def db(pg_state: SharedStateFactory) -> Iterator[PostgresDatabase]:
    settings = pg_state()
    database = PostgresDatabase(settings, replica_id="r1")
    open_alerts_db(database)
    yield database
    database.close()


def test_one_lease_holder_at_a_time(db: PostgresDatabase) -> None:
    a, b = Lease(db, "r1/1", ttl=10), Lease(db, "r2/1", ttl=10)
    now = time.time()
    assert a.hold(now) and not b.hold(now)
    assert a.hold(now + 5) and not b.hold(now + 5)  # renewed: still a's
    assert b.hold(now + 16) and not a.hold(now + 16)  # a stopped renewing: b takes over
    b.release()
    # racing for a free lease: exactly one wins
    leases = [Lease(db, f"r{i}/2", ttl=10) for i in range(6)]
    won: list[bool] = []
    at = time.time() + 100
    threads = [threading.Thread(target=lambda x=x: won.append(x.hold(at))) for x in leases]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert won.count(True) == 1


def _denials(path: Path, replica: str, dags: list[str]) -> None:
    log = AuditLog(path)
    try:
        for dag in dags:
            log.emit(AuditRecord(event="denied", dag_id=dag, run_id=f"run-{replica}",
                                 decision="deny", reason="no_rule"))  # fmt: skip
        assert log.flush(10)
    finally:
        log.close()


def test_follower_reads_every_replica_past_the_cursor(tmp_path: Path, db: PostgresDatabase) -> None:
    settings = db.settings

    def open_db() -> PostgresDatabase:
        return PostgresDatabase(settings, replica_id="shipper")

    r1, r2 = tmp_path / "r1.db", tmp_path / "r2.db"
    _denials(r1, "r1", ["old1", "old2"])
    ship_all(shipper_for(r1, "r1", open_db))
    follower = TrailFollower(db, tmp_path / "unused.db", shared_trail=db)
    follower.load(time.time())
    assert follower.cursor == {"r1": 2}  # the tail: old records are not news
    _denials(r1, "r1", ["a"])
    _denials(r2, "r2", ["b", "c"])
    ship_all(shipper_for(r1, "r1", open_db))
    ship_all(shipper_for(r2, "r2", open_db))
    rows = follower.read(time.time())
    assert sorted((r.replica, r.dag_id) for r in rows) == [("r1", "a"), ("r2", "b"), ("r2", "c")]
    follower.save(time.time())
    again = TrailFollower(db, tmp_path / "unused.db", shared_trail=db)
    again.load(time.time())
    assert again.cursor == {"r1": 3, "r2": 2} and again.read(time.time()) == []


async def test_two_replicas_alert_once_on_what_either_refused(
    tmp_path: Path, pg_state: SharedStateFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with WebhookReceiver(None) as rx:
        (tmp_path / "hook-url").write_text(rx.url)
        alerts_section = {
            "notifiers": [{"name": "hook", "type": "webhook",
                           "url_file": str(tmp_path / "hook-url"), "min_interval": 0}],
            "poll_interval": 0.1,
            "denials": {"window": 2.0},
        }  # fmt: skip
        with replica_states(pg_state(), tmp_path, monkeypatch,
                            lambda _data: {"alerts": alerts_section}) as states:  # fmt: skip
            running = [Alerts(s.config, s) for s in states]
            for a in running:
                await a.start()
            try:
                for i, state in enumerate(states):  # each replica refuses one run of the DAG
                    log = state.audit_log()
                    for _ in range(3):
                        await log.write(AuditRecord(event="denied", dag_id="etl",
                                                    run_id=f"run{i}", decision="deny"))  # fmt: skip
                    log.close()  # ships what it wrote
                (alert,) = await rx.wait_for(1)
                await asyncio.sleep(0.5)
            finally:
                for a in running:
                    await a.close()
        assert [a.leading for a in running].count(True) <= 1
    assert len(rx.accepted) == 1
    assert alert["details"]["count"] == 6 and alert["details"]["run_ids"] == ["run0", "run1"]
