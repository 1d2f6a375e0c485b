"""An attacker's and an operator's pass over live reload (``SIGHUP`` -> ``reload_config``).

Each test starts a Gateway from a file, rewrites the file and reloads as the signal would,
then checks that no part is left on the old catalog and that a refused reload changes
nothing."""

from __future__ import annotations

import asyncio
import contextlib
import json
import signal
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from lockgate.audit.reader import AuditReader
from lockgate.config import load_config
from lockgate.server import Gateway, State

from ._gateway_process import BearerUpstream, scaffold, serve, stop, wait_serving
from .control._stack import basic, deployment, post_form

SECRET = "reload-deploy-secret-7d"
POLICY = """\
rules:
  - id: everyone
    effect: allow
    principals: ["airflow:prod/*"]
    actions: [read]
    resources: ["*"]
"""
TASK = {"dag_id": "etl", "task_id": "load", "run_id": "r1", "try_number": "1"}


class Upstream:
    """An HTTP upstream that remembers the Authorization headers it saw and counts the
    connections it has open."""

    def __init__(self) -> None:
        self.seen: list[str] = []
        self.open = 0
        self.url = ""
        self._runner: web.AppRunner | None = None

    async def start(self) -> None:
        async def hello(request: web.Request) -> web.Response:
            self.seen.append(request.headers.get("Authorization", ""))
            return web.json_response({"ok": True})

        app = web.Application()
        app.router.add_get("/{tail:.*}", hello)
        self._runner = web.AppRunner(app)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        server = site._server
        assert server is not None
        self.url = f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}"  # type: ignore[union-attr]

    def connections(self) -> int:
        assert self._runner is not None
        server = self._runner.server
        return 0 if server is None else len(server.connections)

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()


def api(name: str, url: str, credential: str = "old-key", **kw: Any) -> dict[str, Any]:
    return {"name": name, "kind": "http", "upstream": url, "credential": credential,
            "conn_id": f"{name}_api", **kw}  # fmt: skip


class Stack:
    """A gateway served from ``lockgate.yaml``; :meth:`write` rewrites its ``resources``
    (or any section) and :meth:`reload` reloads as ``SIGHUP`` does."""

    def __init__(self, tmp_path: Path, resources: list[dict[str, Any]]) -> None:
        (tmp_path / "p.yaml").write_text(POLICY)
        self.path = tmp_path / "lockgate.yaml"
        self.doc: dict[str, Any] = {
            "data_dir": str(tmp_path / "data"),
            "listeners": {"control": {"port": 0}, "http": {"port": 0}},
            "deployments": [deployment("prod", SECRET)],
            "resources": resources,
            "credentials": [{"name": n, "type": "static"} for n in ("old-key", "new-key")],
            "policies": [str(tmp_path / "p.yaml")],
        }
        self.write()
        self.gw = Gateway(load_config(self.path))
        state = State(self.gw.config)
        state.credentials.set("old-key", "old-upstream-secret")
        state.credentials.set("new-key", "new-upstream-secret")

    def write(self, **sections: Any) -> None:
        self.doc.update(sections)
        self.path.write_text(json.dumps(self.doc))

    def reload(self) -> bool:
        return self.gw.reload_config()

    async def token(self, resource: str) -> tuple[int, str]:
        status, body = await post_form(
            self.gw, "/v1/token", basic("prod", SECRET), resource=resource, **TASK
        )
        return status, body.get("access_token", "")

    async def get(self, path: str, token: str) -> int:
        url = f"http://127.0.0.1:{self.gw.http_port}{path}"
        headers = {"Authorization": f"Bearer {token}"}
        async with aiohttp.ClientSession() as s, s.get(url, headers=headers) as r:
            return r.status


@pytest.fixture
async def upstreams() -> AsyncIterator[tuple[Upstream, Upstream]]:
    a, b = Upstream(), Upstream()
    await a.start()
    await b.start()
    yield a, b
    await a.stop()
    await b.stop()


@pytest.fixture
async def stack(tmp_path: Path, upstreams: tuple[Upstream, Upstream]) -> AsyncIterator[Stack]:
    s = Stack(tmp_path, [api("orders", upstreams[0].url)])
    await s.gw.start()
    try:
        yield s
    finally:
        await s.gw.stop()


