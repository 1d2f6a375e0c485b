"""Two instances of one mapped task through the PostgreSQL flow (real classifier and judge,
a real policy with a ``map_index`` condition): one statement forwarded, the other refused."""

from __future__ import annotations

import time

from lockgate.config import PostgresResource
from lockgate.gateway.postgres.dynamic_roles import PostgresRoles
from lockgate.identity import Claims
from lockgate.policy import parse_policy_texts
from tests.gateway.fakes import FakePolicy

from .test_flow import PROBE_FAILED, REFUSED_QUERY, FlowHarness, errors, rfq

PRINCIPAL = "airflow:prod/finance_daily/load_orders"  # the FlowHarness task, every instance
POLICY = f"""\
rules:
  - id: shard-readers
    effect: allow
    principals: ["{PRINCIPAL}"]
    actions: [read]
    resources: [pg]
    objects: ["sales.*"]
    conditions: {{map_index: [0, 1]}}
"""


def harness(map_index: int) -> FlowHarness:
    h = FlowHarness()
    h.claims.map_index = map_index  # the instance the session's token was minted for
    h.ctx.policy.current = parse_policy_texts([("policies/shards.yaml", POLICY)])  # type: ignore[misc]
    return h


async def test_two_map_indexes_one_allowed_one_denied() -> None:
    first, third = harness(1), harness(2)
    text = "SELECT * FROM sales.orders"

    out = await first.query(text)
    assert out.to_server and out.to_server != REFUSED_QUERY
    [admitted] = first.admitted()
    assert (admitted.principal, admitted.map_index, admitted.rule) == (
        PRINCIPAL,
        1,
        "shard-readers",
    )
    assert admitted.reason == "allowed by rule shard-readers (shards.yaml): map_index 1 in 0, 1"

    out = await third.query(text)
    assert out.to_server == REFUSED_QUERY
    [error] = errors(third.answer(PROBE_FAILED, rfq("I")))
    assert error["C"] == "42501"
    assert "map_index 0, 1 does not hold (map_index 2)" in error["M"]
    [denied] = third.outcomes()
    assert (denied.event, denied.principal, denied.map_index) == ("denied", PRINCIPAL, 2)


def test_dynamic_role_grants_follow_the_map_index() -> None:
    """A dynamic role is granted what policy allows the instance its token was minted for."""
    resource = PostgresResource(
        name="pg", kind="postgres", host="127.0.0.1", database="app",
        username="gw", credential="pg-pw",
    )  # fmt: skip
    policy = FakePolicy(parse_policy_texts([("policies/shards.yaml", POLICY)]))  # type: ignore[arg-type]
    roles = PostgresRoles(resource, lambda previous=False: "unused", policy)  # type: ignore[arg-type]
    now = int(time.time())

    def claims(map_index: int) -> Claims:
        return Claims(
            "https://lockgate.test", PRINCIPAL, "pg", now + 900, now, now, f"j{map_index}",
            "prod", "finance_daily", "load_orders", "run-1", 1, map_index,
        )  # fmt: skip

    assert roles.allowed(claims(1), ["sales.orders"]) == [("read", "sales.orders")]
    assert roles.allowed(claims(2), ["sales.orders"]) == []
