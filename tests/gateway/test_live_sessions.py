"""The registry of sessions open now: batched writes, several workers sharing live.db, a
crashed worker's rows ignored then purged, a restarted worker's old rows gone."""

from __future__ import annotations

import asyncio
import time
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any

import pytest

from lockgate.errors import StoreUnavailable
from lockgate.gateway.live_sessions import SessionRegistry
from lockgate.identity.model import Claims
from lockgate.store import Cursor, SqliteDatabase
from tests.store import conftest as store_fixtures
from tests.store.conftest import OpenDatabase


def claims(jti: str = "j1", dag: str = "etl", run: str = "run-1") -> Claims:
    now = int(time.time())
    return Claims(
        iss="https://lockgate.test", sub=f"airflow:prod/{dag}/load", aud="cass", exp=now + 900,
        iat=now, nbf=now, jti=jti, deployment="prod", dag_id=dag, task_id="load", run_id=run,
        try_number=2, map_index=-1,
    )  # fmt: skip


class Clock:
    def __init__(self) -> None:
        self.now = 1_000_000.0

    def __call__(self) -> float:
        return self.now


class CountingDatabase:
    """A SQLite database that counts the statements and transactions it runs."""

    def __init__(self, path: Path) -> None:
        self.inner = SqliteDatabase(path)
        self.dialect = self.inner.dialect
        self.label = self.inner.label
        self.statements = 0
        self.transactions = 0
        self.refuse = False

    def transaction(self) -> AbstractContextManager[Cursor]:
        if self.refuse:
            raise StoreUnavailable("down for the test")
        self.transactions += 1
        outer = self

        class Counted:
            def __enter__(self) -> Any:
                cur = self.cm.__enter__()
                real_execute = cur.execute

                def execute(sql: str, params: Any = ()) -> Any:
                    outer.statements += 1
                    return real_execute(sql, params)

                cur.execute = execute
                return cur

            def __exit__(self, *exc: Any) -> Any:
                return self.cm.__exit__(*exc)

            cm = outer.inner.transaction()

        return Counted()

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)


def test_a_session_is_listed_with_its_task_and_never_a_token(tmp_path: Path) -> None:
    reg = SessionRegistry(tmp_path / "live.db", "r1", 0)
    reg.start()
    sid = reg.opened("cql", "cass", claims("jti-1"), "127.0.0.1:5555")
    assert reg.open_sessions() == []  # written at the next flush, not by the login
    assert reg.flush() == 1
    [s] = reg.open_sessions()
    assert (s.kind, s.resource, s.principal, s.deployment, s.dag_id, s.run_id, s.task_id) == (
        "cql", "cass", "airflow:prod/etl/load", "prod", "etl", "run-1", "load",
    )  # fmt: skip
    assert (s.try_number, s.map_index, s.jti, s.peer, s.where) == (
        2, -1, "jti-1", "127.0.0.1:5555", "r1/0",
    )  # fmt: skip
    reg.closed(sid)
    reg.flush()
    assert reg.open_sessions() == []
    reg.close()


def test_a_flood_of_logins_costs_a_few_statements_and_short_sessions_none(
    tmp_path: Path,
) -> None:
    db = CountingDatabase(tmp_path / "live.db")
    reg = SessionRegistry(db, "r1", 0)  # type: ignore[arg-type]
    reg.start()
    t0 = time.perf_counter()
    ids = [reg.opened("postgres", "pg", claims(f"j{i}"), "10.0.0.1:1") for i in range(1000)]
    took = time.perf_counter() - t0
    assert took < 0.5, f"1000 logins took {took:.3f}s in the registry"
    for sid in ids[:100]:  # closed before any flush: never written
        reg.closed(sid)
    db.statements = db.transactions = 0
    assert reg.flush() == 900
    assert db.transactions == 1 and db.statements <= 6, (db.transactions, db.statements)
    assert len(reg.open_sessions(limit=5000)) == 900
    for sid in ids[100:]:
        reg.closed(sid)
    db.statements = 0
    reg.flush()
    assert db.statements <= 6
    assert reg.open_sessions() == []
    db.inner.close()


