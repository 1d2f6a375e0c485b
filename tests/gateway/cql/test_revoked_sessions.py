"""A revocation closes the open CQL connections of the revoked token within a second, idle
ones included, whoever revoked it (here: another State over the same data_dir, the way
``lockgate token revoke`` does); the driver's reconnect with that token is refused, and
sessions of other tokens stay open. The real cassandra-driver and the fake node."""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import jwt
import pytest
from cassandra.cluster import NoHostAvailable, Session  # type: ignore[import-untyped]

from lockgate.gateway.cql import codec, upstream
from lockgate.state import State

from .engine_stack import RESOURCE, RawClient, Stack, connect, stack_fixture

#: The bound the gateway promises (the revocation tick is 0.2 s).
WITHIN = 1.0


@pytest.fixture
async def stack(tmp_path: Path) -> AsyncIterator[Stack]:
    async for s in stack_fixture(tmp_path):
        yield s


@pytest.fixture
def cli_state(stack: Stack) -> State:
    """A second handle on the gateway's state, as the CLI opens it."""
    return State(stack.gw.config)


def _jti(token: str) -> str:
    return str(jwt.decode(token, options={"verify_signature": False})["jti"])


async def _logged_in(stack: Stack, token: str) -> RawClient:
    client = await RawClient.open(stack.port)
    assert isinstance(await client.login(token), codec.AuthSuccess)
    return client


def _count(session: Session) -> int:
    return int(session.execute("SELECT count(*) FROM ks.orders").one()[0])


async def test_an_idle_connection_of_a_revoked_token_closes_within_a_second(
    stack: Stack, cli_state: State
) -> None:
    token, other_token = stack.token(), stack.token()
    revoked, kept = await _logged_in(stack, token), await _logged_in(stack, other_token)
    try:
        assert stack.fake.connections == 2  # one upstream connection per client connection
        t0 = time.monotonic()
        cli_state.revocations.revoke_jti(_jti(token), time.time() + 900, "test")
        assert await revoked.closed(timeout=5.0)
        took = time.monotonic() - t0
        assert took < WITHIN, f"connection closed {took:.3f}s after the revocation"
        for _ in range(100):  # its upstream connection is closed too
            if stack.fake.connections == 1:
                break
            await asyncio.sleep(0.01)
        assert stack.fake.connections == 1
        # The other token's connection goes on.
        kept.send(codec.Query(stream=7, query="SELECT * FROM ks.orders"))
        assert isinstance(await kept.recv(), codec.Result)
        # The revoked token cannot log in again.
        again = await RawClient.open(stack.port)
        try:
            refusal = await again.login(token)
            assert isinstance(refusal, codec.Error) and "revoked" in refusal.message
        finally:
            again.close()
    finally:
        revoked.close()
        kept.close()
        cli_state.close()
    ended = [r for r in stack.audit("session_ended") if r.reason == "token_revoked"]
    assert len(ended) == 1
    assert (ended[0].principal, ended[0].resource, ended[0].action) == (
        "airflow:prod/etl/load",
        RESOURCE,
        "connect",
    )


async def test_the_driver_loses_its_connections_and_its_reconnect_is_refused(
    stack: Stack, cli_state: State
) -> None:
    token = stack.token()
    session = await asyncio.to_thread(connect, stack.port, token)
    other = await asyncio.to_thread(connect, stack.port, stack.token("ops"))
    try:
        assert await asyncio.to_thread(_count, session) == 0
        t0 = time.monotonic()
        cli_state.revocations.revoke_jti(_jti(token), time.time() + 900, "test")
        for _ in range(100):  # every connection of the driver (control one and pool) ended
            ended = [r for r in stack.audit("session_ended") if r.reason == "token_revoked"]
            if len(ended) >= 2:
                break
            await asyncio.sleep(0.02)
        took = time.monotonic() - t0
        assert len(ended) >= 2 and took < WITHIN, f"{len(ended)} ended in {took:.3f}s"
        with pytest.raises(NoHostAvailable):
            await asyncio.to_thread(_count, session)
        for _ in range(200):  # the driver reconnects on its own: refused, the token is revoked
            refused = [r for r in stack.audit("auth_failed") if r.reason == "revoked"]
            if refused:
                break
            await asyncio.sleep(0.05)
        assert refused and refused[-1].principal == "airflow:prod/etl/load"
        with pytest.raises(NoHostAvailable):
            await asyncio.to_thread(_count, session)
        assert await asyncio.to_thread(_count, other) == 0  # another token's session goes on
    finally:
        await asyncio.to_thread(session.cluster.shutdown)
        await asyncio.to_thread(other.cluster.shutdown)
        cli_state.close()


async def test_a_dag_block_closes_that_dags_connections_and_no_other(
    stack: Stack, cli_state: State
) -> None:
    blocked, kept = (
        await _logged_in(stack, stack.token()),
        await _logged_in(stack, stack.token("ops")),
    )
    try:
        t0 = time.monotonic()
        cli_state.revocations.block("prod", "etl", by="test", reason="kill switch")
        assert await blocked.closed(timeout=5.0)
        assert time.monotonic() - t0 < WITHIN
        kept.send(codec.Query(stream=7, query="SELECT * FROM ks.orders"))
        assert isinstance(await kept.recv(), codec.Result)
    finally:
        blocked.close()
        kept.close()
        cli_state.close()
    ended = [r for r in stack.audit("session_ended") if r.reason == "token_revoked"]
    assert [r.principal for r in ended] == ["airflow:prod/etl/load"]


@pytest.mark.slow
async def test_session_end_latency_over_a_hundred_revocations(
    stack: Stack, cli_state: State
) -> None:
    """p50/p99 of revocation -> connection closed, one idle connection per revocation."""
    took = []
    try:
        for _ in range(100):
            token = stack.token()
            client = await _logged_in(stack, token)
            try:
                await asyncio.sleep(random.uniform(0, 0.2))  # not in step with the tick
                t0 = time.monotonic()
                cli_state.revocations.revoke_jti(_jti(token), time.time() + 900, "test")
                assert await client.closed(timeout=5.0)
                took.append(time.monotonic() - t0)
            finally:
                client.close()
    finally:
        cli_state.close()
    took.sort()
    p50, p99 = took[49], took[98]
    print(f"cql session end after revocation: p50 {p50 * 1000:.0f} ms, p99 {p99 * 1000:.0f} ms")
    assert p99 < WITHIN


async def test_a_login_the_revocation_lands_during_is_refused(
    stack: Stack, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The token verified, then the revocation reloads while the login awaits its upstream
    connection: the engine ends only sessions logged in, so the login checks again."""
    token = stack.token()
    connect_upstream = upstream.connect

    async def revoked_meanwhile(*args: Any, **kwargs: Any) -> upstream.UpstreamLink:
        link = await connect_upstream(*args, **kwargs)
        stack.gw.state.revocations.revoke_jti(_jti(token), time.time() + 900, "test")
        return link

    monkeypatch.setattr(upstream, "connect", revoked_meanwhile)
    client = await RawClient.open(stack.port)
    try:
        refusal = await client.login(token)
        assert isinstance(refusal, codec.Error) and "revoked" in refusal.message
    finally:
        client.close()
    refused = [r for r in stack.audit("auth_failed") if r.reason == "revoked"]
    assert refused and refused[-1].principal == "airflow:prod/etl/load"
