"""The record builder's shadow verdicts: asked only for policy decisions (``admitted`` and
``denied``), never for other events, never changing the caller's detail, and costing no
decision at all while the policy has no shadow set."""

from __future__ import annotations

from typing import Any

from lockgate.gateway.engine import Collaborators, ShadowJudge, default_request_factory
from lockgate.policy import PolicySet, Request, load_policy_texts

from .fakes import FakeAudit, FakeBroker, FakePolicy, FakeSigner, FakeVerifier, claims_for

ENFORCED = """rules:
  - {id: read-all, effect: allow, principals: ["*"], actions: [read], resources: [ks]}
"""
SHADOW = """mode: shadow
rules:
  - {id: no-t, effect: deny, principals: ["*"], actions: [read], resources: [ks], objects: [ks.t]}
"""


class CountingSet:
    """A policy set that counts its decisions."""

    def __init__(self, inner: PolicySet) -> None:
        self.inner = inner
        self.asked: list[Request] = []

    def decide(self, req: Request) -> Any:
        self.asked.append(req)
        return self.inner.decide(req)


class Source:
    def __init__(self, shadow: str | None) -> None:
        texts = [("team.yaml", ENFORCED)] + ([("s.yaml", shadow)] if shadow else [])
        loaded = load_policy_texts(texts)
        self.current = CountingSet(loaded.enforced)
        self.shadow = CountingSet(loaded.shadow) if loaded.shadow is not None else None


def bundle(source: object) -> tuple[Collaborators, FakeAudit]:
    audit = FakeAudit()
    shared = Collaborators(
        FakeVerifier(),
        source,
        FakeBroker({}),
        audit,
        FakeSigner(),  # type: ignore[arg-type]
    )
    return shared, audit


def test_no_shadow_set_no_decision_no_detail() -> None:
    source = Source(None)
    shared, audit = bundle(source)
    detail = {"op": "query"}
    rec = shared.records.admitted(claims_for("ks"), "ks", "read", "ks.t", "read-all", "r", detail)
    shared.records.emit("denied", claims_for("ks"), "ks", 0.0, action="write", obj="ks.t",
                        decision="deny", reason="no rule")  # fmt: skip
    assert rec.detail == {"op": "query"} and audit.records[0].detail == {}
    assert source.current.asked == []  # not one policy decision more


def test_differing_verdict_added_to_a_copy_of_the_detail() -> None:
    source = Source(SHADOW)
    shared, _ = bundle(source)
    detail = {"op": "query"}
    rec = shared.records.admitted(claims_for("ks"), "ks", "read", "ks.t", "read-all", "r", detail)
    assert detail == {"op": "query"}  # the caller's dict is left alone
    assert rec.detail["shadow"]["decision"] == "deny" and rec.detail["shadow"]["rule"] == "no-t"
    assert rec.decision == "allow" and rec.rule == "read-all"  # the enforced decision stands


def test_only_policy_decisions_are_compared() -> None:
    source = Source(SHADOW)
    shared, audit = bundle(source)
    c = claims_for("ks")
    for event in ("throttled", "upstream_error", "session_ended", "allowed"):
        shared.records.emit(event, c, "ks", 0.0, action="read", obj="ks.t", decision="deny")
    assert source.shadow is not None and source.shadow.asked == []
    # a refusal the gateway made (policy allows it) carries no verdict either
    shared.records.emit("denied", c, "ks", 0.0, action="read", obj="ks.u", decision="deny")
    assert all("shadow" not in r.detail for r in audit.records)


def test_fakes_without_a_shadow_attribute_get_no_judge() -> None:
    shared, _ = bundle(FakePolicy(None))  # type: ignore[arg-type]
    rec = shared.records.admitted(claims_for("ks"), "ks", "read", "ks.t", "x", "r")
    assert rec.detail == {}


def test_judge_names_the_shadow_rule() -> None:
    judge = ShadowJudge(Source(SHADOW), default_request_factory())  # type: ignore[arg-type]
    assert judge(claims_for("ks"), "ks", "read", "ks.t", True) == {  # type: ignore[arg-type]
        "decision": "deny",
        "rule": "no-t",
        "reason": "denied by rule no-t (s.yaml)",
    }
    assert judge(claims_for("ks"), "ks", "read", "ks.u", True) is None  # type: ignore[arg-type]