def test_two_workers_share_live_db_and_each_restart_clears_its_own(tmp_path: Path) -> None:
    path = tmp_path / "live.db"
    w0, w1 = SessionRegistry(path, "r1", 0), SessionRegistry(path, "r1", 1)
    w0.start()
    w1.start()
    w0.opened("cql", "cass", claims("a"), "p:1")
    w1.opened("postgres", "pg", claims("b"), "p:2")
    w0.flush()
    w1.flush()
    assert {(s.jti, s.where) for s in w0.open_sessions()} == {("a", "r1/0"), ("b", "r1/1")}
    assert w1.open_sessions() == w0.open_sessions()
    # Worker 1 is replaced (its process died): the new one forgets its predecessor's rows.
    w1.close()
    again = SessionRegistry(path, "r1", 1)
    again.start()
    assert {s.jti for s in w0.open_sessions()} == {"a"}
    # A stopping worker takes its rows away.
    w0.stop()
    assert again.open_sessions() == []
    w0.close()
    again.close()


def test_a_crashed_workers_sessions_are_ignored_then_purged(tmp_path: Path) -> None:
    path = tmp_path / "live.db"
    clock = Clock()
    alive = SessionRegistry(path, "r1", 0, clock=clock, heartbeat_interval=5, stale_after=15)
    dead = SessionRegistry(path, "r2", 0, clock=clock, heartbeat_interval=5, stale_after=15)
    alive.start()
    dead.start()
    dead.opened("cql", "cass", claims("gone"), "p:1")
    alive.opened("cql", "cass", claims("here"), "p:2")
    dead.flush()
    alive.flush()
    assert {s.jti for s in alive.open_sessions()} == {"gone", "here"}
    # r2 is killed (no stop, no more heartbeats); r1 keeps beating.
    for _ in range(4):
        clock.now += 5
        alive.flush()
    assert {s.jti for s in alive.open_sessions()} == {"here"}
    with alive.db.read() as cur:  # purged by r1's heartbeat, not only hidden
        rows = cur.execute("SELECT jti FROM live_sessions").fetchall()
        workers = cur.execute("SELECT replica FROM live_workers").fetchall()
    assert rows == [("here",)] and workers == [("r1",)]
    alive.close()
    dead.close()


def test_a_database_that_refuses_keeps_the_changes_for_the_next_flush(tmp_path: Path) -> None:
    db = CountingDatabase(tmp_path / "live.db")
    reg = SessionRegistry(db, "r1", 0)  # type: ignore[arg-type]
    reg.start()
    first = reg.opened("cql", "cass", claims("a"), "p:1")
    reg.opened("cql", "cass", claims("b"), "p:2")
    db.refuse = True
    with pytest.raises(StoreUnavailable):
        reg.flush()
    reg.closed(first)  # closed while the database was away: never written at all
    reg.opened("cql", "cass", claims("c"), "p:3")
    db.refuse = False
    assert reg.flush() == 2
    assert {s.jti for s in reg.open_sessions()} == {"b", "c"}
    db.inner.close()


async def test_the_running_registry_writes_within_a_second_off_the_loop(tmp_path: Path) -> None:
    reg = SessionRegistry(tmp_path / "live.db", "r1", 0, flush_interval=0.1)
    reg.start()
    reg.serve()
    reg.opened("cql", "cass", claims("a"), "p:1")
    for _ in range(50):
        if reg.open_sessions():
            break
        await asyncio.sleep(0.05)
    assert [s.jti for s in reg.open_sessions()] == ["a"]
    reader = SessionRegistry(tmp_path / "live.db", "r1", 9)
    await reg.aclose()  # its rows go with it
    assert reader.open_sessions() == []
    reader.close()


open_db = store_fixtures.open_db  # the test taking it runs on SQLite and on PostgreSQL


def test_replicas_share_the_registry_on_either_database(open_db: OpenDatabase) -> None:
    clock = Clock()
    a = SessionRegistry(open_db(), "a", 0, clock=clock, heartbeat_interval=5, stale_after=15)
    b = SessionRegistry(open_db(), "b", 0, clock=clock, heartbeat_interval=5, stale_after=15)
    a.start()
    b.start()
    ids = [a.opened("postgres", "pg", claims(f"a{i}"), "p:1") for i in range(450)]
    b.opened("cql", "cass", claims("b0"), "p:2")
    assert a.flush() == 450 and b.flush() == 1
    assert len(b.open_sessions(limit=1000)) == 451
    for sid in ids[:400]:
        a.closed(sid)
    a.flush()
    assert {s.where for s in b.open_sessions(limit=1000)} == {"a/0", "b/0"}
    assert len(a.open_sessions(limit=1000)) == 51
    # replica a dies; b's heartbeats purge its sessions
    for _ in range(4):
        clock.now += 5
        b.flush()
    assert [s.jti for s in b.open_sessions()] == ["b0"]
