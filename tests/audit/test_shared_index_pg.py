"""The shared trail's index step on a real PostgreSQL server: a trail written before it (the
step pending until ``lockgate db upgrade``) is still read by the alerts' follower and
counts as readable; writers that may not upgrade name the command; the upgrade adds the
indexes the console's lookups need (a token's last use, one event over a window, the
request histogram) and the planner takes them."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from lockgate.alerts.trail import TrailFollower
from lockgate.audit import AuditLog, AuditQuery, AuditReader, AuditRecord
from lockgate.audit.shared import _LAST_USE, DOMAIN, MIGRATIONS, READ_STEPS, SharedTrail, readable
from lockgate.errors import StoreUnavailable
from lockgate.store import Database, PostgresDatabase, SqliteDatabase, migrate, pending
from tests.audit.shared_helpers import ship_all, shipper_for, shipping
from tests.pgserver.fixtures import SharedStateFactory

INDEXES = {"audit_records_jti", "audit_records_event"}


@pytest.fixture
def pg(pg_state: SharedStateFactory) -> Iterator[PostgresDatabase]:
    db = PostgresDatabase(pg_state(), replica_id="auditor")
    try:
        yield db
    finally:
        db.close()


def _ship_records(db: Database, tmp_path: Path, replica: str = "r1") -> None:
    path = tmp_path / f"{replica}.db"
    log = AuditLog(path)
    try:
        for i in range(6):
            expires = time.time() + 900
            log.emit(AuditRecord(event="token_issued", dag_id="etl", run_id="run1",
                                 jti=f"j{i}", detail={"expires_at": expires}))  # fmt: skip
            log.emit(AuditRecord(event="denied", dag_id="etl", run_id="run1", jti=f"j{i}",
                                 decision="deny", reason="no_rule"))  # fmt: skip
        assert log.flush(10)
    finally:
        log.close()
    ship_all(shipper_for(path, replica, lambda: db))


def _as_before_the_index_step(db: Database) -> None:
    """The trail as the release before the index step left it: its tables, rows and ledger
    without step 2."""
    with db.transaction() as cur:
        for name in sorted(INDEXES):
            cur.execute(f"DROP INDEX {name}")
        cur.execute("DELETE FROM lockgate_schema WHERE domain = ? AND version > ?",
                    (DOMAIN, READ_STEPS))  # fmt: skip


def _indexes(db: Database) -> set[str]:
    with db.read() as cur:
        rows = cur.execute(
            "SELECT indexname FROM pg_indexes WHERE tablename = 'audit_records'"
        ).fetchall()
    return {str(r[0]) for r in rows}


def _plan(db: Database, sql: str, params: tuple[object, ...]) -> str:
    """The plan of ``sql`` with sequential scans priced out (a table this small is always
    cheaper to scan; the question is whether an index can serve the query at all)."""
    with db.transaction() as cur:
        cur.execute("SET LOCAL enable_seqscan = off")
        rows = cur.execute(f"EXPLAIN {sql}", params).fetchall()
    return "\n".join(str(r[0]) for r in rows)


def test_a_trail_one_step_behind_is_read_until_the_upgrade(
    tmp_path: Path, pg: PostgresDatabase
) -> None:
    _ship_records(pg, tmp_path)
    assert _indexes(pg) >= INDEXES  # a shipper that may upgrade brings the newest step
    _as_before_the_index_step(pg)
    assert [m.version for m in pending(pg, DOMAIN, MIGRATIONS)] == [2]
    assert readable(pg)
    follower = TrailFollower(pg, tmp_path / "unused.db", shared_trail=pg)
    assert follower.heads() == {"r1": 12}  # not "no shared trail"
    with AuditReader(tmp_path / "reader.db", shipping=shipping("r1", pg.settings)) as reader:
        assert reader.count(AuditQuery()) == 12  # search and the console read it too
        used = reader.last_uses({"j1": 0.0, "never": 0.0})
        assert set(used) == {"j1"} and used["j1"][1] == "denied"
    follower.cursor = {"r1": 0}
    rows = follower.read(time.time())
    assert [r.event for r in rows] == ["denied"] * 6 and {r.replica for r in rows} == {"r1"}

    # a writer that may not upgrade refuses the old schema, naming the step and the command
    with pytest.raises(StoreUnavailable, match=r"audit 2: .*lockgate db upgrade"):
        migrate(pg, DOMAIN, MIGRATIONS, allowed=False)

    assert [m.version for m in migrate(pg, DOMAIN, MIGRATIONS)] == [2]
    assert _indexes(pg) >= INDEXES and pending(pg, DOMAIN, MIGRATIONS) == []
    assert follower.heads() == {"r1": 12}


def test_no_tables_is_not_readable(pg: PostgresDatabase) -> None:
    assert not readable(pg)
    assert TrailFollower(pg, Path("/nonexistent/audit.db"), shared_trail=pg).heads() == {}


def test_the_consoles_lookups_have_an_index(tmp_path: Path, pg: PostgresDatabase) -> None:
    _ship_records(pg, tmp_path)
    since = time.time() - 3600
    last_use = _plan(
        pg,
        "SELECT seq FROM audit_records WHERE jti = ? AND ts >= ? "
        "ORDER BY ts DESC, replica DESC, seq DESC LIMIT 3",
        ("j1", since),
    )
    assert "audit_records_jti" in last_use
    tokens_issued = _plan(
        pg, "SELECT count(*) FROM audit_records WHERE event = ? AND ts >= ?",
        ("token_issued", since),
    )  # fmt: skip
    assert "audit_records_event" in tokens_issued
    histogram = _plan(
        pg,
        "SELECT CAST(floor(ts / ?) AS BIGINT) AS b, dag_id, count(*) FROM audit_records "
        "WHERE ts >= ? AND event IN (?, ?, ?, ?) GROUP BY b, dag_id",
        (3600.0, since, "allowed", "denied", "throttled", "upstream_error"),
    )
    assert "audit_records_event" in histogram  # read from the index alone once vacuumed


def _last_uses_are_the_newest_use_since_issue(tmp_path: Path, db: Database) -> None:
    _ship_records(db, tmp_path)
    trail = SharedTrail(db)
    with db.read() as cur:
        rows = cur.execute("SELECT jti, ts, event FROM audit_records ORDER BY seq").fetchall()
    issued = {str(j): float(ts) for j, ts, event in rows if event == "token_issued"}
    denied = {str(j): float(ts) for j, ts, event in rows if event == "denied"}
    asked = {**issued, "never-used": time.time() - 60, "j0": denied["j0"] + 1}
    found = trail.last_uses(asked)
    # j0: its use is before the time asked from; never-used: no record at all
    assert found == {j: (denied[j], "denied") for j in issued if j != "j0"}
    assert trail.last_uses({}) == {}


def test_last_uses_in_one_statement(tmp_path: Path, pg: PostgresDatabase) -> None:
    _last_uses_are_the_newest_use_since_issue(tmp_path, pg)
    since = time.time() - 3600
    plan = _plan(pg, _LAST_USE, (f'[{{"jti": "j1", "since": {since}}}]',))
    assert "audit_records_jti" in plan


def test_last_uses_on_sqlite(tmp_path: Path) -> None:
    db = SqliteDatabase(tmp_path / "shared.db")
    try:
        migrate(db, DOMAIN, MIGRATIONS)
        _last_uses_are_the_newest_use_since_issue(tmp_path, db)
    finally:
        db.close()
