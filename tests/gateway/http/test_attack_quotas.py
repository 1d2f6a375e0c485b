"""Attempts to get more than a quota gives through the HTTP engine, each a hole once:

- a Databricks ``jobs/runs/repair`` re-runs a finished run's tasks (the run is running
  again), so it is a run start under a ``runs`` cap, not a free pass past it;
- a Databricks run-now spelled ``jobs/run-now/`` or ``JOBS/RUN-NOW`` was judged as some
  other request (no run cap, no guardrails) though a lenient workspace would start a run;
- a quota on a job (by id or by name) did not count a run-now by the other name, nor a
  ``runs/submit`` whose ``run_job_task`` triggers the job;
- a run start whose client leaves once the request is upstream (or whose answer never
  comes: an upstream timeout) may well have started the run: its slot used to be given
  back, so a task could start runs past the cap by hanging up after each request;
- a quota on ``/items/*`` did not count ``/ITEMS/x`` or ``/items./x``, which a case-blind
  upstream (IIS, ASP.NET) serves as the same items;
- a Cosmos DB batch (bulk mode sends them, up to 100 operations each) cost one token of a
  rate: each operation counts now.

And what held: no in-flight slot stays taken whatever the client or upstream does, and a
throttled request names no token and never reaches the upstream.
"""

from __future__ import annotations

import asyncio
import json
import socket
import struct
from collections.abc import Iterator
from typing import Any, cast

import aiohttp
import pytest
from aiohttp import web

from lockgate.demo.standins.adf import FakeAdf
from lockgate.demo.standins.databricks import FakeDatabricks
from lockgate.gateway.http import HttpEngine
from lockgate.policy import parse_policy_texts
from lockgate.quotas.budgets import MemoryBudgets
from lockgate.quotas.gate import PolicyQuotaGate
from tests.gateway.quota_fakes import FakeGate

from .conftest import TOKEN, bearer, resource
from .test_cosmos import Env as CosmosEnv
from .test_cosmos import env as cosmos_env  # noqa: F401 - a fixture
from .test_cosmos import run as cosmos_run
from .test_databricks import Env, _audit
from .test_databricks import env as env  # a fixture
from .test_forward_proxy_arm import PREFIX, arm_resource
from .test_quotas_gate import RULES, gateway, task_claims
from .test_quotas_gate import adf as adf  # a fixture