async def test_a_token_minted_before_a_move_is_judged_and_served_on_the_new_definition(
    stack: Stack, upstreams: tuple[Upstream, Upstream]
) -> None:
    """A token names a resource, policy names resources: after the operator moves
    ``orders`` to a new upstream and credential, a token minted before still works (the
    same name, the same policy) and goes ONLY to the new upstream with the new credential."""
    old, new = upstreams
    status, token = await stack.token("orders")
    assert status == 200
    assert await stack.get("/orders/x", token) == 200
    assert old.seen == ["Bearer old-upstream-secret"]
    stack.write(resources=[api("orders", new.url, credential="new-key")])
    assert stack.reload()
    assert await stack.get("/orders/y", token) == 200
    assert old.seen == ["Bearer old-upstream-secret"]  # nothing more to the old upstream
    assert new.seen == ["Bearer new-upstream-secret"]


async def test_a_removed_resource_is_gone_from_every_door(stack: Stack) -> None:
    status, token = await stack.token("orders")
    assert status == 200
    stack.write(resources=[])
    assert stack.reload()
    assert await stack.get("/orders/x", token) == 404  # the engine
    assert (await stack.token("orders"))[0] == 404  # the token service
    _, catalog = await post_form(stack.gw, "/v1/catalog", basic("prod", SECRET))
    assert catalog["connections"] == []
    status, _ = await post_form(
        stack.gw, "/v1/poll-token", basic("prod", SECRET), resource="orders", **TASK
    )
    assert status == 400  # refused: no pollable resource of that name


@pytest.mark.parametrize(
    "breaks",
    [
        lambda doc: {"listeners": {**doc["listeners"], "http": {"port": 1}}},  # refused section
        lambda doc: {"deployments": []},  # refused section
        lambda doc: {"credentials": [{"name": "old-key", "type": "nonsense"}]},  # invalid
    ],
    ids=["listeners", "deployments", "invalid"],
)
async def test_a_refused_reload_changes_nothing_not_even_the_resources(
    stack: Stack,
    upstreams: tuple[Upstream, Upstream],
    breaks: Callable[[dict[str, Any]], dict[str, Any]],
) -> None:
    _, token = await stack.token("orders")
    before = stack.gw.config
    stack.write(resources=[api("orders", upstreams[1].url, credential="new-key")],
                **breaks(stack.doc))  # fmt: skip
    assert not stack.reload()
    assert stack.gw.config is before
    assert await stack.get("/orders/x", token) == 200
    assert upstreams[0].seen == ["Bearer old-upstream-secret"] and upstreams[1].seen == []


async def test_a_reload_storm_returns_every_pool_and_task(
    stack: Stack, upstreams: tuple[Upstream, Upstream]
) -> None:
    """100 reloads flipping the upstream back and forth leave no pool connection, profile
    task or background task behind."""
    _, token = await stack.token("orders")
    assert await stack.get("/orders/x", token) == 200
    assert upstreams[0].connections() == 1  # the pool keeps its warm connection
    tasks_before = len(asyncio.all_tasks())
    for i in range(100):
        url = upstreams[i % 2 == 0].url
        stack.write(resources=[api("orders", url)])
        assert stack.reload()
        if i % 10 == 0:
            assert await stack.get("/orders/x", token) == 200
    await asyncio.sleep(0.3)  # closed pools' sockets reach the upstreams
    assert upstreams[0].connections() + upstreams[1].connections() <= 1
    assert len(asyncio.all_tasks()) <= tasks_before + 1


def _reload_rows(stack: Stack) -> list[dict[str, Any]]:
    stack.gw.audit.flush(2.0)
    rows = AuditReader(stack.gw.config.data_dir / "audit.db").tail(50)
    return [r.to_dict() for r in rows if r.event == "config_reloaded"]


async def test_every_reload_outcome_is_in_the_audit_trail(
    stack: Stack, upstreams: tuple[Upstream, Upstream]
) -> None:
    """An auditor can tell which upstreams were served when, and see reloads refused."""
    stack.write(resources=[api("orders", upstreams[1].url), api("more", upstreams[1].url)])
    assert stack.reload()
    [applied] = _reload_rows(stack)
    assert applied["reason"] == "applied"
    assert applied["detail"] == {"worker": 0, "added": ["more"], "removed": [],
                                 "changed": ["orders"]}  # fmt: skip
    stack.write(deployments=[])
    assert not stack.reload()
    stack.path.write_text("resources: [")  # does not parse
    assert not stack.reload()
    reasons = [(r["reason"], r["detail"]) for r in _reload_rows(stack)]
    assert reasons[1:] == [
        ("refused", {"worker": 0, "sections": ["deployments"]}),
        ("invalid_file", {"worker": 0}),
    ]


