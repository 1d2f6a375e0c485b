"""The Databricks profile through the real gateway, to the test workspace (OAuth M2M)."""

from __future__ import annotations

import asyncio
import base64
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from lockgate.config import parse_config
from lockgate.demo.standins.databricks import DEFAULT_CLIENT_ID, FakeDatabricks, start
from lockgate.identity import TaskIdentity
from lockgate.server import Gateway, State

POLICY = """\
rules:
  - id: etl-run-jobs
    effect: allow
    principals: ["airflow:prod/etl_*/*"]
    actions: [run]
    resources: [dbx]
    objects: ["job:101", "job-name:nightly-*", "job:submit", "run:*"]
  - id: etl-read
    effect: allow
    principals: ["airflow:prod/etl_*/*"]
    actions: [read]
    resources: [dbx]
    objects: ["run:*", "job:101", "cluster:*"]
  - id: no-secret-job
    effect: deny
    principals: ["*"]
    actions: ["*"]
    resources: [dbx]
    objects: ["job-name:nightly-secret"]
  - id: triggerer-polls
    effect: allow
    principals: ["airflow:prod/*/@poll"]
    actions: [read]
    resources: [dbx]
    objects: ["run:*"]
"""
SUBMIT_64 = {
    "run_name": "big",
    "timeout_seconds": 600,
    "tasks": [
        {"task_key": "t", "notebook_task": {"notebook_path": "/x"},
         "new_cluster": {"spark_version": "15.4.x-scala2.12", "node_type_id": "i3.xlarge",
                         "num_workers": 64}}
    ],
}  # fmt: skip
JOB_101 = {
    "name": "etl-load",
    "timeout_seconds": 1800,
    "job_clusters": [
        {"job_cluster_key": "main",
         "new_cluster": {"node_type_id": "i3.xlarge", "autoscale": {"min_workers": 1,
                                                                    "max_workers": 4}}}
    ],
    "tasks": [{"task_key": "load", "job_cluster_key": "main"}],
}  # fmt: skip


class Env:
    def __init__(self, gw: Gateway, fake: FakeDatabricks, http: aiohttp.ClientSession) -> None:
        self.gw, self.fake, self.http = gw, fake, http
        self.base = f"http://127.0.0.1:{gw.mounted_ports['dbx']}"

    def token(self, dag: str = "etl_daily", task: str = "run", run: str = "r1") -> str:
        ident = TaskIdentity("prod", dag, task, run, 1)
        return self.gw.issuer.mint(ident, "dbx", 600)[0]

    async def call(
        self, method: str, path: str, token: str | None, body: Any = None, **params: Any
    ) -> tuple[int, Any]:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        async with self.http.request(
            method, self.base + path, json=body, params=params or None, headers=headers
        ) as r:
            return r.status, await r.json(content_type=None)


@pytest.fixture
async def env(tmp_path: Path) -> AsyncIterator[Env]:
    fake = FakeDatabricks({"sp-secret-1"})
    fake.add_job(101, JOB_101)
    fake.add_job(202, {"name": "nightly-report", "tasks": [{"task_key": "a",
                       "new_cluster": {"node_type_id": "i3.xlarge", "num_workers": 2}}],
                       "timeout_seconds": 600})  # fmt: skip
    fake.add_job(303, {"name": "nightly-secret", "tasks": []})
    fake.add_job(404, {"name": "other", "tasks": []})
    runner, port = await start(fake)
    (tmp_path / "p.yaml").write_text(POLICY)
    cfg = parse_config(
        {
            "data_dir": str(tmp_path / "data"),
            "listeners": {"control": {"port": 0}, "http": {"port": 0}},
            "deployments": [
                {"name": "prod", "proof": {"type": "client_secret", "secret_sha256": "0" * 64},
                 "dags": ["etl_*", "other_*"]}
            ],
            "resources": [
                {"name": "dbx", "kind": "http", "upstream": f"http://127.0.0.1:{port}",
                 "credential": "dbx-sp", "conn_id": "databricks_default",
                 "listen": {"host": "127.0.0.1", "port": 0}, "profile": "databricks",
                 "retry": {"base_delay": 0.05, "max_delay": 0.5},
                 "databricks": {"max_body_bytes": 4096, "guardrails": [
                     {"principals": ["airflow:prod/etl_*/*"], "max_workers": 8,
                      "allowed_node_types": ["i3.*"], "max_timeout_seconds": 3600}]}}
            ],
            "credentials": [
                {"name": "dbx-sp", "type": "oauth2_client_credentials",
                 "token_url": f"http://127.0.0.1:{port}/oidc/v1/token",
                 "client_id": DEFAULT_CLIENT_ID, "scope": "all-apis",
                 "token_auth": "client_secret_basic"}
            ],
            "policies": [str(tmp_path / "p.yaml")],
        },
        tmp_path / "lockgate.yaml",
    )  # fmt: skip
    State(cfg).credentials.set("dbx-sp", "sp-secret-1")
    gw = Gateway(cfg)
    await gw.start()
    try:
        async with aiohttp.ClientSession() as http:
            yield Env(gw, fake, http)
    finally:
        await gw.stop()
        await runner.cleanup()


