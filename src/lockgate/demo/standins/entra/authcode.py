"""Sign-in of people: the OAuth 2.0 authorization code flow with PKCE and OpenID Connect.

Written from Microsoft's public docs ("Microsoft identity platform and OAuth 2.0
authorization code flow", "OpenID Connect on the Microsoft identity platform", "ID token
claims reference", the AADSTS error code reference), not from any client of it. What it
checks:

- ``GET /{tenant}/oauth2/v2.0/authorize``: a known ``client_id`` (else AADSTS700016) and a
  ``redirect_uri`` registered for it character for character (else AADSTS50011): both are
  answered with an error page, never a redirect, since the app cannot be trusted to receive
  it. Every other fault goes back to the redirect URI as ``error``/``error_description``
  (with ``state``): ``response_type`` must be ``code``; ``scope`` is required (without
  ``openid`` no ID token is issued, as the service does); ``code_challenge`` (43-128
  characters) with ``code_challenge_method`` ``S256`` or ``plain`` (the default when absent,
  RFC 7636) — an app registered with ``require_pkce`` (the default here; the service
  demands it of single-page apps) is refused without one; ``response_mode`` ``query``
  (default), ``fragment`` or ``form_post``; ``prompt=none`` without a signed-in session is
  ``login_required`` (AADSTS50058).
- The sign-in form (:mod:`.signin_pages`: inputs ``login``/``passwd``, ids ``i0116``,
  ``i0118``, buttons ``idSIButton9`` and ``idBtn_Back``, as on the service's page) posts to
  ``/{tenant}/login``: a wrong password shows the form again with AADSTS50126 (the same for
  an unknown user: no account enumeration); ten wrong ones lock the account for good
  (AADSTS50053; a test tenant has no lockout timer); Cancel answers ``access_denied``
  (AADSTS65004); the right one sets the session cookie and answers ``code`` (+ ``state``,
  ``session_state``, and ``client_info`` when asked). A signed-in session signs in again
  silently unless ``prompt=login``/``select_account`` or ``max_age`` has passed;
  ``GET /{tenant}/oauth2/v2.0/logout`` ends it (back to ``post_logout_redirect_uri`` only
  when some app registered it).
- A code is single use, lives 10 minutes and is bound to the client, the redirect URI, the
  PKCE challenge, the nonce and the user. ``POST /{tenant}/oauth2/v2.0/token`` with
  ``grant_type=authorization_code`` checks, in order: the client (unknown AADSTS700016; a
  confidential one authenticates with its secret, in the body or HTTP Basic, or with a
  certificate assertion: missing AADSTS7000218, wrong AADSTS7000215; a public client
  presenting one AADSTS700025), the code (unknown or another client's AADSTS70000,
  redeemed AADSTS54005, expired AADSTS70008; any redemption by its authenticated client
  uses it up, so a guessed verifier gets one try), ``redirect_uri`` equal to the authorize
  one (AADSTS500112) and ``code_verifier`` against the challenge (AADSTS501481).
  ``grant_type=refresh_token`` is in :mod:`.code_grant`.
- The answer: ``access_token`` (for the resource of the requested scope, Microsoft Graph
  when none), ``id_token`` (RS256, ``kid``; ``iss`` the v2.0 issuer of discovery; ``aud``
  the client; ``sub`` pairwise per app; ``oid``, ``tid``, ``name`` and
  ``preferred_username`` (scope ``profile``), ``roles`` (the user's app roles the app
  defines), ``nonce``, ``iat``/``nbf``/``exp`` one hour, ``ver`` 2.0), ``token_type``,
  ``expires_in``, ``scope``, and a ``refresh_token`` when ``offline_access`` was asked.

Part of a stand-in for demos and tests, written from the public docs: not the service.
"""

from __future__ import annotations

import hmac
import secrets
import time
import uuid
from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING, Any
from urllib.parse import urlencode

from aiohttp import web

from .code_grant import CodeGrant
from .directory import (
    CODE_TTL,
    LOCKOUT_AFTER,
    PKCE_VALUE,
    SESSION_COOKIE,
    AuthorizationRequest,
    BrowserSession,
    IssuedCode,
    Refused,
    RegisteredApp,
    TestUser,
    guid,
    resource_of,
)
from .signin_pages import error_page, form_post_page, sign_in_page, signed_out_page

if TYPE_CHECKING:
    from .app import FakeEntra

__all__ = ["AuthCodeFlow"]


