"""Two instances of one mapped task through the HTTP engine, judged by a real policy with a
``map_index`` condition: one is forwarded, the other refused with the reason, both audited
under the same principal with their own map index."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass, replace

import aiohttp
import pytest

from lockgate.gateway.engine import Collaborators
from lockgate.gateway.http import HttpEngine
from lockgate.policy import PolicySet, parse_policy_texts

from ..fakes import FakeAudit, FakeBroker, FakeSigner, FakeVerifier, claims_for
from .conftest import SECRETS, Upstream, bearer, resource

PRINCIPAL = "airflow:prod/finance_daily/load_orders"  # what claims_for gives every instance
POLICY = f"""\
rules:
  - id: first-two-shards
    effect: allow
    principals: ["{PRINCIPAL}"]
    actions: [read]
    resources: [orders]
    objects: ["/shards/**"]
    conditions: {{map_index: [0, 1]}}
  - id: unmapped-reads-all
    effect: allow
    principals: ["{PRINCIPAL}"]
    actions: [read]
    resources: [orders]
    conditions: {{mapped: false}}
"""


@dataclass
class PolicySource:
    current: PolicySet


@pytest.fixture
async def gateway(upstream: Upstream) -> AsyncIterator[tuple[str, FakeAudit]]:
    base = claims_for("orders")
    verifier = FakeVerifier(
        {
            "tok-map-1": replace(base, jti="j1", map_index=1),
            "tok-map-2": replace(base, jti="j2", map_index=2),
            "tok-unmapped": replace(base, jti="j3", map_index=-1),
        }
    )
    policy = PolicySource(parse_policy_texts([("policies/shards.yaml", POLICY)]))
    audit = FakeAudit()
    shared = Collaborators(
        verifier, policy, FakeBroker({"orders-key": list(SECRETS)}), audit, FakeSigner()
    )
    engine = HttpEngine([resource("orders", upstream.url)], shared)
    await engine.start("127.0.0.1", 0)
    try:
        yield f"http://127.0.0.1:{engine.port}", audit
    finally:
        await engine.close()


async def test_two_map_indexes_one_allowed_one_denied(
    gateway: tuple[str, FakeAudit], upstream: Upstream
) -> None:
    url, audit = gateway
    async with aiohttp.ClientSession() as s:
        async with s.get(f"{url}/orders/shards/a", headers=bearer("tok-map-1")) as r:
            assert r.status == 200
        async with s.get(f"{url}/orders/shards/a", headers=bearer("tok-map-2")) as r:
            assert r.status == 403
            refused = await r.json()
        async with s.get(f"{url}/orders/anything", headers=bearer("tok-unmapped")) as r:
            assert r.status == 200
    assert refused["principal"] == PRINCIPAL
    assert refused["reason"] == (
        "rule first-two-shards matched but its condition map_index 0, 1 does not hold (map_index 2)"
    )
    assert [q["path"] for q in upstream.seen] == ["/shards/a", "/anything"]
    by_index = {r.map_index: r for r in audit.records}
    assert {r.principal for r in audit.records} == {PRINCIPAL}
    assert by_index[1].event == "allowed" and by_index[1].rule == "first-two-shards"
    assert (
        by_index[1].reason == "allowed by rule first-two-shards (shards.yaml): map_index 1 in 0, 1"
    )
    assert by_index[2].event == "denied" and by_index[2].decision == "deny"
    assert by_index[-1].event == "allowed" and by_index[-1].rule == "unmapped-reads-all"
