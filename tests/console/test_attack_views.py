"""The console's pages under attack: what a pipeline wrote into the audit trail (a DAG id, a
run id, an object) and what a signed-in person types into a form must never do more than
the page says. Each test is one attack that once worked, or one that must stay refused:
an operator lifting or setting an admin's deployment-wide kill switch through a DAG named
``*``; a viewer holding every worker thread with exports; ..."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from aiohttp import ClientSession
from aiohttp.test_utils import TestServer

from lockgate.audit import AuditPage, AuditQuery, AuditReader
from lockgate.console import views_audit, views_audit_export
from lockgate.identity.revocation import ANY_DAG
from lockgate.state import State
from tests.console import test_views_audit as audit_views
from tests.console._views import signed_in, views_app
from tests.console.test_views_live import (
    Console,
    Trail,
    context_of,
    serve,
    state,
    trail,
)

__all__ = ["state", "trail"]  # the fixtures, imported


@pytest.fixture
async def operator(state: State, trail: Trail) -> AsyncIterator[Console]:
    async for c in serve(context_of(state, trail), signed_in("operator", "olivia")):
        yield c


@pytest.mark.parametrize("act", ["block_dag", "unblock_dag", "revoke_dag", "revoke_run"])
async def test_a_dag_named_star_is_refused_it_would_be_the_whole_deployment(
    state: State, trail: Trail, operator: Console, act: str
) -> None:
    """``*`` is how the store says "every DAG of a deployment": blocking DAG ``*`` of prod
    is blocking prod (an admin's action), and unblocking it lifts an admin's kill switch."""
    state.revocations.block("prod", None, "admin@example.com", "incident 7")
    form = {"act": act, "deployment": "prod", "dag": ANY_DAG, "run": "r1"}
    status, _ = await operator.get("/console/live/confirm", **form)
    assert status == 400
    status, _, _ = await operator.post(form)
    assert status == 400
    assert [(b.deployment, b.dag_id) for b in state.revocations.blocks()] == [("prod", "*")]
    assert not trail.rows("mint_unblocked") and not trail.rows("mint_blocked")
    assert not trail.rows("token_revoked")


# -- exports: bounded work per person ---------------------------------------------------------
async def test_exports_at_once_are_capped_the_next_is_told_to_retry(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Each export may read up to EXPORT_CAP records in worker threads: a page of export
    links opened fifty times over would hold every worker thread of the primary (where
    tokens are minted) reading the trail. Past MAX_EXPORTS at once: 429, Retry-After."""
    db = tmp_path / "audit.db"
    audit_views._write(db, audit_views._records())
    release = asyncio.Event()
    real_page = views_audit_export._page

    async def slow_page(reader: AuditReader, q: AuditQuery, older: str | None) -> AuditPage:
        await release.wait()  # an export reading a long trail
        return await real_page(reader, q, older)

    monkeypatch.setattr(views_audit_export, "_page", slow_page)
    server = TestServer(views_app(audit_views._context(db), views_audit.add_routes))
    await server.start_server()
    try:
        async with ClientSession() as http:
            url = server.make_url("/console/audit/export.csv")
            running = [
                asyncio.create_task(http.get(url)) for _ in range(views_audit_export.MAX_EXPORTS)
            ]
            await asyncio.sleep(0.2)  # they hold their slots, waiting on the trail
            async with http.get(url) as refused:
                assert refused.status == 429
                assert refused.headers["Retry-After"].isdigit()
            release.set()
            for task in running:
                async with await task as answer:
                    assert answer.status == 200
                    assert "orders" in await answer.text()
            async with http.get(url) as again:  # the slots are given back
                assert again.status == 200
    finally:
        await server.close()
