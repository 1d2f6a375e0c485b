"""Serving console views in tests without the sign-in flow: the views' own modules add their
routes to an app whose middleware signs every request in as a given user (the sign-in itself
is tested in tests/console/test_auth*.py and end to end in the browser tests); :func:`serving`
puts them on a real socket, :func:`write_trail` writes the records they read."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

from aiohttp import ClientSession, web
from aiohttp.test_utils import TestServer

from lockgate.audit import AuditLog, AuditReader, AuditRecord
from lockgate.console.web import (
    CSRF,
    CTX,
    ENV,
    USER,
    ConsoleContext,
    ConsoleUser,
    Handler,
    environment,
)

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
    async def sign_in(request: web.Request, handler: Handler) -> web.StreamResponse:
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


def write_trail(path: Path, records: Iterable[AuditRecord], **options: Any) -> None:
    """``records`` written to the audit chain at ``path`` by the real AuditLog (made with
    ``options``), committed, the log closed."""
    log = AuditLog(path, **options)
    try:
        for r in records:
            log.emit(r)
        assert log.flush(10)
    finally:
        log.close()


@dataclass
class Served:
    """Views served on a real socket, asked as a signed-in browser would (redirects not
    followed: a test sees where they point)."""

    server: TestServer
    session: ClientSession

    def url(self, path: str) -> str:
        return str(self.server.make_url(path))

    @property
    def origin(self) -> str:
        return self.url("/").rstrip("/")

    async def get(self, path: str) -> tuple[int, str, dict[str, str]]:
        """Status, body and headers of ``GET path``."""
        async with self.session.get(self.url(path), allow_redirects=False) as resp:
            return resp.status, await resp.text(), dict(resp.headers)

    async def page(self, path: str) -> tuple[int, str]:
        """Status and body of ``GET path`` (where it points, for a redirect)."""
        status, text, headers = await self.get(path)
        return status, headers.get("Location") or text

    async def post(
        self,
        path: str,
        data: dict[str, str] | None = None,
        *,
        origin: bool = True,
        headers: dict[str, str] | None = None,
    ) -> int:
        """Status of ``POST path`` from the console's own origin (or with no Origin)."""
        sent = dict(headers or {})
        if origin:
            sent["Origin"] = self.origin
        async with self.session.post(
            self.url(path), data=data, headers=sent, allow_redirects=False
        ) as resp:
            return resp.status


#: ``await start(ctx, add_routes, user=None)``: a :class:`Served` of those views
Start = Callable[..., Awaitable[Served]]


@asynccontextmanager
async def serving() -> AsyncIterator[Start]:
    """``start``, which serves views (:func:`views_app`) on 127.0.0.1, all through one client
    session; every server stops when the block ends (a test's ``serve`` fixture)."""
    servers: list[TestServer] = []
    session = ClientSession()

    async def start(
        ctx: ConsoleContext,
        add_routes: Callable[[web.Application], None],
        user: ConsoleUser | None = None,
    ) -> Served:
        server = TestServer(views_app(ctx, add_routes, user), host="127.0.0.1")
        await server.start_server()
        servers.append(server)
        return Served(server, session)

    try:
        yield start
    finally:
        await session.close()
        for s in servers:
            await s.close()


def trail_context(db: Path, **given: Any) -> ConsoleContext:
    """A context whose pages read the trail at ``db``; the collaborators ``given`` too, every
    other one None (a page that touches it fails loudly)."""
    unused = cast(Any, None)
    fields: dict[str, Any] = {
        "config": unused, "audit_reader": lambda: AuditReader(db), "audit": unused,
        "policy": unused, "revocations": unused, "credentials": unused, "database": unused,
    }  # fmt: skip
    fields.update(given)
    return ConsoleContext(**fields)


#: ``status, body = await get(path)`` (the body is where a redirect points)
Get = Callable[[str], Awaitable[tuple[int, str]]]
#: ``get = await serve(ctx, user=None)``
Serve = Callable[..., Awaitable[Get]]


def page_server(
    add_routes: Callable[[web.Application], None],
) -> Callable[[], AsyncIterator[Serve]]:
    """A test module's ``serve`` fixture for the views ``add_routes`` adds:
    ``serve = pytest.fixture(page_server(views_x.add_routes))``."""

    async def serve() -> AsyncIterator[Serve]:
        async with serving() as start:

            async def served(ctx: ConsoleContext, user: ConsoleUser | None = None) -> Get:
                return (await start(ctx, add_routes, user)).page

            yield served

    return serve
