"""A shadow policy watched through the PostgreSQL flow (real classifier, judge and policy
files): the enforced files decide every statement, the records carry the shadow verdict where
it differs, nothing where it agrees."""

from __future__ import annotations

from dataclasses import dataclass

from lockgate.gateway.engine import Collaborators
from lockgate.gateway.postgres.context import EngineContext
from lockgate.gateway.postgres.flow import Flow, SessionInfo
from lockgate.policy import PolicySet, load_policy_texts
from tests.gateway.fakes import FakeBroker, FakeSigner

from .test_flow import PROBE_FAILED, REFUSED_QUERY, RESOURCE, TOKEN, FlowHarness, errors, rfq

ENFORCED = """\
rules:
  - id: etl-sales
    effect: allow
    principals: ["airflow:prod/*/*"]
    actions: [read]
    resources: [pg]
    objects: ["sales.*", "public.*"]
"""
SHADOW = """\
mode: shadow
rules:
  - id: no-customers
    effect: deny
    principals: ["*"]
    actions: [read]
    resources: [pg]
    objects: ["sales.customers"]
  - id: etl-sales
    effect: allow
    principals: ["airflow:prod/*/*"]
    actions: [read, write]
    resources: [pg]
    objects: ["sales.*", "public.*"]
"""


@dataclass
class Store:
    current: PolicySet
    shadow: PolicySet | None


def harness() -> FlowHarness:
    """The flow harness, its collaborators built on the enforced and the shadow set."""
    h = FlowHarness()
    loaded = load_policy_texts([("team.yaml", ENFORCED), ("team.shadow.yaml", SHADOW)])
    assert loaded.shadow is not None, loaded.shadow_error
    shared = Collaborators(
        h.verifier, Store(loaded.enforced, loaded.shadow), FakeBroker({}), h.audit, FakeSigner()
    )
    h.ctx = EngineContext(shared)
    h.ctx.resources = {RESOURCE: h.resource}
    h.flow = Flow(SessionInfo(h.claims, TOKEN, h.resource, h.ctx), h.scope)
    return h


async def test_would_deny_is_served_and_recorded() -> None:
    h = harness()
    out = await h.query("SELECT * FROM sales.customers")
    assert out.to_server and out.to_server != REFUSED_QUERY  # forwarded: shadow not enforced
    [admitted] = h.admitted()
    assert (admitted.decision, admitted.rule) == ("allow", "etl-sales")
    assert admitted.detail["shadow"] == {
        "decision": "deny",
        "rule": "no-customers",
        "reason": "denied by rule no-customers (team.shadow.yaml)",
    }


async def test_agreement_adds_nothing_and_would_allow_is_still_refused() -> None:
    h = harness()
    await h.query("SELECT * FROM sales.orders")
    [admitted] = h.admitted()
    assert "shadow" not in admitted.detail
    h = harness()
    out = await h.query("DELETE FROM sales.orders")
    assert out.to_server == REFUSED_QUERY
    [error] = errors(h.answer(PROBE_FAILED, rfq("I")))
    assert error["C"] == "42501"
    [denied] = h.outcomes("denied")
    assert denied.detail["shadow"]["decision"] == "allow"
    assert denied.detail["shadow"]["rule"] == "etl-sales"
