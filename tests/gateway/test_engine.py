"""The Engine interface: one checked bundle of collaborators, and live catalogs."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from lockgate.config import HttpResource, ListenerConfig, Listeners
from lockgate.gateway.cql import CqlEngine
from lockgate.gateway.engine import Collaborators, Engine
from lockgate.gateway.http import HttpEngine

from .fakes import (
    FakeAudit,
    FakeBroker,
    FakePolicy,
    FakePolicySet,
    FakeSigner,
    FakeVerifier,
    claims_for,
)


def shared(**tokens: Any) -> Collaborators:
    return Collaborators(
        FakeVerifier(tokens),
        FakePolicy(FakePolicySet([("*", "*")])),
        FakeBroker({"key": ["up-secret"]}),
        FakeAudit(),
        FakeSigner(),
    )


# -- the bundle ----------------------------------------------------------------------------
def test_the_bundle_builds_what_engines_share_once() -> None:
    bundle = shared()
    assert bundle.secrets is bundle.secrets and bundle.records is bundle.records
    bundle.metrics.count("orders", "read", "allow")  # cached child, no label lookup after
    bundle.metrics.observe_upstream("orders", 0.001)


def test_a_collaborator_missing_a_method_fails_at_construction() -> None:
    class NoWriteAhead:
        def check_writable(self) -> None: ...
        def durable(self) -> None: ...
        def emit(self, record: Any) -> None: ...

    with pytest.raises(TypeError, match=r"audit\.write_ahead"):
        Collaborators(
            FakeVerifier(), FakePolicy(FakePolicySet([])), FakeBroker({}), NoWriteAhead(),  # type: ignore[arg-type]
            FakeSigner(),
        )  # fmt: skip
    with pytest.raises(TypeError, match=r"verifier\.verify.*sign_assertion"):
        Collaborators(
            object(), FakePolicy(FakePolicySet([])), FakeBroker({}), FakeAudit(), "not callable",  # type: ignore[arg-type]
        )  # fmt: skip


def test_both_engines_implement_the_interface() -> None:
    def conforms(cls: type[Engine]) -> type[Engine]:  # checked by mypy
        return cls

    for cls in (conforms(HttpEngine), conforms(CqlEngine)):
        for name in ("listen", "update_resources", "close", "ports"):
            assert hasattr(cls, name), (cls, name)
    assert (HttpEngine.kind, HttpEngine.every_worker) == ("http", True)
    assert (CqlEngine.kind, CqlEngine.every_worker) == ("cql", False)


def test_engines_share_one_bundle_and_keep_only_their_kind() -> None:
    bundle = shared()
    http = HttpEngine([resource("orders", "http://127.0.0.1:9")], bundle)
    cql = CqlEngine([resource("orders", "http://127.0.0.1:9")], bundle)
    assert http.secrets is bundle.secrets and cql.ctx.secrets is bundle.secrets
    assert list(http.proxy.resources) == ["orders"] and cql.ctx.resources == {}


# -- HTTP: live catalog --------------------------------------------------------------------
def resource(name: str, url: str, **kw: Any) -> HttpResource:
    return HttpResource(name=name, kind="http", upstream=url, credential="key", **kw)


@pytest.fixture
async def upstream() -> AsyncIterator[str]:
    async def hello(request: web.Request) -> web.Response:
        return web.json_response({"path": request.path})

    app = web.Application()
    app.router.add_get("/{tail:.*}", hello)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    yield f"http://127.0.0.1:{port}"
    await runner.cleanup()


async def get(url: str, token: str) -> int:
    async with (
        aiohttp.ClientSession() as s,
        s.get(url, headers={"Authorization": f"Bearer {token}"}) as r,
    ):
        return r.status


async def test_http_serves_a_new_catalog_without_a_restart(upstream: str) -> None:
    bundle = shared(**{"tok-a": claims_for("a"), "tok-b": claims_for("b")})
    engine = HttpEngine([resource("a", upstream)], bundle)
    await engine.listen(Listeners(http=ListenerConfig(port=0)))
    try:
        base = f"http://127.0.0.1:{engine.ports['http']}"
        assert await get(f"{base}/a/x", "tok-a") == 200
        assert await get(f"{base}/b/x", "tok-b") == 404
        pool = engine.pool("a")
        engine.update_resources([resource("a", upstream), resource("b", upstream)])
        assert engine.pool("a") is pool  # unchanged: warm connections kept
        assert await get(f"{base}/b/x", "tok-b") == 200
        engine.update_resources([resource("b", upstream)])
        assert await get(f"{base}/a/x", "tok-a") == 404  # removed: refused, audited
        assert await get(f"{base}/b/x", "tok-b") == 200
    finally:
        await engine.close()
    audit = bundle.audit
    assert isinstance(audit, FakeAudit)
    refused = audit.records[-2]
    assert (refused.event, refused.reason) == ("denied", "unknown_resource")
    assert refused.detail["request"] == "GET /a/x"
