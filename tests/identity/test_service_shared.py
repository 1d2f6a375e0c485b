"""The token service with shared state: database calls off the event loop, a database out of
reach refuses (audited) instead of erring, and a stale replica mints nothing."""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

import pytest

from lockgate.config import PostgresStateSettings
from lockgate.errors import StoreUnavailable
from lockgate.identity import OAuthError, RevocationStore
from lockgate.identity.staleness import STALE_REASON, StalenessBound
from lockgate.store import PostgresDatabase

from . import test_service
from .test_service import SECRET, Env, assertion, pk_body

service_env = test_service.env  # the token service fixture, under the name the tests ask for

AUTH = {"client_id": "prod", "client_secret": SECRET}


class _UnreachableFor:
    """A database last reached ``seconds`` ago (all a staleness bound asks of it)."""

    dialect = "postgresql"

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds

    def stale_for(self) -> float:
        return self.seconds


def _stale_service(env: Env, seconds: float, bound: float = 30) -> None:
    database: Any = _UnreachableFor(seconds)
    env.service._client_auth._staleness = StalenessBound(database, bound)


async def test_a_stale_replica_mints_nothing_and_says_why(service_env: Env) -> None:
    _stale_service(service_env, 41)
    status, body = await service_env.token()
    assert status == 503 and body["error"] == "temporarily_unavailable"
    assert body["error_description"] == (
        "shared state (PostgreSQL) unreachable for 41 s; decisions stop after max_staleness 30 s"
    )
    kind, fields = service_env.events[-1]
    assert kind == "token_denied" and fields["reason"] == STALE_REASON and fields["status"] == 503


async def test_within_the_bound_tokens_are_minted(service_env: Env) -> None:
    _stale_service(service_env, 12)
    status, body = await service_env.token()
    assert status == 200 and body["access_token"]


async def test_a_revocation_the_database_does_not_take_is_refused_and_audited(
    service_env: Env, monkeypatch: pytest.MonkeyPatch
) -> None:
    def unreachable(*_args: object, **_kwargs: object) -> None:
        raise StoreUnavailable("PostgreSQL db:5432/lockgate: no connection within 5 s")

    monkeypatch.setattr(service_env.revocations, "revoke_dag", unreachable)
    status, body = await service_env.post("/v1/revoke", {**AUTH, "dag_id": "finance_daily"})
    assert status == 503 and body["error"] == "temporarily_unavailable"
    assert "5432" not in body["error_description"]  # the database's name stays in the logs
    kind, fields = service_env.events[-1]
    assert kind == "token_denied" and fields["reason"] == "shared_state_unavailable"
    assert fields["deployment"] == "prod" and fields["dag_id"] == "finance_daily"


async def test_writes_to_a_shared_database_leave_the_event_loop(
    service_env: Env,
    pg_state: Callable[..., PostgresStateSettings],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    db = PostgresDatabase(pg_state(), replica_id="r1")
    try:
        shared = RevocationStore(db)
        monkeypatch.setattr(service_env.service, "revocations", shared)
        threads: list[str] = []
        real = shared.block

        def block(*args: Any, **kwargs: Any) -> Any:
            threads.append(threading.current_thread().name)
            return real(*args, **kwargs)

        monkeypatch.setattr(shared, "block", block)
        status, body = await service_env.post(
            "/v1/revoke", {**AUTH, "dag_id": "finance_daily", "block": "true"}
        )
        assert (status, body) == (200, {"revoked": "block"})
        assert threads and threads[0] != threading.current_thread().name
        assert shared.blocked("prod", "finance_daily") is not None
        status, body = await service_env.token()  # the mint re-reads blocks, off the loop too
        assert (
            status == 403
            and "DAG finance_daily of deployment prod is blocked" in body["error_description"]
        )
    finally:
        db.close()


async def test_a_stale_replica_serves_no_deployment_door(service_env: Env) -> None:
    _stale_service(service_env, 31)
    status, body = await service_env.post("/v1/revoke", {**AUTH, "dag_id": "finance_daily"})
    assert status == 503 and body["error_description"].startswith("shared state (PostgreSQL)")
    with pytest.raises(OAuthError) as refused:  # what catalog, poll token and the rest call
        await service_env.service.authenticate(AUTH, None)
    assert refused.value.reason == STALE_REASON


async def test_a_replay_ledger_that_cannot_answer_is_our_failure_not_the_clients(
    service_env: Env, monkeypatch: pytest.MonkeyPatch
) -> None:
    def unreachable(*_args: object) -> bool:
        raise StoreUnavailable("PostgreSQL db:5432/lockgate: no connection within 5 s")

    monkeypatch.setattr(service_env.service._client_auth._assertions._ledger, "claim", unreachable)
    status, body = await service_env.post("/v1/token", pk_body(assertion()))
    assert status == 503 and body["error"] == "temporarily_unavailable"
    assert service_env.events[-1][1]["reason"] == "assertion_replay_check_unavailable"
