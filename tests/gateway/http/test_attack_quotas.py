"""Attempts to get more than a quota gives through the HTTP engine, each a hole once:

- a Databricks ``jobs/runs/repair`` re-runs a finished run's tasks (the run is running
  again), so it is a run start under a ``runs`` cap, not a free pass past it.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any, cast

import pytest
from aiohttp import web

from lockgate.demo.standins.databricks import FakeDatabricks
from lockgate.gateway.http import HttpEngine

from .quota_fakes import FakeGate
from .test_databricks import Env
from .test_databricks import env as env  # a fixture


@pytest.fixture(autouse=True)
def workspace_repairs_runs(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """The test workspace answers ``jobs/runs/repair`` as Databricks does: the terminated
    run is pending again and a repair id is returned."""
    plain_app = FakeDatabricks.app

    def app(self: FakeDatabricks) -> web.Application:
        async def repair(request: web.Request) -> web.Response:
            run = self.runs.get(self._int(request, "run_id"))
            if run is None:
                return web.json_response({"error_code": "RESOURCE_DOES_NOT_EXIST"}, status=404)
            run.polls = 0  # pending, running and terminated again, as polls go
            return web.json_response({"repair_id": 7000 + run.run_id})

        application = plain_app(self)
        for v in ("2.0", "2.1", "2.2"):
            application.router.add_post(f"/api/{v}/jobs/runs/repair", repair)
        return application

    monkeypatch.setattr(FakeDatabricks, "app", app)
    yield


async def test_a_run_repair_counts_against_the_run_cap(env: Env) -> None:
    gate = FakeGate(run_cap=1)
    cast(HttpEngine, env.gw.engines["http"]).proxy.quotas = gate
    tok = env.token()
    status, body = await env.call("POST", "/api/2.2/jobs/run-now", tok, {"job_id": 101})
    assert status == 200, body
    run_id = body["run_id"]
    for _ in range(3):  # PENDING, RUNNING, TERMINATED: the run stops counting
        status, got = await env.call("GET", "/api/2.2/jobs/runs/get", tok, run_id=run_id)
    assert got["state"]["life_cycle_state"] == "TERMINATED" and gate.running == {}
    repair: dict[str, Any] = {"run_id": run_id, "rerun_all_failed_tasks": True}
    status, body = await env.call("POST", "/api/2.2/jobs/runs/repair", tok, repair)
    assert status == 200, body
    assert list(gate.running) == [str(run_id)]  # running again: it counts again
    status, over = await env.call("POST", "/api/2.2/jobs/run-now", tok, {"job_id": 101})
    assert status == 429 and over["error_code"] == "REQUEST_LIMIT_EXCEEDED"
    status, over = await env.call("POST", "/api/2.2/jobs/runs/repair", tok, repair)
    assert status == 429  # a second repair of a run running again: over the cap too
    assert len(env.fake.api_calls("jobs/runs/repair")) == 1  # never reached the workspace
    for _ in range(3):
        await env.call("GET", "/api/2.2/jobs/runs/get", tok, run_id=run_id)
    assert gate.running == {} and gate.leaked == 0
