"""The console application: an aiohttp sub-app mounted at ``/console`` on the control listener.

:func:`console_app` builds it over a :class:`~lockgate.console.web.ConsoleContext`: the
templates, the session check (:mod:`.auth`), the sign-in routes, the static files
(``/console/static/``) and every view module of :data:`VIEWS` (each adds its routes
relative to the console's root). :func:`mount` puts it on the control app with what must
hold for every ``/console`` response, also those the sub-app never sees (a 404 under the
prefix, the bare ``/console``): the security headers.
"""

from __future__ import annotations

from pathlib import Path
from types import ModuleType

from aiohttp import web

from lockgate.console import (
    auth,
    reads,
    views_access,
    views_audit,
    views_credentials,
    views_live,
    views_overview,
    views_policy,
)
from lockgate.console.links import console_url
from lockgate.console.oidc import OidcClient
from lockgate.console.sessions import ConsoleStore
from lockgate.console.web import CTX, ENV, ConsoleContext, environment

STATIC = Path(__file__).resolve().parent / "static"

#: The view modules; each exposes ``add_routes(app)``.
VIEWS: tuple[ModuleType, ...] = (
    views_overview,
    views_audit,
    views_access,
    views_live,
    views_credentials,
    views_policy,
)


def redirect_uri(ctx: ConsoleContext) -> str:
    """Where the OIDC provider sends people back: configured, else the console's own."""
    oidc = ctx.config.console.oidc
    if oidc is not None and oidc.redirect_uri:
        return oidc.redirect_uri
    return console_url(ctx.config, ctx.base_url or None) + "/auth/callback"


def console_app(ctx: ConsoleContext) -> web.Application:
    """The console, over ``ctx`` (mount it at ``/console``: see :func:`mount`)."""
    # error_pages outermost: refusals of the session check become pages too
    app = web.Application(middlewares=[auth.error_pages, auth.session_middleware])
    app[CTX] = ctx
    app[ENV] = environment()
    app[auth.STORE] = ConsoleStore(
        ctx.database("console"), idle_timeout=ctx.config.console.idle_timeout
    )
    settings = ctx.config.console.oidc
    oidc = OidcClient(settings, redirect_uri(ctx)) if settings is not None else None
    app[auth.OIDC] = oidc

    async def close_oidc(_: web.Application) -> None:
        if oidc is not None:
            await oidc.close()

    app.on_cleanup.append(close_oidc)
    reads.install(app)  # the one read pool, whichever view is first to use it
    auth.add_routes(app)
    for view in VIEWS:
        view.add_routes(app)
    app.router.add_static("/static/", STATIC, follow_symlinks=False)
    return app


def mount(root: web.Application, ctx: ConsoleContext) -> None:
    """Serve the console at ``/console/`` on ``root`` (``/console`` redirects there), every
    response with the console's security headers."""

    async def bare(request: web.Request) -> web.StreamResponse:
        raise web.HTTPMovedPermanently("/console/")

    root.router.add_get("/console", bare)
    root.add_subapp("/console", console_app(ctx))
    root.on_response_prepare.append(auth.security_headers)


__all__ = ["STATIC", "VIEWS", "console_app", "mount", "redirect_uri"]
