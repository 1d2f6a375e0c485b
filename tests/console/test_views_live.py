"""The console's live page over real state: tokens live now from a real trail (revoked and
expired ones left out, last use shown, never a token string), sessions from the registry,
blocks; revoke and block from the console refuse the token at the real verifier at once,
audited as the human before the 303; a POST without the CSRF token or from a viewer does
nothing."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any, cast

import pytest
from aiohttp import ClientSession
from aiohttp.test_utils import TestServer

from lockgate.audit import AuditReader, AuditRecord
from lockgate.console import views_live
from lockgate.console.web import ConsoleContext, ConsoleUser
from lockgate.errors import AuthenticationError
from lockgate.gateway.live_sessions import SessionRegistry
from lockgate.identity import TaskIdentity, TokenIssuer, TokenVerifier
from lockgate.identity.model import Claims
from lockgate.state import State
from tests.console._state import RESOURCE, Trail, real_state
from tests.console._views import CSRF_TOKEN, signed_in, views_app


@pytest.fixture
def state(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[State]:
    monkeypatch.delenv("LOCKGATE_MASTER_KEY", raising=False)
    with real_state(tmp_path) as st:
        yield st


@pytest.fixture
def trail(state: State) -> Iterator[Trail]:
    t = Trail(state)
    try:
        yield t
    finally:
        t.close()


def mint(st: State, trail: Trail, dag: str = "etl", run: str = "run-1") -> tuple[str, Claims]:
    """A real token, announced by its token_issued record as the token service writes it."""
    issuer = TokenIssuer(st.keys, st.config.issuer_url)
    token, claims = issuer.mint(TaskIdentity("prod", dag, "load", run, 1), RESOURCE, 900)
    trail.write(
        AuditRecord(
            event="token_issued", ts=float(claims.iat), deployment="prod", dag_id=dag,
            task_id="load", run_id=run, try_number=1, map_index=-1,
            principal=claims.sub, resource=RESOURCE, decision="allow", action="mint",
            jti=claims.jti, detail={"ttl": 900, "expires_at": claims.exp},
        )
    )  # fmt: skip
    return token, claims


def context_of(st: State, trail: Trail, live: Any = None) -> ConsoleContext:
    cfg = st.config
    return ConsoleContext(
        config=cfg,
        audit_reader=lambda: AuditReader(cfg.data_dir / "audit.db"),
        audit=trail.log,
        policy=cast(Any, None),
        revocations=st.revocations,
        credentials=st.credentials,
        database=st.database,
        live=live,
    )


class Console:
    def __init__(self, server: TestServer, http: ClientSession) -> None:
        self.server = server
        self.http = http
        self.origin = str(server.make_url("/")).rstrip("/")

    async def get(self, path: str, **params: str) -> tuple[int, str]:
        async with self.http.get(self.server.make_url(path), params=params) as r:
            return r.status, await r.text()

    async def post(
        self, data: dict[str, str], *, csrf: str | None = CSRF_TOKEN
    ) -> tuple[int, str, str]:
        form = dict(data)
        if csrf is not None:
            form["csrf"] = csrf
        headers = {"Origin": self.origin}
        async with self.http.post(
            self.server.make_url("/console/live/act"), data=form, headers=headers,
            allow_redirects=False,
        ) as r:  # fmt: skip
            return r.status, r.headers.get("Location", ""), await r.text()


async def serve(ctx: ConsoleContext, user: ConsoleUser | None = None) -> AsyncIterator[Console]:
    server = TestServer(views_app(ctx, views_live.add_routes, user))
    await server.start_server()
    try:
        async with ClientSession() as http:
            yield Console(server, http)
    finally:
        await server.close()


@pytest.fixture
async def console(state: State, trail: Trail) -> AsyncIterator[Console]:
    async for c in serve(context_of(state, trail)):
        yield c


def verifier(st: State) -> TokenVerifier:
    return TokenVerifier(st.keys, st.revocations, st.config.issuer_url)


async def test_live_tokens_are_listed_with_their_task_and_last_use_never_the_token(
    state: State, trail: Trail, console: Console
) -> None:
    token, claims = mint(state, trail)
    other_token, other = mint(state, trail, dag="reports", run="run-9")
    trail.write(
        AuditRecord(event="allowed", dag_id="etl", run_id="run-1", jti=claims.jti,
                    resource=RESOURCE, decision="allow", action="read", object="/orders"),
    )  # fmt: skip
    status, page = await console.get("/console/live")
    assert status == 200
    assert claims.jti in page and other.jti in page
    assert token not in page and other_token not in page
    assert "run-9" in page and "allowed" in page and "not used yet" in page
    # a DAG filter narrows it
    status, page = await console.get("/console/live", dag="reports")
    assert other.jti in page and claims.jti not in page
    # a revoked token is no longer live
    state.revocations.revoke_jti(other.jti, time.time() + 900, "test")
    status, page = await console.get("/console/live")
    assert other.jti not in page and claims.jti in page


async def test_revoke_from_the_console_refuses_the_token_and_audits_the_human(
    state: State, trail: Trail, console: Console
) -> None:
    token, claims = mint(state, trail)
    kept, _ = mint(state, trail, dag="reports")
    check = verifier(state)
    assert check.verify(token, RESOURCE).jti == claims.jti
    status, page = await console.get("/console/live/confirm", act="revoke_token", jti=claims.jti)
    assert status == 200 and claims.jti in page and 'name="csrf"' in page
    status, location, _ = await console.post({"act": "revoke_token", "jti": claims.jti})
    assert status == 303 and location.startswith("/console/live?done=revoke_token")
    with pytest.raises(AuthenticationError):
        check.verify(token, RESOURCE)
    assert check.verify(kept, RESOURCE)  # another token is untouched
    [record] = trail.rows("token_revoked")
    assert (record.jti, record.principal, record.action) == (claims.jti, "console:alice", "revoke")
    assert record.detail == {"by": "alice@example.com", "role": "admin", "via": "oidc"}
    status, page = await console.get(location)
    assert f"Token {claims.jti} revoked" in page and claims.jti not in page.split("Tokens live")[1]


async def test_block_and_unblock_a_dag_from_the_console(
    state: State, trail: Trail, console: Console
) -> None:
    token, _ = mint(state, trail)
    status, location, _ = await console.post(
        {"act": "block_dag", "dag": "etl", "deployment": "prod", "reason": "incident 7"}
    )
    assert status == 303
    with pytest.raises(AuthenticationError):
        verifier(state).verify(token, RESOURCE)
    blk = state.revocations.blocked("prod", "etl")
    assert blk is not None and blk.by == "alice@example.com" and blk.reason == "incident 7"
    status, page = await console.get("/console/live")
    assert "Kill switch" in page and "incident 7" in page and "alice@example.com" in page
    status, location, _ = await console.post(
        {"act": "unblock_dag", "dag": "etl", "deployment": "prod"}
    )
    assert status == 303 and "done=unblock_dag" in location
    assert state.revocations.blocked("prod", "etl") is None
    [blocked] = trail.rows("mint_blocked")
    [unblocked] = trail.rows("mint_unblocked")
    assert (blocked.dag_id, blocked.deployment, blocked.reason, blocked.principal) == (
        "etl", "prod", "incident 7", "console:alice",
    )  # fmt: skip
    assert unblocked.principal == "console:alice" and unblocked.detail["role"] == "admin"
    # nothing left to lift: said so, nothing audited
    status, location, _ = await console.post({"act": "unblock_dag", "dag": "etl"})
    assert "done=no_unblock_dag" in location and len(trail.rows("mint_unblocked")) == 1


async def test_revoke_a_run_leaves_other_runs_alone(
    state: State, trail: Trail, console: Console
) -> None:
    first, _ = mint(state, trail, run="run-1")
    second, _ = mint(state, trail, run="run-2")
    status, _, _ = await console.post({"act": "revoke_run", "dag": "etl", "run": "run-1"})
    assert status == 303
    with pytest.raises(AuthenticationError):
        verifier(state).verify(first, RESOURCE)
    assert verifier(state).verify(second, RESOURCE)
    [record] = trail.rows("token_revoked")
    assert (record.dag_id, record.run_id, record.jti) == ("etl", "run-1", None)


async def test_a_post_without_the_csrf_token_or_from_elsewhere_does_nothing(
    state: State, trail: Trail, console: Console
) -> None:
    token, claims = mint(state, trail)
    status, _, _ = await console.post({"act": "revoke_token", "jti": claims.jti}, csrf=None)
    assert status == 403
    status, _, _ = await console.post({"act": "revoke_token", "jti": claims.jti}, csrf="wrong")
    assert status == 403
    async with console.http.post(
        console.server.make_url("/console/live/act"),
        data={"act": "revoke_token", "jti": claims.jti, "csrf": CSRF_TOKEN},
        headers={"Origin": "https://evil.example"}, allow_redirects=False,
    ) as r:  # fmt: skip
        assert r.status == 403
    assert verifier(state).verify(token, RESOURCE).jti == claims.jti
    assert trail.rows("token_revoked") == []


async def test_a_viewer_sees_the_page_but_cannot_revoke(state: State, trail: Trail) -> None:
    token, claims = mint(state, trail)
    async for c in serve(context_of(state, trail), signed_in("viewer", "victor")):
        status, page = await c.get("/console/live")
        assert status == 200 and claims.jti in page and "Revoke token" not in page
        status, _ = await c.get("/console/live/confirm", act="revoke_token", jti=claims.jti)
        assert status == 403
        status, _, _ = await c.post({"act": "revoke_token", "jti": claims.jti})
        assert status == 403
    assert verifier(state).verify(token, RESOURCE).jti == claims.jti
    assert trail.rows("token_revoked") == []


async def test_only_an_admin_blocks_a_deployment(state: State, trail: Trail) -> None:
    token, _ = mint(state, trail)
    async for c in serve(context_of(state, trail), signed_in("operator", "olga")):
        status, _, _ = await c.post({"act": "block_deployment", "deployment": "prod"})
        assert status == 403
        status, page = await c.get("/console/live")
        assert "Block DAG" in page and "Block deployment" not in page
    assert state.revocations.blocked("prod", "etl") is None
    async for c in serve(context_of(state, trail)):
        status, _, _ = await c.post({"act": "block_deployment", "deployment": "nope"})
        assert status == 400  # a typo would block nothing
        status, _, _ = await c.post({"act": "block_deployment", "deployment": "prod"})
        assert status == 303
    with pytest.raises(AuthenticationError):
        verifier(state).verify(token, RESOURCE)


async def test_a_trail_that_cannot_write_refuses_the_action(state: State, trail: Trail) -> None:
    from lockgate.errors import AuditUnavailable

    class Refusing:
        def check_writable(self) -> None:
            raise AuditUnavailable("disk full")

    token, claims = mint(state, trail)
    ctx = context_of(state, trail)
    ctx.audit = Refusing()
    async for c in serve(ctx):
        status, _, page = await c.post({"act": "revoke_token", "jti": claims.jti})
        assert status == 503 and "nothing was done" in page
    assert verifier(state).verify(token, RESOURCE).jti == claims.jti


async def test_sessions_open_now_are_listed_from_the_registry(
    state: State, trail: Trail, tmp_path: Path
) -> None:
    registry = SessionRegistry(tmp_path / "live.db", "r1", 0)
    registry.start()
    _, claims = mint(state, trail)
    registry.opened("postgres", "pg", claims, "10.1.2.3:5000")
    registry.flush()
    ctx = context_of(state, trail, views_live.LiveSessionsView(registry))
    async for c in serve(ctx):
        status, page = await c.get("/console/live")
        assert status == 200 and "10.1.2.3:5000" in page and "r1/0" in page
        assert "Sessions open now" in page
        status, page = await c.get("/console/live", dag="other")
        assert "10.1.2.3:5000" not in page
    registry.close()


def test_live_tokens_leave_out_expired_ones_and_say_when_more_were_issued(
    state: State, trail: Trail
) -> None:
    from lockgate.console.live import live_tokens

    _, old = mint(state, trail, run="run-old")
    _, new = mint(state, trail, run="run-new")
    with AuditReader(trail.path) as reader:
        every = live_tokens(reader, state.revocations, max_ttl=3600)
        assert [t.jti for t in every.tokens] == [new.jti, old.jti] and not every.more
        newest = live_tokens(reader, state.revocations, max_ttl=3600, limit=1)
        assert [t.jti for t in newest.tokens] == [new.jti] and newest.more
        later = live_tokens(reader, state.revocations, max_ttl=3600, now=time.time() + 901)
        assert later.tokens == []  # expired


def test_every_live_tokens_last_use_is_read_at_once(
    state: State, trail: Trail, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The newest record since the issue other than the issue, one read for every token (a
    query per token made the page cost 200+ read transactions on the shared trail)."""
    from lockgate.console.live import live_tokens

    _, used = mint(state, trail, run="run-used")
    _, idle = mint(state, trail, run="run-idle")
    now = time.time()
    trail.write(
        AuditRecord(event="allowed", ts=now, dag_id="etl", jti=used.jti, decision="allow"),
        AuditRecord(event="denied", ts=now + 1, dag_id="etl", jti=used.jti, decision="deny"),
    )  # fmt: skip
    asked: list[dict[str, float]] = []
    real = AuditReader.last_uses

    def counted(self: AuditReader, tokens: dict[str, float]) -> dict[str, tuple[float, str]]:
        asked.append(dict(tokens))
        return real(self, tokens)

    monkeypatch.setattr(AuditReader, "last_uses", counted)
    with AuditReader(trail.path) as reader:
        found = {t.jti: t for t in live_tokens(reader, state.revocations, max_ttl=3600).tokens}
    assert asked == [{idle.jti: float(idle.iat), used.jti: float(used.iat)}]
    assert (found[used.jti].last_use, found[used.jti].last_event) == (now + 1, "denied")
    assert (found[idle.jti].last_use, found[idle.jti].last_event) == (None, None)


