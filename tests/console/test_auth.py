"""Signing in to the console: one-time links, OIDC (code + PKCE against a real provider in
the test, :mod:`tests.console._oidc_provider`), sessions, CSRF and the security headers.

Everything goes through the control app as served (``control.app.mount``), over HTTP.
"""

from __future__ import annotations

import asyncio
import re
import ssl
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from lockgate.audit import AuditRecord
from lockgate.config import LockgateConfig
from lockgate.console.app import VIEWS, mount
from lockgate.console.auth import CSP, OIDC, safe_next
from lockgate.console.links import console_link_url
from lockgate.console.oidc import DISCOVERY_MAX_AGE
from lockgate.console.web import ConsoleContext, ConsoleUser, nav_items
from lockgate.errors import AuditUnavailable
from lockgate.state import State
from lockgate.tlsgen import write_dev_tls
from tests.console import _oidc_provider as idp


class RecordingAudit:
    """The trail as the console sees it; ``refuse`` makes every write fail."""

    def __init__(self) -> None:
        self.records: list[AuditRecord] = []
        self.refuse = False

    def emit(self, record: AuditRecord) -> None:
        self.records.append(record)

    async def write(self, record: AuditRecord) -> None:
        if self.refuse:
            raise AuditUnavailable("audit log queue is full")
        self.records.append(record)

    def events(self) -> list[str]:
        return [r.event for r in self.records]


@dataclass
class Console:
    client: TestClient  # type: ignore[type-arg]
    state: State
    audit: RecordingAudit
    provider: idp.Provider

    @property
    def origin(self) -> str:
        return str(self.client.make_url("/").origin())

    def link(self, ttl: float | None = None) -> str:
        """A fresh link's path and query (as the browser would open it)."""
        url = urlsplit(console_link_url(self.state.config, self.state.database("console"), ttl=ttl))
        return f"{url.path}?{url.query}"

    async def use_link(self, path: str) -> aiohttp.ClientResponse:
        token = parse_qs(urlsplit(path).query)["token"][0]
        return await self.client.post(
            "/console/login/link", data={"token": token}, headers={"Origin": self.origin},
            allow_redirects=False,
        )  # fmt: skip

    async def oidc_sign_in(self, next_path: str = "/console/audit") -> aiohttp.ClientResponse:
        """Start, let the provider answer, and come back: the callback's response."""
        start = await self.client.get(
            "/console/auth/start", params={"next": next_path}, allow_redirects=False
        )
        assert start.status == 302, await start.text()
        back = await provider_answer(start.headers["Location"])
        assert back.path == "/console/auth/callback"
        return await self.client.get(f"{back.path}?{back.query}", allow_redirects=False)

    async def csrf(self) -> str:
        page = await (await self.client.get("/console/login")).text()
        found = re.search(r'name="csrf" value="([^"]+)"', page)
        assert found, "no sign-out form: not signed in"
        return found.group(1)

    async def signed_in(self) -> bool:
        r = await self.client.get("/console/audit", allow_redirects=False)
        return r.status != 302 or not r.headers["Location"].startswith("/console/login")


async def provider_answer(location: str) -> Any:
    """What the provider redirects back with (the browser following its authorize URL)."""
    async with (
        aiohttp.ClientSession() as browser,
        browser.get(location, allow_redirects=False) as answer,
    ):
        assert answer.status == 302
        return urlsplit(answer.headers["Location"])


def _settings(provider_url: str, secret_file: str | None, **console: Any) -> dict[str, Any]:
    return {
        "oidc": {
            "issuer": provider_url,
            "client_id": idp.CLIENT_ID,
            "client_secret_file": secret_file,
            "roles": {
                "admin": ["Lockgate.Admin"],
                "operator": ["Lockgate.Operator"],
                "viewer": ["Lockgate.Viewer", "Everyone"],
            },
        },
        **console,
    }


