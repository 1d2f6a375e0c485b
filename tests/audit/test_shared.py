"""The shared trail's rules on the embedded backend (the same SQL runs on PostgreSQL, see
test_shared_pg.py): shipping is exact and idempotent, verify catches every kind of tampering
and names the replica and the record."""

from __future__ import annotations

import contextlib
import sqlite3
import time
from collections.abc import Iterator
from pathlib import Path
from typing import cast

import pytest

from lockgate.audit import chain
from lockgate.audit.chain import VerifyResult
from lockgate.audit.shared import SharedTrail, public_key, signing_key
from lockgate.audit.shipper import OTHERS_EVERY, ChainMismatch
from lockgate.audit.shipping import AuditShipping, checkpoint_key, read_status, ship_lag
from lockgate.store import Cursor, Database, SqliteDatabase
from tests.audit.shared_helpers import SEED, local_chain, ship_all, shipper_for, shipping


@pytest.fixture
def shared(tmp_path: Path) -> Iterator[Database]:
    db = SqliteDatabase(tmp_path / "shared.db")
    yield db
    db.close()


def _two_replicas(tmp_path: Path, shared: Database, n1: int = 30, n2: int = 20) -> SharedTrail:
    for replica, n in (("r1", n1), ("r2", n2)):
        db_path = tmp_path / replica / "audit.db"
        local_chain(db_path, n, replica)
        s = shipper_for(db_path, replica, lambda: shared, batch_size=7)
        ship_all(s)
    return SharedTrail(shared)


def _verify(trail: SharedTrail) -> VerifyResult:
    return trail.verify(public_key(SEED))


def _local_rows(db_path: Path) -> list[tuple[object, ...]]:
    conn = sqlite3.connect(db_path)
    try:
        return chain.stored_after(conn, 0, 1000)
    finally:
        conn.close()


def _sql(db: Database, sql: str, params: tuple[object, ...] = ()) -> None:
    with db.transaction() as cur:
        cur.execute(sql, params)


def test_two_replicas_ship_and_verify(tmp_path: Path, shared: Database) -> None:
    trail = _two_replicas(tmp_path, shared)
    result = _verify(trail)
    assert result.ok, result
    assert result.checked == 50
    assert result.checkpoints == 2  # one per replica
    rows = trail.search(limit=1000)
    assert {r.replica for r in rows} == {"r1", "r2"}
    assert len(rows) == 50
    assert [r.seq for r in trail.search(replica="r2", limit=5)] == [16, 17, 18, 19, 20]
    # the second replica's checkpoint names both heads
    cp = trail.last_checkpoint("r2")
    assert cp is not None and set(cp.heads) == {"r1", "r2"}
    assert cp.heads["r1"][0] == 30 and cp.heads["r2"][0] == 20


def test_shipping_again_changes_nothing(tmp_path: Path, shared: Database) -> None:
    trail = _two_replicas(tmp_path, shared)
    db_path = tmp_path / "r1" / "audit.db"
    s = shipper_for(db_path, "r1", lambda: shared)
    rows = _local_rows(db_path)
    trail.ship("r1", rows, 0.0)  # a crashed shipper's whole batch again
    assert not s.ship_once()  # position comes from the shared trail: nothing left
    s.close()
    assert _verify(trail).checked == 50


def test_edited_row_is_named(tmp_path: Path, shared: Database) -> None:
    trail = _two_replicas(tmp_path, shared)
    _sql(shared, "UPDATE audit_records SET principal = ? WHERE replica = ? AND seq = ?",
         ("airflow:prod/other/t", "r2", 7))  # fmt: skip
    result = _verify(trail)
    assert not result.ok
    assert (result.replica, result.first_bad_seq) == ("r2", 7)
    assert "replica r2" in (result.problem or "") and "edited" in (result.problem or "")