async def test_a_record_that_cannot_be_written_after_the_change_is_said_so(
    state: State, trail: Trail
) -> None:
    from lockgate.errors import AuditUnavailable

    class FailingWrite:
        def check_writable(self) -> None:
            return None

        async def write(self, record: AuditRecord) -> None:
            raise AuditUnavailable("disk full")

    token, claims = mint(state, trail)
    ctx = context_of(state, trail)
    ctx.audit = FailingWrite()
    async for c in serve(ctx):
        status, _, page = await c.post({"act": "revoke_token", "jti": claims.jti})
        assert status == 503 and "in force" in page and "disk full" not in page
    with pytest.raises(AuthenticationError):  # a revocation is never taken back
        verifier(state).verify(token, RESOURCE)


async def test_every_input_has_a_label_and_every_table_a_caption(
    state: State, trail: Trail, console: Console
) -> None:
    from html.parser import HTMLParser

    class Page(HTMLParser):
        def __init__(self) -> None:
            super().__init__()
            self.inputs: list[str] = []
            self.labels: set[str] = set()
            self.tables = self.captions = 0

        def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
            a = dict(attrs)
            if tag == "input" and a.get("type") != "hidden":
                self.inputs.append(a.get("id") or "")
            elif tag == "label":
                self.labels.add(a.get("for") or "")
            elif tag == "table":
                self.tables += 1
            elif tag == "caption":
                self.captions += 1

    _, claims = mint(state, trail)
    state.revocations.block("prod", "reports", "someone", "test")
    for path, params in (
        ("/console/live", {}),
        ("/console/live/confirm", {"act": "revoke_token", "jti": claims.jti}),
    ):
        status, html = await console.get(path, **params)
        assert status == 200
        page = Page()
        page.feed(html)
        assert page.inputs and all(i and i in page.labels for i in page.inputs), page.inputs
        assert page.tables == page.captions
        assert "style=" not in html and "<script" not in html