def _audit(env: Env, **kw: Any) -> list[Any]:
    env.gw.audit.flush(5.0)
    return env.gw.audit.search(resource="dbx", **kw)


async def test_run_now_and_poll_record_job_run_page_and_cluster_size(env: Env) -> None:
    tok = env.token()
    status, body = await env.call("POST", "/api/2.2/jobs/run-now", tok, {"job_id": 101})
    assert status == 200, body
    run_id = body["run_id"]
    states = []
    for _ in range(3):
        status, run = await env.call("GET", "/api/2.2/jobs/runs/get", tok, run_id=run_id)
        assert status == 200, run
        states.append(run["state"]["life_cycle_state"])
    assert states == ["PENDING", "RUNNING", "TERMINATED"]
    assert run["state"]["result_state"] == "SUCCESS"
    # The upstream saw only the gateway's OAuth token, never the Lockgate token.
    assert all(s.authorised for s in env.fake.seen)
    assert env.fake.token_calls == 1
    rows = _audit(env, dag="etl_daily", event="allowed")  # outcomes (after "admitted")
    started = [r for r in rows if r.object == "job:101" and r.action == "run"]
    assert started and started[0].detail["run_id"] == run_id
    assert started[0].detail["cluster"]["max_workers_total"] == 4
    polls = [r for r in rows if r.object == f"run:{run_id}"]
    assert polls[-1].detail["run_page_url"].endswith(f"/run/{run_id}")
    assert polls[-1].detail["result_state"] == "SUCCESS"


async def test_runs_are_readable_only_by_the_dag_that_started_them(env: Env) -> None:
    status, body = await env.call("POST", "/api/2.1/jobs/run-now", env.token(), {"job_id": 101})
    run_id = body["run_id"]
    other = env.token(dag="etl_other")
    status, denied = await env.call("GET", "/api/2.2/jobs/runs/get", other, run_id=run_id)
    assert status == 403 and "started by DAG etl_daily" in denied["reason"]
    # a run never started through Lockgate
    status, denied = await env.call("POST", "/api/2.2/jobs/runs/cancel", env.token(), {"run_id": 5})
    assert status == 403 and "not started through Lockgate" in denied["reason"]
    # the owner may cancel
    status, _ = await env.call("POST", "/api/2.2/jobs/runs/cancel", env.token(), {"run_id": run_id})
    assert status == 200 and env.fake.runs[run_id].cancelled


async def test_submit_over_the_worker_cap_is_denied_naming_limit_and_value(env: Env) -> None:
    status, body = await env.call("POST", "/api/2.2/jobs/runs/submit", env.token(), SUBMIT_64)
    assert status == 403
    assert "num_workers 64 exceeds the limit 8" in body["reason"]
    assert "airflow:prod/etl_*/*" in body["reason"]
    assert not env.fake.api_calls("runs/submit")  # never reached the workspace
    small = json.loads(json.dumps(SUBMIT_64))
    small["tasks"][0]["new_cluster"]["num_workers"] = 8
    assert (await env.call("POST", "/api/2.2/jobs/runs/submit", env.token(), small))[0] == 200
    small["tasks"][0]["new_cluster"]["node_type_id"] = "p4d.24xlarge"
    status, body = await env.call("POST", "/api/2.2/jobs/runs/submit", env.token(), small)
    assert status == 403 and "node_type_id p4d.24xlarge is not allowed" in body["reason"]
    small["tasks"][0]["new_cluster"]["node_type_id"] = "i3.xlarge"
    small["timeout_seconds"] = 0
    status, body = await env.call("POST", "/api/2.2/jobs/runs/submit", env.token(), small)
    assert status == 403 and "timeout_seconds 0 (no timeout)" in body["reason"]
    denied = _audit(env, event="denied")
    assert any(r.rule == "databricks-guardrail" and "64" in (r.reason or "") for r in denied)


