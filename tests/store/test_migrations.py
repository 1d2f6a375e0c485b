"""Versioned schemas: applied once, in order, recorded; refused with the command to run when
migration is not allowed; concurrent starts on one database apply each step once."""

from __future__ import annotations

import pytest

from lockgate.errors import StoreUnavailable
from lockgate.store import (
    CORE_DOMAIN,
    Database,
    Migration,
    migrate,
    migrations,
    pending,
    register_domain,
    registered_domains,
)
from tests.store.conftest import OpenDatabase, on_threads

V1 = Migration(1, "widgets", "CREATE TABLE widgets (id TEXT PRIMARY KEY, size INTEGER NOT NULL)")
V2 = Migration(2, "widget colour", "ALTER TABLE widgets ADD COLUMN colour TEXT")


def _tables(db: Database) -> set[str]:
    with db.read() as cur:
        if db.dialect == "postgresql":
            cur.execute("SELECT tablename FROM pg_tables WHERE schemaname = current_schema()")
        else:
            cur.execute("SELECT name FROM sqlite_master WHERE type = 'table'")
        return {row[0] for row in cur.fetchall()}


def test_applies_missing_steps_once_and_records_them(db: Database) -> None:
    assert [m.version for m in pending(db, "widgets", [V1, V2])] == [1, 2]
    assert migrate(db, "widgets", [V1]) == [V1]
    assert migrate(db, "widgets", [V1]) == []
    assert pending(db, "widgets", [V1, V2]) == [V2]
    assert migrate(db, "widgets", [V1, V2]) == [V2]
    with db.transaction() as cur:
        cur.execute("INSERT INTO widgets (id, size, colour) VALUES (?, ?, ?)", ("w", 3, "red"))
    with db.read() as cur:
        cur.execute("SELECT domain, version FROM lockgate_schema ORDER BY domain, version")
        assert cur.fetchall() == [(CORE_DOMAIN, 1), ("widgets", 1), ("widgets", 2)]
    assert {"widgets", "lockgate_schema", "lockgate_changes", "lockgate_meta"} <= _tables(db)


def test_not_allowed_names_what_is_missing_and_the_command(db: Database) -> None:
    migrate(db, "widgets", [V1])
    with pytest.raises(StoreUnavailable) as err:
        migrate(db, "widgets", [V1, V2], allowed=False)
    assert "widgets 2: widget colour" in str(err.value)
    assert "lockgate db upgrade" in str(err.value)
    assert pending(db, "widgets", [V1, V2]) == [V2]  # nothing was applied
    migrate(db, "widgets", [V1], allowed=False)  # current: no error


def test_failed_step_applies_nothing(db: Database) -> None:
    bad = Migration(2, "broken", "ALTER TABLE widgets ADD COLUMN x TEXT; THIS IS NOT SQL")
    with pytest.raises(StoreUnavailable):
        migrate(db, "widgets", [V1, bad])
    assert "widgets" not in _tables(db)  # DDL is transactional on both backends
    assert [m.version for m in pending(db, "widgets", [V1, bad])] == [1, 2]


def test_concurrent_starts_apply_each_step_once(open_db: OpenDatabase) -> None:
    results = on_threads(lambda db: migrate(db, "widgets", [V1, V2]), [open_db() for _ in range(4)])
    assert sorted(len(r) for r in results) == [0, 0, 0, 2]


def test_registry_checks_versions_and_conflicts(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(migrations, "_registry", {})  # leave the real registry alone
    with pytest.raises(ValueError, match="1, 2"):
        register_domain("test_gap", [V2])
    with pytest.raises(ValueError, match="lower-case"):
        register_domain("Bad-Name", [V1])
    register_domain("test_widgets", [V1, V2])
    register_domain("test_widgets", [V1, V2])  # again at re-import: harmless
    with pytest.raises(ValueError, match="registered twice"):
        register_domain("test_widgets", [V1])
    domains = registered_domains()
    assert next(iter(domains)) == CORE_DOMAIN
    assert domains["test_widgets"] == (V1, V2)
