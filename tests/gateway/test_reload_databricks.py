"""Live reload of a Databricks resource: the run registry keys runs by resource *name*, so
a resource moved to another workspace inherits the old workspace's run ownership."""

from __future__ import annotations

from lockgate.config import HttpResource
from lockgate.demo.standins.databricks import FakeDatabricks, start
from tests.gateway.http.test_databricks import JOB_101, Env, env  # noqa: F401  (fixture)


async def test_a_run_started_on_the_old_workspace_grants_nothing_on_the_new(
    env: Env,  # noqa: F811
) -> None:
    status, body = await env.call("POST", "/api/2.2/jobs/run-now", env.token(), {"job_id": 101})
    assert status == 200, body
    run_id = body["run_id"]
    other = FakeDatabricks({"sp-secret-1"})
    other.add_job(101, JOB_101)
    other._start(101, "another team's run", {}, False)  # the same run id, not ours
    runner, port = await start(other)
    try:
        [dbx] = env.gw.config.resources
        assert isinstance(dbx, HttpResource)
        moved = dbx.model_copy(update={"upstream": f"http://127.0.0.1:{port}"})
        env.gw.update_resources([moved])
        status, _ = await env.call(
            "POST", "/api/2.2/jobs/runs/cancel", env.token(), {"run_id": run_id}
        )
        assert not other.api_calls("runs/cancel")  # never reached the new workspace
        assert status == 403
    finally:
        await runner.cleanup()