def test_deleted_middle_row_is_named(tmp_path: Path, shared: Database) -> None:
    trail = _two_replicas(tmp_path, shared)
    _sql(shared, "DELETE FROM audit_records WHERE replica = ? AND seq = ?", ("r1", 12))
    result = _verify(trail)
    assert not result.ok
    assert (result.replica, result.first_bad_seq) == ("r1", 12)
    assert "missing" in (result.problem or "")


def test_dropped_tail_after_checkpoint_is_caught(tmp_path: Path, shared: Database) -> None:
    trail = _two_replicas(tmp_path, shared)
    _sql(shared, "DELETE FROM audit_records WHERE replica = ? AND seq > ?", ("r1", 25))
    result = _verify(trail)
    assert not result.ok
    assert (result.replica, result.first_bad_seq) == ("r1", 26)
    assert "truncated" in (result.problem or "") and "30" in (result.problem or "")


def test_rewritten_chain_is_caught_by_checkpoint(tmp_path: Path, shared: Database) -> None:
    """Rows rewritten with every hash recomputed still differ from the signed heads."""
    trail = _two_replicas(tmp_path, shared)
    other = tmp_path / "forged" / "audit.db"
    local_chain(other, 30, "forged")
    forged = _local_rows(other)
    _sql(shared, "DELETE FROM audit_records WHERE replica = ?", ("r1",))
    trail.ship("r1", forged, 0.0)
    result = _verify(trail)
    assert not result.ok
    assert result.replica == "r1" and "checkpoint" in (result.problem or "")


def test_checkpoint_forgery_and_removal_are_caught(tmp_path: Path, shared: Database) -> None:
    trail = _two_replicas(tmp_path, shared)
    _sql(shared, "UPDATE audit_checkpoints SET at = at + 1 WHERE replica = ?", ("r2",))
    result = _verify(trail)
    assert not result.ok and "bad signature" in (result.problem or "")
    assert result.replica == "r2"

    # a checkpoint signed with another key (not derived from the gateway's master key)
    _sql(shared, "DELETE FROM audit_checkpoints WHERE replica = ?", ("r2",))
    SharedTrail(shared).write_checkpoint("r2", signing_key(checkpoint_key(b"\x01" * 32)), 1.0)
    result = _verify(trail)
    assert not result.ok and "signed by key" in (result.problem or "")

    # checkpoints dropped: the replica's next one is numbered past its own count (kept
    # outside the database), and the gap shows
    _sql(shared, "DELETE FROM audit_checkpoints WHERE replica = ?", ("r2",))
    local_chain(tmp_path / "r2" / "audit.db", 1, "r2", start=20)
    ship_all(shipper_for(tmp_path / "r2" / "audit.db", "r2", lambda: shared))
    result = _verify(trail)
    assert not result.ok and "checkpoint 1 of replica r2 is missing" in (result.problem or "")

    # a missing checkpoint in the middle of a replica's series
    _sql(shared, "DELETE FROM audit_checkpoints WHERE replica = ?", ("r2",))
    (tmp_path / "r2" / "audit-ship.json").unlink()  # the operator starts r2's count afresh
    ship_all(shipper_for(tmp_path / "r2" / "audit.db", "r2", lambda: shared))
    local_chain(tmp_path / "r1" / "audit.db", 3, "r1", start=30)
    r1 = shipper_for(tmp_path / "r1" / "audit.db", "r1", lambda: shared)
    ship_all(r1)
    local_chain(tmp_path / "r1" / "audit.db", 3, "r1", start=33)
    ship_all(r1)
    assert _verify(trail).ok
    _sql(shared, "DELETE FROM audit_checkpoints WHERE replica = ? AND n = ?", ("r1", 2))
    result = _verify(trail)
    assert not result.ok and "checkpoint 2 of replica r1 is missing" in (result.problem or "")


def test_same_replica_id_on_another_data_dir_ships_nothing(
    tmp_path: Path, shared: Database
) -> None:
    _two_replicas(tmp_path, shared)
    stranger = tmp_path / "stranger" / "audit.db"
    local_chain(stranger, 40, "stranger")
    s = shipper_for(stranger, "r1", lambda: shared)
    with pytest.raises(ChainMismatch, match="another data_dir"):
        s.ship_once()
    s.close()
    assert _verify(SharedTrail(shared)).ok


