"""An attacker's pass over the console's sign-in, sessions, CSRF and headers.

Each test is one attack, made over HTTP against the control app as served (the
``make_console`` fixture of :mod:`tests.console.test_auth`): forged and replayed cookies, a
session the browser had before signing in, a viewer posting to every POST route the router
knows, cross-origin posts with every Origin and Referer trick, GET routes that might change
something, path traversal under ``/console/static/``, and the secrets a sign-in handles
(session id, link token) looked for in the logs and the audit trail afterwards.
"""

from __future__ import annotations

import logging
import re
import ssl
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer
from yarl import URL

from lockgate.console import sessions
from lockgate.console.auth import _public
from lockgate.console.web import CTX
from lockgate.tlsgen import write_dev_tls
from tests.console.test_auth import Console, make_console

__all__ = ["make_console"]  # the fixture, shared with the sign-in tests

# what a POST form of every view might carry: enough for a handler to act if let through
_ANY_FORM = {"action": "revoke", "jti": "some-jti", "dag": "etl", "deployment": "prod",
             "reason": "x", "confirm": "yes"}  # fmt: skip


#: GET routes that stream their answer (see the HEAD test below)
_STREAMED = ("/console/audit/export.csv", "/console/audit/export.json")


def console_subapp(c: Console) -> web.Application:
    """The console sub-app mounted on the control app (its router lists every route)."""
    server = c.client.server
    assert isinstance(server, TestServer)
    for resource in server.app.router.resources():
        if isinstance(resource, web.PrefixedSubAppResource):
            return resource._app
    raise AssertionError("no console mounted")


def routes(c: Console, method: str) -> list[str]:
    """Every path the console serves for ``method`` (dynamic parts filled in)."""
    paths = set()
    for route in console_subapp(c).router.routes():
        if route.method != method:
            continue
        info = route.resource.get_info() if route.resource is not None else {}
        path = info.get("path") or info.get("formatter") or info.get("prefix")
        assert isinstance(path, str)
        paths.add(re.sub(r"\{[^}]+\}", "1", path))
    return sorted(paths)


async def sign_in_as(c: Console, role_value: str) -> str:
    """Sign in through the provider with ``role_value`` in the roles claim; the CSRF token."""
    c.provider.user["roles"] = [role_value]
    assert (await c.oidc_sign_in()).status == 200
    return await c.csrf()


def session_cookie(response: aiohttp.ClientResponse) -> str:
    return response.cookies["lockgate_console"].value


# -- sessions ------------------------------------------------------------------------------
async def test_signing_in_ends_the_session_the_browser_had(make_console: Any) -> None:
    """A cookie the browser held before signing in (planted, or an earlier sign-in) does
    not survive it: the new sign-in has a new id and the old one is ended."""
    c: Console = await make_console(oidc=False)
    before = session_cookie(await c.use_link(c.link()))
    after = session_cookie(await c.use_link(c.link()))
    assert after != before
    c.client.session.cookie_jar.clear()
    c.client.session.cookie_jar.update_cookies({"lockgate_console": before})
    assert not await c.signed_in()


async def test_a_forged_or_replayed_cookie_signs_nobody_in(make_console: Any) -> None:
    c: Console = await make_console(oidc=False)
    used = await c.use_link(c.link())
    real = session_cookie(used)
    with c.state.database("console").read() as cur:
        cur.execute("SELECT id_hash FROM console_sessions")
        row = cur.fetchone()
    assert row is not None
    stored = row[0]
    token = await c.csrf()
    await c.client.post("/console/logout", data={"csrf": token}, headers={"Origin": c.origin})
    for forged in (real, stored, real[:-1], real + "A", "", "x" * 4096):
        c.client.session.cookie_jar.clear()
        c.client.session.cookie_jar.update_cookies({"lockgate_console": forged})
        assert not await c.signed_in(), forged[:8]


