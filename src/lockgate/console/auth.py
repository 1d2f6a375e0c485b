"""Who may see the console: sign-in, sign-out, the session check and the security headers.

Routes (relative to the console's root, ``/console``):

- ``GET /login``                  the sign-in page (OIDC button, or how to get a link)
- ``GET /auth/start``             starts an OIDC sign-in: PKCE, state, nonce; to the provider
- ``GET /auth/callback``          the provider's answer: code exchanged, ID token verified
- ``GET /login/link?token=``      a one-time link's confirmation page (a GET never uses it)
- ``POST /login/link``            uses the link once and signs an admin in
- ``POST /logout``                ends the session (CSRF-checked)

:func:`session_middleware` lets through only those pages and ``/static/``; any other
request needs a live session (cookie ``lockgate_console``: HttpOnly, SameSite=Strict,
Path=/console; over TLS ``__Host-lockgate_console``, Secure, Path=/) and else is sent to
the sign-in page (a GET) or refused (401). Secure means TLS on this listener or at the
load balancer an https ``console.public_url`` names. :func:`security_headers` puts a
strict CSP and its companions on every console response, errors and redirects included;
:func:`error_pages` turns a plain-text refusal (404, CSRF, a view's 400) into a console
page with the same status.

Sign-ins, failed sign-ins and sign-outs are audited (``console_signed_in``,
``console_sign_in_failed``, ``console_signed_out``) as ``console:<subject>``; failed
sign-ins one by one up to a bound per client address and minute, then 429 and a count
(:mod:`.auth_limits`). A sign-in is
audited before the answer: a trail that refuses means no session. A sign-out ends the
session first: taking power away never waits on the trail.

Why the callback answers with a page instead of a redirect: the session cookie is
SameSite=Strict, and a browser does not send a Strict cookie on a navigation that a
cross-site redirect chain (the provider's) began; the page's own refresh is same-site.
The OIDC pending sign-in is bound to the browser that began it by a short-lived
``SameSite=Lax`` cookie holding its ``state`` (Lax: it must come back on the provider's
redirect), so a callback URL sent to someone else signs nobody in (login CSRF). Over TLS
both cookies are ``__Host-`` ones (Path=/), which a sibling host cannot plant.
"""

from __future__ import annotations

import contextlib
import hmac
import math
from collections.abc import Awaitable, Callable
from urllib.parse import quote, urlsplit

from aiohttp import web

from lockgate import _log
from lockgate.audit import AuditRecord
from lockgate.console.auth_limits import FailureAudit, Flood
from lockgate.console.links import LINK_PATH, link_subject
from lockgate.console.oidc import OidcClient, SignInRefused, pkce_pair
from lockgate.console.sessions import ConsoleStore, Pending, new_secret
from lockgate.console.web import (
    CSRF,
    CTX,
    USER,
    ConsoleContext,
    ConsoleUser,
    check_csrf,
    context,
    render,
    same_origin,
)
from lockgate.errors import AuditUnavailable, StoreUnavailable
from lockgate.store import off_loop

log = _log.get("console.auth")

SESSION_COOKIE = "lockgate_console"
SIGNIN_COOKIE = "lockgate_console_signin"
#: over TLS both cookies are ``__Host-`` ones (Secure, Path=/, only this host sets them): a
#: sibling host (evil.example.com beside gate.example.com) may set a cookie for the whole
#: domain, and so plant its own sign-in's state or session in a victim's browser
HOST_PREFIX = "__Host-"
ROOT = "/console"
HOME = "/console/"
LOGIN = "/console/login"

CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
)
#: the sign-in's own pages, by exact path: a page added later under a name that merely
#: begins like one of them (``/console/login-history``) must not be public by accident
_PUBLIC = frozenset({LOGIN, f"{ROOT}{LINK_PATH}", f"{ROOT}/auth/start", f"{ROOT}/auth/callback"})
_STATIC = "/console/static/"

STORE: web.AppKey[ConsoleStore] = web.AppKey("lockgate_console_store", ConsoleStore)
OIDC: web.AppKey[OidcClient | None] = web.AppKey("lockgate_console_oidc", OidcClient)
FAILURES: web.AppKey[FailureAudit] = web.AppKey("lockgate_console_failures", FailureAudit)

_Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


# -- headers and the session check -------------------------------------------------------
def is_console(path: str) -> bool:
    return path == ROOT or path.startswith(ROOT + "/")


