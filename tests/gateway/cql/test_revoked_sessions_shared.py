"""On shared state (PostgreSQL), a revocation written by another replica closes this
gateway's open CQL connections of the revoked token within a second: the change arrives by
LISTEN/NOTIFY (or the catch-up poll), the revocations reload off the loop, the engine ends
the sessions. One gateway and a second State handle (replica ``r2``) on one database."""

from __future__ import annotations

import asyncio
import base64
import os
import random
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import yaml

from lockgate.config import load_config
from lockgate.demo.standins.cqlserver import start_cql_server
from lockgate.server import Gateway
from lockgate.state import State
from tests.pgserver import PgServer
from tests.pgserver.state import shared_state_settings

from .engine_stack import (
    CONFIG,
    POLICY,
    SCHEMA,
    UPSTREAM_PASSWORD,
    UPSTREAM_USER,
    Stack,
    dead_port,
    run_on_fake,
)
from .test_revoked_sessions import WITHIN, _jti, _logged_in


def _shared(settings_dsn: str, password_file: Path, replica: str) -> dict[str, object]:
    return {
        "postgresql": {
            "dsn": settings_dsn,
            "password_file": str(password_file),
            "connect_timeout": 2,
            "statement_timeout": 5,
            "catch_up_interval": 1,
            "replica_id": replica,
        }
    }


@pytest.fixture
async def shared(
    tmp_path: Path, pg_server: PgServer, monkeypatch: pytest.MonkeyPatch
) -> AsyncIterator[tuple[Stack, State]]:
    settings = shared_state_settings(pg_server, tmp_path / "pg")
    assert settings.password_file is not None
    monkeypatch.setenv("LOCKGATE_MASTER_KEY", base64.b64encode(os.urandom(32)).decode())
    fake = await start_cql_server(
        users={"cassandra": "cassandra", UPSTREAM_USER: UPSTREAM_PASSWORD},
        superusers=("cassandra", UPSTREAM_USER),
    )
    for text in SCHEMA:
        run_on_fake(fake, text)
    (tmp_path / "policies").mkdir()
    (tmp_path / "policies" / "team.yaml").write_text(POLICY)
    text = CONFIG.format(data=tmp_path / "data", dead=dead_port(), live=fake.port)
    state = _shared(settings.dsn, settings.password_file, "r1")
    (tmp_path / "lockgate.yaml").write_text(text + yaml.safe_dump({"state": state}))
    other = _shared(settings.dsn, settings.password_file, "r2")
    (tmp_path / "other.yaml").write_text(
        text.replace(str(tmp_path / "data"), str(tmp_path / "data2"))
        + yaml.safe_dump({"state": other})
    )
    gw = Gateway(load_config(tmp_path / "lockgate.yaml"))
    gw.state.credentials.set("cass-pw", UPSTREAM_PASSWORD)
    await gw.start()
    replica = State(load_config(tmp_path / "other.yaml"))
    try:
        yield Stack(gw, fake, gw.cql_port), replica
    finally:
        replica.close()
        await gw.stop()
        await fake.close()


async def test_a_revocation_on_another_replica_closes_the_session_here(
    shared: tuple[Stack, State],
) -> None:
    stack, replica = shared
    token, other_token = stack.token(), stack.token()
    revoked, kept = await _logged_in(stack, token), await _logged_in(stack, other_token)
    try:
        t0 = time.monotonic()
        replica.revocations.revoke_jti(_jti(token), time.time() + 900, "test")
        assert await revoked.closed(timeout=5.0)
        took = time.monotonic() - t0
        assert took < WITHIN, f"connection closed {took:.3f}s after the revocation"
        assert not await kept.closed(timeout=0.3)
    finally:
        revoked.close()
        kept.close()
    ended = [r for r in stack.audit("session_ended") if r.reason == "token_revoked"]
    assert [r.principal for r in ended] == ["airflow:prod/etl/load"]


@pytest.mark.slow
async def test_session_end_latency_across_replicas_over_a_hundred_revocations(
    shared: tuple[Stack, State],
) -> None:
    """p50/p99 of a revocation on another replica -> connection closed here."""
    stack, replica = shared
    took = []
    for _ in range(100):
        token = stack.token()
        client = await _logged_in(stack, token)
        try:
            await asyncio.sleep(random.uniform(0, 0.2))  # not in step with the tick
            t0 = time.monotonic()
            replica.revocations.revoke_jti(_jti(token), time.time() + 900, "test")
            assert await client.closed(timeout=5.0)
            took.append(time.monotonic() - t0)
        finally:
            client.close()
    took.sort()
    p50, p99 = took[49], took[98]
    print(f"cql session end, revoked on another replica: p50 {p50 * 1000:.0f} ms, "
          f"p99 {p99 * 1000:.0f} ms")  # fmt: skip
    assert p99 < WITHIN
