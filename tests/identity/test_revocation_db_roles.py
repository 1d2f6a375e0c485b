"""A revocation or block made by the CLI drops the dynamic database roles it covers at once.

A dynamic role is a login the task uses straight against the cluster, so the gateway never
sees its traffic: the role itself must go. The CLI writes from another connection, the
gateway learns it at its next revocation refresh and drops the role then, not at the next
periodic sweep (left at its 15 s default here so the difference shows).
"""

from __future__ import annotations

import asyncio
import hashlib
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from lockgate.cli import main
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
from tests.gateway.cql.test_dynamic_roles_e2e import (
    CONFIG,
    DEPLOYMENT_SECRET,
    EXTRA_POLICY,
    Stack,
    coords,
)


@pytest.fixture
async def stack(tmp_path: Path) -> AsyncIterator[Stack]:
    import aiohttp

    fake = await start_cql_server(
        users={"cassandra": "cassandra", UPSTREAM_USER: UPSTREAM_PASSWORD},
        superusers=("cassandra", UPSTREAM_USER),
    )
    for text in SCHEMA:
        run_on_fake(fake, text)
    (tmp_path / "policies").mkdir()
    (tmp_path / "policies" / "team.yaml").write_text(POLICY)
    (tmp_path / "policies" / "extra.yaml").write_text(EXTRA_POLICY)
    cfg = tmp_path / "lockgate.yaml"
    sha = hashlib.sha256(DEPLOYMENT_SECRET.encode()).hexdigest()
    cfg.write_text(CONFIG.format(data=tmp_path / "data", live=fake.port, sha=sha))
    gw = Gateway(load_config(cfg))
    gw.state.credentials.set("cass-pw", UPSTREAM_PASSWORD)
    assert gw.db_role_sweep_interval >= 15  # the periodic sweep is not what drops it here
    await gw.start()
    http = aiohttp.ClientSession()
    try:
        yield Stack(gw, fake, http, tmp_path / "data")
    finally:
        await http.close()
        await gw.stop()
        await fake.close()


async def gone_within(stack: Stack, username: str, limit: float) -> float:
    start = time.monotonic()
    while username in stack.fake.store.roles:
        assert time.monotonic() - start < limit, f"role {username} still exists after {limit}s"
        await asyncio.sleep(0.02)
    return time.monotonic() - start


async def test_a_cli_block_drops_the_dags_roles_and_refuses_new_ones(stack: Stack) -> None:
    role = await stack.role(try_number=1)
    assert role["username"] in stack.fake.store.roles
    config = str(stack.data.parent / "lockgate.yaml")
    code = await asyncio.to_thread(
        main, ["-c", config, "token", "revoke", "--dag", "etl", "--block", "--reason", "inc 7"]
    )
    assert code == 0
    assert await gone_within(stack, role["username"], 1.0) < 1.0
    status, body = await stack.post("/v1/db-role", **coords(try_number=2))
    assert status == 403 and body["reason"].startswith("DAG etl is blocked by operator ")
    assert not [r for r in stack.fake.store.roles if r.startswith("lg_")]


async def test_a_cli_revocation_drops_the_role_within_a_second(stack: Stack) -> None:
    role = await stack.role(try_number=5)
    config = str(stack.data.parent / "lockgate.yaml")
    code = await asyncio.to_thread(main, ["-c", config, "token", "revoke", "--dag", "etl"])
    assert code == 0
    assert await gone_within(stack, role["username"], 1.0) < 1.0
