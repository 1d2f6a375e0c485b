"""What every console page shares: the signed-in user, roles, rendering, CSRF-checked actions.

A view is an aiohttp handler wrapped by :func:`requires` (a GET page for a role and above)
or :func:`action` (a POST that changes something: role, same-origin and CSRF token checked
before the handler runs). The sign-in middleware (:mod:`lockgate.console.auth`) puts the
user and the session's CSRF token on the request under :data:`USER` and :data:`CSRF`; views
never read cookies themselves. Pages are Jinja2 templates under ``templates/`` with
autoescape on: a value from the audit trail (a DAG id, an object, a reason) is text, never
markup. Nothing here renders a secret, a token or a password: views pass ids (jti), never
token strings. The ``shown`` filter writes the characters that would reorder or hide text
(bidi controls, zero-width and other format or control characters) as code points, for
text positions; form values and links keep an id exactly as it is.
"""

from __future__ import annotations

import functools
import hmac
import unicodedata
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol, TypeVar
from urllib.parse import urlsplit

import jinja2
from aiohttp import web
from markupsafe import Markup

from lockgate.audit import AuditReader, AuditRecord
from lockgate.config import LockgateConfig
from lockgate.config.console import ROLES
from lockgate.credentials import CredentialStore
from lockgate.identity import RevocationStore
from lockgate.policy import PolicyStore
from lockgate.store import Database

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

#: the form field (and header, for fetch) every POST carries the CSRF token in
CSRF_FIELD = "csrf"
CSRF_HEADER = "X-Lockgate-CSRF"


@dataclass(frozen=True)
class ConsoleUser:
    """Who is signed in: ``subject`` is stable (the OIDC ``sub``/``oid``, or ``link:<id>``
    for a one-time admin link); ``name`` is for display; ``via`` says how they signed in."""

    subject: str
    name: str
    role: str  # one of ROLES
    via: str  # "oidc" | "link"

    def can(self, role: str) -> bool:
        """True when this user's role is ``role`` or above (viewer < operator < admin)."""
        return ROLES.index(self.role) >= ROLES.index(role)

    @property
    def principal(self) -> str:
        """The principal operator actions are audited as."""
        return f"console:{self.subject}"


#: what the sign-in middleware puts on every signed-in request (see the module docstring)
USER: web.RequestKey[ConsoleUser] = web.RequestKey("lockgate.console.user", ConsoleUser)
CSRF: web.RequestKey[str] = web.RequestKey("lockgate.console.csrf", str)


@dataclass(frozen=True)
class OpenSession:
    """A CQL or PostgreSQL session open now, as the live view shows it (never its token)."""

    kind: str  # "cql" | "postgres"
    resource: str
    principal: str
    deployment: str | None
    dag_id: str | None
    run_id: str | None
    task_id: str | None
    try_number: int | None
    jti: str | None
    opened_at: float
    peer: str
    where: str  # "<replica>/<worker>"


class LiveSessions(Protocol):
    """Sessions open now across every worker (and replica on shared state)."""

    def open_sessions(self) -> list[OpenSession]: ...


@dataclass
class ConsoleContext:
    """The console's collaborators, built by the gateway's primary worker."""

    config: LockgateConfig
    #: a fresh reader per call (it holds a connection; use ``with``)
    audit_reader: Callable[[], AuditReader]
    #: where operator actions and sign-ins are audited (AuditLog or RemoteAuditLog)
    audit: Any
    policy: PolicyStore
    revocations: RevocationStore
    credentials: CredentialStore
    #: the database a store keeps its tables in (State.database): console sessions, links
    database: Callable[[str], Database]
    live: LiveSessions | None = None
    #: the control listener's URL as configured (https://host:port)
    base_url: str = ""
    extra: dict[str, Any] = field(default_factory=dict)

    def emit(self, record: AuditRecord) -> None:
        """Audit ``record`` (fail closed: raises when the trail refuses)."""
        self.audit.emit(record)

    async def write(self, record: AuditRecord) -> None:
        """Audit ``record`` and wait until it is committed: what an action awaits before it
        answers success (raises AuditUnavailable when the trail refuses or is too slow)."""
        await self.audit.write(record)


CTX: web.AppKey[ConsoleContext] = web.AppKey("lockgate_console_ctx", ConsoleContext)
ENV: web.AppKey[jinja2.Environment] = web.AppKey("lockgate_console_jinja", jinja2.Environment)