async def test_a_catalog_reload_is_logged(
    stack: Stack, upstreams: tuple[Upstream, Upstream], caplog: pytest.LogCaptureFixture
) -> None:
    stack.write(resources=[api("more", upstreams[1].url)])
    with caplog.at_level("INFO"):
        assert stack.reload()
    assert any("config reloaded" in r.getMessage() for r in caplog.records)


# -- a signal early in a process's life --------------------------------------------------------
@pytest.mark.parametrize("workers", ["1", "2"])
def test_a_sighup_while_the_gateway_starts_does_not_kill_it(
    tmp_path: Path, bearer_upstream: BearerUpstream, workers: str
) -> None:
    """``systemctl reload`` (``kill -HUP``) right after a start: the default action of SIGHUP
    is to end the process, so it must be handled or ignored from the first moment on."""
    gw = scaffold(tmp_path / "lg", bearer_upstream)
    token, _ = gw.mint("finance_daily", "early")
    proc = serve(gw.config_path, "--workers", workers)
    try:
        time.sleep(0.3)  # starting: importing, loading the file, opening the stores
        proc.send_signal(signal.SIGHUP)
        wait_serving(proc, gw.url(), token)
    finally:
        stop(proc)


async def test_a_file_changed_before_the_loop_takes_sighup_is_served(
    tmp_path: Path, upstreams: tuple[Upstream, Upstream]
) -> None:
    """A worker reads the file, then ignores SIGHUP until its loop handles it: a change
    signalled in between must not leave it on the older catalog for good."""
    s = Stack(tmp_path, [api("orders", upstreams[0].url)])
    s.write(resources=[api("orders", upstreams[1].url, credential="new-key")])  # + lost HUP
    serving = asyncio.create_task(s.gw.serve_forever())
    try:
        for _ in range(100):
            if s.gw.serving:
                break
            await asyncio.sleep(0.05)
        _, token = await s.token("orders")
        assert await s.get("/orders/x", token) == 200
        assert upstreams[1].seen == ["Bearer new-upstream-secret"] and upstreams[0].seen == []
    finally:
        serving.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await serving


def _children(pid: int) -> set[int]:
    try:
        text = Path(f"/proc/{pid}/task/{pid}/children").read_text()
    except OSError:
        return set()
    return {int(p) for p in text.split()}


def test_a_sighup_while_workers_start_kills_none_of_them(
    tmp_path: Path, bearer_upstream: BearerUpstream
) -> None:
    """The supervisor passes SIGHUP on to workers that may still be importing: a worker must
    not die of it (it would be restarted, with an error logged and a gap in serving)."""
    gw = scaffold(tmp_path / "lg", bearer_upstream)
    token, _ = gw.mint("finance_daily", "early")
    proc = serve(gw.config_path, "--workers", "2")
    try:
        deadline = time.monotonic() + 15
        while len(_children(proc.pid)) < 3:  # the audit writer and both workers, spawned
            assert time.monotonic() < deadline and proc.poll() is None
            time.sleep(0.01)
        started = _children(proc.pid)
        proc.send_signal(signal.SIGHUP)
        wait_serving(proc, gw.url(), token)
        time.sleep(1.0)  # the supervisor's restart check runs every 0.5 s
        assert started <= _children(proc.pid), "a worker died of the SIGHUP and was replaced"
    finally:
        stop(proc)


async def test_a_reload_that_fails_while_applied_changes_nothing(
    stack: Stack, upstreams: tuple[Upstream, Upstream], monkeypatch: pytest.MonkeyPatch
) -> None:
    """An engine that cannot take the new catalog (a profile's store does not open) must not
    leave the gateway half on it: every part keeps the old one, and the next SIGHUP tries
    again."""
    from lockgate.gateway.http import engine as http_engine

    real = http_engine.make_profile

    def flaky(resource: Any, target: Any, data_dir: Any) -> Any:
        if resource.name == "more":
            raise OSError("disk full")
        return real(resource, target, data_dir)

    monkeypatch.setattr(http_engine, "make_profile", flaky)
    _, token = await stack.token("orders")
    stack.write(resources=[api("more", upstreams[1].url)])  # orders removed, more added
    assert not stack.reload()
    assert [r.name for r in stack.gw.config.resources] == ["orders"]
    assert await stack.get("/orders/x", token) == 200
    assert (await stack.token("more"))[0] == 404  # the control plane did not move either
    assert [r["reason"] for r in _reload_rows(stack)] == ["failed"]
    monkeypatch.setattr(http_engine, "make_profile", real)
    assert stack.reload()  # the same file, applied now
    assert (await stack.token("more"))[0] == 200
