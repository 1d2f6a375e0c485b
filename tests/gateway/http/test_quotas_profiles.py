"""Quota answers of profiled resources, checked against the stock clients: the azure-cosmos
SDK retrying the gateway's 429 by itself (paced to the quota), and Databricks run caps
counted from the run a start names to the run a poll shows finished."""

from __future__ import annotations

import json
import time
from types import SimpleNamespace
from typing import Any, cast

from lockgate.gateway.http import HttpEngine
from lockgate.gateway.http.profiles.arm import ArmProfile
from lockgate.gateway.http.profiles.cosmos.profile import CosmosProfile
from lockgate.gateway.http.profiles.databricks import DatabricksProfile
from lockgate.gateway.http.throttle import throttled_answer
from lockgate.quotas import Throttled
from tests.gateway.quota_fakes import BucketGate, FakeGate

from ..fakes import claims_for
from .test_cosmos import Env as CosmosEnv
from .test_cosmos import env as cosmos_env  # noqa: F401 - a fixture
from .test_cosmos import run
from .test_databricks import Env as DatabricksEnv
from .test_databricks import (
    _audit,
    env,  # noqa: F401 - a fixture
)


def _answer(profile: Any, over: Throttled) -> tuple[bytes, dict[str, str], dict[str, Any]]:
    rs = cast(Any, SimpleNamespace(name="res", profile=profile))
    raw = throttled_answer(
        rs, cast(Any, claims_for("res")), "write", "sales/orders", over, close=False,
        head_only=False,
    )  # fmt: skip
    head, _, body = raw.partition(b"\r\n\r\n")
    lines = head.decode().split("\r\n")
    headers = dict(line.split(": ", 1) for line in lines[1:])
    return lines[0].encode(), headers, json.loads(body)


def test_each_profile_answers_in_its_upstreams_throttling_form() -> None:
    over = Throttled("orders-writes", "rate", 0.25)
    status, headers, body = _answer(None, over)
    assert status == b"HTTP/1.1 429 Too Many Requests" and headers["Retry-After"] == "1"
    assert body["error"] == "throttled" and body["limit"] == "orders-writes"

    cosmos = CosmosProfile.__new__(CosmosProfile)  # (its answers need no account state)
    status, headers, body = _answer(cosmos, over)
    assert headers["x-ms-retry-after-ms"] == "250" and headers["x-ms-substatus"] == "3200"
    assert headers["Retry-After"] == "1"
    assert body["code"] == "TooManyRequests" and "orders-writes" in body["message"]

    dbx = DatabricksProfile.__new__(DatabricksProfile)
    status, headers, body = _answer(dbx, Throttled("two-runs", "runs", 30.0))
    assert headers["Retry-After"] == "30"
    assert body["error_code"] == "REQUEST_LIMIT_EXCEEDED" and "two-runs" in body["message"]

    arm = ArmProfile.__new__(ArmProfile)
    status, headers, body = _answer(arm, Throttled("adf-runs", "runs", 2.5))
    assert headers["Retry-After"] == "3"
    assert body["error"]["code"] == "TooManyRequests" and "adf-runs" in body["error"]["message"]


async def test_cosmos_sdk_retries_the_gateways_429_and_is_paced(cosmos_env: CosmosEnv) -> None:  # noqa: F811
    c = await run(
        lambda: cosmos_env.client().get_database_client("sales").get_container_client("orders")
    )
    await run(lambda: c.read())
    gate = BucketGate(rate=10.0, burst=2.0)
    cast(HttpEngine, cosmos_env.gw.engines["http"]).proxy.quotas = gate
    writes = 20

    def load() -> float:
        t0 = time.monotonic()
        for i in range(writes):
            c.upsert_item({"id": f"q{i}", "pk": "p"})
        return time.monotonic() - t0

    took = await run(load)
    assert len(cosmos_env.fake.store.container("sales", "orders").items(None)) == writes
    assert took >= (writes - gate.burst) / gate.rate * 0.9, took
    assert gate.throttled >= 1 and cosmos_env.fake.count(status=429) == 0  # the gateway's own 429s
    throttled = cosmos_env.audit(event="throttled")
    assert len(throttled) == gate.throttled
    assert all(r.detail["limit"] == "cosmos-writes" and r.status == 429 for r in throttled)
    assert gate.leaked == 0


async def test_databricks_run_cap_counts_runs_until_a_poll_shows_them_finished(
    env: DatabricksEnv,  # noqa: F811
) -> None:
    gate = FakeGate(run_cap=1)
    cast(HttpEngine, env.gw.engines["http"]).proxy.quotas = gate
    tok = env.token()
    status, body = await env.call("POST", "/api/2.2/jobs/run-now", tok, {"job_id": 101})
    assert status == 200, body
    run_id = body["run_id"]
    assert list(gate.running) == [str(run_id)]
    status, over = await env.call("POST", "/api/2.2/jobs/run-now", tok, {"job_id": 101})
    assert status == 429 and over["error_code"] == "REQUEST_LIMIT_EXCEEDED"
    assert "two-runs" in over["message"]
    rec = _audit(env, event="throttled")[-1]
    assert rec.detail == {"limit": "two-runs", "kind": "runs", "retry_after": 30.0}
    assert rec.rule == "etl-run-jobs" and rec.object == "job:101"
    for _ in range(3):  # PENDING, RUNNING, TERMINATED
        status, got = await env.call("GET", "/api/2.2/jobs/runs/get", tok, run_id=run_id)
        assert status == 200
    assert got["state"]["life_cycle_state"] == "TERMINATED"
    assert gate.finished == [str(run_id)] and gate.running == {}
    status, body = await env.call("POST", "/api/2.2/jobs/run-now", tok, {"job_id": 101})
    assert status == 200, body
    assert list(gate.running) == [str(body["run_id"])]
    assert gate.leaked == 0


async def test_a_run_start_the_workspace_refuses_gives_its_slot_back(
    env: DatabricksEnv,  # noqa: F811
) -> None:
    gate = FakeGate(run_cap=2)
    cast(HttpEngine, env.gw.engines["http"]).proxy.quotas = gate
    status, first = await env.call("POST", "/api/2.2/jobs/run-now", env.token(), {"job_id": 101})
    assert status == 200, first  # (the job's spec is now cached: the next start goes upstream)
    env.fake.throttle(1, retry_after="0")  # the start is not retried (POST): relayed 429
    status, _ = await env.call("POST", "/api/2.2/jobs/run-now", env.token(), {"job_id": 101})
    assert status == 429
    assert list(gate.running) == [str(first["run_id"])] and gate.leaked == 0
    status, body = await env.call("POST", "/api/2.2/jobs/run-now", env.token(), {"job_id": 101})
    assert status == 200, body
    assert len(gate.running) == 2 and gate.leaked == 0
