"""``profile: arm`` and a deferred operator's poll token (task ``@poll``), through the tunnel.

A poll token may only read (and cancel) pipeline runs that were started through Lockgate by
a task of its deployment, and by its DAG run when it is narrowed to one; it starts nothing.
Every refusal is audited with its reason; policy is still asked.
"""

from __future__ import annotations

import ssl
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from lockgate.gateway.http.forward_proxy import ForwardProxy
from lockgate.gateway.http.profiles.arm import AdfRun, AdfRuns, ArmProfile, poll_refusal
from lockgate.gateway.http.profiles.databricks import ANY_RUN, DEPLOYMENT_WIDE, POLL_TASK
from lockgate.tlsgen import LeafIssuer, write_dev_ca

from ..fakes import FakeClaims, claims_for
from .conftest import Upstream, bearer
from .test_forward_proxy_arm import F, arm_resource

POLL = "tok-poll"


def poll_claims(
    dag_id: str = "adf_load", run_id: str = "manual__1", deployment: str = "prod"
) -> FakeClaims:
    return FakeClaims(
        sub=f"airflow:{deployment}/{dag_id}/{POLL_TASK}", aud="orders", jti="jti-poll",
        deployment=deployment, dag_id=dag_id, task_id=POLL_TASK, run_id=run_id,
    )  # fmt: skip


def started_by(dag_id: str, run_id: str, deployment: str = "prod") -> FakeClaims:
    claims = claims_for("orders", dag=dag_id)
    claims.run_id, claims.deployment = run_id, deployment
    return claims


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
    runs: AdfRuns = gw.engine.proxy.resources["orders"].profile.runs
    runs.add("orders", "adf-prod", "run-mine", "load", started_by("adf_load", "manual__1"))
    runs.add("orders", "adf-prod", "run-other", "load", started_by("adf_load", "manual__2"))
    runs.add("orders", "adf-prod", "run-elsewhere", "load", started_by("adf_x", "m", "test"))
    gw.verifier.tokens[POLL] = poll_claims()
    yield gw
    await fp.close()


async def _call(gw: Any, method: str, path: str, token: str = POLL) -> tuple[int, Any]:
    async with aiohttp.ClientSession() as s, s.request(
        method, f"https://management.azure.com{path}?api-version=2018-06-01",
        proxy=gw.proxy_url, ssl=gw.client_ssl, headers=bearer(token),
    ) as r:  # fmt: skip
        return r.status, await r.json(content_type=None)


async def test_a_poll_token_reads_and_cancels_its_own_dag_runs_pipeline_run(arm_gw: Any) -> None:
    status, _ = await _call(arm_gw, "GET", f"{F}/pipelineruns/RUN-MINE")
    assert status == 200
    rec = arm_gw.audit.records[-1]
    assert (rec.event, rec.action, rec.object) == (
        "allowed", "read", "factory:adf-prod/pipeline:load")  # fmt: skip
    status, _ = await _call(arm_gw, "POST", f"{F}/pipelineruns/run-mine/cancel")
    assert status == 200 and arm_gw.audit.records[-1].action == "run"


async def test_a_poll_token_cannot_read_another_dag_runs_pipeline_run(arm_gw: Any) -> None:
    for run in ("run-other", "run-elsewhere", "run-unknown"):
        status, body = await _call(arm_gw, "GET", f"{F}/pipelineruns/{run}")
        assert status == 403, run
        assert body["error"]["code"] == "LockgateAccessDenied"
        rec = arm_gw.audit.records[-1]
        # a run Lockgate did not start is its own object (run:<id>), which policy refuses
        assert rec.event == "denied" and (run in rec.reason or run == "run-unknown"), rec
    status, _ = await _call(arm_gw, "POST", f"{F}/pipelineruns/run-other/cancel")
    assert (
        status == 403 and "not started by adf_load run manual__1" in arm_gw.audit.records[-1].reason
    )


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("POST", f"{F}/pipelines/load/createRun"),  # granted to tasks, never to a poll token
        ("GET", f"{F}/pipelines/load"),
        ("POST", f"{F}/pipelineruns/run-mine/queryActivityruns"),
        ("GET", F),
    ],
)
async def test_a_poll_token_starts_nothing_and_reads_nothing_else(
    arm_gw: Any, upstream: Upstream, method: str, path: str
) -> None:
    seen = len(upstream.seen)
    status, body = await _call(arm_gw, method, path)
    assert status == 403 and "poll tokens may only read or cancel" in body["error"]["message"]
    assert arm_gw.audit.records[-1].event == "denied"
    assert len(upstream.seen) == seen  # nothing reached ADF


async def test_policy_is_still_asked(arm_gw: Any) -> None:
    arm_gw.policy.allow.clear()
    status, _ = await _call(arm_gw, "GET", f"{F}/pipelineruns/run-mine")
    assert status == 403 and arm_gw.audit.records[-1].event == "denied"


async def test_the_task_itself_is_unchanged(arm_gw: Any) -> None:
    status, _ = await _call(arm_gw, "GET", f"{F}/pipelineruns/run-other", token="tok-orders")
    assert status == 200  # a task's token is judged on the pipeline, as before


def _run(dag_id: str | None = "adf_load", run_id: str | None = "manual__1", **kw: Any) -> AdfRun:
    fields: dict[str, Any] = {
        "resource": "orders", "factory": "adf-prod", "run_id": "r1", "pipeline": "load",
        "deployment": "prod", "dag_id": dag_id, "airflow_run_id": run_id, "task_id": "t",
        "created_at": time.time(), **kw,
    }  # fmt: skip
    return AdfRun(**fields)


def test_narrowing_rules() -> None:
    narrow, dag_wide = poll_claims(), poll_claims(run_id=ANY_RUN)
    wide = poll_claims(dag_id=DEPLOYMENT_WIDE, run_id=ANY_RUN)
    assert poll_refusal(narrow, "r1", _run()) is None
    assert poll_refusal(narrow, "r1", _run(run_id="manual__2")) is not None
    assert poll_refusal(dag_wide, "r1", _run(run_id="manual__2")) is None
    assert poll_refusal(dag_wide, "r1", _run(dag_id="other")) is not None
    assert poll_refusal(wide, "r1", _run(dag_id="other")) is None
    assert poll_refusal(wide, "r1", _run(deployment="test")) is not None
    assert poll_refusal(wide, "r1", None) is not None  # not started through Lockgate
    assert poll_refusal(wide, "r1", _run(created_at=time.time() - 8 * 86400)) is not None


def test_runs_remember_who_started_them(tmp_path: Path) -> None:
    runs = AdfRuns(tmp_path / "adf_runs.db")
    runs.add("orders", "adf-prod", "r1", "load", started_by("adf_load", "manual__1"))
    runs.close()
    again = AdfRuns(tmp_path / "adf_runs.db")  # read back from the file, not the cache
    run = again.get("orders", "adf-prod", "r1")
    assert run is not None and (run.pipeline, run.dag_id, run.airflow_run_id) == (
        "load", "adf_load", "manual__1")  # fmt: skip
    assert again.get("orders", "adf-prod", "r2") is None
    profile = ArmProfile(arm_resource(), again)
    assert profile.classify("GET", f"{F}/pipelineruns/r1")[:2] == (
        "read", "factory:adf-prod/pipeline:load")  # fmt: skip
    again.close()
