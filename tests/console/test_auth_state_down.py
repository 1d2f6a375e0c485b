"""The console with its state on PostgreSQL and the database gone: every page, the
sign-in pages too, answers 503 with Retry-After and a console page naming the state
database (never a bare 500 or a traceback)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from lockgate.console.app import mount
from lockgate.console.auth import CSP, STATE_RETRY_AFTER
from lockgate.console.links import console_link_url
from lockgate.console.web import ConsoleContext
from lockgate.state import State
from tests.console.test_auth import RecordingAudit
from tests.pgserver import PgServer
from tests.pgserver.fixtures import PgServerFactory
from tests.pgserver.state import replica_states, shared_state_settings

#: a console whose state database has stopped, and a one-time link's token made before
Down = tuple["TestClient[web.Request, web.Application]", str]


@pytest.fixture
async def console_down(
    pg_server_factory: PgServerFactory, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> AsyncIterator[Down]:
    """A console on a private server, a one-time link made while it was up, then the server
    stopped: (client, the link's token)."""
    server: PgServer = pg_server_factory()
    settings = shared_state_settings(server, tmp_path / "pg")
    with replica_states(settings, tmp_path, monkeypatch, replicas=("replica-1",)) as [state]:
        assert isinstance(state, State)
        ctx = ConsoleContext(
            state.config, state.audit_reader, RecordingAudit(), state.policy_store(),
            state.revocations, state.credentials, state.database,
        )  # fmt: skip
        root = web.Application()
        mount(root, ctx)
        client = TestClient(TestServer(root))
        await client.start_server()
        try:
            link = console_link_url(state.config, state.database("console"))
            server.stop()
            yield client, link.split("token=", 1)[1]
        finally:
            await client.close()


@pytest.mark.parametrize(
    "path", ["/console/", "/console/audit?dag=x", "/console/login/link?token={token}"]
)
async def test_a_page_with_the_state_database_down_is_a_503_naming_it(
    console_down: Down,
    path: str,
) -> None:
    client, token = console_down
    client.session.cookie_jar.update_cookies({"lockgate_console": "a-session-id"})
    answer = await client.get(path.format(token=token), allow_redirects=False)
    text = await answer.text()
    assert answer.status == 503, text
    assert answer.headers["Retry-After"] == str(STATE_RETRY_AFTER)
    assert answer.headers["Content-Security-Policy"] == CSP
    assert answer.content_type == "text/html"
    assert "State store unavailable" in text and "state database (PostgreSQL)" in text
    assert "Traceback" not in text and "127.0.0.1" not in text  # the DSN stays in the log
    assert "Sign in" in text  # nobody is signed in: the way back is the sign-in page


async def test_signing_in_with_the_state_database_down_is_a_503(
    console_down: Down,
) -> None:
    client, token = console_down
    origin = str(client.make_url("/").origin())
    answer = await client.post(
        "/console/login/link", data={"token": token}, headers={"Origin": origin},
        allow_redirects=False,
    )  # fmt: skip
    assert answer.status == 503
    assert answer.headers["Retry-After"] == str(STATE_RETRY_AFTER)
    assert "lockgate_console" not in answer.cookies