async def test_job_grants_by_id_and_by_name_glob_explicit_deny_wins(env: Env) -> None:
    tok = env.token()
    status, body = await env.call("POST", "/api/2.2/jobs/run-now", tok, {"job_id": 404})
    assert status == 403 and body["object"] == "job:404" and body["rule"] is None
    assert (await env.call("POST", "/api/2.2/jobs/run-now", tok, {"job_id": 202}))[0] == 200
    status, body = await env.call("POST", "/api/2.2/jobs/run-now", tok, {"job_id": 303})
    assert status == 403 and body["rule"] == "no-secret-job"
    status, body = await env.call("GET", "/api/2.2/jobs/get", tok, job_id=101)
    assert status == 200 and body["settings"]["name"] == "etl-load"


async def test_poll_tokens_only_read_runs_of_their_deployment(env: Env) -> None:
    status, body = await env.call("POST", "/api/2.2/jobs/run-now", env.token(), {"job_id": 101})
    run_id = body["run_id"]
    poll = env.gw.issuer.mint(TaskIdentity("prod", "@triggerer", "@poll", "@any", 0), "dbx", 60)[0]
    assert (await env.call("GET", "/api/2.2/jobs/runs/get", poll, run_id=run_id))[0] == 200
    status, body = await env.call("POST", "/api/2.2/jobs/run-now", poll, {"job_id": 101})
    assert status == 403 and "poll tokens may only read runs" in body["reason"]
    assert (await env.call("GET", "/api/2.2/jobs/runs/get", poll, run_id=77))[0] == 403
    narrowed = env.gw.issuer.mint(TaskIdentity("prod", "etl_other", "@poll", "@any", 0), "dbx", 60)[
        0
    ]
    assert (await env.call("GET", "/api/2.2/jobs/runs/get", narrowed, run_id=run_id))[0] == 403


async def test_discovery_probe_answered_locally_and_limits(env: Env) -> None:
    status, body = await env.call("GET", "/.well-known/databricks-config", None)
    assert status == 404 and body["error_code"] == "NOT_FOUND"
    assert (await env.call("GET", "/api/2.2/jobs/runs/get", None, run_id=1))[0] == 401
    big = {"job_id": 101, "pad": "x" * 8000}
    status, body = await env.call("POST", "/api/2.2/jobs/run-now", env.token(), big)
    assert status == 413 and body["error"] == "body_too_large"
    status, body = await env.call("POST", "/api/2.2/jobs/run-now", env.token(), {"job_id": "x"})
    assert status == 400


async def test_throttled_polls_are_retried_after_retry_after(env: Env) -> None:
    status, body = await env.call("POST", "/api/2.2/jobs/run-now", env.token(), {"job_id": 101})
    env.fake.throttle(2, retry_after="0")
    status, run = await env.call(
        "GET", "/api/2.2/jobs/runs/get", env.token(), run_id=body["run_id"]
    )
    assert status == 200 and run["run_id"] == body["run_id"]
    rows = _audit(env, dag="etl_daily")
    assert rows[-1].detail.get("retries") == 2


async def test_async_hook_style_get_with_json_body(env: Env) -> None:
    status, body = await env.call("POST", "/api/2.2/jobs/run-now", env.token(), {"job_id": 101})
    assert status == 200
    async with env.http.get(
        env.base + "/api/2.2/jobs/runs/get", json={"run_id": body["run_id"]},
        headers={"Authorization": f"Bearer {env.token()}"},
    ) as r:  # fmt: skip
        assert r.status == 200 and (await r.json())["run_id"] == body["run_id"]


async def test_rotating_the_service_principal_secret_while_polling_fails_nothing(
    env: Env,
) -> None:
    env.fake.token_ttl = 1  # upstream tokens expire quickly: refreshes happen mid-run
    tok = env.token()
    status, body = await env.call("POST", "/api/2.2/jobs/run-now", tok, {"job_id": 101})
    assert status == 200
    env.fake.pending_polls = 10**6  # keep the run going
    results = []
    for i in range(12):
        if i == 3:
            env.fake.client_secrets.add("sp-secret-2")
            State(env.gw.config).credentials.rotate("dbx-sp", "sp-secret-2")
        if i == 6:
            env.fake.client_secrets.discard("sp-secret-1")
        results.append(
            (await env.call("GET", "/api/2.2/jobs/runs/get", tok, run_id=body["run_id"]))[0]
        )
        await asyncio.sleep(0.25)
    assert results == [200] * 12
    assert env.fake.token_calls >= 2


