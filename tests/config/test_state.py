"""``state:``: sqlite by default, or a PostgreSQL mapping whose password never sits in YAML."""

from __future__ import annotations

from pathlib import Path

import pytest

from lockgate.config import load_config, parse_config
from lockgate.errors import ConfigError


def test_default_and_shorthand_are_sqlite() -> None:
    assert parse_config({}).state.backend == "sqlite"
    config = parse_config({"state": "sqlite"})
    assert config.state.backend == "sqlite" and not config.state.shared
    assert config.state.postgresql is None
    assert config.master_key_file is None


def test_postgresql_mapping() -> None:
    config = parse_config(
        {
            "state": {
                "postgresql": {
                    "dsn": "postgresql://lockgate@db:5432/lockgate?sslmode=verify-full",
                    "password_env": "LOCKGATE_DB_PASSWORD",
                    "max_staleness": 10,
                    "replica_id": "gw-1",
                }
            },
            "master_key_file": "/run/secrets/master.key",
        }
    )
    pg = config.state.postgresql
    assert config.state.backend == "postgresql" and config.state.shared
    assert pg is not None and pg.max_staleness == 10 and pg.pool_size == 8
    assert pg.resolved_replica_id() == "gw-1"
    assert pg.migrate_on_start is True
    assert config.master_key_file == Path("/run/secrets/master.key")


def test_replica_id_from_env_then_hostname(monkeypatch: pytest.MonkeyPatch) -> None:
    pg = parse_config({"state": {"postgresql": {"dsn": "host=db"}}}).state.postgresql
    assert pg is not None
    monkeypatch.setenv("LOCKGATE_REPLICA_ID", "pod-3")
    assert pg.resolved_replica_id() == "pod-3"
    monkeypatch.delenv("LOCKGATE_REPLICA_ID")
    assert pg.resolved_replica_id()


@pytest.mark.parametrize(
    "dsn", ["postgresql://lockgate:hunter2@db/lockgate", "host=db user=x password=hunter2"]
)
def test_password_in_dsn_is_refused_naming_the_field(tmp_path: Path, dsn: str) -> None:
    path = tmp_path / "lockgate.yaml"
    path.write_text(f"state:\n  postgresql:\n    dsn: '{dsn}'\n")
    with pytest.raises(ConfigError) as err:
        load_config(path)
    message = str(err.value)
    assert "lockgate.yaml:2: state.postgresql" in message and "dsn: the DSN" in message
    assert "password_file" in message
    assert "hunter2" not in message


@pytest.mark.parametrize(
    ("state", "needle"),
    [
        ("mysql", "expected 'sqlite'"),
        ("postgresql", "needs its settings"),
        ({"postgresql": {"dsn": "host=db port"}}, "not a valid libpq"),
        ({"postgresql": {"dsn": "host=db", "pasword_file": "x"}}, "password_file"),
        ({"postgresql": {"dsn": "host=h", "password_file": "/a", "password_env": "B"}}, "not both"),
        ({"postgresql": {"dsn": "host=db", "catch_up_interval": 30}}, "max_staleness"),
    ],
)
def test_mistakes_are_named(state: object, needle: str) -> None:
    with pytest.raises(ConfigError, match=needle):
        parse_config({"state": state})