@pytest.fixture
async def make_console(tmp_path: Path) -> AsyncIterator[Callable[..., Any]]:
    opened: list[tuple[TestClient, TestServer, State]] = []  # type: ignore[type-arg]

    async def make(
        *,
        oidc: bool = True,
        client_secret_file: str | None = None,
        tls: ssl.SSLContext | None = None,
        **console: Any,
    ) -> Console:
        provider = idp.Provider()
        provider_server = TestServer(provider.app())
        await provider_server.start_server()
        provider.url = str(provider_server.make_url("")).rstrip("/")
        settings = _settings(provider.url, client_secret_file, **console) if oidc else console
        config = LockgateConfig(data_dir=tmp_path / f"data{len(opened)}", console=settings)
        state = State(config)
        audit = RecordingAudit()
        ctx = ConsoleContext(
            config, state.audit_reader, audit, state.policy_store(), state.revocations,
            state.credentials, state.database,
        )  # fmt: skip
        root = web.Application()
        mount(root, ctx)
        console_server = TestServer(root)
        await console_server.start_server(ssl=tls)  # (TestClient would start it without)
        client = TestClient(console_server)
        await client.start_server()
        ctx.base_url = str(client.make_url("")).rstrip("/")  # what the control listener is
        opened.append((client, provider_server, state))
        return Console(client, state, audit, provider)

    yield make
    for client, server, state in opened:
        await client.close()
        await server.close()
        state.close()


# -- one-time links ------------------------------------------------------------------------
async def test_a_link_shows_a_confirmation_and_signs_an_admin_in_once(make_console: Any) -> None:
    c: Console = await make_console(oidc=False)
    path = c.link()
    page = await c.client.get(path)
    assert page.status == 200
    text = await page.text()
    assert 'method="post"' in text and "Sign in as admin" in text
    assert not await c.signed_in()  # a GET (a link scanner, a prefetch) uses nothing up

    used = await c.use_link(path)
    assert used.status == 200
    assert await c.signed_in()
    assert c.audit.records[-1].event == "console_signed_in"
    record = c.audit.records[-1]
    assert record.principal is not None and re.fullmatch(
        r"console:link:[0-9a-f]{8}", record.principal
    )
    assert record.detail == {"name": "one-time link admin", "role": "admin", "via": "link"}
    assert parse_qs(urlsplit(path).query)["token"][0] not in repr(c.audit.records)

    again = await c.client.get(path)
    assert again.status == 410 and "already used" in await again.text()
    second = await c.use_link(path)  # a second use: refused, audited
    assert second.status == 410
    assert c.audit.records[-1].event == "console_sign_in_failed"
    assert c.audit.records[-1].reason == "link_used"


async def test_an_expired_link_says_so_and_how_to_get_another(make_console: Any) -> None:
    c: Console = await make_console(oidc=False)
    path = c.link(ttl=0.2)
    await asyncio.sleep(0.3)
    page = await c.client.get(path)
    assert page.status == 410
    text = await page.text()
    assert "expired" in text and "lockgate console link" in text
    assert (await c.use_link(path)).status == 410
    assert not await c.signed_in()
    assert (await c.client.get("/console/login/link?token=made-up")).status == 410


async def test_a_link_used_twice_at_once_signs_in_once(make_console: Any) -> None:
    c: Console = await make_console(oidc=False)
    path = c.link()
    answers = await asyncio.gather(*(c.use_link(path) for _ in range(5)))
    assert sorted(a.status for a in answers) == [200, 410, 410, 410, 410]


async def test_the_login_page_without_oidc_explains_links(make_console: Any) -> None:
    c: Console = await make_console(oidc=False)
    text = await (await c.client.get("/console/login")).text()
    assert "lockgate console link" in text and "Sign in with" not in text


# -- sessions ------------------------------------------------------------------------------
async def test_the_session_cookie_is_httponly_strict_and_scoped(make_console: Any) -> None:
    c: Console = await make_console(oidc=False)
    used = await c.use_link(c.link())
    cookie = used.headers["Set-Cookie"]
    assert cookie.startswith("lockgate_console=")
    assert "HttpOnly" in cookie and "SameSite=Strict" in cookie and "Path=/console" in cookie
    assert "Secure" not in cookie  # plain http here: a Secure cookie would never come back
    session_id = cookie.split(";")[0].split("=", 1)[1]
    assert len(session_id) >= 43  # 256 bits
    with c.state.database("console").read() as cur:
        cur.execute("SELECT id_hash FROM console_sessions")
        stored = [row[0] for row in cur.fetchall()]
    assert stored and session_id not in stored  # only its digest is kept
    # the next page goes on with a meta refresh (a same-site navigation), no script
    text = await used.text()
    assert 'http-equiv="refresh"' in text and "<script" not in text