class AuthCodeFlow(CodeGrant):
    """Apps, users, pending sign-ins, codes and browser sessions of one test tenant."""

    def __init__(self, entra: FakeEntra) -> None:
        self.entra = entra
        self.apps: dict[str, RegisteredApp] = {}
        self.users: dict[str, TestUser] = {}  # by lower-cased username (UPNs ignore case)
        self.codes: dict[str, IssuedCode] = {}
        self.refresh_tokens: dict[str, IssuedCode] = {}
        self.id_tokens: list[dict[str, Any]] = []  # claims of issued ID tokens
        self._pending: dict[str, tuple[AuthorizationRequest, float]] = {}
        self._sessions: dict[str, BrowserSession] = {}

    # -- registration ----------------------------------------------------------------------
    def register_app(
        self,
        client_id: str,
        redirect_uris: Iterable[str],
        secret: str | None = None,
        app_roles: Iterable[str] | None = None,
        *,
        require_pkce: bool = True,
        name: str = "",
    ) -> RegisteredApp:
        app = RegisteredApp(
            client_id, tuple(redirect_uris), secret,
            None if app_roles is None else tuple(app_roles), require_pkce, name or client_id,
        )  # fmt: skip
        if not app.redirect_uris:
            raise ValueError("an app that signs people in needs a redirect URI")
        self.apps[client_id] = app
        return app

    def add_user(
        self,
        username: str,
        password: str,
        *,
        name: str | None = None,
        roles: Iterable[str] = (),
        oid: str | None = None,
    ) -> TestUser:
        user = TestUser(
            username, password, name or username.split("@")[0], tuple(roles),
            oid or guid(self.entra.tenant, "user", username.lower()),
        )  # fmt: skip
        self.users[username.lower()] = user
        return user

    # -- the authorize endpoint ------------------------------------------------------------
    async def authorize(self, request: web.Request) -> web.Response:
        if request.match_info["tenant"] != self.entra.tenant:
            return error_page(f"AADSTS90002: Tenant '{request.match_info['tenant']}' not found.")
        query = request.query
        app = self.apps.get(query.get("client_id", ""))
        if app is None:
            return error_page(
                f"AADSTS700016: Application with identifier '{query.get('client_id', '')}' "
                f"was not found in the directory '{self.entra.tenant}'."
            )
        redirect_uri = query.get("redirect_uri")
        if redirect_uri is None:
            return error_page(
                "AADSTS900144: The request body must contain the following parameter: "
                "'redirect_uri'."
            )
        if redirect_uri not in app.redirect_uris:
            return error_page(
                f"AADSTS50011: The redirect URI '{redirect_uri}' specified in the request does "
                f"not match the redirect URIs configured for the application "
                f"'{app.client_id}'."
            )
        mode = query.get("response_mode", "query")
        if mode not in ("query", "fragment", "form_post"):
            mode = "query"  # the fault itself must still reach the app
        try:
            wanted = _parse_authorize(app, redirect_uri, mode, query)
        except Refused as refused:
            return _answer(
                redirect_uri, mode,
                {"error": refused.error, "error_description": refused.description,
                 **({"state": query["state"]} if "state" in query else {})},
            )  # fmt: skip
        session = self._session_of(request)
        too_long_ago = (
            session is not None
            and wanted.max_age is not None
            and time.time() - session.auth_time > wanted.max_age
        )
        if too_long_ago:
            session = None  # the person signs in again
        if wanted.prompt == "none":
            if session is None:
                return self._refuse_to_app(
                    wanted, "login_required",
                    "AADSTS50058: A silent sign-in request was sent but no user is signed in.",
                )  # fmt: skip
            return self._issue(wanted, self.users[session.username], session)
        if session is not None and wanted.prompt not in ("login", "select_account"):
            return self._issue(wanted, self.users[session.username], session)
        self._forget_expired()
        ctx = secrets.token_urlsafe(24)
        self._pending[ctx] = (wanted, time.time() + CODE_TTL)
        return sign_in_page(self._login_url, ctx, app.name, login_hint=wanted.login_hint)

    @property
    def _login_url(self) -> str:
        return f"/{self.entra.tenant}/login"

    async def login(self, request: web.Request) -> web.Response:
        """The sign-in form posted: cancel, a wrong password, or a code for the app."""
        form = await request.post()
        ctx = str(form.get("ctx", ""))
        pending = self._pending.get(ctx)
        if pending is None or pending[1] < time.time():
            self._pending.pop(ctx, None)
            return error_page("AADSTS50089: Authentication failed due to flow token expired.")
        wanted = pending[0]
        if form.get("action") == "cancel":
            del self._pending[ctx]
            return self._refuse_to_app(
                wanted, "access_denied",
                "AADSTS65004: User declined to consent to access the app.",
            )  # fmt: skip
        login = str(form.get("login", ""))
        user = self.users.get(login.strip().lower())
        if user is not None and user.failed_attempts >= LOCKOUT_AFTER:
            return sign_in_page(
                self._login_url, ctx, wanted.app.name, login_hint=login,
                error="AADSTS50053: Your account is locked because you've tried to sign in "
                "too many times with an incorrect user ID or password.",
            )  # fmt: skip
        password = str(form.get("passwd", "")).encode()
        if user is None or not hmac.compare_digest(password, user.password.encode()):
            if user is not None:
                user.failed_attempts += 1
            return sign_in_page(
                self._login_url, ctx, wanted.app.name, login_hint=login,
                error="AADSTS50126: Error validating credentials due to invalid username or "
                "password. Your account or password is incorrect.",
            )  # fmt: skip
        del self._pending[ctx]
        user.failed_attempts = 0
        session_key = secrets.token_urlsafe(32)
        session = BrowserSession(user.username.lower(), int(time.time()), str(uuid.uuid4()))
        self._sessions[session_key] = session
        answer = self._issue(wanted, user, session)
        answer.set_cookie(
            SESSION_COOKIE, session_key, path=f"/{self.entra.tenant}/", httponly=True,
            secure=self.entra.base_url.startswith("https://"), samesite="Lax",
        )  # fmt: skip
        return answer

    async def logout(self, request: web.Request) -> web.Response:
        """``/{tenant}/oauth2/v2.0/logout``: end the session; back to a registered URI only."""
        key = request.cookies.get(SESSION_COOKIE)
        if key:
            self._sessions.pop(key, None)
        back = request.query.get("post_logout_redirect_uri", "")
        registered = any(back in app.redirect_uris for app in self.apps.values())
        answer = _redirect(back) if back and registered else signed_out_page()
        answer.del_cookie(SESSION_COOKIE, path=f"/{self.entra.tenant}/")
        return answer

    def revoke_sign_in_sessions(self, username: str) -> int:
        """End the person's browser sessions and refresh tokens (Graph's
        ``revokeSignInSessions``); how many refresh tokens there were."""
        gone = username.lower()
        self._sessions = {k: v for k, v in self._sessions.items() if v.username != gone}
        return super().revoke_sign_in_sessions(username)

    def _session_of(self, request: web.Request) -> BrowserSession | None:
        session = self._sessions.get(request.cookies.get(SESSION_COOKIE, ""))
        if session is None or session.username not in self.users:
            return None
        return session

    def _forget_expired(self) -> None:
        """Drop pending sign-ins past their time and codes long past theirs (a code is kept
        a while after it expires or is redeemed, so reuse is still named as such)."""
        now = time.time()
        self._pending = {k: p for k, p in self._pending.items() if p[1] >= now}
        self.codes = {k: c for k, c in self.codes.items() if c.expires + CODE_TTL >= now}

    def _issue(
        self, wanted: AuthorizationRequest, user: TestUser, session: BrowserSession
    ) -> web.Response:
        self._forget_expired()
        code = secrets.token_urlsafe(64)
        self.codes[code] = IssuedCode(
            wanted, user, session.auth_time, session.session_id, time.time() + CODE_TTL
        )
        params = {"code": code}
        if wanted.client_info:
            params["client_info"] = self._client_info(user)
        if wanted.state is not None:
            params["state"] = wanted.state
        params["session_state"] = session.session_id
        return _answer(wanted.redirect_uri, wanted.response_mode, params)

    def _refuse_to_app(
        self, wanted: AuthorizationRequest, error: str, description: str
    ) -> web.Response:
        params = {"error": error, "error_description": description}
        if wanted.state is not None:
            params["state"] = wanted.state
        return _answer(wanted.redirect_uri, wanted.response_mode, params)


