"""The once ledger on both backends: a jti claimed through one handle (another worker, another
replica) is refused through every other; an expired one is no evidence of a replay; a ledger
that cannot answer raises (the verifier fails closed). The PostgreSQL cases run two
replicas' databases on one real server."""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from lockgate.config import LockgateConfig, PostgresStateSettings
from lockgate.errors import AuthenticationError, StoreUnavailable
from lockgate.identity import AssertionVerifier
from lockgate.identity.once import CLOCK_SKEW_MARGIN, LedgerUnavailable, OnceLedger
from lockgate.store import Database, PostgresDatabase, SqliteDatabase
from tests.pgserver.state import replica_states

from .test_assertion_replay import _assertion, _config

OpenLedger = Callable[[], OnceLedger]


@pytest.fixture(params=["sqlite", "postgresql"])
def open_ledger(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[OpenLedger]:
    """``open_ledger()``: another process's (or replica's) ledger on the same database."""
    databases: list[Database] = []
    if request.param == "sqlite":

        def make() -> Database:
            return SqliteDatabase(tmp_path / "assertions.db")
    else:
        settings: PostgresStateSettings = request.getfixturevalue("pg_state")()

        def make() -> Database:
            return PostgresDatabase(settings, replica_id=f"replica-{len(databases)}")

    def opener() -> OnceLedger:
        databases.append(make())
        return OnceLedger(databases[-1])

    yield opener
    for db in databases:
        db.close()


def test_a_value_is_claimed_once_across_handles(open_ledger: OpenLedger) -> None:
    first, second = open_ledger(), open_ledger()
    assert first.claim("pk", "jti-1", 200.0, now=100.0)
    assert not second.claim("pk", "jti-1", 200.0, now=101.0)
    assert not first.claim("pk", "jti-1", 200.0, now=102.0)
    assert second.claim("other-deployment", "jti-1", 200.0, now=102.0)  # scopes apart
    assert second.claim("pk", "jti-2", 200.0, now=102.0)


def test_an_expired_value_is_no_replay_and_purged(open_ledger: OpenLedger) -> None:
    first, second = open_ledger(), open_ledger()
    skew = CLOCK_SKEW_MARGIN  # rows outlive their expiry by this much (clocks differ)
    assert first.claim("pk", "old", 110.0, now=100.0)
    assert not second.claim("pk", "old", 300.0, now=110.0 + skew)  # within the margin: held
    assert second.claim("pk", "old", 300.0, now=120.0 + skew)  # past it: taken over
    assert not first.claim("pk", "old", 300.0, now=130.0 + skew)  # and held again until 300
    # The once-a-minute purge removes rows whose time (and margin) is over and only those.
    assert first.claim("pk", "fresh", 1000.0, now=200.0 + skew)
    with first.db.read() as cur:
        count = cur.execute("SELECT count(*) FROM used_once").fetchone()
    assert count is not None and count[0] == 2  # "old" and "fresh"
    ledger = open_ledger()
    assert ledger.claim("pk", "newer", 2000.0, now=400.0 + skew)  # its first claim purges
    with ledger.db.read() as cur:
        rows = cur.execute("SELECT value FROM used_once ORDER BY value").fetchall()
    assert [r[0] for r in rows] == ["fresh", "newer"]


def test_a_replay_to_another_replica_is_refused(pg_state: Callable[..., PostgresStateSettings],
                                                tmp_path: Path) -> None:  # fmt: skip
    """Two replicas (own data directories, one shared PostgreSQL): the assertion accepted
    by the first is refused by the second."""
    settings = pg_state()
    replica_1 = PostgresDatabase(settings, replica_id="replica-1")
    replica_2 = PostgresDatabase(settings, replica_id="replica-2")
    try:
        (tmp_path / "r1").mkdir()
        (tmp_path / "r2").mkdir()
        config_1: LockgateConfig = _config(tmp_path / "r1")
        config_2: LockgateConfig = _config(tmp_path / "r2")
        verifier_1 = AssertionVerifier(config_1, ledger=OnceLedger(replica_1))
        verifier_2 = AssertionVerifier(config_2, ledger=OnceLedger(replica_2))
        used = _assertion(uuid.uuid4().hex)
        assert verifier_1.verify(used) == "pk"
        with pytest.raises(AuthenticationError) as caught:
            verifier_2.verify(used)
        assert caught.value.reason == "replayed"
        assert verifier_2.verify(_assertion()) == "pk"
        assert not (tmp_path / "r2" / "assertions.db").exists()  # nothing local on a replica
    finally:
        replica_1.close()
        replica_2.close()


def test_an_unreachable_ledger_fails_closed(
    pg_state: Callable[..., PostgresStateSettings], tmp_path: Path
) -> None:
    settings = pg_state(dsn=pg_state().dsn.replace("lockgate_state_", "no_such_db_"))
    db = PostgresDatabase(settings.model_copy(update={"connect_timeout": 1}), replica_id="r")
    try:
        with pytest.raises(LedgerUnavailable):
            OnceLedger(db)
    finally:
        db.close()
    ledger = OnceLedger(tmp_path / "assertions.db")
    ledger.close()
    verifier = AssertionVerifier(_config(tmp_path), ledger=ledger)  # closed: cannot answer
    with pytest.raises(AuthenticationError) as caught:
        verifier.verify(_assertion())
    assert caught.value.reason == "replay_check_unavailable"


def test_a_ledger_file_is_the_gateway_users_alone(tmp_path: Path) -> None:
    OnceLedger(tmp_path / "sub" / "assertions.db").close()
    assert (tmp_path / "sub" / "assertions.db").stat().st_mode & 0o077 == 0


def test_migrate_on_start_false_refuses_an_old_schema(
    pg_state: Callable[..., PostgresStateSettings],
) -> None:
    """``migrate_on_start: false``: the ledger opens only on a schema `lockgate db upgrade`
    made current, and says so."""
    settings = pg_state(migrate_on_start=False)
    db = PostgresDatabase(settings, replica_id="replica-1")
    try:
        with pytest.raises(StoreUnavailable, match="lockgate db upgrade"):
            OnceLedger(db)
        OnceLedger(db, migrate_schema=True)  # what the upgrade does
        assert OnceLedger(db).claim("pk", "jti", 200.0, now=100.0)
    finally:
        db.close()


def test_two_replicas_states_share_the_ledger(
    pg_state: Callable[..., PostgresStateSettings],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Two gateways' States on one PostgreSQL server (own data directories and replica
    ids, one master key): an assertion accepted by one is a replay to the other."""

    def config_for(data: Path) -> dict[str, Any]:
        return _config(data).model_dump(mode="json", include={"issuer", "deployments", "resources"})

    with replica_states(pg_state(), tmp_path, monkeypatch, config_for) as states:
        verifiers = [
            AssertionVerifier(s.config, ledger=OnceLedger(s.database("assertions"))) for s in states
        ]
        used = _assertion()
        assert verifiers[0].verify(used) == "pk"
        with pytest.raises(AuthenticationError) as caught:
            verifiers[1].verify(used)
        assert caught.value.reason == "replayed"
        assert [s.replica_id for s in states] == ["replica-1", "replica-2"]
