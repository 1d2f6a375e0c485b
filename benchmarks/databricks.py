"""Databricks ``jobs/runs/get`` through Lockgate vs direct to the test workspace, same run.

Usage::

    .venv/bin/python -m benchmarks.databricks [--requests 2000] [--concurrency 8]

The test workspace (src/lockgate/demo/standins/databricks, aiohttp) and the real :class:`Gateway`
(profile
databricks on its own listener, OAuth M2M upstream credential, run registry, policy, the
hash-chained audit trail) each run on a uvloop in a process of their own; the client
(aiohttp, keep-alive) runs in this one. ``direct`` polls the workspace with an OAuth token of
its own; ``lockgate`` polls the gateway with a Lockgate token for the DAG that started the
run (every request verified, classified with its query, checked for run ownership, decided,
relayed with the gateway's token and audited with the run page URL). The ratio is
``lockgate / direct`` in requests per second; the upstream is a Python app, so the ratio
says what the gateway costs relative to a slow-ish upstream on the same machine; it is
judged against the target (>= 0.7x). ``engine alone`` is the same engine and Databricks
profile with identity, policy and audit replaced by trivially cheap fakes.

``main()`` returns 0, or 1 when a request failed.
"""

from __future__ import annotations

import base64
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import aiohttp

from benchmarks._common import (
    Servers,
    compare,
    engine_alone,
    report_profile,
    run_profile,
    start_gateway,
)
from lockgate.identity import TaskIdentity

POLICY = """\
rules:
  - id: bench-run
    effect: allow
    principals: ["airflow:prod/bench_*/*"]
    actions: [run, read]
    resources: [dbx]
    objects: ["job:*", "run:*"]
"""


async def fake_workspace(args: dict[str, Any]) -> dict[str, Any]:
    """Server process: the test workspace with one job."""
    from lockgate.demo.standins.databricks import DEFAULT_CLIENT_ID, FakeDatabricks, start

    fake = FakeDatabricks({"bench-secret"}, pending_polls=10**9)
    cluster = {"node_type_id": "i3.xlarge", "num_workers": 2}
    fake.add_job(1, {"name": "bench", "tasks": [{"task_key": "t", "new_cluster": cluster}]})
    _, port = await start(fake)
    return {"url": f"http://127.0.0.1:{port}", "client_id": DEFAULT_CLIENT_ID}


async def gateway(args: dict[str, Any]) -> dict[str, Any]:
    """Server process: the gateway in front of the workspace, and the engine alone."""
    upstream = args["url"]
    gw = await start_gateway(
        Path(args["workdir"]),
        POLICY,
        {"name": "dbx", "kind": "http", "upstream": upstream, "credential": "sp",
         "profile": "databricks", "listen": {"host": "127.0.0.1", "port": 0}},
        {"name": "sp", "type": "oauth2_client_credentials",
         "token_url": f"{upstream}/oidc/v1/token", "client_id": args["client_id"],
         "scope": "all-apis", "token_auth": "client_secret_basic"},
        "bench-secret",
    )  # fmt: skip
    token, claims = gw.issuer.mint(TaskIdentity("prod", "bench_dag", "t", "r", 1), "dbx", 3600)
    alone = engine_alone(gw, claims)
    server = await alone.start_mounted("dbx", "127.0.0.1", 0)
    return {
        "lockgate": f"http://127.0.0.1:{gw.mounted_ports['dbx']}",
        "engine alone": f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}",
        "token": token,
    }


async def _client(servers: Servers, n: int, conc: int) -> int:
    workspace = servers.start("fake_workspace")
    gw = servers.start("gateway", **workspace)
    upstream, token = workspace["url"], gw["token"]
    basic = base64.b64encode(f"{workspace['client_id']}:bench-secret".encode()).decode()
    async with aiohttp.ClientSession() as http:
        async with http.post(
            f"{upstream}/oidc/v1/token",
            data={"grant_type": "client_credentials", "scope": "all-apis"},
            headers={"Authorization": f"Basic {basic}"},
        ) as r:
            direct_token = (await r.json())["access_token"]
        async with http.post(
            f"{gw['lockgate']}/api/2.2/jobs/run-now", json={"job_id": 1},
            headers={"Authorization": f"Bearer {token}"},
        ) as r:  # fmt: skip
            run_id = (await r.json())["run_id"]
    path = f"/api/2.2/jobs/runs/get?run_id={run_id}"

    def bearer(token: str) -> Callable[[], dict[str, str]]:
        headers = {"Authorization": f"Bearer {token}"}
        return lambda: headers

    results = await compare(
        {
            "direct": (upstream + path, bearer(direct_token)),
            "lockgate": (gw["lockgate"] + path, bearer(token)),
            # the same run, owned by the same DAG: the run registry is the gateway's
            "engine alone": (gw["engine alone"] + path, bearer(token)),
        },
        n,
        conc,
    )
    return report_profile(results)


def main(argv: list[str] | None = None) -> int:
    roles = {"fake_workspace": fake_workspace, "gateway": gateway}
    return run_profile(argv, __doc__ or "", "runs/get", roles, _client)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
