"""Databricks ``jobs/runs/get`` through Lockgate vs direct to the test workspace, same run.

Usage::

    .venv/bin/python -m benchmarks.databricks [--requests 2000] [--concurrency 8]

The test workspace (tests/fakes/databricks, aiohttp) and the real :class:`Gateway` (profile
databricks on its own listener, OAuth M2M upstream credential, run registry, policy, the
hash-chained audit trail) run on one uvloop in a background thread; the client (aiohttp,
keep-alive) runs in the main thread. ``direct`` polls the workspace with an OAuth token of
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

import aiohttp

from benchmarks._common import (
    LoopThread,
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


class Backend(LoopThread):
    """Fake workspace, gateway and the engine alone on a private loop in a daemon thread."""

    def __init__(self, workdir: Path) -> None:
        from tests.fakes.databricks import DEFAULT_CLIENT_ID, FakeDatabricks

        self.fake = FakeDatabricks({"bench-secret"}, pending_polls=10**9)
        cluster = {"node_type_id": "i3.xlarge", "num_workers": 2}
        self.fake.add_job(
            1, {"name": "bench", "tasks": [{"task_key": "t", "new_cluster": cluster}]}
        )
        self.client_id = DEFAULT_CLIENT_ID
        self.workdir = workdir
        super().__init__()
        self.call(self._boot())

    async def _boot(self) -> None:
        from tests.fakes.databricks import start

        self.runner, port = await start(self.fake)
        self.upstream = f"http://127.0.0.1:{port}"
        self.gw = await start_gateway(
            self.workdir,
            POLICY,
            {"name": "dbx", "kind": "http", "upstream": self.upstream, "credential": "sp",
             "profile": "databricks", "listen": {"host": "127.0.0.1", "port": 0}},
            {"name": "sp", "type": "oauth2_client_credentials",
             "token_url": f"{self.upstream}/oidc/v1/token", "client_id": self.client_id,
             "scope": "all-apis", "token_auth": "client_secret_basic"},
            "bench-secret",
        )  # fmt: skip
        self.gateway = f"http://127.0.0.1:{self.gw.mounted_ports['dbx']}"
        self.token, claims = self.gw.issuer.mint(
            TaskIdentity("prod", "bench_dag", "t", "r", 1), "dbx", 3600
        )
        self.alone = engine_alone(self.gw, claims)
        server = await self.alone.start_mounted("dbx", "127.0.0.1", 0)
        self.engine_alone = f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}"

    async def _down(self) -> None:
        await self.alone.close()
        await self.gw.stop()
        await self.runner.cleanup()


async def _client(b: Backend, n: int, conc: int) -> int:
    basic = base64.b64encode(f"{b.client_id}:bench-secret".encode()).decode()
    async with aiohttp.ClientSession() as http:
        async with http.post(
            f"{b.upstream}/oidc/v1/token",
            data={"grant_type": "client_credentials", "scope": "all-apis"},
            headers={"Authorization": f"Basic {basic}"},
        ) as r:
            direct_token = (await r.json())["access_token"]
        async with http.post(
            f"{b.gateway}/api/2.2/jobs/run-now", json={"job_id": 1},
            headers={"Authorization": f"Bearer {b.token}"},
        ) as r:  # fmt: skip
            run_id = (await r.json())["run_id"]
    path = f"/api/2.2/jobs/runs/get?run_id={run_id}"

    def bearer(token: str) -> Callable[[], dict[str, str]]:
        headers = {"Authorization": f"Bearer {token}"}
        return lambda: headers

    results = await compare(
        {
            "direct": (b.upstream + path, bearer(direct_token)),
            "lockgate": (b.gateway + path, bearer(b.token)),
            # the same run, owned by the same DAG: the run registry is the gateway's
            "engine alone": (b.engine_alone + path, bearer(b.token)),
        },
        n,
        conc,
    )
    return report_profile(results)


def main(argv: list[str] | None = None) -> int:
    return run_profile(argv, __doc__ or "", "runs/get", Backend, _client)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