async def test_an_idle_session_ends(make_console: Any) -> None:
    c: Console = await make_console(oidc=False, idle_timeout=0.5)
    await c.use_link(c.link())
    assert await c.signed_in()
    await asyncio.sleep(0.7)
    assert not await c.signed_in()


async def test_a_session_ends_at_its_ttl(make_console: Any) -> None:
    c: Console = await make_console(oidc=False, session_ttl=0.5)
    await c.use_link(c.link())
    assert await c.signed_in()
    await asyncio.sleep(0.7)
    assert not await c.signed_in()


async def test_unsigned_requests_go_to_sign_in_or_are_refused(make_console: Any) -> None:
    c: Console = await make_console(oidc=False)
    r = await c.client.get("/console/audit?dag=x&run=r1", allow_redirects=False)
    assert r.status == 302
    back = urlsplit(r.headers["Location"])
    assert back.path == "/console/login"
    assert parse_qs(back.query) == {"next": ["/console/audit?dag=x&run=r1"]}
    r = await c.client.post("/console/live/revoke", headers={"Origin": c.origin})
    assert r.status == 401
    forged = c.client.session.cookie_jar
    forged.update_cookies({"lockgate_console": "not-a-session"})
    r = await c.client.get("/console/audit", allow_redirects=False)
    assert r.status == 302


async def test_sign_out_needs_the_csrf_token_and_ends_the_session(make_console: Any) -> None:
    c: Console = await make_console(oidc=False)
    await c.use_link(c.link())
    token = await c.csrf()
    refusals = [
        ({}, {"Origin": c.origin}),  # no token
        ({"csrf": "wrong"}, {"Origin": c.origin}),  # wrong token
        ({"csrf": token}, {"Origin": "https://evil.example"}),  # cross-origin
        ({"csrf": token}, {}),  # neither Origin nor Referer
    ]
    for form, headers in refusals:
        r = await c.client.post(
            "/console/logout", data=form, headers=headers, allow_redirects=False
        )
        assert r.status == 403, (form, headers)
        assert await c.signed_in()
    r = await c.client.post(
        "/console/logout", data={"csrf": token}, headers={"Referer": c.origin + "/console/"},
        allow_redirects=False,
    )  # fmt: skip
    assert r.status == 303 and r.headers["Location"] == "/console/login?ended=1"
    assert not await c.signed_in()
    assert c.audit.events()[-1] == "console_signed_out"
    assert c.audit.records[-1].detail["via"] == "link"


async def test_a_sign_in_the_trail_cannot_record_starts_no_session(make_console: Any) -> None:
    c: Console = await make_console(oidc=False)
    c.audit.refuse = True
    r = await c.use_link(c.link())
    assert r.status == 503
    assert "Set-Cookie" not in r.headers
    assert not await c.signed_in()


async def test_sign_out_ends_the_session_even_when_the_trail_refuses(
    make_console: Any,
) -> None:
    c: Console = await make_console(oidc=False)
    await c.use_link(c.link())
    token = await c.csrf()
    c.audit.refuse = True
    r = await c.client.post(
        "/console/logout", data={"csrf": token}, headers={"Origin": c.origin},
        allow_redirects=False,
    )  # fmt: skip
    assert r.status == 303
    assert not await c.signed_in()


async def test_refusals_are_console_pages_with_their_status(make_console: Any) -> None:
    c: Console = await make_console(oidc=False)
    await c.use_link(c.link())
    missing = await c.client.get("/console/no-such-page")
    assert missing.status == 404 and missing.content_type == "text/html"
    assert 'aria-label="Sections"' in await missing.text()  # the console around it
    refused = await c.client.post("/console/logout", data={"csrf": "wrong"},
                                  headers={"Origin": c.origin})  # fmt: skip
    assert refused.status == 403 and refused.content_type == "text/html"
    assert "missing or wrong CSRF token" in await refused.text()
    wrong_method = await c.client.put("/console/logout")
    assert wrong_method.status == 405 and "POST" in wrong_method.headers["Allow"]


def test_every_view_module_is_served() -> None:
    names = {view.__name__.rsplit(".", 1)[1] for view in VIEWS}
    assert names == {"views_overview", "views_audit", "views_access", "views_live",
                     "views_credentials", "views_policy"}  # fmt: skip