async def security_headers(request: web.Request, response: web.StreamResponse) -> None:
    """``on_response_prepare`` of the control app: every console response, whoever made it
    (a view, an error, a redirect, a 404), leaves with these headers."""
    if not is_console(request.path):
        return
    headers = response.headers
    headers["Content-Security-Policy"] = CSP
    headers["X-Content-Type-Options"] = "nosniff"
    headers["Referrer-Policy"] = "same-origin"
    headers["X-Frame-Options"] = "DENY"
    headers["Cross-Origin-Opener-Policy"] = "same-origin"
    headers["Cross-Origin-Resource-Policy"] = "same-origin"
    headers["Permissions-Policy"] = "camera=(), microphone=(), geolocation=(), payment=()"
    if not request.path.startswith(_STATIC):
        headers["Cache-Control"] = "no-store"
    if served_over_tls(request):
        headers["Strict-Transport-Security"] = "max-age=31536000"


def served_over_tls(request: web.Request) -> bool:
    """TLS to the browser: on this listener, or at the load balancer ``public_url`` names
    (which forwards in plain http: the cookie must still be Secure)."""
    if request.secure:
        return True
    ctx = request.app.get(CTX)
    public_url = ctx.config.console.public_url if ctx is not None else None
    return bool(public_url and public_url.startswith("https:"))


def _public(path: str) -> bool:
    return path in _PUBLIC or path.startswith(_STATIC)


@web.middleware
async def session_middleware(request: web.Request, handler: _Handler) -> web.StreamResponse:
    """Every console request but the sign-in pages and static files needs a live session;
    sets :data:`USER` and :data:`CSRF` for the views."""
    session_id = request.cookies.get(_session_cookie(request)[0])
    if session_id:
        ctx = context(request)
        store = request.app[STORE]
        session = await off_loop(
            store.db, store.lookup, session_id, idle_timeout=ctx.config.console.idle_timeout
        )
        if session is not None:
            request[USER] = session.user
            request[CSRF] = session.csrf
    if USER in request or _public(request.path):
        # the sign-in POSTs take our own forms only, signed in or not: SameSite=Strict is
        # per site, so a sibling host's cross-origin POST still carries the cookie
        signing_in = request.method not in ("GET", "HEAD") and _public(request.path)
        if signing_in and not same_origin(request):
            raise web.HTTPForbidden(text="cross-origin request refused")
        return await handler(request)
    if request.method in ("GET", "HEAD"):
        target = request.path_qs
        raise web.HTTPFound(f"{LOGIN}?next={quote(target, safe='/')}")
    raise web.HTTPUnauthorized(text="sign in first")


#: headers of a refusal that a page made in its place keeps
_KEPT_HEADERS = ("Allow", "WWW-Authenticate", "Retry-After")


@web.middleware
async def error_pages(request: web.Request, handler: _Handler) -> web.StreamResponse:
    """A refusal in plain text (a 404, a CSRF refusal, a view's 400 naming a field)
    becomes a console page saying the same, with the same status: people see the console
    around it and a way back."""
    try:
        return await handler(request)
    except StoreUnavailable as exc:
        return _state_down(request, exc)
    except web.HTTPException as exc:
        if exc.status < 400 or exc.content_type != "text/plain":
            raise
        page = render(request, "error.html", status=exc.status, reason=exc.reason,
                      message=exc.text or exc.reason)  # fmt: skip
        for name in _KEPT_HEADERS:
            if name in exc.headers:
                page.headers[name] = exc.headers[name]
        return page


#: seconds a browser is asked to wait when the state store is down
STATE_RETRY_AFTER = 5


def _state_down(request: web.Request, exc: StoreUnavailable) -> web.Response:
    """503 naming the state store when it cannot be reached (PostgreSQL down: the session
    check itself cannot run), never a traceback; the store's label goes to the log only."""
    log.error(
        "console page refused: state store unavailable",
        extra={"fields": {"path": request.path, "error": str(exc)[:200]}},
    )
    backend = context(request).config.state.backend
    store = "state database (PostgreSQL)" if backend == "postgresql" else "state store"
    page = render(request, "error.html", status=503, reason="State store unavailable",
                  message=f"The console's {store} cannot be reached, so no session can be "
                  "checked and nothing can be shown. Try again shortly.")  # fmt: skip
    page.headers["Retry-After"] = str(STATE_RETRY_AFTER)
    return page


def safe_next(value: str | None) -> str:
    """Where to go after signing in: a console page of this host only (no open redirect)."""
    if not value or any(c in value for c in "\\\r\n\t") or value.startswith("//"):
        return HOME
    parts = urlsplit(value)
    if parts.scheme or parts.netloc or not parts.path.startswith(HOME):
        return HOME
    if _public(parts.path):
        return HOME  # never back to a sign-in page
    return value


# -- pages -------------------------------------------------------------------------------
async def login_page(request: web.Request) -> web.Response:
    oidc = request.app[OIDC]
    return render(
        request,
        "login.html",
        next=safe_next(request.query.get("next")),
        issuer_host=oidc.issuer_host if oidc is not None else None,
        ended=request.query.get("ended") == "1",
    )


