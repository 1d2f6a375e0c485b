"""State: the stores over the configured backend. SQLite keeps today's files; PostgreSQL
is one database shared by every replica and needs the master key given."""

from __future__ import annotations

import base64
import os
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from lockgate.config import LockgateConfig, PostgresStateSettings, StateSettings, TokenSettings
from lockgate.errors import CredentialError
from lockgate.state import State, revocation_retention
from lockgate.store import PostgresDatabase, SqliteDatabase

MASTER_KEY = base64.b64encode(os.urandom(32)).decode()


@pytest.fixture
def states() -> Iterator[list[State]]:
    opened: list[State] = []
    yield opened
    for st in opened:
        st.close()


def test_sqlite_keeps_todays_files(tmp_path: Path, states: list[State]) -> None:
    st = State(LockgateConfig(data_dir=tmp_path))
    states.append(st)
    assert not st.shared and st.replica_id and st.stale_for() == 0.0
    for name in ("revocations", "credentials", "databricks_runs", "adf_runs", "assertions"):
        db = st.database(name)
        assert isinstance(db, SqliteDatabase) and db.path == tmp_path / f"{name}.db"
        assert st.database(name) is db  # opened once
    assert (tmp_path / "keys" / "index.json").exists()  # signing keys stay PEM files
    assert (tmp_path / "master.key").exists()
    assert st.audit_shipping() is None
    st.start_watching()  # nothing to watch: harmless
    with pytest.raises(ValueError, match="lower-case"):
        st.database("../etc")


def test_revocations_outlive_the_longest_token(tmp_path: Path, states: list[State]) -> None:
    """A DAG revocation row must outlive every token it revokes: a day at least (poll
    tokens), ``tokens.max_ttl`` plus leeway plus the clock-skew margin when that is longer."""
    assert revocation_retention(TokenSettings()) >= 86400 + 5
    tokens = TokenSettings(max_ttl=172800, leeway=30)
    assert revocation_retention(tokens) >= 172800 + 30 + 300
    st = State(LockgateConfig(data_dir=tmp_path, tokens=tokens))
    states.append(st)
    assert st.revocations._retention == revocation_retention(tokens)


def test_sqlite_uses_master_key_file(tmp_path: Path, states: list[State]) -> None:
    key_file = tmp_path / "given.key"
    key_file.write_text(MASTER_KEY + "\n")
    key_file.chmod(0o600)
    st = State(LockgateConfig(data_dir=tmp_path / "data", master_key_file=key_file))
    states.append(st)
    assert st.master_key == base64.b64decode(MASTER_KEY)
    assert not (tmp_path / "data" / "master.key").exists()


def _shared_config(data_dir: Path, settings: PostgresStateSettings) -> LockgateConfig:
    return LockgateConfig(
        data_dir=data_dir, state=StateSettings(backend="postgresql", postgresql=settings)
    )


def test_shared_state_needs_the_master_key_given(
    pg_state: Callable[..., PostgresStateSettings],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("LOCKGATE_MASTER_KEY", raising=False)
    with pytest.raises(CredentialError, match="LOCKGATE_MASTER_KEY or master_key_file"):
        State(_shared_config(tmp_path, pg_state()))
    assert not (tmp_path / "master.key").exists()  # never made up per replica


def test_replicas_share_one_database(
    pg_state: Callable[..., PostgresStateSettings],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    states: list[State],
) -> None:
    monkeypatch.setenv("LOCKGATE_MASTER_KEY", MASTER_KEY)
    settings = pg_state()
    one = State(_shared_config(tmp_path / "one", settings.model_copy(update={"replica_id": "a"})))
    states.append(one)
    two = State(_shared_config(tmp_path / "two", settings.model_copy(update={"replica_id": "b"})))
    states.append(two)
    assert one.shared and (one.replica_id, two.replica_id) == ("a", "b")
    db = one.database("revocations")
    assert isinstance(db, PostgresDatabase)
    assert one.database("credentials") is db and one.database("assertions") is db
    one.start_watching()
    two.start_watching()
    assert one.keys.jwks() == two.keys.jwks()  # one key set for every replica
    one.credentials.set("orders-api-key", "s3cret")
    current = two.credentials.current("orders-api-key")
    assert current is not None and current.value == "s3cret"
    shipping = one.audit_shipping()
    assert shipping is not None and shipping.replica_id == "a" and shipping.signing_key
    assert one.stale_for() < 5
    assert not (tmp_path / "one" / "revocations.db").exists()


def test_a_store_that_refuses_closes_the_databases_opened_before_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A store refusing at start (an old schema with migrate_on_start: false, another master
    key) closes what State opened so far: a shared-state pool left to the garbage collector
    is joined from its own thread and warns."""
    closed: list[Path] = []
    real_close = SqliteDatabase.close

    def close(db: SqliteDatabase) -> None:
        closed.append(db.path)
        real_close(db)

    def refuse(*_args: object, **_kwargs: object) -> None:
        raise CredentialError("refused")

    monkeypatch.setattr(SqliteDatabase, "close", close)
    monkeypatch.setattr("lockgate.state.CredentialStore", refuse)
    with pytest.raises(CredentialError, match="refused"):
        State(LockgateConfig(data_dir=tmp_path))
    assert tmp_path / "revocations.db" in closed