def test_lag_and_status(tmp_path: Path, shared: Database) -> None:
    db_path = tmp_path / "r1" / "audit.db"
    local_chain(db_path, 10, "r1")
    assert ship_lag(db_path).error is not None  # never reported: not trusted as shipped
    s = shipper_for(db_path, "r1", lambda: shared)
    ship_all(s)
    lag = ship_lag(db_path)
    assert (lag.records, lag.seconds, lag.error, lag.shipped_seq) == (0, 0.0, None, 10)
    local_chain(db_path, 5, "r1", start=10)
    lag = ship_lag(db_path)
    assert lag.records == 5 and lag.seconds >= 0.0
    assert read_status(db_path) is not None


class _CrashingDatabase:
    """The shared database, but the next shipping transaction dies before or after its
    commit (a shipper killed mid-batch, or just after it)."""

    def __init__(self, db: Database, when: str) -> None:
        self._db = db
        self.when = when
        self.dialect = db.dialect
        self.label = db.label

    @contextlib.contextmanager
    def transaction(self) -> Iterator[Cursor]:
        when, self.when = self.when, ""
        if when == "before commit":
            with self._db.transaction() as cur:
                yield cur
                raise ConnectionError("killed before commit")
        with self._db.transaction() as cur:
            yield cur
        if when == "after commit":
            raise ConnectionError("killed after commit")

    def __getattr__(self, name: str) -> object:
        return getattr(self._db, name)


@pytest.mark.parametrize("when", ["before commit", "after commit"])
def test_shipper_killed_mid_batch_loses_and_doubles_nothing(
    tmp_path: Path, shared: Database, when: str
) -> None:
    db_path = tmp_path / "r1" / "audit.db"
    local_chain(db_path, 25, "r1")
    crashing = _CrashingDatabase(shared, "")
    s = shipper_for(db_path, "r1", lambda: cast(Database, crashing), batch_size=10)
    assert s.ship_once()  # seq 1..10
    crashing.when = when
    with pytest.raises(ConnectionError):
        s.ship_once()  # seq 11..20, killed
    s._failed(ConnectionError("killed"))  # what the thread does with it
    ship_all(s)
    with shared.read() as cur:
        seqs = [r[0] for r in cur.execute("SELECT seq FROM audit_records ORDER BY seq").fetchall()]
    assert seqs == list(range(1, 26))
    assert _verify(SharedTrail(shared)).ok


def test_shipping_settings_travel_without_showing_the_key() -> None:
    s = shipping("r1")
    assert SEED.hex() not in repr(s)
    assert AuditShipping.from_json(s.to_json()) == s
    assert checkpoint_key(bytes(32)) != checkpoint_key(bytes(31) + b"\x01")
    assert checkpoint_key(bytes(32)) == checkpoint_key(bytes(32))


def test_an_idle_replica_witnesses_others_less_often(tmp_path: Path, shared: Database) -> None:
    trail = _two_replicas(tmp_path, shared)  # each wrote checkpoint 1
    r1 = shipper_for(tmp_path / "r1" / "audit.db", "r1", lambda: shared)
    r1.shipping = shipping("r1", interval=0.05)
    r1.checkpoint()  # r1's head moved since this shipper last signed (never): checkpoint 2
    local_chain(tmp_path / "r2" / "audit.db", 2, "r2", start=20)
    ship_all(shipper_for(tmp_path / "r2" / "audit.db", "r2", lambda: shared))
    time.sleep(0.06)
    r1.checkpoint()  # only r2 moved: not yet
    assert trail.last_checkpoint("r1").n == 2  # type: ignore[union-attr]
    time.sleep(0.05 * OTHERS_EVERY)
    r1.checkpoint()  # now it witnesses r2's new head
    cp = trail.last_checkpoint("r1")
    assert cp is not None and cp.n == 3 and cp.heads["r2"][0] == 22
    r1.close()
    assert _verify(trail).ok
