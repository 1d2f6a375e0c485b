"""Cosmos DB document point reads through Lockgate vs direct to the test account, same run.

Usage::

    .venv/bin/python -m benchmarks.cosmos [--requests 2000] [--concurrency 8]

The test account (tests/fakes/cosmos, aiohttp) and the real :class:`Gateway` (profile cosmos,
account key credential, policy, the hash-chained audit trail) run on one uvloop in a
background thread; the client (aiohttp, keep-alive) runs in the main thread and signs every
request as the SDK does (master-key HMAC over verb, type, link and ``x-ms-date``).
``direct`` signs with the account key; ``lockgate`` sends the same point read to
``/<resource>/_t/<token>/...`` signed with the task's derived key: the gateway verifies the
token and the signature, classifies, decides, re-signs with the account key, relays and
audits with db/container. The ratio is ``lockgate / direct`` in requests per second, judged
against the target (>= 0.7x). ``engine alone`` is the same HTTP engine and Cosmos DB profile
with identity, policy and audit replaced by trivially cheap fakes (``benchmarks._common``).

``main()`` returns 0, or 1 when a request failed.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

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
  - id: bench-read
    effect: allow
    principals: ["airflow:prod/bench_*/*"]
    actions: [read]
    resources: [cosmos]
    objects: ["sales/orders"]
"""
DOC_PATH = "dbs/sales/colls/orders/docs/d1"


class Backend(LoopThread):
    """Fake account, gateway and the engine alone on a private loop in a daemon thread."""

    def __init__(self, workdir: Path) -> None:
        super().__init__()
        self.workdir = workdir
        self.call(self._boot())

    async def _boot(self) -> None:
        from tests.fakes.cosmos import start_cosmos

        self.fake = await start_cosmos()
        self.fake.store.create_database({"id": "sales"})
        pk = {"paths": ["/pk"], "kind": "Hash"}
        self.fake.store.create_container("sales", {"id": "orders", "partitionKey": pk})
        self.fake.store.container("sales", "orders").put(
            '["p"]', {"id": "d1", "pk": "p", "amount": 42}, mode="create"
        )
        self.gw = await start_gateway(
            self.workdir,
            POLICY,
            {"name": "cosmos", "kind": "http", "upstream": self.fake.url, "credential": "key",
             "profile": "cosmos"},
            {"name": "key", "type": "static"},
            self.fake.keys[0],
        )  # fmt: skip
        self.token, self.claims = self.gw.issuer.mint(
            TaskIdentity("prod", "bench_dag", "t", "r", 1), "cosmos", 3600
        )
        self.alone = engine_alone(self.gw, self.claims)
        await self.alone.start("127.0.0.1", 0)

    async def _down(self) -> None:
        await self.alone.close()
        await self.gw.stop()
        await self.fake.close()


def _signed(key: str) -> Callable[[], dict[str, str]]:
    """Headers of a point read signed as the SDK does, a fresh date each time."""
    from lockgate.credentials.cosmos import rfc1123_now, sign

    def headers() -> dict[str, str]:
        date = rfc1123_now()
        return {
            "authorization": sign(key, "GET", "docs", DOC_PATH, date),
            "x-ms-date": date,
            "x-ms-version": "2020-07-15",
            "x-ms-documentdb-partitionkey": '["p"]',
        }

    return headers


async def _client(b: Backend, n: int, conc: int) -> int:
    def task_key(engine: Any) -> str:
        return str(engine.proxy.resources["cosmos"].profile.task_key(b.claims.jti))

    via = f"_t/{b.token}/{DOC_PATH}"
    results = await compare(
        {
            "direct": (f"{b.fake.url.rstrip('/')}/{DOC_PATH}", _signed(b.fake.keys[0])),
            "lockgate": (
                f"http://127.0.0.1:{b.gw.http_port}/cosmos/{via}",
                _signed(task_key(b.gw.engine)),
            ),
            "engine alone": (
                f"http://127.0.0.1:{b.alone.port}/cosmos/{via}",
                _signed(task_key(b.alone)),
            ),
        },
        n,
        conc,
    )
    return report_profile(results)


def main(argv: list[str] | None = None) -> int:
    return run_profile(argv, __doc__ or "", "point reads", Backend, _client)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
