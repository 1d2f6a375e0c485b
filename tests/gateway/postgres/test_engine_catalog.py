"""The shared relation catalog: one read for a burst of logins, fresh again after DDL."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import psycopg
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


async def test_an_open_session_sees_a_table_created_outside_the_gateway(stack: PgStack) -> None:
    relations = stack.engine().ctx.relations
    relations.fresh_for = 0.3
    conn = await stack.connect()
    try:
        await conn.execute("SET search_path = sales")
        stack.upstream_psql(
            "CREATE TABLE sales.made_outside (id int);"
            f'GRANT ALL ON sales.made_outside TO "{stack.login}";'
        )
        await asyncio.sleep(0.4)  # the session's catalog has aged
        for _ in range(50):  # the first statement starts a background read; later ones adopt it
            try:
                cur = await conn.execute("SELECT count(*) FROM made_outside")
                break
            except psycopg.errors.InsufficientPrivilege:
                await asyncio.sleep(0.1)
        else:
            raise AssertionError("the new table never reached the open session")
        assert await cur.fetchall() == [(0,)]
    finally:
        await conn.close()


async def test_an_unreachable_server_is_not_asked_again_and_again(
    stack: PgStack, monkeypatch: pytest.MonkeyPatch
) -> None:
    relations = stack.engine().ctx.relations
    relations.fresh_for = 60.0
    attempts = 0

    async def refused(*args: object) -> object:
        nonlocal attempts
        attempts += 1
        raise OSError("unreachable")

    monkeypatch.setattr(catalog_mod.upstream, "connect", refused)
    relations.invalidate(RESOURCE)
    resource = stack.engine().ctx.resources[RESOURCE]
    for _ in range(20):
        relations.refresh_soon(resource, stack.engine().ctx.secrets)
        await asyncio.sleep(0.01)
    assert attempts == 1


async def test_a_read_on_demand_starts_after_it_is_asked_and_is_shared(
    stack: PgStack, monkeypatch: pytest.MonkeyPatch
) -> None:
    relations = stack.engine().ctx.relations
    resource = stack.engine().ctx.resources[RESOURCE]
    secrets = stack.engine().ctx.secrets
    stack.upstream_psql("CREATE TABLE other.made_later (id int);")
    catalog = await relations.read_now(resource, secrets)
    assert catalog is not None and "other" in catalog.schemas_of("made_later")
    assert relations.age(RESOURCE) is not None and relations.age(RESOURCE) < 5  # type: ignore[operator]
    reads = 0
    real = catalog_mod.read_catalog

    async def counted(*args: object) -> object:
        nonlocal reads
        reads += 1
        await asyncio.sleep(0.2)
        return await real(*args)  # type: ignore[arg-type]

    monkeypatch.setattr(catalog_mod, "read_catalog", counted)
    # The first caller starts a read; the others arrive while it runs, so it may predate
    # what they need: they share one more read, started after they asked.
    found = await asyncio.gather(*(relations.read_now(resource, secrets) for _ in range(5)))
    assert reads == 2
    assert all(c is not None for c in found) and found[1] is found[4]
    assert relations.cached(RESOURCE) is found[4]