async def test_every_section_is_behind_the_sign_in_and_served_once_signed_in(
    make_console: Any,
) -> None:
    c: Console = await make_console(oidc=False)
    admin = ConsoleUser(subject="x", name="x", role="admin", via="link")
    sections = [href for href, _ in nav_items(admin)]
    for href in sections:
        r = await c.client.get(href, allow_redirects=False)
        assert r.status == 302 and r.headers["Location"].startswith("/console/login?next=")
    await c.use_link(c.link())
    for href in sections:
        r = await c.client.get(href)
        assert r.status == 200, href
        page = await r.text()
        assert 'aria-current="page"' in page and "Sign out" in page, href


# -- headers -------------------------------------------------------------------------------
async def test_every_console_answer_carries_the_security_headers(make_console: Any) -> None:
    c: Console = await make_console(oidc=False)
    answers = [
        await c.client.get("/console/login"),  # a page
        await c.client.get("/console/", allow_redirects=False),  # a redirect to sign in
        await c.client.get("/console", allow_redirects=False),  # the bare root
        await c.client.post("/console/anything"),  # 401
        await c.client.post("/console/login/link", data={"token": "x"}),  # 403 cross-origin
        await c.client.get("/console/static/console.css"),
        await c.client.get("/console/static/missing.css"),  # 404
    ]
    for r in answers:
        h = r.headers
        assert h["Content-Security-Policy"] == CSP, r.url
        assert "script-src 'self'" in CSP and "frame-ancestors 'none'" in CSP
        assert h["X-Content-Type-Options"] == "nosniff"
        assert h["Referrer-Policy"] == "same-origin"
        assert h["X-Frame-Options"] == "DENY"
        assert h["Cross-Origin-Opener-Policy"] == "same-origin"
        assert "camera=()" in h["Permissions-Policy"]
        assert "Strict-Transport-Security" not in h  # plain http here
    assert [r.status for r in answers] == [200, 302, 301, 401, 403, 200, 404]
    assert answers[0].headers["Cache-Control"] == "no-store"
    assert answers[5].headers["Content-Type"].startswith("text/css")
    # the rest of the control listener is left alone
    assert "Content-Security-Policy" not in (await c.client.get("/healthz")).headers


async def test_over_tls_the_cookie_is_secure_and_hsts_is_sent(
    make_console: Any, tmp_path: Path
) -> None:
    paths = write_dev_tls(tmp_path / "tls")
    server_tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_tls.load_cert_chain(paths["cert"], paths["key"])
    client_tls = ssl.create_default_context(cafile=str(paths["ca"]))
    c: Console = await make_console(oidc=False, tls=server_tls)
    assert c.origin.startswith("https://")
    page = await c.client.get("/console/login", ssl=client_tls)
    assert page.headers["Strict-Transport-Security"] == "max-age=31536000"
    token = parse_qs(urlsplit(c.link()).query)["token"][0]
    used = await c.client.post(
        "/console/login/link", data={"token": token}, headers={"Origin": c.origin},
        ssl=client_tls,
    )  # fmt: skip
    assert used.status == 200
    cookie = used.headers["Set-Cookie"]
    assert "Secure" in cookie and "HttpOnly" in cookie and "SameSite=Strict" in cookie


async def test_behind_a_tls_load_balancer_the_cookie_is_secure(make_console: Any) -> None:
    """public_url https: the browser speaks TLS to the balancer, which forwards plain http."""
    c: Console = await make_console(oidc=False, public_url="https://gate.example.com/console")
    assert c.link().startswith("/console/login/link?token=")
    page = await c.client.get("/console/login")
    assert page.headers["Strict-Transport-Security"] == "max-age=31536000"
    used = await c.use_link(c.link())
    assert "Secure" in used.headers["Set-Cookie"]


async def test_behind_a_load_balancer_posts_from_the_public_origin_are_same_origin(
    make_console: Any,
) -> None:
    """The browser sends the balancer's https origin; the gateway sees its own plain http:
    the public_url's origin counts as the console's, any other origin still does not."""
    c: Console = await make_console(oidc=False, public_url="https://gate.example.com/console")
    for origin, status in (("https://evil.example", 403), ("https://gate.example.com", 200)):
        token = parse_qs(urlsplit(c.link()).query)["token"][0]
        used = await c.client.post(
            "/console/login/link", data={"token": token}, headers={"Origin": origin},
            allow_redirects=False,
        )  # fmt: skip
        assert used.status == status, origin


