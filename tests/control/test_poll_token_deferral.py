"""What the control plane offers a deferred operator's trigger: ``/v1/poll-token`` for a Data
Factory (ARM) resource, and the catalog's marks (``poll`` on ARM, ``"trigger": "task"`` on a
plain http resource unless the deployment attests task tries against its Airflow)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from lockgate.server import Gateway
from lockgate.tlsgen import write_dev_ca
from tests.control._stack import basic, deployment, post_form, running_gateway

SECRET = "poll-secret-Xc3"
ATTESTED_SECRET = "attested-secret-Vb8"
POLICY = """\
rules:
  - id: tasks
    effect: allow
    principals: ["airflow:*/*/*"]
    actions: [read, run]
    resources: ["*"]
"""
ARM = {
    "name": "arm", "kind": "http", "upstream": "http://127.0.0.1:9", "credential": "arm-key",
    "conn_id": "azure_data_factory_default", "profile": "arm",
    "intercept": ["management.azure.com"], "arm": {"subscription_id": "sub-1"},
}  # fmt: skip


@pytest.fixture
async def gw(tmp_path: Path) -> AsyncIterator[Gateway]:
    attested = deployment("attested", ATTESTED_SECRET)
    attested["airflow_api"] = {"url": "http://127.0.0.1:9/"}
    ca = write_dev_ca(tmp_path / "tls")
    async with running_gateway(
        tmp_path,
        policy=POLICY,
        deployments=[deployment("prod", SECRET), attested],
        resources=[
            {"name": "api", "kind": "http", "upstream": "http://127.0.0.1:9", "conn_id": "api"},
            ARM,
        ],
        secrets={"arm-key": "k"},
        listeners={"control": {"port": 0}, "http": {"port": 0},
                   "forward_proxy": {"port": 0, "ca": {k: str(v) for k, v in ca.items()}}},
    ) as gateway:  # fmt: skip
        yield gateway


async def _catalog(gw: Gateway, who: str, secret: str) -> dict[str, dict[str, Any]]:
    status, body = await post_form(gw, "/v1/catalog", basic(who, secret))
    assert status == 200, body
    return {e["conn_id"]: e for e in body["connections"]}


async def test_the_catalog_says_which_trigger_each_conn_id_serves(gw: Gateway) -> None:
    entries = await _catalog(gw, "prod", SECRET)
    assert entries["azure_data_factory_default"].get("poll") is True
    assert entries["api"].get("trigger") == "task"
    assert "poll" not in entries["api"]
    # an attesting deployment's Airflow would not confirm a deferred try as running
    attested = await _catalog(gw, "attested", ATTESTED_SECRET)
    assert "trigger" not in attested["api"]


async def test_a_poll_token_for_data_factory_is_minted_narrowed_and_recorded(
    gw: Gateway,
) -> None:
    status, body = await post_form(
        gw, "/v1/poll-token", basic("prod", SECRET),
        conn_id="azure_data_factory_default", dag_id="adf_load", run_id="manual__1",
    )  # fmt: skip
    assert status == 200, body
    assert body["principal"] == "airflow:prod/adf_load/@poll"
    assert 0 < body["expires_in"] <= 3600
    claims = gw.verifier.verify(body["access_token"], "arm")
    assert (claims.task_id, claims.dag_id, claims.run_id) == ("@poll", "adf_load", "manual__1")
    gw.audit.flush(5.0)
    issued = [r for r in gw.audit.search() if r.event == "token_issued" and r.task_id == "@poll"]
    assert issued and issued[-1].resource == "arm"


async def test_a_plain_http_resource_offers_no_poll_tokens(gw: Gateway) -> None:
    status, body = await post_form(gw, "/v1/poll-token", basic("prod", SECRET), conn_id="api")
    assert status == 400 and "access_token" not in body
