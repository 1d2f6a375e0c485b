"""The control plane takes a new catalog live: tokens and catalog entries follow it."""

from __future__ import annotations

import base64
import hashlib
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from lockgate.config import HttpResource, parse_config
from lockgate.server import Gateway

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
    (tmp_path / "p.yaml").write_text(POLICY)
    sha = hashlib.sha256(SECRET.encode()).hexdigest()
    cfg = parse_config(
        {"data_dir": str(tmp_path / "data"),
         "listeners": {"control": {"port": 0}, "http": {"port": 0}},
         "deployments": [{"name": "prod", "dags": ["*"],
                          "proof": {"type": "client_secret", "secret_sha256": sha}}],
         "resources": [{"name": "old", "kind": "http", "upstream": "http://127.0.0.1:9",
                        "conn_id": "old_api"}],
         "policies": [str(tmp_path / "p.yaml")]},
        tmp_path / "lockgate.yaml",
    )  # fmt: skip
    gateway = Gateway(cfg)
    await gateway.start()
    try:
        yield gateway
    finally:
        await gateway.stop()


async def post(gw: Gateway, route: str, **form: str) -> tuple[int, dict[str, Any]]:
    basic = base64.b64encode(f"prod:{SECRET}".encode()).decode()
    url = f"http://127.0.0.1:{gw.control_port}{route}"
    async with (
        aiohttp.ClientSession() as s,
        s.post(url, data=form, headers={"Authorization": f"Basic {basic}"}) as r,
    ):
        return r.status, await r.json()


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
