"""Serving console views in tests without the sign-in flow: the views' own modules add their
routes to an app whose middleware signs every request in as a given user (the sign-in itself
is tested in tests/console/test_auth*.py and end to end in the browser tests)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from aiohttp import web

from lockgate.console.web import CSRF, CTX, ENV, USER, ConsoleContext, ConsoleUser, environment

CSRF_TOKEN = "test-csrf-token"
STATIC = Path(__file__).resolve().parents[2] / "src" / "lockgate" / "console" / "static"


def signed_in(role: str = "admin", subject: str = "alice") -> ConsoleUser:
    return ConsoleUser(subject=subject, name=f"{subject}@example.com", role=role, via="oidc")


def views_app(
    ctx: ConsoleContext,
    add_routes: Callable[[web.Application], None],
    user: ConsoleUser | None = None,
) -> web.Application:
    """An app serving ``add_routes``' views under /console, every request signed in as
    ``user`` (admin by default) with the session CSRF token :data:`CSRF_TOKEN`."""
    who = user or signed_in()

    @web.middleware
    async def sign_in(request: web.Request, handler: Callable) -> web.StreamResponse:  # type: ignore[type-arg]
        request[USER] = who
        request[CSRF] = CSRF_TOKEN
        return await handler(request)

    console = web.Application(middlewares=[sign_in])
    console[CTX] = ctx
    console[ENV] = environment()
    add_routes(console)  # paths relative to the console's root: "/audit" is /console/audit
    root = web.Application()
    root.add_subapp("/console", console)
    return root