# -- open redirects ------------------------------------------------------------------------
@pytest.mark.parametrize(
    "given",
    ["//evil.example/console/", "https://evil.example/console/", "/\\evil.example",
     "/elsewhere", "/console/login", "/console/auth/start", "javascript:alert(1)", ""],
)  # fmt: skip
def test_next_is_a_console_page_or_home(given: str) -> None:
    assert safe_next(given) == "/console/"


def test_next_keeps_a_console_page() -> None:
    assert safe_next("/console/audit?dag=x&run=y") == "/console/audit?dag=x&run=y"


async def test_sign_in_never_sends_anyone_off_site(make_console: Any) -> None:
    c: Console = await make_console()
    page = await (await c.client.get("/console/login?next=https://evil.example/")).text()
    assert 'href="/console/auth/start?next=/console/"' in page
    done = await c.oidc_sign_in(next_path="//evil.example/x")
    assert done.status == 200
    assert 'content="0;url=/console/"' in await done.text()


# -- OIDC ----------------------------------------------------------------------------------
async def test_oidc_sign_in_with_pkce_maps_the_role_and_audits(make_console: Any) -> None:
    c: Console = await make_console()
    login = await (await c.client.get("/console/login")).text()
    assert "Sign in with 127.0.0.1" in login
    done = await c.oidc_sign_in()
    assert done.status == 200, await done.text()
    assert 'content="0;url=/console/audit"' in await done.text()
    assert await c.signed_in()
    sent = c.provider.token_requests[-1]
    assert sent["grant_type"] == "authorization_code" and len(sent["code_verifier"]) >= 43
    assert "client_secret" not in sent  # a public client: PKCE alone
    record = c.audit.records[-1]
    assert record.event == "console_signed_in"
    assert record.principal == "console:oid-ann"  # oid before sub
    assert record.detail == {"name": "ann@example.com", "role": "operator", "via": "oidc"}
    # the role is fixed at sign-in: the page header shows it
    assert "operator" in await (await c.client.get("/console/login")).text()


@pytest.mark.parametrize(
    ("roles", "expected"),
    [(["Lockgate.Viewer", "Lockgate.Admin"], "admin"), ("Lockgate.Operator", "operator"),
     (["Everyone"], "viewer"), (["Lockgate.Viewer", 7, None], "viewer")],
)  # fmt: skip
async def test_the_highest_role_the_claim_grants_wins(
    make_console: Any, roles: Any, expected: str
) -> None:
    c: Console = await make_console()
    c.provider.user["roles"] = roles
    assert (await c.oidc_sign_in()).status == 200
    assert c.audit.records[-1].detail["role"] == expected


async def test_no_role_is_refused_naming_the_claim(make_console: Any) -> None:
    c: Console = await make_console()
    c.provider.user["roles"] = ["Something.Else"]
    r = await c.oidc_sign_in()
    assert r.status == 403
    text = await r.text()
    assert "&#39;roles&#39; claim" in text and "Lockgate.Admin" in text
    assert "Something.Else" not in text
    assert not await c.signed_in()
    assert c.audit.records[-1].event == "console_sign_in_failed"
    assert c.audit.records[-1].reason == "no_role"


def _claims(**changes: Any) -> Callable[[dict[str, Any], dict[str, Any]], str]:
    def tamper(claims: dict[str, Any], header: dict[str, Any]) -> str:
        return idp.sign({**claims, **changes}, header)

    return tamper


@pytest.mark.parametrize(
    ("tamper", "reason"),
    [
        (_claims(nonce="another-sign-in"), "wrong_nonce"),
        (_claims(iss="http://127.0.0.1:1/evil"), "id_token_wrong_issuer"),
        (_claims(aud="another-client"), "id_token_wrong_audience"),
        (_claims(exp=1_000_000), "id_token_expired"),
        (_claims(aud=[idp.CLIENT_ID, "another-client"]), "id_token_wrong_azp"),
        (lambda claims, header: idp.unsigned(claims), "unsupported_alg"),
        (lambda claims, header: idp.hs256_with_public_key(claims), "unsupported_alg"),
        (lambda claims, header: idp.sign(claims, {"kid": "unknown"}), "unknown_kid"),
        (
            lambda claims, header: idp.sign(claims, header)[:-8] + "AAAAAAAA",
            "id_token_bad_signature",
        ),
    ],
    ids=[
        "nonce",
        "issuer",
        "audience",
        "expired",
        "azp",
        "alg-none",
        "hs256-public-key",
        "kid",
        "sig",
    ],
)
async def test_a_bad_id_token_is_refused(make_console: Any, tamper: Any, reason: str) -> None:
    c: Console = await make_console()
    c.provider.tamper = tamper
    r = await c.oidc_sign_in()
    assert r.status == 403
    assert "Set-Cookie" not in r.headers or "lockgate_console=" not in r.headers["Set-Cookie"]
    assert not await c.signed_in()
    failed = c.audit.records[-1]
    assert failed.event == "console_sign_in_failed" and failed.reason == reason
    assert "eyJ" not in repr(failed)  # never a token in the trail


