"""Putting a stand-in on the air: one aiohttp application served on this machine, on a free
port unless told one, over TLS when given a context. Every HTTP stand-in starts this way."""

from __future__ import annotations

import ssl
from typing import NamedTuple, Protocol

from aiohttp import web


class Serving(NamedTuple):
    """A served application: its runner (stop with ``runner.cleanup()``), port and base URL."""

    runner: web.AppRunner
    port: int
    url: str


async def serve(
    app: web.Application,
    port: int = 0,
    ssl_context: ssl.SSLContext | None = None,
    host: str = "127.0.0.1",
) -> Serving:
    """Serve ``app`` on ``host:port`` (0: a free port), HTTPS when ``ssl_context``; the URL has
    no trailing slash."""
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, host, port, ssl_context=ssl_context).start()
    bound = int(runner.addresses[0][1])
    scheme = "https" if ssl_context is not None else "http"
    return Serving(runner, bound, f"{scheme}://{host}:{bound}")


class StandIn(Protocol):
    """A stand-in that answers at the URL it is told (its discovery documents name it)."""

    base_url: str


async def serve_stand_in(
    stand_in: StandIn, app: web.Application, port: int, ssl_context: ssl.SSLContext | None
) -> web.AppRunner:
    """Serve ``stand_in``'s ``app`` on 127.0.0.1 (see :func:`serve`) and tell it its URL."""
    served = await serve(app, port, ssl_context)
    stand_in.base_url = served.url
    return served.runner


__all__ = ["Serving", "StandIn", "serve", "serve_stand_in"]