async def test_databricks_sdk_workspace_client_through_the_mounted_listener(env: Env) -> None:
    from databricks.sdk import WorkspaceClient

    status, body = await env.call("POST", "/api/2.2/jobs/run-now", env.token(), {"job_id": 101})
    assert status == 200
    tok = env.token()

    def sdk_get() -> Any:
        w = WorkspaceClient(host=env.base, token=tok, auth_type="pat")
        return w.jobs.get_run(body["run_id"])

    run = await asyncio.to_thread(sdk_get)
    assert run.run_id == body["run_id"] and run.state is not None


async def test_fake_workspace_rejects_unknown_tokens_and_secrets(env: Env) -> None:
    api = env.fake.base_url + "/api/2.2/jobs/get?job_id=101"
    async with env.http.get(api, headers={"Authorization": "Bearer nope"}) as r:
        assert r.status == 401 and (await r.json())["error_code"] == "UNAUTHENTICATED"
    bad = base64.b64encode(f"{DEFAULT_CLIENT_ID}:wrong".encode()).decode()
    async with env.http.post(
        env.fake.base_url + "/oidc/v1/token",
        data={"grant_type": "client_credentials", "scope": "all-apis"},
        headers={"Authorization": f"Basic {bad}"},
    ) as r:
        assert r.status == 401


def test_guardrails_read_numbers_sent_as_strings() -> None:
    from lockgate.config import DatabricksGuardrail
    from lockgate.gateway.http.profiles.databricks import guardrails as g

    cluster = {"node_type_id": "i3.xlarge", "num_workers": "64"}
    payload: dict[str, Any] = {
        "timeout_seconds": "1800",
        "tasks": [{"task_key": "t", "new_cluster": cluster}],
    }
    rule = DatabricksGuardrail(principals=["*"], max_workers=8, max_timeout_seconds=3600)
    specs = g.cluster_specs(payload)
    why = g.violation(rule, specs, g.timeouts(payload), "airflow:prod/*/*")
    assert why is not None and "num_workers 64 exceeds the limit 8" in why
    assert g.summarize(specs)["max_workers_total"] == 64
    payload["tasks"][0]["new_cluster"] = {"node_type_id": "i3.xlarge", "autoscale": {}}
    why = g.violation(rule, g.cluster_specs(payload), g.timeouts(payload), "p")
    assert why is not None and "does not bound its workers" in why


async def test_a_run_id_named_twice_is_refused_not_judged_on_one_copy(env: Env) -> None:
    # The gateway read the body's (or the last) run_id, the workspace the query's (or the
    # first): a DAG could read another DAG's run by naming its own run as a decoy.
    _, theirs = await env.call("POST", "/api/2.2/jobs/run-now", env.token(), {"job_id": 101})
    mine_tok = env.token(dag="etl_other")
    _, mine = await env.call("POST", "/api/2.2/jobs/run-now", mine_tok, {"job_id": 101})
    victim, decoy = theirs["run_id"], mine["run_id"]
    before = len(env.fake.api_calls("runs/get"))
    url = env.base + "/api/2.2/jobs/runs/get"
    auth = {"Authorization": f"Bearer {mine_tok}"}
    attempts: list[dict[str, Any]] = [
        {"params": {"run_id": str(victim)}, "json": {"run_id": decoy}},
        {"params": [("run_id", str(victim)), ("run_id", str(decoy))]},
        {"data": f'{{"run_id": {victim}, "run_id": {decoy}}}'},
    ]
    for kw in attempts:
        async with env.http.get(url, headers=auth, **kw) as r:
            answer = await r.json(content_type=None)
            assert r.status == 400, (kw, answer)
            assert answer.get("run_id") != victim
    assert len(env.fake.api_calls("runs/get")) == before  # none reached the workspace
    refused = _audit(env, dag="etl_other", decision="deny")
    assert sum(r.status == 400 for r in refused) >= len(attempts)


