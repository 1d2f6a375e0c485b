"""Mapped task instances: one principal per task, the map index beside it.

Every map index acts as ``airflow:<deployment>/<dag_id>/<task_id>``, so rules that name
the task (exactly or by glob) keep granting and denying its mapped instances; the index is
a claim of its own, carried into revocation and audit.
"""

from __future__ import annotations

from dataclasses import replace

import pytest

from lockgate.identity import Claims, TaskIdentity, TokenIssuer, TokenVerifier
from lockgate.policy import Request
from lockgate.policy.loader import parse_policy_texts

AUD = "orders-api"
POLICY = """
rules:
  - id: load-may-write
    effect: allow
    principals: ["airflow:prod/finance_daily/load_orders"]
    actions: [write]
    resources: [orders-api]
  - id: nobody-deletes
    effect: deny
    principals: ["airflow:prod/finance_daily/*"]
    actions: [admin]
    resources: [orders-api]
  - id: anyone-admin
    effect: allow
    principals: ["*"]
    actions: [admin]
    resources: [orders-api]
"""


@pytest.mark.parametrize("map_index", [-1, 0, 7])
def test_every_map_index_mints_the_tasks_own_principal_and_carries_its_index(
    issuer: TokenIssuer, verifier: TokenVerifier, identity: TaskIdentity, map_index: int
) -> None:
    mapped = replace(identity, map_index=map_index)
    token, _ = issuer.mint(mapped, AUD, 600)
    claims = verifier.verify(token, AUD)
    assert claims.sub == "airflow:prod/finance_daily/load_orders"
    assert claims.map_index == map_index and claims.identity == mapped


def test_a_claim_naming_another_principal_than_its_coordinates_is_refused(
    issuer: TokenIssuer, identity: TaskIdentity
) -> None:
    _, claims = issuer.mint(replace(identity, map_index=3), AUD, 600)
    forged = {**claims.to_payload(), "sub": "airflow:prod/finance_daily/load_orders[3]"}
    assert Claims.from_payload(forged) is None


@pytest.mark.parametrize("map_index", [-1, 0, 7])
def test_rules_on_the_task_grant_and_deny_each_mapped_instance_alike(
    issuer: TokenIssuer, identity: TaskIdentity, map_index: int
) -> None:
    policy = parse_policy_texts([("finance.yaml", POLICY)], {AUD})
    _, claims = issuer.mint(replace(identity, map_index=map_index), AUD, 600)
    write = policy.decide(Request(claims.principal, "write", AUD, "/orders", claims.ttl))
    delete = policy.decide(Request(claims.principal, "admin", AUD, "/orders", claims.ttl))
    assert write.allowed and write.rule == "load-may-write"
    assert not delete.allowed and delete.rule == "nobody-deletes"
