"""``profile: arm`` behind the forward proxy: classification table, run registry, scope,
ARM-shaped refusals (the stock operators through the tunnel: tests/e2e/test_airflow_adf.py)."""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from lockgate.config import HttpResource
from lockgate.gateway.http.forward_proxy import ForwardProxy
from lockgate.gateway.http.profiles.arm import AdfRuns, ArmProfile
from lockgate.tlsgen import LeafIssuer, write_dev_ca

from .conftest import TOKEN, Upstream, bearer

PREFIX = "/subscriptions/sub-1/resourceGroups/rg-data/providers/Microsoft.DataFactory"
F = f"{PREFIX}/factories/ADF-Prod"


def arm_resource(url: str = "http://127.0.0.1:1", **kw: Any) -> HttpResource:
    return HttpResource(
        name="orders", kind="http", upstream=url, credential="orders-key", profile="arm",
        intercept=["management.azure.com"],
        arm={"subscription_id": "sub-1", "resource_group": "rg-data"}, **kw,
    )  # fmt: skip


@pytest.mark.parametrize(
    ("method", "path", "action", "obj"),
    [
        ("POST", f"{F}/pipelines/Load%20Orders/createRun", "run",
         "factory:adf-prod/pipeline:load orders"),
        ("GET", f"{F}/pipelines/load", "read", "factory:adf-prod/pipeline:load"),
        ("DELETE", f"{F}/pipelines/load", "admin", "factory:adf-prod/pipeline:load"),
        ("GET", F, "read", "factory:adf-prod"),
        ("PUT", F, "admin", "factory:adf-prod"),
        ("GET", f"{F}/pipelineruns/ABC-1", "read", "factory:adf-prod/run:abc-1"),
        ("POST", f"{F}/pipelineruns/abc-1/cancel", "run", "factory:adf-prod/run:abc-1"),
        ("POST", f"{F}/pipelineRuns/abc-1/queryActivityruns", "read",
         "factory:adf-prod/run:abc-1"),
        ("POST", f"{F}/queryPipelineRuns", "admin", f"arm:{F.lower()}/querypipelineruns"),
        ("GET", "/subscriptions/sub-1/resourceGroups", "admin",
         "arm:/subscriptions/sub-1/resourcegroups"),
    ],
)  # fmt: skip
def test_classification(method: str, path: str, action: str, obj: str) -> None:
    profile = ArmProfile(arm_resource(), AdfRuns(None))
    assert profile.classify(method, path)[:2] == (action, obj)


def test_a_recorded_run_is_judged_on_its_pipeline() -> None:
    runs = AdfRuns(None)
    runs.add("orders", "adf-prod", "abc-1", "load", None)
    profile = ArmProfile(arm_resource(), runs)
    assert profile.classify("GET", f"{F}/pipelineruns/ABC-1")[:2] == (
        "read", "factory:adf-prod/pipeline:load")  # fmt: skip


@pytest.fixture
async def arm_gw(make_gateway: Any, upstream: Upstream, tmp_path: Path) -> AsyncIterator[Any]:
    ca = write_dev_ca(tmp_path)
    gw = await make_gateway(
        [arm_resource(upstream.url)],
        allow=[("run", "factory:adf-prod/pipeline:load"), ("read", "factory:adf-prod/pipeline:*")],
    )
    fp = ForwardProxy(gw.engine, {"management.azure.com:443": "orders"},
                      LeafIssuer.from_files(ca["cert"], ca["key"]))  # fmt: skip
    await fp.start("127.0.0.1", 0)
    gw.proxy_url = f"http://127.0.0.1:{fp.port}"
    gw.client_ssl = ssl.create_default_context(cafile=str(ca["cert"]))
    yield gw
    await fp.close()