def environment() -> jinja2.Environment:
    """The templates of :mod:`lockgate.console` (package ``templates/``), autoescaped."""
    env = jinja2.Environment(
        loader=jinja2.PackageLoader("lockgate.console", "templates"),
        autoescape=True,
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters["shown"] = shown
    return env


_Shown = TypeVar("_Shown")
#: Unicode categories written as code points: format (bidi embeddings, overrides, isolates
#: and marks, zero-width characters) and control characters
_UNSEEN_CATEGORIES = frozenset({"Cf", "Cc"})
_KEPT = frozenset("\t\n")  # whitespace a cell or a block of text may hold as it is


def shown(value: _Shown) -> _Shown | str:
    """``value`` as text on a page (``{{ dag | shown }}``): each format or control character
    but tab and newline written as its code point, ``<U+202E>``, so a right-to-left override
    in a DAG id cannot turn the rest of a sentence around or hide what follows. Not for
    form values or links: they must carry the id exactly. Anything but text is as it was."""
    if not isinstance(value, str) or value.isprintable():
        return value  # the common case, checked in C
    markup = isinstance(value, Markup)
    out = []
    for char in value:
        if char not in _KEPT and unicodedata.category(char) in _UNSEEN_CATEGORIES:
            point = f"<U+{ord(char):04X}>"
            out.append(Markup.escape(point) if markup else point)
        else:
            out.append(char)
    # markup in, markup out: its own characters were safe already, each code point escaped
    return Markup("".join(out)) if markup else "".join(out)  # noqa: S704


def context(request: web.Request) -> ConsoleContext:
    return request.app[CTX]


def user_of(request: web.Request) -> ConsoleUser:
    """The signed-in user (the middleware answers unsigned requests before any view)."""
    user = request.get(USER)
    if not isinstance(user, ConsoleUser):
        raise web.HTTPUnauthorized(text="sign in first")
    return user


def render(
    request: web.Request, template: str, *, status: int = 200, **values: Any
) -> web.Response:
    """``template`` rendered with ``values`` plus ``user``, ``csrf`` (the token for forms),
    ``csrf_field`` and ``path``, as text/html."""
    env = request.app[ENV]
    page = env.get_template(template).render(
        user=request.get(USER),
        csrf=request.get(CSRF, ""),
        csrf_field=CSRF_FIELD,
        path=request.path,
        query=request.rel_url.query,
        nav=list(nav_items(request.get(USER))),
        **values,
    )
    return web.Response(text=page, status=status, content_type="text/html", charset="utf-8")


def forbidden(request: web.Request, needed: str) -> web.Response:
    return render(request, "forbidden.html", status=403, needed=needed)


def requires(role: str) -> Callable[[Handler], Handler]:
    """A page for ``role`` and above; others get 403 naming the role needed."""
    if role not in ROLES:
        raise ValueError(f"unknown role {role!r}")

    def wrap(handler: Handler) -> Handler:
        @functools.wraps(handler)
        async def page(request: web.Request) -> web.StreamResponse:
            if not user_of(request).can(role):
                return forbidden(request, role)
            return await handler(request)

        return page

    return wrap


def action(role: str) -> Callable[[Handler], Handler]:
    """A POST for ``role`` and above: same origin (Origin, else Referer, must be the
    console's) and the session's CSRF token in the form field or header, compared in
    constant time, before the handler runs."""
    if role not in ROLES:
        raise ValueError(f"unknown role {role!r}")

    def wrap(handler: Handler) -> Handler:
        @functools.wraps(handler)
        async def post(request: web.Request) -> web.StreamResponse:
            user = user_of(request)
            if request.method != "POST":
                raise web.HTTPMethodNotAllowed(request.method, ["POST"])
            await check_csrf(request)
            if not user.can(role):
                return forbidden(request, role)
            return await handler(request)

        return post

    return wrap


async def check_csrf(request: web.Request) -> None:
    """403 unless the request is same-origin and carries the session's CSRF token."""
    expected = request.get(CSRF)
    if not isinstance(expected, str) or not expected:
        raise web.HTTPForbidden(text="no console session")
    if not same_origin(request):
        raise web.HTTPForbidden(text="cross-origin request refused")
    sent = request.headers.get(CSRF_HEADER)
    if sent is None:
        form = await request.post()
        value = form.get(CSRF_FIELD)
        sent = value if isinstance(value, str) else None
    if sent is None or not hmac.compare_digest(sent.encode(), expected.encode()):
        raise web.HTTPForbidden(text="missing or wrong CSRF token; reload the page")


def same_origin(request: web.Request) -> bool:
    """True when Origin (else Referer) names this host, or the origin of
    ``console.public_url`` (a TLS load balancer in front: the browser's origin is the public
    one while the gateway sees its own); a POST with neither header is refused."""
    origin = request.headers.get("Origin") or request.headers.get("Referer")
    if not origin:
        return False
    sent = _origin_of(origin)
    if sent == f"{request.scheme}://{request.host}".lower():
        return True
    public = request.app[CTX].config.console.public_url if CTX in request.app else None
    return public is not None and sent == _origin_of(public)


def _origin_of(url: str) -> str:
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc}".lower()


def form_text(form: Mapping[str, Any], name: str, *, required: bool = True) -> str:
    """A text field of a posted form, stripped; 400 naming the field when required and
    missing."""
    value = form.get(name)
    text = value.strip() if isinstance(value, str) else ""
    if required and not text:
        raise web.HTTPBadRequest(text=f"{name}: required")
    return text


def nav_items(user: ConsoleUser | None) -> Iterable[tuple[str, str]]:
    """(href, label) of the console's sections, in menu order."""
    items = [
        ("/console/", "Overview"),
        ("/console/audit", "Audit"),
        ("/console/access", "Access map"),
        ("/console/live", "Live"),
        ("/console/credentials", "Credentials"),
        ("/console/policy", "Least privilege"),
    ]
    return items if user is not None else []


__all__ = [
    "CSRF",
    "CSRF_FIELD",
    "CSRF_HEADER",
    "CTX",
    "ENV",
    "USER",
    "ConsoleContext",
    "ConsoleUser",
    "Handler",
    "LiveSessions",
    "OpenSession",
    "action",
    "check_csrf",
    "context",
    "environment",
    "forbidden",
    "form_text",
    "nav_items",
    "render",
    "requires",
    "same_origin",
    "shown",
    "user_of",
]
