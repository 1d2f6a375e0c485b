"""A shadow policy watched through the HTTP engine: what it would deny is still served, what
it would allow still refused, and each such record carries the shadow verdict; a request it
agrees with, or a gateway without shadow files, carries none."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest

from lockgate.gateway.engine import Collaborators
from lockgate.gateway.http import HttpEngine
from lockgate.policy import Decision, PolicyStore, Request

from ..fakes import FakeAudit, FakeBroker, FakeSigner, FakeVerifier, claims_for
from .conftest import SECRETS, TOKEN, Upstream, bearer, resource

ENFORCED = """rules:
  - id: finance-orders
    effect: allow
    principals: ["airflow:prod/finance_*/*"]
    actions: [read]
    resources: [orders]
    objects: ["/orders/**", "/secret/**"]
"""
SHADOW = """mode: shadow
rules:
  - id: no-secrets
    effect: deny
    principals: ["*"]
    actions: ["*"]
    resources: [orders]
    objects: ["/secret/**"]
  - id: finance-reports
    effect: allow
    principals: ["airflow:prod/finance_*/*"]
    actions: [read]
    resources: [orders]
    objects: ["/reports/**"]
"""


async def serve(policy_dir: Path, upstream: Upstream) -> tuple[HttpEngine, FakeAudit, PolicyStore]:
    store = PolicyStore(lambda: sorted(policy_dir.glob("*.yaml")), raise_on_error=True)
    audit = FakeAudit()
    shared = Collaborators(
        FakeVerifier({TOKEN: claims_for("orders")}),
        store,
        FakeBroker({"orders-key": list(SECRETS)}),
        audit,
        FakeSigner(),
    )
    engine = HttpEngine([resource("orders", upstream.url)], shared)
    await engine.start("127.0.0.1", 0)
    return engine, audit, store


@pytest.fixture
async def policy_dir(tmp_path: Path) -> AsyncIterator[Path]:
    (tmp_path / "team.yaml").write_text(ENFORCED)
    yield tmp_path


async def get_all(engine: HttpEngine, *paths: str) -> list[int]:
    statuses = []
    async with aiohttp.ClientSession() as s:
        for path in paths:
            async with s.get(f"http://127.0.0.1:{engine.port}/orders{path}", headers=bearer()) as r:
                await r.read()
                statuses.append(r.status)
    return statuses


async def test_shadow_verdicts_are_audited_never_enforced(
    policy_dir: Path, upstream: Upstream
) -> None:
    (policy_dir / "team.shadow.yaml").write_text(SHADOW)
    engine, audit, _ = await serve(policy_dir, upstream)
    try:
        statuses = await get_all(engine, "/secret/keys", "/orders/1", "/reports/q1")
    finally:
        await engine.close()
    assert statuses == [200, 200, 403]  # the enforced policy decided every one
    assert [q["path"] for q in upstream.seen] == ["/secret/keys", "/orders/1"]
    secret, orders = audit.ahead
    assert secret.object == "/secret/keys" and secret.decision == "allow"
    assert secret.detail["shadow"] == {
        "decision": "deny",
        "rule": "no-secrets",
        "reason": "denied by rule no-secrets (team.shadow.yaml)",
    }
    assert "shadow" not in orders.detail  # shadow agrees: nothing added
    (denied,) = [r for r in audit.records if r.event == "denied"]
    assert denied.object == "/reports/q1" and denied.decision == "deny"
    assert denied.detail["shadow"]["decision"] == "allow"
    assert denied.detail["shadow"]["rule"] == "finance-reports"


async def test_a_broken_shadow_file_changes_nothing(policy_dir: Path, upstream: Upstream) -> None:
    (policy_dir / "team.shadow.yaml").write_text(SHADOW.replace("effect: deny", "effect: nope"))
    engine, audit, store = await serve(policy_dir, upstream)
    try:
        statuses = await get_all(engine, "/secret/keys", "/reports/q1")
    finally:
        await engine.close()
    assert store.shadow is None and store.shadow_error is not None
    assert statuses == [200, 403]
    assert all("shadow" not in r.detail for r in [*audit.ahead, *audit.records])


async def test_without_shadow_files_no_verdict_and_no_extra_decision(
    policy_dir: Path, upstream: Upstream, monkeypatch: pytest.MonkeyPatch
) -> None:
    engine, audit, store = await serve(policy_dir, upstream)
    decided: list[str] = []
    enforced = store.current
    real_decide = enforced.decide

    def counted(req: Request) -> Decision:
        decided.append(req.object)
        return real_decide(req)

    monkeypatch.setattr(enforced, "decide", counted)
    try:
        statuses = await get_all(engine, "/secret/keys", "/reports/q1")
    finally:
        await engine.close()
    assert statuses == [200, 403]
    assert decided == ["/secret/keys", "/reports/q1"]  # one decision per request, no more
    assert all("shadow" not in r.detail for r in [*audit.ahead, *audit.records])
