"""The token's identity as a request span names it (lockgate.tracing.attributes)."""

from __future__ import annotations

import dataclasses

from lockgate.identity import Claims
from lockgate.tracing.attributes import identity_attributes

CLAIMS = Claims(
    iss="lockgate", sub="airflow:prod/etl/load", aud="db", exp=2, iat=1, nbf=1, jti="j",
    deployment="prod", dag_id="etl", task_id="load", run_id="r1", try_number=2, map_index=-1,
)  # fmt: skip


def test_every_identity_field_is_named() -> None:
    assert identity_attributes(CLAIMS) == {
        "lockgate.principal": "airflow:prod/etl/load",
        "lockgate.deployment": "prod",
        "lockgate.dag_id": "etl",
        "lockgate.task_id": "load",
        "lockgate.run_id": "r1",
        "lockgate.try_number": 2,
    }


def test_an_empty_field_is_left_out_and_a_zero_kept() -> None:
    claims = dataclasses.replace(CLAIMS, run_id="", task_id="", try_number=0)
    attributes = identity_attributes(claims)
    assert "lockgate.run_id" not in attributes
    assert "lockgate.task_id" not in attributes
    assert attributes["lockgate.try_number"] == 0


def test_the_token_itself_and_its_parent_are_never_named() -> None:
    claims = dataclasses.replace(CLAIMS, traceparent="00-" + "1" * 32 + "-" + "2" * 16 + "-01")
    assert not {"lockgate.jti", "lockgate.traceparent", "lockgate.token"} & set(
        identity_attributes(claims)
    )
