"""The console's reads of the audit trail: one bounded pool for every page.

The console runs in the gateway's primary worker, whose default executor
(``asyncio.to_thread``) also serves the engines (the PostgreSQL judge, SCRAM, credential
reloads, quota billing, role leases). A page reading a month of records there would make
those wait, so every long read of the console runs here instead: in threads of the
console's own (:data:`READERS` of them), at most that many at once. A page asked for while
they are all busy waits :data:`WAIT_SECONDS` for one, then is answered 503 with
``Retry-After``: a burst of page loads cannot queue unbounded work behind the gateway.

A view reads through :func:`read_trail` (a reader opened in the pool, closed after) or
:func:`run_read` (any blocking call). :func:`install` puts one :class:`Reads` on the console
app and stops it when the app closes; it is idempotent, so every view module may call it in
its ``add_routes`` and they share the first one.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

from aiohttp import web

from lockgate.audit import AuditReader
from lockgate.console.web import ConsoleContext, context

#: Reads running at once (threads of the console's pool). Each holds the GIL for much of its
#: work, so more would slow the gateway's event loop on a small machine without reading more.
READERS = 3
#: How long a page waits for a free reader before it is told to retry.
WAIT_SECONDS = 2.0
#: What a refused page is told to wait before asking again (seconds).
RETRY_AFTER = 5

_T = TypeVar("_T")


class Reads:
    """A pool of ``readers`` threads, the slots that bound the reads running on it, and the
    signal (:attr:`closing`) a long read checks to stop when the console closes."""

    def __init__(
        self,
        readers: int = READERS,
        *,
        wait: float = WAIT_SECONDS,
        retry_after: int = RETRY_AFTER,
    ) -> None:
        if readers < 1:
            raise ValueError("readers must be at least 1")
        self.readers = readers
        self.wait = wait
        self.retry_after = retry_after
        self.closing = threading.Event()
        self._running = 0
        self._slots: asyncio.Semaphore | None = None
        self._pool: ThreadPoolExecutor | None = None

    @property
    def running(self) -> int:
        """Reads in the pool now (queued or running; a read whose page went away counts
        until its thread is done)."""
        return self._running

    async def run(self, fn: Callable[..., _T], *args: Any, **kwargs: Any) -> _T:
        """``fn(*args, **kwargs)`` in the pool; 503 when every reader stays busy for
        :attr:`wait` seconds or the console is closing."""
        if self.closing.is_set():
            raise self._refusal("the console is closing")
        if self._slots is None:
            self._slots = asyncio.Semaphore(self.readers)
        slots = self._slots
        try:
            await asyncio.wait_for(slots.acquire(), self.wait)
        except TimeoutError:
            raise self._refusal(f"{self._running} reads of the audit trail are running") from None
        self._running += 1
        loop = asyncio.get_running_loop()

        def free() -> None:
            self._running -= 1
            slots.release()

        if self._pool is None:
            self._pool = ThreadPoolExecutor(self.readers, thread_name_prefix="console-read")
        try:
            done = self._pool.submit(fn, *args, **kwargs)
        except RuntimeError:  # shut down between the check above and now
            free()
            raise self._refusal("the console is closing") from None
        # the slot is freed when the thread is done, not when this page stops waiting: a
        # read whose client went away still holds a thread until it ends
        done.add_done_callback(lambda _: _call_soon(loop, free))
        return await asyncio.wrap_future(done)

    async def read_trail(self, ctx: ConsoleContext, ask: Callable[[AuditReader], _T]) -> _T:
        """``ask(reader)`` in the pool over a reader of ``ctx``'s trail opened in the pool's
        thread and closed there (work without a request: a verification in the background)."""
        return await self.run(_with_reader, ctx, ask)

    def _refusal(self, why: str) -> web.HTTPServiceUnavailable:
        return web.HTTPServiceUnavailable(
            text=f"{why}: try again shortly",
            headers={"Retry-After": str(self.retry_after)},
        )

    async def close(self, _: web.Application | None = None) -> None:
        """Stop taking reads, tell running ones to stop, drop the queued ones."""
        self.closing.set()
        pool, self._pool = self._pool, None
        if pool is not None:
            pool.shutdown(wait=False, cancel_futures=True)


def _with_reader(ctx: ConsoleContext, ask: Callable[[AuditReader], _T]) -> _T:
    with ctx.audit_reader() as reader:
        return ask(reader)


def _call_soon(loop: asyncio.AbstractEventLoop, fn: Callable[[], None]) -> None:
    # a closed loop: nothing waits for the slot any more
    with contextlib.suppress(RuntimeError):
        loop.call_soon_threadsafe(fn)


READS: web.AppKey[Reads] = web.AppKey("lockgate_console_reads", Reads)


def install(app: web.Application, reads: Reads | None = None) -> Reads:
    """The app's :class:`Reads`: the one already there, else ``reads`` (a new one by
    default), stopped on the app's cleanup."""
    if READS in app:
        return app[READS]
    app[READS] = installed = reads or Reads()
    app.on_cleanup.append(installed.close)
    return installed


def reads_of(request: web.Request) -> Reads:
    """The console's pool (500 if no view installed it: a wiring mistake, not a load)."""
    return request.app[READS]


async def run_read(request: web.Request, fn: Callable[..., _T], *args: Any, **kwargs: Any) -> _T:
    """``fn(*args, **kwargs)`` (blocking) in the console's pool."""
    return await reads_of(request).run(fn, *args, **kwargs)


async def read_trail(request: web.Request, ask: Callable[[AuditReader], _T]) -> _T:
    """``ask(reader)`` in the console's pool, over a reader of the audit trail opened for it
    and closed after (see :meth:`Reads.read_trail`)."""
    return await reads_of(request).read_trail(context(request), ask)


__all__ = [
    "READERS",
    "READS",
    "RETRY_AFTER",
    "WAIT_SECONDS",
    "Reads",
    "install",
    "read_trail",
    "reads_of",
    "run_read",
]
