"""``lockgate db upgrade`` / ``db check`` on SQLite and PostgreSQL, and the registry of
schema domains: every module that registers one is imported, every table a store creates
comes from a registered migration."""

from __future__ import annotations

import ast
import re
from collections.abc import Callable
from pathlib import Path

import pytest
import yaml

from lockgate.cli import main
from lockgate.cli_db import SCHEMA_MODULES, schema_domains
from lockgate.config import PostgresStateSettings, load_config
from lockgate.store import PostgresDatabase

SRC = Path(__file__).resolve().parents[1] / "src"


def _config(tmp_path: Path, state: object = "sqlite") -> Path:
    path = tmp_path / "lockgate.yaml"
    path.write_text(yaml.safe_dump({"data_dir": str(tmp_path / "data"), "state": state}))
    return path


def _run(config: Path, *argv: str) -> int:
    return main(["-c", str(config), "db", *argv])


def test_sqlite_check_upgrade_check(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config = _config(tmp_path)
    assert _run(config, "check") == 1
    err = capsys.readouterr().err
    assert "missing revocations 1" in err and "run `lockgate db upgrade`" in err
    assert not (tmp_path / "data").exists()  # looking created nothing
    assert _run(config, "upgrade") == 0
    out = capsys.readouterr().out
    assert "revocations.db: revocations 1" in out and "schema current" in out
    assert (tmp_path / "data" / "databricks_runs.db").exists()
    assert not (tmp_path / "data" / "keys.db").exists()  # keys are PEM files on SQLite
    assert _run(config, "check") == 0
    assert _run(config, "upgrade") == 0
    assert "nothing to do" in capsys.readouterr().out


def _pg_config(tmp_path: Path, settings: PostgresStateSettings) -> Path:
    return _config(tmp_path, {"postgresql": settings.model_dump(mode="json")})


def _pg_tables(settings: PostgresStateSettings) -> set[str]:
    db = PostgresDatabase(settings, replica_id="t")
    try:
        with db.read() as cur:
            cur.execute("SELECT tablename FROM pg_tables WHERE schemaname = current_schema()")
            return {row[0] for row in cur.fetchall()}
    finally:
        db.close()


def test_postgresql_check_upgrade_check(
    tmp_path: Path,
    pg_state: Callable[..., PostgresStateSettings],
    capsys: pytest.CaptureFixture[str],
) -> None:
    settings = pg_state()
    config = _pg_config(tmp_path, settings)
    assert _run(config, "check") == 1
    err = capsys.readouterr().err
    assert "missing lockgate 1" in err and "missing audit 1" in err
    assert settings.dsn.split("?")[0].split("@")[1] in err  # the database, named
    assert _run(config, "upgrade") == 0
    assert _run(config, "check") == 0
    tables = _pg_tables(settings)
    assert {"lockgate_schema", "lockgate_changes", "lockgate_meta"} <= tables
    # Every table any migration creates is there, and only those plus nothing else.
    assert tables == _migration_tables()
    # A second replica running the same upgrade finds nothing to do.
    assert _run(config, "upgrade") == 0
    assert "nothing to do" in capsys.readouterr().out
    assert load_config(config).state.shared


def test_every_schema_module_is_imported() -> None:
    registering = set()
    for path in (SRC / "lockgate").rglob("*.py"):
        if path.parts[-2:] == ("store", "migrations.py"):
            continue
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            if (
                isinstance(node, ast.Call)
                and isinstance(node.func, ast.Name)
                and node.func.id == "register_domain"
            ):
                module = ".".join(path.relative_to(SRC).with_suffix("").parts)
                registering.add(module)
    assert registering == set(SCHEMA_MODULES)


_CREATE_TABLE = re.compile(r"CREATE TABLE (?:IF NOT EXISTS )?([a-z_][a-z0-9_]*)", re.IGNORECASE)


def _migration_tables() -> set[str]:
    return {
        name.lower()
        for steps in schema_domains().values()
        for step in steps
        for name in _CREATE_TABLE.findall(step.ddl)
    }


def test_no_store_creates_a_table_outside_its_migrations() -> None:
    """A store (a module over lockgate.store) creating a table outside a registered migration
    would find it missing on a database `lockgate db upgrade` prepared."""
    registered = _migration_tables()
    stray: list[str] = []
    for path in (SRC / "lockgate").rglob("*.py"):
        rel = str(path.relative_to(SRC.parent))
        text = path.read_text()
        if "lockgate.store" not in text or path.parent.name == "store":
            continue
        for name in _CREATE_TABLE.findall(text):
            if name.lower() not in registered:
                stray.append(f"{rel}: {name}")
    assert not stray
