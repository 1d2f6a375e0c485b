"""Cosmos DB document point reads through Lockgate vs direct to the test account, same run.

Usage::

    .venv/bin/python -m benchmarks.cosmos [--requests 2000] [--concurrency 8]

The test account (src/lockgate/demo/standins/cosmos, aiohttp) and the real :class:`Gateway`
(profile cosmos,
account key credential, policy, the hash-chained audit trail) each run on a uvloop in a
process of their own; the client (aiohttp, keep-alive) runs in this one and signs every
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
  - id: bench-read
    effect: allow
    principals: ["airflow:prod/bench_*/*"]
    actions: [read]
    resources: [cosmos]
    objects: ["sales/orders"]
"""
DOC_PATH = "dbs/sales/colls/orders/docs/d1"


async def fake_account(args: dict[str, Any]) -> dict[str, Any]:
    """Server process: the test account with one document."""
    from lockgate.demo.standins.cosmos import start_cosmos

    fake = await start_cosmos()
    fake.store.create_database({"id": "sales"})
    pk = {"paths": ["/pk"], "kind": "Hash"}
    fake.store.create_container("sales", {"id": "orders", "partitionKey": pk})
    fake.store.container("sales", "orders").put(
        '["p"]', {"id": "d1", "pk": "p", "amount": 42}, mode="create"
    )
    return {"url": fake.url.rstrip("/"), "key": fake.keys[0]}


async def gateway(args: dict[str, Any]) -> dict[str, Any]:
    """Server process: the gateway in front of the account, and the engine alone."""
    gw = await start_gateway(
        Path(args["workdir"]),
        POLICY,
        {"name": "cosmos", "kind": "http", "upstream": args["url"], "credential": "key",
         "profile": "cosmos"},
        {"name": "key", "type": "static"},
        args["key"],
    )  # fmt: skip
    token, claims = gw.issuer.mint(TaskIdentity("prod", "bench_dag", "t", "r", 1), "cosmos", 3600)
    alone = engine_alone(gw, claims)
    await alone.start("127.0.0.1", 0)

    def task_key(engine: Any) -> str:  # what the task's SDK signs with
        return str(engine.proxy.resources["cosmos"].profile.task_key(claims.jti))

    via = f"cosmos/_t/{token}/{DOC_PATH}"
    return {
        "lockgate": [f"http://127.0.0.1:{gw.http_port}/{via}", task_key(gw.engines["http"])],
        "engine alone": [f"http://127.0.0.1:{alone.port}/{via}", task_key(alone)],
    }


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


async def _client(servers: Servers, n: int, conc: int) -> int:
    account = servers.start("fake_account")
    paths = servers.start("gateway", **account)
    results = await compare(
        {
            "direct": (f"{account['url']}/{DOC_PATH}", _signed(account["key"])),
            **{name: (url, _signed(key)) for name, (url, key) in paths.items()},
        },
        n,
        conc,
    )
    return report_profile(results)


def main(argv: list[str] | None = None) -> int:
    roles = {"fake_account": fake_account, "gateway": gateway}
    return run_profile(argv, __doc__ or "", "point reads", roles, _client)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
