"""The console's read pool: its own threads (never the default executor the engines share),
bounded (a page waits a moment for a reader, then is told to retry), a slot held until the
thread is done even when the page went away, one pool per app, and a reader of the trail
opened and closed in the pool's thread."""

from __future__ import annotations

import asyncio
import threading
from dataclasses import dataclass
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from lockgate.audit import AuditQuery
from lockgate.console.reads import READS, Reads, install, read_trail, reads_of, run_read
from lockgate.console.web import ConsoleContext

from ._views import views_app


@dataclass
class Busy:
    """A read holding a reader of ``reads`` until :attr:`release` is set."""

    release: threading.Event
    first: asyncio.Future[str]


async def busy(reads: Reads) -> Busy:
    """Start a read that blocks its thread, once it runs."""
    started, release = threading.Event(), threading.Event()

    def slow() -> str:
        started.set()
        release.wait(10)
        return threading.current_thread().name

    first = asyncio.ensure_future(reads.run(slow))
    assert await asyncio.to_thread(started.wait, 10)
    return Busy(release, first)


async def test_a_read_runs_in_the_consoles_threads() -> None:
    reads = Reads(readers=2)
    name = await reads.run(lambda: threading.current_thread().name)
    assert name.startswith("console-read")
    assert await reads.run(divmod, 7, 2) == (3, 1)
    assert await reads.run(int, "ff", base=16) == 255
    assert reads.running == 0
    await reads.close()


async def test_past_its_readers_a_page_waits_then_is_told_to_retry() -> None:
    reads = Reads(readers=1, wait=0.05, retry_after=7)
    held = await busy(reads)
    with pytest.raises(web.HTTPServiceUnavailable) as refused:
        await reads.run(lambda: None)
    assert refused.value.headers["Retry-After"] == "7"
    held.release.set()
    assert (await held.first).startswith("console-read")
    # the slot is free again: the next read runs
    assert await reads.run(lambda: 42) == 42
    assert reads.running == 0
    await reads.close()


async def test_a_waiting_page_gets_the_reader_freed_within_its_wait() -> None:
    reads = Reads(readers=1, wait=10)
    held = await busy(reads)
    second = asyncio.ensure_future(reads.run(lambda: "second"))
    await asyncio.sleep(0.05)
    assert not second.done()
    held.release.set()
    assert await second == "second"
    await held.first
    await reads.close()


async def test_a_page_that_went_away_holds_its_reader_until_the_thread_is_done() -> None:
    reads = Reads(readers=1, wait=0.05)
    held = await busy(reads)
    held.first.cancel()
    await asyncio.sleep(0.01)
    assert reads.running == 1  # the thread still reads: no second read may start beside it
    with pytest.raises(web.HTTPServiceUnavailable):
        await reads.run(lambda: None)
    held.release.set()
    for _ in range(200):
        if reads.running == 0:
            break
        await asyncio.sleep(0.01)
    assert reads.running == 0
    await reads.close()


async def test_a_closed_pool_refuses_and_signals_its_reads_to_stop() -> None:
    reads = Reads()
    await reads.close()
    assert reads.closing.is_set()
    with pytest.raises(web.HTTPServiceUnavailable):
        await reads.run(lambda: None)


def test_readers_must_be_at_least_one() -> None:
    with pytest.raises(ValueError):
        Reads(readers=0)


def test_install_keeps_the_first_pool_and_stops_it_on_cleanup() -> None:
    app = web.Application()
    first = install(app)
    assert install(app) is first and install(app, Reads()) is first
    assert app[READS] is first
    assert first.close in app.on_cleanup


async def test_read_trail_opens_a_reader_in_the_pool_and_closes_it() -> None:
    opened: list[str] = []
    closed: list[str] = []

    class Reader:
        def __enter__(self) -> Reader:
            opened.append(threading.current_thread().name)
            return self

        def __exit__(self, *_: object) -> None:
            closed.append(threading.current_thread().name)

        def count(self, q: AuditQuery) -> int:
            return 3 if q.dag == "etl" else 0

    def unused(*_: object) -> Any:
        raise AssertionError("not used")

    ctx = ConsoleContext(
        config=unused,  # type: ignore[arg-type]
        audit_reader=Reader,  # type: ignore[arg-type]
        audit=None,
        policy=unused,  # type: ignore[arg-type]
        revocations=unused,  # type: ignore[arg-type]
        credentials=unused,  # type: ignore[arg-type]
        database=unused,
    )

    async def counted(request: web.Request) -> web.Response:
        dags = await read_trail(request, lambda r: r.count(AuditQuery(dag="etl")))
        thread = await run_read(request, lambda: threading.current_thread().name)
        return web.Response(text=f"{dags} {thread} {reads_of(request).running}")

    def add_routes(app: web.Application) -> None:
        install(app)
        app.router.add_get("/counted", counted)

    async with TestClient(TestServer(views_app(ctx, add_routes))) as client:
        resp = await client.get("/console/counted")
        dags, thread, running = (await resp.text()).split()
    assert (dags, running) == ("3", "0")
    # without a request (a verification in the background): the same, on a pool of its own
    reads = Reads()
    assert await reads.read_trail(ctx, lambda r: r.count(AuditQuery(dag="x"))) == 0
    await reads.close()
    assert thread.startswith("console-read")
    assert opened == closed and opened[0].startswith("console-read")
