"""Attack on the staleness bound through the one door the gateway never sees again: a
dynamic database role (``POST /v1/db-role``), a login the task uses straight against the
upstream cluster.

Past ``max_staleness`` without PostgreSQL, a replica may miss any revocation or block made
on another replica. Every request through the gateway is then refused
(``shared_state_stale``); a role it handed out is a login it can no longer revoke in time,
so failing closed means dropping it. Here: a real gateway on shared state, the fake
Cassandra node, the shared PostgreSQL stopped.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import os
import time
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest
import yaml

from lockgate.config import load_config
from lockgate.demo.standins.cqlserver import start_cql_server
from lockgate.server import Gateway
from tests.gateway.cql.engine_stack import (
    POLICY,
    SCHEMA,
    UPSTREAM_PASSWORD,
    UPSTREAM_USER,
    run_on_fake,
)
from tests.gateway.cql.test_dynamic_roles_e2e import CONFIG, EXTRA_POLICY, Stack
from tests.gateway.role_route import DEPLOYMENT_SECRET
from tests.pgserver import PgServer
from tests.pgserver.fixtures import PgServerFactory
from tests.pgserver.state import shared_state_settings

MAX_STALENESS = 2.0


@pytest.fixture
async def shared_stack(
    tmp_path: Path, pg_server_factory: PgServerFactory, monkeypatch: pytest.MonkeyPatch
) -> AsyncIterator[tuple[Stack, PgServer]]:
    server = pg_server_factory()
    settings = shared_state_settings(
        server, tmp_path / "pg", max_staleness=MAX_STALENESS, catch_up_interval=0.5
    )
    monkeypatch.setenv("LOCKGATE_MASTER_KEY", base64.b64encode(os.urandom(32)).decode())
    fake = await start_cql_server(
        users={"cassandra": "cassandra", UPSTREAM_USER: UPSTREAM_PASSWORD},
        superusers=("cassandra", UPSTREAM_USER),
    )
    for text in SCHEMA:
        run_on_fake(fake, text)
    (tmp_path / "policies").mkdir()
    (tmp_path / "policies" / "team.yaml").write_text(POLICY)
    (tmp_path / "policies" / "extra.yaml").write_text(EXTRA_POLICY)
    sha = hashlib.sha256(DEPLOYMENT_SECRET.encode()).hexdigest()
    state = {
        "state": {
            "postgresql": {
                "dsn": settings.dsn,
                "password_file": str(settings.password_file),
                "connect_timeout": 1,
                "statement_timeout": 2,
                "catch_up_interval": 0.5,
                "max_staleness": MAX_STALENESS,
                "replica_id": "r1",
            }
        }
    }
    cfg = tmp_path / "lockgate.yaml"
    cfg.write_text(
        CONFIG.format(data=tmp_path / "data", live=fake.port, sha=sha) + yaml.safe_dump(state)
    )
    gw = Gateway(load_config(cfg))
    gw.state.credentials.set("cass-pw", UPSTREAM_PASSWORD)
    gw.db_role_sweep_interval = 0.2
    await gw.start()
    http = aiohttp.ClientSession()
    try:
        yield Stack(gw, fake, http, tmp_path / "data"), server
    finally:
        await http.close()
        await gw.stop()
        await fake.close()


@pytest.mark.slow
async def test_roles_of_a_replica_past_its_staleness_bound_are_dropped(
    shared_stack: tuple[Stack, PgServer],
) -> None:
    """The replica cannot learn that another replica revoked the role's token or blocked
    its DAG, and the task's traffic never passes through it: past the bound the role must
    go (the gateway refuses everything else by then)."""
    stack, server = shared_stack
    role = await stack.role()
    assert role["username"] in stack.fake.store.roles
    server.stop()  # the shared state goes away; the upstream node does not
    deadline = time.monotonic() + 15
    while stack.gw.state.stale_for() <= MAX_STALENESS:
        assert time.monotonic() < deadline, "never went stale"
        await asyncio.sleep(0.1)
    await asyncio.sleep(2.0)  # ten sweeps, a few revocation ticks
    assert role["username"] not in stack.fake.store.roles, (
        f"stale for {stack.gw.state.stale_for():.1f} s, the role still logs in upstream"
    )