async def test_guardrails_see_nested_clusters_and_odd_numbers(env: Env) -> None:
    def submit(cluster: dict[str, Any], nested: bool = False) -> dict[str, Any]:
        task: dict[str, Any] = {"task_key": "t", "notebook_task": {"notebook_path": "/x"},
                                "new_cluster": cluster}  # fmt: skip
        if nested:  # for_each_task runs its inner task on the inner task's own cluster
            task = {"task_key": "each", "for_each_task": {"inputs": "[1,2]", "task": task}}
        return {"run_name": "odd", "timeout_seconds": 600, "tasks": [task]}

    big = {"spark_version": "15.4.x-scala2.12", "node_type_id": "i3.xlarge", "num_workers": 64}
    status, body = await env.call("POST", "/api/2.2/jobs/runs/submit", env.token(),
                                  submit(big, nested=True))  # fmt: skip
    assert status == 403 and "num_workers 64 exceeds the limit 8" in body["reason"], body
    for odd in ("\u00b2", "\u0661\u0662", "6.4e1"):  # superscript two, Arabic-Indic 12
        status, body = await env.call("POST", "/api/2.2/jobs/runs/submit", env.token(),
                                      submit({**big, "num_workers": odd}))  # fmt: skip
        assert status == 403 and "does not bound its workers" in body["reason"], (odd, body)
    assert not env.fake.api_calls("runs/submit")


async def test_a_submitted_run_job_task_is_judged_as_a_run_now_of_that_job(env: Env) -> None:
    # runs/submit may hold tasks that trigger existing jobs (run_job_task): job:submit alone
    # ran a job whose name is denied, one never granted, or one over the guardrails.
    def submit(job_id: Any, nested: bool = False) -> dict[str, Any]:
        task: dict[str, Any] = {"task_key": "t", "run_job_task": {"job_id": job_id}}
        if nested:
            task = {"task_key": "each", "for_each_task": {"inputs": "[1]", "task": task}}
        return {"run_name": "trigger", "timeout_seconds": 600, "tasks": [task]}

    env.fake.add_job(
        505,
        {
            "name": "nightly-huge",
            "timeout_seconds": 600,
            "tasks": [
                {"task_key": "a", "new_cluster": {"node_type_id": "i3.xlarge", "num_workers": 64}}
            ],
        },
    )
    tok = env.token()
    for job_id, nested, why in [
        (303, False, "nightly-secret"),  # an explicit deny on the job's name
        (404, True, "job:404"),  # granted neither by id nor by name
        (505, False, "num_workers 64 exceeds the limit 8"),  # the job's own cluster
        ("abc", False, "job_id"),
    ]:
        status, body = await env.call("POST", "/api/2.2/jobs/runs/submit", tok,
                                      submit(job_id, nested))  # fmt: skip
        assert status in (400, 403) and why in str(body), (job_id, body)
    assert not env.fake.api_calls("runs/submit")
    status, body = await env.call("POST", "/api/2.2/jobs/runs/submit", tok, submit(101, True))
    assert status == 200, body


async def test_a_submitted_pipeline_task_needs_a_grant_on_that_pipeline(env: Env) -> None:
    # A pipeline_task starts an existing Delta Live Tables pipeline on its own clusters:
    # no guardrail sees them, so it runs only under a grant of run on pipeline:<id>.
    body = {
        "run_name": "dlt",
        "timeout_seconds": 600,
        "tasks": [{"task_key": "p", "pipeline_task": {"pipeline_id": "abc-123"}}],
    }
    status, answer = await env.call("POST", "/api/2.2/jobs/runs/submit", env.token(), body)
    assert status == 403 and "pipeline:abc-123" in str(answer), answer
    assert not env.fake.api_calls("runs/submit")


async def test_a_body_nested_past_the_parsers_depth_is_refused_and_audited(env: Env) -> None:
    # json.loads raises RecursionError (not ValueError) on [[[[...]]]]: unplaceable, so a
    # 400 refusal on the record, never a 500 or an unjudged forward.
    before = len(env.fake.api_calls("run-now"))
    body = "[" * 1500 + "]" * 1500
    async with env.http.post(
        env.base + "/api/2.2/jobs/run-now",
        headers={"Authorization": f"Bearer {env.token()}", "Content-Type": "application/json"},
        data=body,
    ) as r:
        assert r.status == 400, await r.text()
    assert len(env.fake.api_calls("run-now")) == before
    refused = _audit(env, decision="deny")
    assert any(rec.status == 400 for rec in refused)
