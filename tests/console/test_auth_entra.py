"""Signing in to the console through the test Entra ID (:mod:`lockgate.demo.standins.entra`):
its sign-in form, app roles, PKCE and ID tokens as the service issues them; a user without a
Lockgate role, a cancelled sign-in and a confidential client's secret."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator, Callable
from html import unescape
from pathlib import Path
from typing import Any
from urllib.parse import urljoin, urlsplit

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer, unused_port

from lockgate.config import LockgateConfig
from lockgate.console.app import mount
from lockgate.console.web import ConsoleContext
from lockgate.demo.standins.entra import FakeEntra
from lockgate.demo.standins.entra import start as start_entra
from lockgate.state import State
from tests.console.test_auth import RecordingAudit

CLIENT_ID = "11111111-2222-3333-4444-555555555555"


async def _through_entra(
    client: TestClient,  # type: ignore[type-arg]
    username: str,
    password: str,
    *,
    cancel: bool = False,
) -> aiohttp.ClientResponse:
    """Start a sign-in, fill Entra's form as a person would, and come back."""
    start = await client.get("/console/auth/start?next=/console/live", allow_redirects=False)
    assert start.status == 302
    async with aiohttp.ClientSession() as browser:  # the browser, at Entra
        async with browser.get(start.headers["Location"]) as form_page:
            html = await form_page.text()
            action = urljoin(str(form_page.url), unescape(_find(r'action="([^"]+)"', html)))
            ctx = unescape(_find(r'name="ctx" value="([^"]*)"', html))
        form = {"ctx": ctx, "login": username, "passwd": password,
                "action": "cancel" if cancel else "signin"}  # fmt: skip
        async with browser.post(action, data=form, allow_redirects=False) as answer:
            assert answer.status == 302, await answer.text()
            back = urlsplit(answer.headers["Location"])
    assert back.path == "/console/auth/callback"
    return await client.get(f"{back.path}?{back.query}", allow_redirects=False)


def _find(pattern: str, html: str) -> str:
    found = re.search(pattern, html)
    assert found, pattern
    return found.group(1)


@pytest.fixture
async def entra_console(tmp_path: Path) -> AsyncIterator[Callable[..., Any]]:
    closers: list[Any] = []

    async def make(secret: str | None = None) -> tuple[TestClient, RecordingAudit, FakeEntra]:  # type: ignore[type-arg]
        entra = FakeEntra()
        runner = await start_entra(entra)
        closers.append(runner.cleanup)
        port = unused_port()  # the redirect URI is registered before the console serves
        base = f"http://127.0.0.1:{port}"
        entra.register_app(
            CLIENT_ID, [f"{base}/console/auth/callback"], secret=secret,
            app_roles=["Lockgate.Admin", "Lockgate.Operator", "Lockgate.Viewer"],
            name="Lockgate console",
        )  # fmt: skip
        entra.add_user("ann@contoso.example", "pw-ann", name="Ann", roles=["Lockgate.Operator"])
        entra.add_user("bob@contoso.example", "pw-bob", name="Bob", roles=["Other.Role"])
        oidc: dict[str, Any] = {"issuer": f"{entra.base_url}/{entra.tenant}/v2.0",
                                "client_id": CLIENT_ID}  # fmt: skip
        if secret is not None:
            secret_file = tmp_path / "console-secret"
            secret_file.write_text(secret)
            oidc["client_secret_file"] = secret_file
        config = LockgateConfig(data_dir=tmp_path / "data", console={"oidc": oidc})
        state = State(config)
        closers.append(state.close)
        audit = RecordingAudit()
        ctx = ConsoleContext(
            config, state.audit_reader, audit, state.policy_store(), state.revocations,
            state.credentials, state.database, base_url=base,
        )  # fmt: skip
        root = web.Application()
        mount(root, ctx)
        client = TestClient(TestServer(root, port=port))
        await client.start_server()
        closers.append(client.close)
        return client, audit, entra

    yield make
    for close in reversed(closers):
        result = close()
        if result is not None:
            await result


async def test_a_person_signs_in_through_entra_with_their_app_role(entra_console: Any) -> None:
    client, audit, entra = await entra_console()
    done = await _through_entra(client, "ann@contoso.example", "pw-ann")
    assert done.status == 200, await done.text()
    assert 'content="0;url=/console/live"' in await done.text()
    signed_in = audit.records[-1]
    assert signed_in.event == "console_signed_in"
    assert signed_in.detail == {"name": "ann@contoso.example", "role": "operator", "via": "oidc"}
    ann = entra.sign_in.users["ann@contoso.example"]
    assert signed_in.principal == f"console:{ann.oid}"  # Entra's oid: stable per person
    assert entra.sign_in.id_tokens[-1]["nonce"]  # the nonce the console sent came back
    page = await client.get("/console/login")
    assert "operator" in await page.text()


async def test_a_person_without_a_lockgate_role_is_refused(entra_console: Any) -> None:
    client, audit, _ = await entra_console()
    r = await _through_entra(client, "bob@contoso.example", "pw-bob")
    assert r.status == 403
    assert "no Lockgate role" in await r.text()
    assert audit.records[-1].reason == "no_role"


async def test_cancelling_at_entra_is_shown(entra_console: Any) -> None:
    client, audit, _ = await entra_console()
    r = await _through_entra(client, "ann@contoso.example", "", cancel=True)
    assert r.status == 403
    assert "access_denied" in await r.text()
    assert audit.records[-1].reason == "provider_access_denied"


async def test_a_confidential_client_authenticates_with_its_secret(entra_console: Any) -> None:
    client, audit, _ = await entra_console(secret="console-secret-value")  # Entra demands it
    done = await _through_entra(client, "ann@contoso.example", "pw-ann")
    assert done.status == 200, await done.text()
    assert "console-secret-value" not in repr(audit.records)