async def auth_start(request: web.Request) -> web.StreamResponse:
    oidc = request.app[OIDC]
    if oidc is None:
        raise web.HTTPNotFound(text="no OIDC provider configured; use a one-time link")
    state, nonce = new_secret(), new_secret()
    verifier, challenge = pkce_pair()
    pending = Pending(nonce, verifier, safe_next(request.query.get("next")))
    store = request.app[STORE]
    try:
        await off_loop(store.db, store.remember, state, pending)
        target = await oidc.authorize_url(state=state, nonce=nonce, challenge=challenge)
    except SignInRefused as refused:
        return await _refused(request, refused, status=502)
    response = web.HTTPFound(target)
    name, path = _signin_cookie(request)
    response.set_cookie(
        name, state, path=path, max_age=600, httponly=True, samesite="Lax",
        secure=served_over_tls(request),
    )  # fmt: skip
    raise response


def _cookie(request: web.Request, name: str, path: str) -> tuple[str, str]:
    """The name and path of the console's cookie ``name`` (see :data:`HOST_PREFIX`);
    plain http (a laptop) cannot have a ``__Host-`` one."""
    if served_over_tls(request):
        return HOST_PREFIX + name, "/"
    return name, path


def _signin_cookie(request: web.Request) -> tuple[str, str]:
    """The cookie binding a sign-in to the browser that began it."""
    return _cookie(request, SIGNIN_COOKIE, f"{ROOT}/auth/")


def _session_cookie(request: web.Request) -> tuple[str, str]:
    """The cookie holding the session id."""
    return _cookie(request, SESSION_COOKIE, ROOT)


async def auth_callback(request: web.Request) -> web.StreamResponse:
    oidc = request.app[OIDC]
    if oidc is None:
        raise web.HTTPNotFound(text="no OIDC provider configured")
    query = request.query
    state, code = query.get("state", ""), query.get("code", "")
    signin_cookie, signin_path = _signin_cookie(request)
    bound = request.cookies.get(signin_cookie, "")
    ours = bool(state and bound) and hmac.compare_digest(bound.encode(), state.encode())
    store = request.app[STORE]
    try:
        if "error" in query:
            error = query.get("error", "")[:64]
            slug = error if error.replace("_", "").isalnum() else ""
            # the provider's words only on the answer to this browser's own sign-in: a
            # crafted callback URL must not put an attacker's text on the console's origin
            text = query.get("error_description", "")[:300] if ours else ""
            if ours:
                await off_loop(store.db, store.take, state)  # that sign-in is over
            raise SignInRefused(
                f"provider_{slug}" if slug else "provider_error",
                f"The sign-in provider said: {slug or 'error'}" + (f" — {text}" if text else ""),
            )
        if not state or not code:
            raise SignInRefused("incomplete_callback", "The sign-in answer is incomplete.")
        if not ours:
            raise SignInRefused("state_not_bound", "This sign-in was not started in this browser.")
        pending = await off_loop(store.db, store.take, state)
        if pending is None:
            raise SignInRefused("unknown_state", "This sign-in expired or was already used.")
        who = await oidc.sign_in(code=code, verifier=pending.verifier, nonce=pending.nonce)
    except SignInRefused as refused:
        response = await _refused(request, refused, status=403)
        response.del_cookie(signin_cookie, path=signin_path)
        return response
    user = ConsoleUser(subject=who.subject, name=who.name, role=who.role, via="oidc")
    response = await _signed_in(request, user, pending.next_path)
    response.del_cookie(signin_cookie, path=signin_path)
    return response


async def link_page(request: web.Request) -> web.Response:
    token = request.query.get("token", "")
    store = request.app[STORE]
    state = await off_loop(store.db, store.link_state, token) if token else "unknown"
    if state != "usable":
        return render(request, "login_link_gone.html", status=410, state=state)
    return render(request, "login_link.html", token=token, action=f"{ROOT}{LINK_PATH}")


async def link_use(request: web.Request) -> web.StreamResponse:
    form = await request.post()
    token = form.get("token")
    token = token if isinstance(token, str) else ""
    store = request.app[STORE]
    if not token or not await off_loop(store.db, store.use_link, token):
        state = await off_loop(store.db, store.link_state, token) if token else "unknown"
        subject = link_subject(token) if token else None
        retry_after = await _audit_failure(request, f"link_{state}", subject=subject, via="link")
        if retry_after is not None:
            return _too_many(request, retry_after)
        return render(request, "login_link_gone.html", status=410, state=state)
    user = ConsoleUser(
        subject=link_subject(token), name="one-time link admin", role="admin", via="link"
    )
    return await _signed_in(request, user, HOME)