async def _call(gw: Any, method: str, path: str, **kw: Any) -> tuple[int, Any]:
    async with aiohttp.ClientSession() as s, s.request(
        method, f"https://management.azure.com{path}?api-version=2018-06-01",
        proxy=gw.proxy_url, ssl=gw.client_ssl, headers=bearer(), **kw,
    ) as r:  # fmt: skip
        return r.status, await r.json(content_type=None)


async def test_allowed_and_denied_through_the_tunnel(arm_gw: Any, upstream: Upstream) -> None:
    status, body = await _call(arm_gw, "POST", f"{F}/pipelines/load/createRun", json={})
    assert status == 200 and body["headers"]["Authorization"] == "Bearer up-secret-v2"
    assert TOKEN not in str(body)
    rec = arm_gw.audit.records[-1]
    assert (rec.event, rec.action, rec.object) == (
        "allowed",
        "run",
        "factory:adf-prod/pipeline:load",
    )
    status, body = await _call(arm_gw, "POST", f"{F}/pipelines/drop/createRun", json={})
    assert status == 403
    assert body["error"]["code"] == "LockgateAccessDenied"
    assert "factory:adf-prod/pipeline:drop" in body["error"]["message"]
    assert arm_gw.audit.records[-1].event == "denied"
    status, body = await _call(arm_gw, "POST", f"{F}/pipelines/LOAD/createRun", json={})
    assert status == 200  # case does not make a new object


async def test_other_subscription_or_resource_group_is_refused(arm_gw: Any) -> None:
    other = F.replace("sub-1", "sub-2")
    status, body = await _call(arm_gw, "POST", f"{other}/pipelines/load/createRun", json={})
    assert status == 403 and "subscription sub-2" in body["error"]["message"]
    other = F.replace("rg-data", "rg-other")
    status, body = await _call(arm_gw, "GET", f"{other}/pipelines/load")
    assert status == 403 and "resource group rg-other" in body["error"]["message"]


async def test_run_id_from_create_run_is_recorded(arm_gw: Any, upstream: Upstream) -> None:
    profile = arm_gw.engine.proxy.resources["orders"].profile
    verdict = await profile.authorize(
        type("R", (), {"method": "POST", "path": f"{F}/pipelines/load/createRun", "query": "",
                       "body": b"", "claims": None, "principal": "p", "default": ("x", "y")})(),
        lambda a, o: type("D", (), {"allowed": True, "rule": "r", "reason": "ok"})(),
        None,
    )  # fmt: skip
    detail = profile.on_response(verdict, 200, [], b'{"runId": "RUN-42"}')
    assert detail["run_id"] == "run-42"
    assert profile.runs.pipeline_of("orders", "adf-prod", "run-42") == "load"
    await asyncio.sleep(0)


@pytest.mark.parametrize(
    "path",
    [
        f"{F}/pipelines/drop./createRun",  # IIS and older .NET drop a segment's trailing dots
        f"{F}/pipelines/drop%20/createRun",  # and trailing spaces
        f"{F}/pipelines/dr%25op/createRun",  # "%" is in no ADF name
        f"{F}./pipelines/drop/createRun",
        f"{F}/pipelineruns/abc-1./cancel",
    ],
)
async def test_names_adf_cannot_hold_are_refused_not_judged(path: str) -> None:
    # A name ADF would never create, but ARM may read as another (trailing dots and spaces
    # dropped), passed a deny on that other name: it is refused before policy is asked.
    def decide(action: str, obj: str) -> Any:
        denied = obj.endswith(("pipeline:drop", "run:abc-1")) or obj == "factory:adf-prod"
        return type("D", (), {"allowed": not denied, "rule": "r", "reason": "test"})()

    profile = ArmProfile(arm_resource(), AdfRuns(None))
    fields = {"method": "POST", "path": path, "query": "", "body": b"", "claims": None,
              "principal": "p", "default": ("admin", path)}  # fmt: skip
    req = type("R", (), fields)()
    verdict = await profile.authorize(req, decide, bearer)  # type: ignore[arg-type]
    assert not verdict.allowed and verdict.status == 400, (path, verdict)
