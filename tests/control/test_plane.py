"""The control plane takes a new catalog live: tokens and catalog entries follow it."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from lockgate.config import HttpResource
from lockgate.server import Gateway

from ._stack import basic, deployment, post_form, running_gateway

SECRET = "plane-secret-Qm2"
POLICY = """\
rules:
  - id: everyone
    effect: allow
    principals: ["airflow:prod/*"]
    actions: [read]
    resources: ["*"]
"""
TASK = {"dag_id": "etl", "task_id": "load", "run_id": "r1", "try_number": "1"}


@pytest.fixture
async def gw(tmp_path: Path) -> AsyncIterator[Gateway]:
    old = {"name": "old", "kind": "http", "upstream": "http://127.0.0.1:9", "conn_id": "old_api"}
    async with running_gateway(
        tmp_path, policy=POLICY, deployments=[deployment("prod", SECRET)], resources=[old]
    ) as gateway:
        yield gateway


async def post(gw: Gateway, route: str, **form: str) -> tuple[int, dict[str, Any]]:
    return await post_form(gw, route, basic("prod", SECRET), **form)


async def test_a_new_catalog_is_minted_for_and_listed_at_once(gw: Gateway) -> None:
    assert (await post(gw, "/v1/token", resource="old", **TASK))[0] == 200
    assert (await post(gw, "/v1/token", resource="new", **TASK))[0] == 404
    new = HttpResource.model_validate(
        {"name": "new", "kind": "http", "upstream": "http://127.0.0.1:9", "conn_id": "new_api"}
    )
    assert gw.control is not None
    gw.control.update_resources([new])
    status, body = await post(gw, "/v1/token", resource="new", **TASK)
    assert status == 200 and gw.verifier.verify(body["access_token"], "new").aud == "new"
    assert (await post(gw, "/v1/token", resource="old", **TASK))[0] == 404
    _, catalog = await post(gw, "/v1/catalog")
    assert [c["conn_id"] for c in catalog["connections"]] == ["new_api"]
