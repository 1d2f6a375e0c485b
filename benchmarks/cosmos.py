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
audits with db/container. The ratio is ``lockgate / direct`` in requests per second.

``main()`` returns 0, or 1 when a request failed.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import aiohttp

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


class Backend:
    """Fake account + gateway on a private loop in a daemon thread."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.loop = asyncio.new_event_loop()
        threading.Thread(target=self.loop.run_forever, daemon=True).start()
        self.call(self._boot())

    def call(self, coro: Any) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(60)

    async def _boot(self) -> None:
        from tests.fakes.cosmos import start_cosmos

        from lockgate.config import parse_config
        from lockgate.server import Gateway, State

        self.fake = await start_cosmos()
        self.fake.store.create_database({"id": "sales"})
        pk = {"paths": ["/pk"], "kind": "Hash"}
        self.fake.store.create_container("sales", {"id": "orders", "partitionKey": pk})
        self.fake.store.container("sales", "orders").put(
            '["p"]', {"id": "d1", "pk": "p", "amount": 42}, mode="create"
        )
        (self.workdir / "p.yaml").write_text(POLICY)
        cfg = parse_config(
            {
                "data_dir": str(self.workdir / "data"),
                "listeners": {"control": {"port": 0}, "http": {"port": 0}},
                "deployments": [{"name": "prod", "dags": ["bench_*"], "proof": {
                    "type": "client_secret", "secret_sha256": "0" * 64}}],
                "resources": [{"name": "cosmos", "kind": "http", "upstream": self.fake.url,
                               "credential": "key", "profile": "cosmos"}],
                "credentials": [{"name": "key", "type": "static"}],
                "policies": [str(self.workdir / "p.yaml")],
            },
            self.workdir / "lockgate.yaml",
        )  # fmt: skip
        State(cfg).credentials.set("key", self.fake.keys[0])
        self.gw = Gateway(cfg)
        await self.gw.start()

    async def _down(self) -> None:
        await self.gw.stop()
        await self.fake.close()

    def stop(self) -> None:
        self.call(self._down())
        self.loop.call_soon_threadsafe(self.loop.stop)


async def _load(url: str, key: str, n: int, conc: int) -> tuple[float, list[float], int]:
    from lockgate.credentials.cosmos import rfc1123_now, sign

    lat: list[float] = []
    errors = 0
    left = n
    conn = aiohttp.TCPConnector(limit=conc)
    async with aiohttp.ClientSession(connector=conn) as http:

        async def worker() -> None:
            nonlocal left, errors
            while left > 0:
                left -= 1
                t = time.perf_counter()
                date = rfc1123_now()
                headers = {
                    "authorization": sign(key, "GET", "docs", DOC_PATH, date),
                    "x-ms-date": date,
                    "x-ms-version": "2020-07-15",
                    "x-ms-documentdb-partitionkey": '["p"]',
                }
                async with http.get(url, headers=headers) as r:
                    await r.read()
                    if r.status != 200:
                        errors += 1
                lat.append(time.perf_counter() - t)

        t0 = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(conc)))
        return time.perf_counter() - t0, lat, errors


async def _client(b: Backend, n: int, conc: int) -> int:
    from lockgate.identity import TaskIdentity

    token, claims = b.gw.issuer.mint(TaskIdentity("prod", "bench_dag", "t", "r", 1), "cosmos", 3600)
    profile = b.gw.engine.proxy.resources["cosmos"].profile
    task_key = profile.task_key(claims.jti)
    direct = (f"{b.fake.url.rstrip('/')}/{DOC_PATH}", b.fake.keys[0])
    lockgate = (f"http://127.0.0.1:{b.gw.http_port}/cosmos/_t/{token}/{DOC_PATH}", task_key)
    await _load(*direct, 200, conc)  # warm up both paths
    await _load(*lockgate, 200, conc)
    failed = 0
    rates: dict[str, float] = {}
    p50: dict[str, float] = {}
    for name, (url, key) in (("direct", direct), ("lockgate", lockgate)):
        took, lat, errors = await _load(url, key, n, conc)
        failed += errors
        rates[name] = n / took
        lat.sort()
        p50[name] = statistics.median(lat) * 1000
        print(
            f"  {name:9} {rates[name]:8.0f} req/s   p50 {p50[name]:6.2f} ms"
            f"   p99 {lat[int(len(lat) * 0.99) - 1] * 1000:6.2f} ms   errors {errors}"
        )
    print(
        f"  ratio lockgate/direct: {rates['lockgate'] / rates['direct']:.2f}"
        f"   added p50 {p50['lockgate'] - p50['direct']:.2f} ms"
    )
    return 1 if failed else 0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--requests", type=int, default=2000)
    ap.add_argument("--concurrency", type=int, default=8)
    args = ap.parse_args(argv if argv is not None else [])
    with tempfile.TemporaryDirectory() as d:
        b = Backend(Path(d))
        try:
            print(f"point reads x{args.requests}, {args.concurrency} connections")
            return asyncio.run(_client(b, args.requests, args.concurrency))
        finally:
            b.stop()


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