def _parse_authorize(
    app: RegisteredApp, redirect_uri: str, mode: str, query: Mapping[str, str]
) -> AuthorizationRequest:
    response_type = query.get("response_type", "")
    if response_type != "code":
        raise Refused(
            "unsupported_response_type",
            f"AADSTS70005: response_type '{response_type}' is not enabled for the application.",
        )
    scopes = tuple(query.get("scope", "").split())
    if not scopes:
        raise Refused(
            "invalid_request",
            "AADSTS900144: The request body must contain the following parameter: 'scope'.",
        )
    resource_of(scopes)  # more than one resource is refused here already
    challenge = query.get("code_challenge")
    method = query.get("code_challenge_method", "plain")
    if challenge is None:
        if app.require_pkce:
            raise Refused(
                "invalid_request",
                "AADSTS9002325: Proof Key for Code Exchange is required for this application.",
            )
    elif method not in ("S256", "plain"):
        raise Refused(
            "invalid_request",
            f"AADSTS501491: Invalid code_challenge_method '{method}'; S256 or plain.",
        )
    elif not PKCE_VALUE.match(challenge):
        raise Refused("invalid_request", "AADSTS501491: Invalid size of Code_Challenge parameter.")
    max_age = query.get("max_age")
    if max_age is not None and not max_age.isdigit():
        raise Refused("invalid_request", "AADSTS90019: max_age must be a whole number.")
    prompt = query.get("prompt")
    if prompt not in (None, "none", "login", "select_account", "consent"):
        raise Refused("invalid_request", f"AADSTS90023: Invalid prompt value '{prompt}'.")
    return AuthorizationRequest(
        app, redirect_uri, scopes, query.get("state"), query.get("nonce"), challenge, method,
        mode, prompt, query.get("login_hint", ""),
        None if max_age is None else int(max_age), query.get("client_info") == "1",
    )  # fmt: skip


def _redirect(location: str) -> web.Response:
    return web.Response(status=302, headers={"Location": location, "Cache-Control": "no-store"})


def _answer(redirect_uri: str, mode: str, params: Mapping[str, str]) -> web.Response:
    """Send the answer back to the app as ``response_mode`` says."""
    if mode == "form_post":
        return form_post_page(redirect_uri, params)
    joiner = "#" if mode == "fragment" else ("&" if "?" in redirect_uri else "?")
    return _redirect(f"{redirect_uri}{joiner}{urlencode(params)}")
