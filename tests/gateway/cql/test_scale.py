"""500 authenticated client connections held through one gateway process, with bounded memory.

The gateway and the fake node run in their own processes (:mod:`.process_stack`), so the
resident memory read from /proc is the gateway's alone. Clients are raw asyncio sockets
speaking the v4 handshake (a driver Cluster per connection would cost far more here).
Each connection logs in with a token, runs one statement, and stays open until all 500 are
up; then the gateway's RSS growth is measured, the connections are shown to be still alive,
and all are closed.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import pytest

from lockgate.gateway.cql import codec

from .engine_stack import RawClient
from .process_stack import ProcessStack, raise_fd_limit, start_process_stack

CONNECTIONS = 500
MAX_RSS_GROWTH = 150 * 1024 * 1024
OPEN_AT_ONCE = 50  # handshakes in flight at a time; the node sees ~this many logins at once


@pytest.fixture
def procs(tmp_path: Path) -> Iterator[ProcessStack]:
    if raise_fd_limit() < 4 * CONNECTIONS:
        pytest.skip(f"RLIMIT_NOFILE too low for {CONNECTIONS} connections")
    with start_process_stack(tmp_path) as stack:
        yield stack


async def _open(port: int, token: str, n: int, gate: asyncio.Semaphore) -> RawClient:
    async with gate:
        client = await RawClient.open(port)
        answer = await client.login(token)
        assert isinstance(answer, codec.AuthSuccess), answer
        client.send(codec.Query(stream=7, query=f"INSERT INTO ks.kv (k, v) VALUES ({n:d}, 'x')"))  # noqa: S608
        result = await client.recv(10.0)
        assert isinstance(result, codec.Result) and result.stream == 7, result
        return client


async def _select(client: RawClient, n: int) -> codec.Event | None:
    client.send(codec.Query(stream=9, query=f"SELECT v FROM ks.kv WHERE k = {n:d}"))  # noqa: S608
    return await client.recv(10.0)


@pytest.mark.slow
async def test_500_connections_held_with_bounded_gateway_memory(procs: ProcessStack) -> None:
    token = procs.token("etl")
    gate = asyncio.Semaphore(OPEN_AT_ONCE)
    # Warm up (imports, caches, the first audit writes) before the baseline.
    warm = [await _open(procs.cql_port, token, -1 - i, gate) for i in range(5)]
    for c in warm:
        c.close()
    await asyncio.sleep(0.3)
    before = procs.gateway_rss()

    clients: list[RawClient] = []
    try:
        opened = await asyncio.gather(
            *(_open(procs.cql_port, token, n, gate) for n in range(CONNECTIONS)),
            return_exceptions=True,
        )
        clients = [c for c in opened if isinstance(c, RawClient)]
        errors = [e for e in opened if not isinstance(e, RawClient)]
        assert not errors, f"{len(errors)} connections failed, first: {errors[0]!r}"
        await asyncio.sleep(0.5)  # let the gateway settle (audit batches, buffers)
        held = procs.gateway_rss()
        growth = held - before
        print(
            f"\n{CONNECTIONS} connections: gateway RSS {before / 2**20:.1f} MiB -> "
            f"{held / 2**20:.1f} MiB (+{growth / 2**20:.1f} MiB, "
            f"{growth / CONNECTIONS / 1024:.0f} KiB per connection)"
        )
        assert growth < MAX_RSS_GROWTH

        # Every held connection still works, and reads what it wrote.
        answers = await asyncio.gather(*(_select(c, n) for n, c in enumerate(clients)))
        assert all(isinstance(a, codec.Rows) and len(a.rows) == 1 for a in answers)
        # A denied statement on one of them is refused without disturbing the others.
        clients[0].send(codec.Query(stream=11, query="DROP TABLE ks.kv"))
        denied = await clients[0].recv(10.0)
        assert isinstance(denied, codec.Error) and denied.code == codec.ERR_UNAUTHORIZED
    finally:
        for c in clients:
            c.close()
    assert procs.gateway.poll() is None, "the gateway process died"