async def test_a_burst_of_unsigned_sign_in_starts_shuts_nobody_out(
    make_console: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Anyone may start a sign-in; a burst filling the pending table (a few thousand
    requests) once answered every real sign-in "try again later" for ten minutes."""
    monkeypatch.setattr(sessions, "MAX_PENDING", 5)
    c: Console = await make_console()
    async with aiohttp.ClientSession() as attacker:
        for _ in range(8):
            async with attacker.get(c.client.make_url("/console/auth/start"),
                                    allow_redirects=False) as r:  # fmt: skip
                assert r.status == 302
    assert (await c.oidc_sign_in()).status == 200
    with c.state.database("console").read() as cur:
        cur.execute("SELECT COUNT(*) FROM console_pending")
        row = cur.fetchone()
    assert row is not None and row[0] <= 5


async def test_a_crafted_provider_error_puts_no_text_on_the_console(make_console: Any) -> None:
    """``/console/auth/callback?error=...&error_description=Call++1-555...`` sent to someone:
    the console's origin shows no attacker's words (only the answer to a sign-in this
    browser began carries the provider's description), and an error slug is a slug."""
    c: Console = await make_console()
    lure = "Your account is locked: call +1-555-0100 with your password"
    for error in ("access_denied", "<b>x</b> call us"):
        r = await c.client.get(
            "/console/auth/callback",
            params={"error": error, "error_description": lure, "state": "guessed"},
        )
        text = await r.text()
        assert r.status == 403 and "555-0100" not in text and "call us" not in text
    assert c.audit.records[-1].reason == "provider_error"


async def test_planted_cookies_bind_no_one_over_tls(make_console: Any, tmp_path: Path) -> None:
    """Login CSRF by cookie tossing: the attacker begins a sign-in of their own, plants its
    state in the victim's browser as ``lockgate_console_signin`` (a sibling host may set a
    cookie for the whole domain) and sends the victim the callback; or plants their own
    session. Over TLS both cookies are ``__Host-`` ones (only this host sets them): the
    planted ones bind nothing."""
    paths = write_dev_tls(tmp_path / "tls")
    server_tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_tls.load_cert_chain(paths["cert"], paths["key"])
    client_tls = ssl.create_default_context(cafile=str(paths["ca"]))
    c: Console = await make_console(tls=server_tls)

    async def begin() -> tuple[aiohttp.ClientResponse, str]:
        start = await c.client.get("/console/auth/start", allow_redirects=False, ssl=client_tls)
        back = await _provider_answer(start.headers["Location"])
        return start, f"{back.path}?{back.query}"

    start, honest = await begin()  # an honest sign-in: the cookie only this host sets
    assert start.cookies["__Host-lockgate_console_signin"]["path"] == "/"
    assert start.cookies["__Host-lockgate_console_signin"]["secure"]
    signed_in = await c.client.get(honest, allow_redirects=False, ssl=client_tls)
    assert signed_in.status == 200
    attacker_session = signed_in.cookies["__Host-lockgate_console"].value
    assert signed_in.cookies["__Host-lockgate_console"]["path"] == "/"

    _, lure = await begin()  # the attacker's own sign-in
    state = parse_qs(urlsplit(lure).query)["state"][0]
    c.client.session.cookie_jar.clear()  # the victim's browser
    c.client.session.cookie_jar.update_cookies(
        {"lockgate_console_signin": state}, response_url=c.client.make_url("/console/auth/")
    )
    r = await c.client.get(lure, allow_redirects=False, ssl=client_tls)
    assert r.status == 403 and c.audit.records[-1].reason == "state_not_bound"
    assert "__Host-lockgate_console" not in r.cookies

    # the attacker's own session, planted the same way, opens nothing either
    c.client.session.cookie_jar.clear()
    c.client.session.cookie_jar.update_cookies(
        {"lockgate_console": attacker_session}, response_url=c.client.make_url("/console/")
    )
    r = await c.client.get("/console/audit", allow_redirects=False, ssl=client_tls)
    assert r.status == 302 and r.headers["Location"].startswith("/console/login")


# -- CSRF ----------------------------------------------------------------------------------
async def test_a_sign_in_post_from_another_origin_is_refused_even_while_signed_in(
    make_console: Any,
) -> None:
    """SameSite=Strict is per site: a sibling host (evil.example.com beside
    gate.example.com) is the same site, so the browser sends the session cookie on its
    cross-origin POST. The sign-in POSTs are same-origin only, signed in or not."""
    c: Console = await make_console(oidc=False)
    await c.use_link(c.link())
    token = parse_qs(urlsplit(c.link()).query)["token"][0]
    r = await c.client.post(
        "/console/login/link", data={"token": token},
        headers={"Origin": "https://evil.example"}, allow_redirects=False,
    )  # fmt: skip
    assert r.status == 403
    assert "lockgate_console" not in r.cookies
    assert (await c.use_link(f"/console/login/link?token={token}")).status == 200  # unused


@pytest.mark.parametrize(
    "headers",
    [
        {"Origin": "null"},
        {"Origin": "null", "Referer": "{origin}/console/"},
        {"Origin": "{scheme}://evil.{host}"},
        {"Origin": "https://{host}"},  # http vs https
        {"Origin": "{origin}.evil.example"},
        {"Origin": "{origin}@evil.example"},
        {"Referer": "{scheme}://{host}@evil.example/console/"},
        {"Referer": "{scheme}://evil.example@{host}.evil.example/console/"},
        {"Referer": "{scheme}://evil.example/{host}/console/"},
        {"Referer": "//{host}/console/"},
        {"Origin": ""},
        {},
    ],
    ids=lambda h: ",".join(f"{k}={v}" for k, v in h.items()) or "none",
)
async def test_origin_and_referer_tricks_are_refused(
    make_console: Any, headers: dict[str, str]
) -> None:
    c: Console = await make_console(oidc=False)
    await c.use_link(c.link())
    token = await c.csrf()
    origin = URL(c.origin)
    sent = {
        k: v.format(origin=c.origin, scheme=origin.scheme, host=f"{origin.host}:{origin.port}")
        for k, v in headers.items()
    }
    r = await c.client.post("/console/logout", data={"csrf": token}, headers=sent,
                            allow_redirects=False)  # fmt: skip
    assert r.status == 403
    assert await c.signed_in()


# -- roles ---------------------------------------------------------------------------------
async def test_every_post_route_refuses_a_viewer_and_the_unsigned(make_console: Any) -> None:
    """Enumerated from the router, not a list: a POST route added later is covered."""
    c: Console = await make_console()
    posts = [p for p in routes(c, "POST") if p not in ("/console/login/link", "/console/logout")]
    assert posts, "no POST routes found"
    for path in posts:  # unsigned, same origin: refused before any handler
        r = await c.client.post(path, data=_ANY_FORM, headers={"Origin": c.origin},
                                allow_redirects=False)  # fmt: skip
        assert r.status == 401, path
    token = await sign_in_as(c, "Lockgate.Viewer")
    before = len(c.audit.records)
    for path in posts:
        r = await c.client.post(path, data={**_ANY_FORM, "csrf": token},
                                headers={"Origin": c.origin}, allow_redirects=False)  # fmt: skip
        assert r.status == 403 and "operator" in await r.text(), path
    assert c.audit.records[before:] == []  # nothing was done, so nothing audited
    assert await c.signed_in()


async def test_every_get_route_is_behind_the_sign_in_and_whole_for_a_viewer(
    make_console: Any,
) -> None:
    """Every page but the sign-in's and the static files sends the unsigned to sign in; a
    viewer gets each page or a 403 naming the role needed, never a 500."""
    c: Console = await make_console()
    public = ("/console/login", "/console/login/link", "/console/auth/start",
              "/console/auth/callback", "/console/static")  # fmt: skip
    gets = [p for p in routes(c, "GET") if p not in public]
    assert len(gets) > 10
    for path in gets:
        r = await c.client.get(path, allow_redirects=False)
        assert r.status == 302 and r.headers["Location"].startswith("/console/login?"), path
    await sign_in_as(c, "Lockgate.Viewer")
    for path in gets:
        r = await c.client.get(path, allow_redirects=False)
        assert r.status in (200, 400, 403, 404), (path, r.status)


async def test_no_get_route_changes_anything(make_console: Any) -> None:
    """An admin (who may do everything) opening every GET route, even with the form of an
    action in its query, changes no state: nothing is audited, no store row is written."""
    c: Console = await make_console()
    token = await sign_in_as(c, "Lockgate.Admin")

    def console_rows() -> list[tuple[Any, ...]]:
        with c.state.database("console").read() as cur:
            cur.execute("SELECT COUNT(*) FROM console_links")
            links = cur.fetchall()
            cur.execute("SELECT id_hash, role FROM console_sessions ORDER BY id_hash")
            return links + cur.fetchall()

    rows, before = console_rows(), len(c.audit.records)
    skipped = ("/console/auth/start", "/console/auth/callback")  # the sign-in itself
    gets = [p for p in routes(c, "GET") if p not in skipped]
    assert "/console/live/confirm" in gets and "/console/audit/verify" in gets
    for path in gets:
        r = await c.client.get(path, params={**_ANY_FORM, "csrf": token}, allow_redirects=False)
        assert r.status < 500, path
        if path not in _STREAMED:
            r = await c.client.head(path, allow_redirects=False)
            assert r.status < 500, path
    assert c.audit.records[before:] == []
    assert console_rows() == rows


async def test_head_of_a_streamed_answer_sends_no_body(make_console: Any) -> None:
    """Bytes after a HEAD's headers are read as the next answer on a kept-alive connection
    (a proxy pooling connections would hand them to someone else)."""
    c: Console = await make_console()
    await sign_in_as(c, "Lockgate.Viewer")
    head = await c.client.head("/console/audit/export.csv")  # its header line, at least
    assert head.status == 200
    assert (await c.client.get("/console/login")).status == 200  # the connection is sound


@pytest.mark.parametrize(
    "roles",
    [["lockgate.admin"], ["LOCKGATE.ADMIN"], [" Lockgate.Admin"], ["Lockgate.Admin "],
     ["Lockgate.\u0410dmin"], ["Lockgate.Admin\u200b"], "Lockgate.Admin Lockgate.Viewer",
     [["Lockgate.Admin"]], {"Lockgate.Admin": True}, [], None],
    ids=["lower", "upper", "lead-space", "trail-space", "cyrillic-A", "zero-width",
         "space-separated-string", "nested-list", "object", "empty", "null"],
)  # fmt: skip
async def test_a_role_claim_that_is_not_exactly_a_configured_value_grants_nothing(
    make_console: Any, roles: Any
) -> None:
    c: Console = await make_console()
    c.provider.user["roles"] = roles
    r = await c.oidc_sign_in()
    assert r.status == 403 and c.audit.records[-1].reason == "no_role"
    assert not await c.signed_in()


async def test_a_nested_or_absent_roles_claim_grants_nothing(make_console: Any) -> None:
    """``roles_claim`` names a top-level claim: Keycloak's ``realm_access.roles`` is not
    read through a dot, and a token without the claim has no role."""
    c: Console = await make_console()
    c.provider.user.pop("roles")
    c.provider.user["realm_access"] = {"roles": ["Lockgate.Admin"]}
    c.provider.user["realm_access.roles"] = None
    assert (await c.oidc_sign_in()).status == 403
    assert c.audit.records[-1].reason == "no_role"


async def test_an_oidc_subject_cannot_pass_for_a_one_time_link(make_console: Any) -> None:
    """``console:link:<digest>`` names a link's admin in the trail; a provider's ``sub`` of
    that shape is refused rather than audited as one."""
    c: Console = await make_console()
    c.provider.user.pop("oid")
    c.provider.user["sub"] = "link:0badc0de"
    r = await c.oidc_sign_in()
    assert r.status == 403 and c.audit.records[-1].reason == "reserved_subject"
    assert not await c.signed_in()
    assert all(r.principal != "console:link:0badc0de" for r in c.audit.records)


@pytest.mark.parametrize(
    "path",
    ["/console/login-history", "/console/loginx", "/console/login/link/extra",
     "/console/auth/other", "/console/auth/", "/console/static"],
)  # fmt: skip
def test_only_the_sign_in_pages_themselves_are_public(path: str) -> None:
    """A page added later whose path merely begins like a sign-in page's is not public."""
    assert not _public(path)
    assert _public("/console/login") and _public("/console/static/console.css")


# -- headers, static files, errors ---------------------------------------------------------
@pytest.mark.parametrize(
    "path",
    ["/console/static/../web.py", "/console/static/%2e%2e/web.py",
     "/console/static/..%2fweb.py", "/console/static/%2e%2e%2fweb.py",
     "/console/static/%2e%2e%2f%2e%2e%2fconfig/console.py", "/console/static//etc/passwd",
     "/console/static/..%5cweb.py", "/console/static/../templates/base.html",
     "/console/login/../audit", "/console/static/../audit", "/console/auth/%2e%2e/audit"],
)  # fmt: skip
async def test_no_path_trick_reaches_a_file_or_a_page_unsigned(
    make_console: Any, path: str
) -> None:
    c: Console = await make_console(oidc=False)
    async with aiohttp.ClientSession() as browser:
        url = URL(c.origin + path, encoded=True)
        async with browser.get(url, allow_redirects=False) as r:
            body = await r.text()
            assert r.status in (302, 404), (path, r.status)
            assert "Content-Security-Policy" in r.headers
            assert "import" not in body and "{%" not in body and "root:" not in body


async def test_every_kind_of_answer_carries_the_csp(make_console: Any) -> None:
    """Static files (GET and HEAD), 404, 405, a redirect, and a 500 the view did not plan."""
    c: Console = await make_console(oidc=False)
    await c.use_link(c.link())
    console_subapp(c)[CTX].audit_reader = _broken_reader
    answers = [
        await c.client.get("/console/static/console.css"),
        await c.client.head("/console/static/console.css"),
        await c.client.get("/console/static/no-such.css"),
        await c.client.get("/console/no-such-page"),
        await c.client.delete("/console/audit"),
        await c.client.get("/console", allow_redirects=False),
        await c.client.get("/console/"),  # the overview reads the trail: a 500
    ]
    assert [a.status for a in answers] == [200, 200, 404, 404, 405, 301, 500]
    for answer in answers:
        assert answer.headers["Content-Security-Policy"].startswith("default-src 'none'")
        assert answer.headers["X-Frame-Options"] == "DENY"
    assert "Traceback" not in await answers[-1].text()


def _broken_reader() -> Any:
    raise RuntimeError("the trail's database is gone")


async def test_the_link_page_sends_its_token_nowhere(make_console: Any) -> None:
    """The confirmation page holds the token in its URL: it links to nothing off the
    console, loads nothing from elsewhere, and asks browsers for no cross-origin Referer."""
    c: Console = await make_console(oidc=False)
    page = await c.client.get(c.link())
    assert page.headers["Referrer-Policy"] in ("same-origin", "no-referrer")
    text = await page.text()
    targets = re.findall(r'(?:href|src|action|content)="([^"]*)"', text)
    assert targets
    for target in targets:
        assert not re.match(r"^([a-z]+:)?//", target, re.I), target
    assert "http-equiv" not in text  # no refresh carrying it along


async def test_no_secret_of_a_sign_in_is_logged_or_audited(
    make_console: Any, caplog: pytest.LogCaptureFixture
) -> None:
    """After a link sign-in, a failed link use, an OIDC sign-in and a forged callback:
    neither the logs nor the trail hold a session id, a link token, a code, a state or an
    ID token."""
    caplog.set_level(logging.DEBUG)
    c: Console = await make_console()
    link = c.link()
    token = parse_qs(urlsplit(link).query)["token"][0]
    link_session = session_cookie(await c.use_link(link))
    await c.use_link(link)  # used again: refused, audited
    c.client.session.cookie_jar.clear()
    start = await c.client.get("/console/auth/start", allow_redirects=False)
    back = await _provider_answer(start.headers["Location"])
    answer = parse_qs(back.query)
    callback = await c.client.get(f"{back.path}?{back.query}", allow_redirects=False)
    oidc_session = session_cookie(callback)
    await c.client.get(f"{back.path}?{back.query}")  # replayed
    secrets = [token, link_session, oidc_session, answer["code"][0], answer["state"][0]]
    logged = "\n".join(
        f"{r.getMessage()} {getattr(r, 'fields', '')} {r.args}"
        for r in caplog.records
        if r.name != "aiohttp.access"  # the test server's; the control listener keeps none
    )
    audited = repr(c.audit.records)
    for secret in secrets:
        assert secret not in logged and secret not in audited
    assert "eyJ" not in logged and "eyJ" not in audited


async def _provider_answer(location: str) -> Any:
    async with (
        aiohttp.ClientSession() as browser,
        browser.get(location, allow_redirects=False) as answer,
    ):
        return urlsplit(answer.headers["Location"])
