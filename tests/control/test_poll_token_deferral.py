"""What the control plane offers a deferred operator's trigger: ``/v1/poll-token`` for a Data
Factory (ARM) resource, the catalog's marks (``poll`` on ARM, ``"trigger": "task"`` on a
plain http resource unless the deployment attests task tries against its Airflow), and the
identity endpoint's ``client_id=lockgate-run:<dag_id>/<run_id>``, which narrows a
deployment-wide poll token to one DAG run."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from lockgate.server import Gateway
from lockgate.tlsgen import write_dev_ca
from tests.control._stack import basic, deployment, post_form, running_gateway

SECRET = "poll-secret-Xc3"
ATTESTED_SECRET = "attested-secret-Vb8"
FINANCE_SECRET = "finance-secret-Qw2"  # a deployment delegated finance_* DAGs only
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
        deployments=[deployment("prod", SECRET), attested,
                     deployment("fin", FINANCE_SECRET, ("finance_*",))],
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


async def _poll_token(gw: Gateway, who: str = "prod", secret: str = SECRET, **scope: str) -> str:
    status, body = await post_form(
        gw, "/v1/poll-token", basic(who, secret), conn_id="azure_data_factory_default", **scope
    )
    assert status == 200, body
    return str(body["access_token"])


async def _msi(gw: Gateway, header: str, *client_ids: str) -> tuple[int, dict[str, Any]]:
    """(status, JSON body) of ``GET /msi/token`` for ARM with these ``client_id`` values."""
    params = [("api-version", "2019-08-01"), ("resource", "https://management.azure.com")]
    params += [("client_id", c) for c in client_ids]
    url = f"http://127.0.0.1:{gw.control_port}/msi/token"
    async with (
        aiohttp.ClientSession() as s,
        s.get(url, params=params, headers={"X-IDENTITY-HEADER": header}) as r,
    ):
        return r.status, await r.json(content_type=None)


async def test_a_dag_run_client_id_narrows_a_deployment_wide_poll_token(gw: Gateway) -> None:
    wide = await _poll_token(gw)
    wide_claims = gw.verifier.verify(wide, "arm")
    assert wide_claims.dag_id == "@triggerer"  # the deployment-wide poll token
    run_id = "scheduled__2025-01-01T00:00:00+00:00"
    status, body = await _msi(gw, wide, f"lockgate-run:adf_load/{run_id}")
    assert status == 200, body
    assert body["access_token"] != wide and body["client_id"] == "airflow:prod/adf_load/@poll"
    claims = gw.verifier.verify(body["access_token"], "arm")
    assert (claims.deployment, claims.dag_id, claims.task_id, claims.run_id) == (
        "prod", "adf_load", "@poll", run_id,
    )  # fmt: skip
    assert claims.exp <= wide_claims.exp and body["expires_on"] == int(claims.exp)
    gw.audit.flush(5.0)
    issued = [r for r in gw.audit.search() if r.event == "token_issued" and r.jti == claims.jti]
    assert issued and issued[0].resource == "arm" and issued[0].run_id == run_id
    # a token already narrowed to that very DAG run is answered as it is
    status, again = await _msi(gw, body["access_token"], f"lockgate-run:adf_load/{run_id}")
    assert status == 200 and again["access_token"] == body["access_token"]


@pytest.mark.parametrize(
    "client_ids",
    [
        ("someone-else",),
        ("lockgate-run:adf_load",),  # no run
        ("lockgate-run:/manual__1",),  # no DAG
        ("lockgate-run:adf load/manual__1",),  # not an Airflow DAG id
        ("lockgate-run:adf_load/manual__1\n",),  # not an Airflow run id
        ("LOCKGATE-RUN:adf_load/manual__1",),
        ("lockgate-run:adf_load/manual__1", "lockgate-run:adf_load/manual__2"),
    ],
)
async def test_any_other_client_id_is_refused(gw: Gateway, client_ids: tuple[str, ...]) -> None:
    status, body = await _msi(gw, await _poll_token(gw), *client_ids)
    assert status == 400 and body["error"] == "invalid_request" and "access_token" not in body


async def test_a_dag_run_client_id_gives_nothing_but_to_a_deployment_poll_token(
    gw: Gateway,
) -> None:
    client_id = "lockgate-run:adf_load/manual__1"
    # a task's own token does not select another identity
    status, body = await post_form(
        gw, "/v1/token", basic("prod", SECRET), grant_type="client_credentials",
        conn_id="azure_data_factory_default", dag_id="adf_load", task_id="run_load",
        run_id="manual__1", try_number="1",
    )  # fmt: skip
    assert status == 200, body
    status, refused = await _msi(gw, body["access_token"], client_id)
    assert status == 400 and "access_token" not in refused
    # a poll token narrowed to one DAG run is not moved to another
    narrowed = await _poll_token(gw, dag_id="adf_load", run_id="manual__2")
    status, refused = await _msi(gw, narrowed, client_id)
    assert status == 401 and "access_token" not in refused
    # nor is a DAG the deployment may not act for served
    finance = await _poll_token(gw, "fin", FINANCE_SECRET)
    status, refused = await _msi(gw, finance, client_id)
    assert status == 403 and "not delegated" in refused["error_description"]
    status, body = await _msi(gw, finance, "lockgate-run:finance_daily/manual__1")
    assert status == 200 and body["client_id"] == "airflow:fin/finance_daily/@poll"
    gw.audit.flush(5.0)
    # each of the three refusals is recorded (the task's, the moved token's, the DAG's)
    refused_events = [r.event for r in gw.audit.search() if r.decision == "deny"]
    assert refused_events == ["denied", "auth_failed", "denied"]
