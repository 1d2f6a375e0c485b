"""The Database/Cursor contract, the same on SQLite and PostgreSQL."""

from __future__ import annotations

import time

import pytest

from lockgate.errors import StoreUnavailable
from lockgate.store import Database, Migration, migrate
from tests.store.conftest import OpenDatabase, on_threads

ITEMS = Migration(
    1,
    "items",
    """
    CREATE TABLE items (name TEXT PRIMARY KEY, n INTEGER NOT NULL, score REAL, blob BLOB);
    CREATE INDEX items_n ON items (n);
    """,
)


def _items(db: Database) -> Database:
    migrate(db, "items_test", [ITEMS])
    return db


def test_write_read_round_trip_keeps_types(db: Database) -> None:
    _items(db)
    with db.transaction() as cur:
        cur.execute(
            "INSERT INTO items (name, n, score, blob) VALUES (?, ?, ?, ?)",
            ("a", 2**40, 0.5, b"\x00\xff"),
        )
        assert cur.rowcount == 1
    with db.read() as cur:
        row = cur.execute("SELECT name, n, score, blob FROM items").fetchone()
    assert row == ("a", 2**40, 0.5, b"\x00\xff")
    assert isinstance(row[3], bytes)


def test_on_conflict_upsert_and_do_nothing(db: Database) -> None:
    _items(db)
    upsert = (
        "INSERT INTO items (name, n) VALUES (?, ?) ON CONFLICT (name) DO UPDATE SET n = excluded.n"
    )
    with db.transaction() as cur:
        cur.execute(upsert, ("a", 1))
        cur.execute(upsert, ("a", 2))
        cur.execute("INSERT INTO items (name, n) VALUES (?, ?) ON CONFLICT DO NOTHING", ("a", 9))
        assert cur.rowcount == 0
    with db.read() as cur:
        assert cur.execute("SELECT name, n FROM items").fetchall() == [("a", 2)]


def test_literal_percent_and_question_mark_in_quotes(db: Database) -> None:
    _items(db)
    with db.transaction() as cur:
        cur.execute("INSERT INTO items (name, n) VALUES ('100%?', ?)", (1,))
    with db.read() as cur:
        cur.execute("SELECT name FROM items WHERE name LIKE '100%' AND n = ?", (1,))
        assert cur.fetchall() == [("100%?",)]


def test_error_in_block_rolls_back(db: Database) -> None:
    _items(db)
    with pytest.raises(RuntimeError), db.transaction() as cur:
        cur.execute("INSERT INTO items (name, n) VALUES (?, ?)", ("a", 1))
        cur.touch("runs")
        raise RuntimeError("boom")
    with db.read() as cur:
        assert cur.execute("SELECT count(*) FROM items").fetchone() == (0,)
    assert db.version("runs") == 0


def test_driver_error_is_store_unavailable_and_rolls_back(db: Database) -> None:
    _items(db)
    label = db.label[:20]
    with pytest.raises(StoreUnavailable, match=label), db.transaction() as cur:
        cur.execute("INSERT INTO items (name, n) VALUES (?, ?)", ("a", 1))
        cur.execute("INSERT INTO items (name, n) VALUES (?, ?)", ("a", 2))  # duplicate key
    with db.read() as cur:
        assert cur.execute("SELECT count(*) FROM items").fetchone() == (0,)


def test_read_refuses_writes(db: Database) -> None:
    _items(db)
    with pytest.raises(StoreUnavailable), db.read() as cur:
        cur.execute("INSERT INTO items (name, n) VALUES (?, ?)", ("a", 1))
    with db.transaction() as cur:  # the handle is still usable for writes
        cur.execute("INSERT INTO items (name, n) VALUES (?, ?)", ("a", 1))


def test_touch_moves_version_once_per_transaction(db: Database) -> None:
    assert db.version("revocations") == 0
    with db.transaction() as cur:
        cur.touch("revocations")
        cur.touch("revocations")
    assert db.version("revocations") == 1
    with db.transaction() as cur:
        cur.touch("revocations")
        cur.touch("keys")
    assert (db.version("revocations"), db.version("keys"), db.version("roles")) == (2, 1, 0)


def test_other_handle_sees_version_move(open_db: OpenDatabase) -> None:
    writer, reader = open_db(), open_db()
    reader.start_watching()
    reader.start_watching()  # idempotent
    before = reader.version("credentials")
    with writer.transaction() as cur:
        cur.touch("credentials")
    deadline = time.monotonic() + 2
    while reader.version("credentials") == before and time.monotonic() < deadline:
        time.sleep(0.01)
    assert reader.version("credentials") == before + 1
    assert reader.stale_for() < 2


def test_concurrent_writers_lose_no_increment(open_db: OpenDatabase) -> None:
    db = open_db()
    _items(db)
    with db.transaction() as cur:
        cur.execute("INSERT INTO items (name, n) VALUES ('c', 0)")

    def bump(handle: Database) -> None:
        for _ in range(20):
            with handle.transaction() as cur:
                cur.execute("UPDATE items SET n = n + 1 WHERE name = 'c'")
                cur.touch("runs")

    on_threads(bump, [db, db, open_db()])  # two threads on one handle, one on another
    with db.read() as cur:
        assert cur.execute("SELECT n FROM items WHERE name = 'c'").fetchone() == (60,)
    with db.read() as cur:
        cur.execute("SELECT version FROM lockgate_changes WHERE topic = 'runs'")
        assert cur.fetchone() == (60,)