async def logout(request: web.Request) -> web.StreamResponse:
    """End the session, then audit it: signing out takes power away, so a trail that
    refuses to record it must not keep the session alive (it is logged instead)."""
    await check_csrf(request)
    user = request[USER]
    store = request.app[STORE]
    cookie, cookie_path = _session_cookie(request)
    await off_loop(store.db, store.end, request.cookies.get(cookie, ""))
    with contextlib.suppress(web.HTTPServiceUnavailable):  # logged by _audit
        await _audit(context(request), _record("console_signed_out", user))
    response = web.HTTPSeeOther(f"{LOGIN}?ended=1")
    response.del_cookie(cookie, path=cookie_path)
    raise response


# -- the steps every sign-in shares ------------------------------------------------------
async def _signed_in(request: web.Request, user: ConsoleUser, next_path: str) -> web.Response:
    """Audit the sign-in (fail closed), start the session, set its cookie, and go on to
    ``next_path`` with a page of our own (see the module docstring)."""
    ctx = context(request)
    await _audit(ctx, _record("console_signed_in", user))
    settings = ctx.config.console
    store = request.app[STORE]
    cookie, cookie_path = _session_cookie(request)
    earlier = request.cookies.get(cookie)
    if earlier:  # a session id the browser held before (planted or not) dies here
        await off_loop(store.db, store.end, earlier)
    session_id = await off_loop(store.db, store.start, user, ttl=settings.session_ttl)
    response = render(request, "login_done.html", next=safe_next(next_path), name=user.name)
    response.set_cookie(
        cookie, session_id, path=cookie_path, max_age=max(1, math.ceil(settings.session_ttl)),
        httponly=True, samesite="Strict", secure=served_over_tls(request),
    )  # fmt: skip
    return response


async def _refused(request: web.Request, refused: SignInRefused, *, status: int) -> web.Response:
    retry_after = await _audit_failure(request, refused.reason, subject=None, via="oidc")
    if retry_after is not None:
        return _too_many(request, retry_after)
    return render(request, "login_failed.html", status=status, message=refused.message,
                  reason=refused.reason, oidc=request.app[OIDC] is not None)  # fmt: skip


async def _audit_failure(
    request: web.Request, reason: str, *, subject: str | None, via: str
) -> int | None:
    """Audit a failed sign-in, within the client's bound (:mod:`.auth_limits`): the
    seconds to wait when the client is over it (answer 429), else None."""
    verdict = await request.app[FAILURES].failed(request.remote or "unknown", reason)
    if verdict.audit:
        record = AuditRecord(
            event="console_sign_in_failed",
            principal=f"console:{subject}" if subject else None,
            decision="deny",
            reason=reason,
            detail={"via": via},
        )
        await _audit(context(request), record)
    return verdict.retry_after


def _too_many(request: web.Request, retry_after: int) -> web.Response:
    page = render(request, "error.html", status=429, reason="Too many failed sign-ins",
                  message="Too many sign-ins from your address failed in the last minute. "
                  f"Try again in {retry_after} seconds.")  # fmt: skip
    page.headers["Retry-After"] = str(retry_after)
    return page


def _flood_record(flood: Flood) -> AuditRecord:
    return AuditRecord(
        event="console_sign_in_failed",
        decision="deny",
        reason="too_many_failures",
        detail=flood.detail(),
    )


def _record(event: str, user: ConsoleUser) -> AuditRecord:
    return AuditRecord(
        event=event,
        principal=user.principal,
        decision="allow",
        detail={"name": user.name, "role": user.role, "via": user.via},
    )


async def _audit(ctx: ConsoleContext, record: AuditRecord) -> None:
    try:
        await ctx.write(record)
    except (AuditUnavailable, StoreUnavailable) as exc:
        log.error(
            "console sign-in not audited; refused",
            extra={"fields": {"event": record.event, "error": str(exc)[:200]}},
        )
        raise web.HTTPServiceUnavailable(
            text="the audit trail cannot record this; try again shortly"
        ) from None


def add_routes(app: web.Application) -> None:
    """The sign-in routes, relative to the console's root, and the bound on failed
    sign-ins audited one by one (its counts audited by the end of the app)."""

    async def report(flood: Flood) -> None:
        await _audit(app[CTX], _flood_record(flood))

    app[FAILURES] = failures = FailureAudit(report)

    async def close_failures(_: web.Application) -> None:
        await failures.close()

    app.on_cleanup.append(close_failures)
    app.router.add_get("/login", login_page)
    app.router.add_get(LINK_PATH, link_page)
    app.router.add_post(LINK_PATH, link_use)
    app.router.add_get("/auth/start", auth_start)
    app.router.add_get("/auth/callback", auth_callback)
    app.router.add_post("/logout", logout)


__all__ = [
    "CSP",
    "HOST_PREFIX",
    "OIDC",
    "SESSION_COOKIE",
    "SIGNIN_COOKIE",
    "STORE",
    "add_routes",
    "error_pages",
    "is_console",
    "safe_next",
    "security_headers",
    "session_middleware",
]