async def test_several_audiences_are_fine_when_azp_names_the_console(make_console: Any) -> None:
    c: Console = await make_console()
    c.provider.tamper = _claims(aud=[idp.CLIENT_ID, "graph"], azp=idp.CLIENT_ID)
    assert (await c.oidc_sign_in()).status == 200


async def test_a_withdrawn_key_stops_working_within_the_hour(make_console: Any) -> None:
    c: Console = await make_console()
    assert (await c.oidc_sign_in()).status == 200
    c.provider.publish_key = False
    c.client.session.cookie_jar.clear()
    assert (await c.oidc_sign_in()).status == 200  # keys an hour old are still trusted
    oidc = c.client.server.app._subapps[0][OIDC]  # type: ignore[union-attr]
    assert oidc is not None
    oidc._keys_ok_at -= DISCOVERY_MAX_AGE  # an hour passes
    c.client.session.cookie_jar.clear()
    r = await c.oidc_sign_in()
    assert r.status == 403 and c.audit.records[-1].reason == "unknown_kid"


async def test_a_callback_is_used_once_and_only_in_the_browser_that_began_it(
    make_console: Any,
) -> None:
    c: Console = await make_console()
    start = await c.client.get("/console/auth/start", allow_redirects=False)
    back = await provider_answer(start.headers["Location"])
    callback = f"{back.path}?{back.query}"
    # another browser (the callback URL sent to a victim): no binding cookie, refused
    async with (
        aiohttp.ClientSession() as victim,
        victim.get(c.client.make_url(callback), allow_redirects=False) as r,
    ):
        assert r.status == 403 and "not started in this browser" in await r.text()
    assert c.audit.records[-1].reason == "state_not_bound"
    # a changed state is refused too
    tampered = callback.replace("state=", "state=x")
    assert (await c.client.get(tampered, allow_redirects=False)).status == 403
    # the state was not consumed by those: the real callback works, once
    c.client.session.cookie_jar.clear()
    start = await c.client.get("/console/auth/start", allow_redirects=False)
    back = await provider_answer(start.headers["Location"])
    state = parse_qs(back.query)["state"][0]
    first = await c.client.get(f"{back.path}?{back.query}", allow_redirects=False)
    assert first.status == 200
    c.client.session.cookie_jar.update_cookies(
        {"lockgate_console_signin": state}, response_url=c.client.make_url("/console/auth/")
    )
    replay = await c.client.get(f"{back.path}?{back.query}", allow_redirects=False)
    assert replay.status == 403 and "already used" in await replay.text()


async def test_the_provider_refusing_is_shown_and_audited(make_console: Any) -> None:
    c: Console = await make_console()
    start = await c.client.get("/console/auth/start", allow_redirects=False)
    state = parse_qs(urlsplit(start.headers["Location"]).query)["state"][0]
    r = await c.client.get(
        "/console/auth/callback",
        params={"error": "access_denied", "error_description": "the user said no",
                "state": state},
    )  # fmt: skip
    assert r.status == 403
    text = await r.text()
    assert "access_denied" in text and "the user said no" in text
    assert c.audit.records[-1].reason == "provider_access_denied"


async def test_a_confidential_client_sends_its_secret_from_the_file(
    make_console: Any, tmp_path: Path
) -> None:
    secret = tmp_path / "client-secret"
    secret.write_text("s3cret-value\n")
    c: Console = await make_console(client_secret_file=str(secret))
    assert (await c.oidc_sign_in()).status == 200
    assert c.provider.token_requests[-1]["client_secret"] == "s3cret-value"
    assert "s3cret-value" not in repr(c.audit.records)
