"""The shared relation catalog: one read for a burst of logins, fresh again after DDL."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from lockgate.gateway.postgres import catalog as catalog_mod
from tests.pgserver import PgServer

from .stack import RESOURCE, PgStack, pg_stack


@pytest.fixture
async def stack(tmp_path: Path, pg_server: PgServer) -> AsyncIterator[PgStack]:
    async with pg_stack(tmp_path, pg_server) as s:
        yield s


async def test_a_burst_of_logins_reads_the_catalog_once(
    stack: PgStack, monkeypatch: pytest.MonkeyPatch
) -> None:
    reads = 0
    real = catalog_mod.read_catalog

    async def counted(*args: object) -> object:
        nonlocal reads
        reads += 1
        await asyncio.sleep(0.2)  # long enough for the others to arrive meanwhile
        return await real(*args)  # type: ignore[arg-type]

    monkeypatch.setattr(catalog_mod, "read_catalog", counted)
    stack.engine().ctx.relations.invalidate(RESOURCE)
    conns = await asyncio.gather(*(stack.connect() for _ in range(10)))
    try:
        rows = await asyncio.gather(
            *(c.execute("SELECT count(*) FROM sales.orders") for c in conns)
        )
        assert [await r.fetchall() for r in rows] == [[(2,)]] * 10
    finally:
        await asyncio.gather(*(c.close() for c in conns))
    assert reads == 1