@pytest.fixture(autouse=True)
def workspace_repairs_runs(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """The test workspace answers ``jobs/runs/repair`` as Databricks does (the terminated
    run is pending again and a repair id is returned), and run-now under other spellings."""
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
        # a workspace lenient about case and trailing slashes (the gateway cannot know)
        application.router.add_post("/api/2.2/jobs/run-now/", self.run_now)
        application.router.add_post("/api/2.2/JOBS/RUN-NOW", self.run_now)
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


ONE_RUN = """\
quotas:
  - id: one-pipeline-run
    principals: ["airflow:prod/*"]
    resources: [orders]
    actions: [run]
    runs: 1
"""
CREATE_RUN = (
    b"POST /orders" + PREFIX.encode() + b"/factories/adf-prod/pipelines/load/createRun"
    b"?api-version=2018-06-01 HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer tok-orders\r\n"
    b"Content-Length: 0\r\n\r\n"
)


@pytest.fixture
def slow_create_run(monkeypatch: pytest.MonkeyPatch) -> None:
    """Data Factory takes 0.4 s to answer a createRun (it starts the run all the same when
    the caller is gone by then, as ARM does)."""
    plain = FakeAdf.handle

    async def handle(self: FakeAdf, request: web.Request) -> web.Response:
        if request.path.lower().endswith("/createrun"):
            await asyncio.sleep(0.4)
        return await plain(self, request)

    monkeypatch.setattr(FakeAdf, "handle", handle)


async def _second_start(gw: Any) -> int:
    url = f"{gw.url}/orders{PREFIX}/factories/adf-prod/pipelines/load/createRun"
    async with (
        aiohttp.ClientSession() as s,
        s.post(url + "?api-version=2018-06-01", headers=bearer()) as r,
    ):
        await r.read()
        return r.status


async def test_a_run_start_whose_client_hangs_up_still_counts(
    slow_create_run: None, make_gateway: Any, adf: tuple[FakeAdf, str]
) -> None:
    fake, url = adf
    gw = await gateway(make_gateway, ONE_RUN, resources=[arm_resource(url)])
    _, writer = await asyncio.open_connection("127.0.0.1", gw.port)
    writer.write(CREATE_RUN)
    await writer.drain()
    await asyncio.sleep(0.2)  # upstream, not answered yet: hang up (a reset)
    sock = writer.transport.get_extra_info("socket")
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    writer.transport.abort()
    await asyncio.sleep(0.4)
    assert len(fake.runs) == 1  # Data Factory started it
    assert await _second_start(gw) == 429  # and it counts: the cap is not escaped
    assert len(fake.calls("createRun")) == 1


async def test_a_run_start_the_upstream_never_answers_in_time_still_counts(
    slow_create_run: None, make_gateway: Any, adf: tuple[FakeAdf, str]
) -> None:
    fake, url = adf
    resource = arm_resource(url, retry={"deadline": 0.2})
    gw = await gateway(make_gateway, ONE_RUN, resources=[resource])
    assert await _second_start(gw) == 504  # the gateway stopped waiting...
    await asyncio.sleep(0.3)
    assert len(fake.runs) == 1  # ...Data Factory started the run all the same
    assert await _second_start(gw) == 429
    assert len(fake.calls("createRun")) == 1


async def test_a_run_start_the_upstream_refuses_gives_its_slot_back(
    make_gateway: Any, adf: tuple[FakeAdf, str]
) -> None:
    fake, url = adf
    gw = await gateway(make_gateway, ONE_RUN, resources=[arm_resource(url)])
    fake.factories["adf-prod"].discard("load")  # PipelineNotFound: nothing started
    assert await _second_start(gw) == 404
    fake.factories["adf-prod"].add("load")
    assert await _second_start(gw) == 200


COSMOS_WRITES = """\
quotas:
  - id: cosmos-writes
    principals: ["airflow:prod/*"]
    resources: [cosmos]
    actions: [write]
    rate: 10/s
"""
IN_FLIGHT = """\
quotas:
  - id: two-in-flight
    principals: ["airflow:prod/*"]
    resources: [orders]
    concurrency: 2
    max_delay: 0.3s
"""


async def test_no_in_flight_slot_stays_taken_whatever_the_client_or_upstream_does(
    make_gateway: Any, upstream: Any
) -> None:
    budgets = MemoryBudgets()
    policy = parse_policy_texts([("team.yaml", RULES + IN_FLIGHT)])
    gw = await make_gateway(
        quotas=PolicyQuotaGate(lambda: policy, budgets),
        resources=[resource("orders", upstream.url, retry={"deadline": 0.3})],
    )
    gw.verifier.tokens[TOKEN] = task_claims()
    auth = b"Authorization: Bearer " + TOKEN.encode() + b"\r\n"

    async def reset_after(request: bytes, wait: float, read: bool = False) -> None:
        reader, writer = await asyncio.open_connection("127.0.0.1", gw.port)
        writer.write(request)
        await writer.drain()
        if read:
            await reader.read(1000)
        await asyncio.sleep(wait)
        sock = writer.transport.get_extra_info("socket")
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        writer.transport.abort()

    upload = b"POST /orders/up HTTP/1.1\r\nHost: x\r\n" + auth + b"Content-Length: 900000\r\n\r\n"
    await asyncio.gather(
        reset_after(upload + b"x" * 300_000, 0.1),  # mid-body (the upload streams upstream)
        reset_after(b"GET /orders/download?size=50000000 HTTP/1.1\r\nHost: x\r\n" + auth + b"\r\n",
                    0.05, read=True),  # mid-response
        reset_after(b"GET /orders/slow?s=2 HTTP/1.1\r\nHost: x\r\n" + auth + b"\r\n", 0.1),
        reset_after(b"GET /orders/held HTTP/1.1\r\nHost: x\r\n" + auth + b"\r\n", 0.1),  # held
    )  # fmt: skip
    async with (
        aiohttp.ClientSession() as s,
        s.get(f"{gw.url}/orders/slow?s=2", headers=bearer()) as r,
    ):
        assert r.status == 504  # the upstream timed out (the resource's deadline)
    for _ in range(40):
        if not budgets._held:
            break
        await asyncio.sleep(0.05)
    assert budgets._held == {}  # the gate's own count: nothing held


ITEM_READS = """\
quotas:
  - id: item-reads
    principals: ["airflow:prod/*"]
    resources: [orders]
    objects: ["/items/*"]
    rate: 1/s
    burst: 1
"""


async def test_a_path_spelled_as_a_case_blind_upstream_reads_it_counts_too(
    make_gateway: Any, upstream: Any
) -> None:
    gw = await gateway(make_gateway, ITEM_READS)
    async with aiohttp.ClientSession() as s:
        async with s.get(f"{gw.url}/orders/items/1", headers=bearer()) as r:
            assert r.status == 200
        for spelled in ("ITEMS/2", "Items./3", "items./4"):  # /items/ on IIS, ASP.NET
            async with s.get(f"{gw.url}/orders/{spelled}", headers=bearer()) as r:
                assert r.status == 429, spelled
                assert (await r.json())["limit"] == "item-reads"
    assert not [p for p in upstream.received if "/items/" not in p]


def _real_gate(env: Env, quotas: str) -> None:
    policy = parse_policy_texts([("runs.yaml", quotas)])
    http = cast(HttpEngine, env.gw.engines["http"])
    http.proxy.quotas = PolicyQuotaGate(lambda: policy, MemoryBudgets())


async def test_a_run_cap_on_a_job_counts_its_runs_by_id_name_or_submit(env: Env) -> None:
    _real_gate(
        env,
        """\
        quotas:
          - id: etl-load-runs
            principals: ["airflow:prod/*"]
            resources: [dbx]
            objects: ["job-name:etl-load"]
            runs: 1
            per: all
        """.replace("        ", ""),
    )
    tok = env.token()
    status, body = await env.call("POST", "/api/2.2/jobs/run-now", tok, {"job_id": 101})
    assert status == 200, body  # job 101 is etl-load: its run counts under the name's cap
    status, over = await env.call("POST", "/api/2.2/jobs/run-now", tok, {"job_id": 101})
    assert status == 429 and "etl-load-runs" in over["message"]
    submit = {
        "run_name": "via-submit",
        "timeout_seconds": 600,
        "tasks": [{"task_key": "t", "run_job_task": {"job_id": 101}}],
    }
    status, over = await env.call("POST", "/api/2.2/jobs/runs/submit", tok, submit)
    assert status == 429, over  # a submit that triggers the job is a run of it too
    assert len(env.fake.api_calls("jobs/run-now")) == 1
    assert len(env.fake.api_calls("jobs/runs/submit")) == 0


async def test_every_operation_of_a_cosmos_batch_counts_against_a_rate(
    cosmos_env: CosmosEnv,  # noqa: F811
) -> None:
    policy = parse_policy_texts([("q.yaml", COSMOS_WRITES)])
    budgets = MemoryBudgets()
    http = cast(HttpEngine, cosmos_env.gw.engines["http"])
    c = await cosmos_run(
        lambda: cosmos_env.client().get_database_client("sales").get_container_client("orders")
    )
    await cosmos_run(lambda: c.read())
    http.proxy.quotas = PolicyQuotaGate(lambda: policy, budgets)
    ops = [("upsert", ({"id": f"b{i}", "pk": "p"},)) for i in range(50)]
    await cosmos_run(lambda: c.execute_item_batch(ops, partition_key="p"))
    (bucket,) = budgets._buckets.values()
    assert bucket.tokens <= -39  # 50 writes against a burst of 10: 40 in debt, less refill


async def test_a_throttled_cosmos_request_names_no_token_in_its_answer_or_record(
    cosmos_env: CosmosEnv,  # noqa: F811
) -> None:
    from azure.cosmos.exceptions import CosmosHttpResponseError

    token, _ = cosmos_env.token()
    c = await cosmos_run(
        lambda: cosmos_env.client().get_database_client("sales").get_container_client("orders")
    )
    await cosmos_run(lambda: c.read())
    gate = FakeGate(statements="throttle", limit="orders-writes", retry_after=0.01)
    cast(HttpEngine, cosmos_env.gw.engines["http"]).proxy.quotas = gate
    with pytest.raises(CosmosHttpResponseError) as err:
        await cosmos_run(lambda: c.upsert_item({"id": "t1", "pk": "p"}))
    assert err.value.status_code == 429 and "orders-writes" in str(err.value)
    records = cosmos_env.audit(event="throttled")
    assert records and all(r.detail["limit"] == "orders-writes" for r in records)
    seen = str(err.value) + json.dumps([r.to_dict() for r in records])
    for part in (token, *token.split(".")):
        assert part not in seen
    assert not [e for e in cosmos_env.fake.executed if e.op == "upsert"]  # never ran upstream


async def test_a_run_now_spelled_otherwise_still_asks_the_run_cap(env: Env) -> None:
    gate = FakeGate(run_cap=1)
    cast(HttpEngine, env.gw.engines["http"]).proxy.quotas = gate
    tok = env.token()
    status, body = await env.call("POST", "/api/2.2/jobs/run-now/", tok, {"job_id": 101})
    assert status == 200, body
    assert list(gate.running) == [str(body["run_id"])]  # counted as the run it is
    status, over = await env.call("POST", "/api/2.2/JOBS/RUN-NOW", tok, {"job_id": 101})
    assert status == 429 and over["error_code"] == "REQUEST_LIMIT_EXCEEDED"
    rec = _audit(env, event="throttled")[-1]
    assert (rec.action, rec.object) == ("run", "job:101")
