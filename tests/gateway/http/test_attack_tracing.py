"""Attacks on the HTTP engine's and the token route's spans, through a real gateway whose
spans are exported over OTLP/HTTP to a receiver that decodes them with opentelemetry-proto
(the reference decoder, not the gateway's view of what it sent).

No Lockgate token (or any of its three parts), Cosmos DB ``/_t/<token>/`` segment, ``?sig=``
or ``?code=`` value, Authorization header, upstream secret, Cosmos key or task key, Databricks
PAT in a JSON body, service principal secret or token, deployment secret or OTLP header value
may reach a span name, attribute, event, status or resource attribute, nor the bytes sent. A
forged ``traceparent`` on the token route is dropped (the mint still succeeds, with no claim)
and never echoed into a log line."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import aiohttp
import pytest
from aiohttp import web
from azure.cosmos import CosmosClient
from yarl import URL

from lockgate import tracing
from lockgate.config import parse_config
from lockgate.demo.standins.cosmos import CosmosFake, start_cosmos
from lockgate.demo.standins.databricks import DEFAULT_CLIENT_ID, FakeDatabricks, start
from lockgate.gateway.http import HttpEngine
from lockgate.identity import TaskIdentity
from lockgate.identity.tokens import unverified_claims
from lockgate.server import Gateway, State

from ...fakes.otlp_sink import OtlpSink, attributes, otlp_sink

TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
SAMPLED = f"00-{TRACE_ID}-00f067aa0ba902b7-01"
STATIC_SECRET = "upstream-St4tic-S3cr3t"
SP_SECRET = "sp-Cl13nt-S3cr3t"
DEPLOYMENT_SECRET = "d3pl0y-S3cr3t-Qx"
OTLP_KEY = "otlp-Ap1-K3y-Zq"
SIG = "S1gnatur3V4lue"
CODE = "Funct10nC0de"
PAT = "dapi0123456789abcdefS3cr3tPat"
LITERAL = "L1teral-S3cr3t"
POLICY = """\
rules:
  - id: api-all
    effect: allow
    principals: ["airflow:prod/etl_*/*"]
    actions: ["*"]
    resources: [api]
  - id: cosmos-all
    effect: allow
    principals: ["airflow:prod/etl_*/*"]
    actions: [read, write]
    resources: [cosmos]
    objects: ["sales", "sales/orders"]
  - id: dbx-run
    effect: allow
    principals: ["airflow:prod/etl_*/*"]
    actions: [run, read]
    resources: [dbx]
    objects: ["job:101", "run:*"]
"""


@dataclass
class Stack:
    gw: Gateway
    sink: OtlpSink
    cosmos: CosmosFake
    dbx: FakeDatabricks

    def token(self, resource: str, traceparent: str | None = SAMPLED) -> tuple[str, Any]:
        ident = TaskIdentity("prod", "etl_daily", "load", "r1", 1)
        return self.gw.issuer.mint(ident, resource, 600, traceparent=traceparent)

    @property
    def http(self) -> str:
        return f"http://127.0.0.1:{self.gw.http_port}"

    @property
    def control(self) -> str:
        return f"http://127.0.0.1:{self.gw.control_port}"

    def task_key(self, jti: str) -> str:
        engine = cast(HttpEngine, self.gw.engines["http"])
        return str(engine.proxy.resources["cosmos"].profile.task_key(jti))


async def plain_upstream() -> tuple[web.AppRunner, int]:
    async def anything(request: web.Request) -> web.Response:
        await request.read()
        return web.json_response({"ok": True})

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", anything)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    return runner, runner.addresses[0][1]


@pytest.fixture
async def stack(tmp_path: Path) -> AsyncIterator[Stack]:
    cosmos = await start_cosmos()
    cosmos.public_url = "http://127.0.0.1:9/"
    cosmos.store.create_database({"id": "sales"})
    pk = {"paths": ["/pk"], "kind": "Hash"}
    cosmos.store.create_container("sales", {"id": "orders", "partitionKey": pk})
    dbx = FakeDatabricks({SP_SECRET})
    dbx.add_job(101, {"name": "etl-load", "timeout_seconds": 600, "tasks": []})
    dbx_runner, dbx_port = await start(dbx)
    api_runner, api_port = await plain_upstream()
    (tmp_path / "p.yaml").write_text(POLICY)
    headers = tmp_path / "otlp-headers"
    headers.write_text(f"X-Api-Key: {OTLP_KEY}\n")
    sha = hashlib.sha256(DEPLOYMENT_SECRET.encode()).hexdigest()
    async with otlp_sink() as sink:
        cfg = parse_config(
            {
                "data_dir": str(tmp_path / "data"),
                "listeners": {"control": {"port": 0}, "http": {"port": 0}},
                "deployments": [{"name": "prod", "dags": ["etl_*"],
                                 "proof": {"type": "client_secret", "secret_sha256": sha}}],
                "resources": [
                    {"name": "api", "kind": "http", "upstream": f"http://127.0.0.1:{api_port}",
                     "credential": "api-key", "conn_id": "api"},
                    {"name": "cosmos", "kind": "http", "upstream": cosmos.url,
                     "credential": "cosmos-key", "conn_id": "cosmos_default",
                     "profile": "cosmos", "cosmos": {"database": "sales", "container": "orders",
                                                     "partition_key": "/pk"}},
                    {"name": "dbx", "kind": "http", "upstream": f"http://127.0.0.1:{dbx_port}",
                     "credential": "dbx-sp", "conn_id": "databricks_default",
                     "listen": {"host": "127.0.0.1", "port": 0}, "profile": "databricks"},
                ],
                "credentials": [
                    {"name": "api-key", "type": "static"},
                    {"name": "cosmos-key", "type": "static", "overlap": 600},
                    {"name": "dbx-sp", "type": "oauth2_client_credentials",
                     "token_url": f"http://127.0.0.1:{dbx_port}/oidc/v1/token",
                     "client_id": DEFAULT_CLIENT_ID, "scope": "all-apis",
                     "token_auth": "client_secret_basic"},
                ],
                "policies": [str(tmp_path / "p.yaml")],
                "tracing": {"enabled": True, "otlp_endpoint": sink.url,
                            "otlp_headers_file": str(headers)},
            },
            tmp_path / "lockgate.yaml",
        )  # fmt: skip
        state = State(cfg)
        state.credentials.set("api-key", STATIC_SECRET)
        state.credentials.set("cosmos-key", cosmos.keys[0])
        state.credentials.set("dbx-sp", SP_SECRET)
        gw = Gateway(cfg)
        await gw.start()
        try:
            yield Stack(gw, sink, cosmos, dbx)
        finally:
            await gw.stop()
            await api_runner.cleanup()
            await dbx_runner.cleanup()
            await cosmos.close()


def secrets_of(*tokens: str) -> list[str]:
    """Each token and each of its dot-separated parts (a signature alone is still a leak)."""
    out: list[str] = []
    for token in tokens:
        out += [token, *token.split(".")]
    return out


async def test_no_secret_reaches_any_exported_span(
    stack: Stack, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    api_token, _ = stack.token("api")
    cosmos_token, cosmos_claims = stack.token("cosmos")
    dbx_token, _ = stack.token("dbx")
    task_key = stack.task_key(cosmos_claims.jti)
    dbx_base = f"http://127.0.0.1:{stack.gw.mounted_ports['dbx']}"
    bearer = {"Authorization": f"Bearer {api_token}"}
    async with aiohttp.ClientSession() as s:
        # Signatures and function codes in the query string, a token there too.
        for path in (
            f"/api/items/1?sig={SIG}&code={CODE}",
            f"/api/files/x#frag-{SIG}",
            f"/api/search?q='{LITERAL}'&access_token={api_token}",
        ):
            async with s.get(stack.http + path, headers=bearer) as r:
                assert r.status == 200, path
        # Basic auth carrying the token as its password; a JSON body carrying a PAT.
        basic = base64.b64encode(f"x:{api_token}".encode()).decode()
        async with s.get(
            f"{stack.http}/api/items/2", headers={"Authorization": f"Basic {basic}"}
        ) as r:
            assert r.status == 200
        async with s.post(f"{stack.http}/api/items", json={"pat": PAT}, headers=bearer) as r:
            assert r.status == 200
        # A token in the path itself (a client that pasted it there).
        async with s.get(f"{stack.http}/api/t/{api_token}/x", headers=bearer) as r:
            assert r.status == 200
        # ... and percent-encoded, so its dots are no dots until decoded.
        encoded = api_token.replace(".", "%2E").replace("-", "%2D").replace("_", "%5F")
        url = URL(f"{stack.http}/api/t/{encoded}/x", encoded=True)
        async with s.get(url, headers=bearer) as r:
            assert r.status == 200
        # Databricks: a PAT in the run's parameters.
        body = {"job_id": 101, "notebook_params": {"pat": PAT}}
        async with s.post(
            f"{dbx_base}/api/2.1/jobs/run-now",
            json=body,
            headers={"Authorization": f"Bearer {dbx_token}"},
        ) as r:
            assert r.status == 200, await r.text()
        # The token route: the deployment's secret in Basic, a traceparent.
        task = {"dag_id": "etl_daily", "task_id": "load", "run_id": "r1", "try_number": "1",
                "resource": "api"}  # fmt: skip
        deployment = base64.b64encode(f"prod:{DEPLOYMENT_SECRET}".encode()).decode()
        async with s.post(
            f"{stack.control}/v1/token",
            data=task,
            headers={"Authorization": f"Basic {deployment}", "traceparent": SAMPLED},
        ) as r:
            assert r.status == 200
            minted = (await r.json())["access_token"]
    assert unverified_claims(minted)["traceparent"] == SAMPLED

    # Cosmos DB through the SDK: the token in the path, a literal in a query, a PAT in a doc.
    def cosmos_calls() -> None:
        client = CosmosClient(f"{stack.http}/cosmos/_t/{cosmos_token}/", {"masterKey": task_key})
        container = client.get_database_client("sales").get_container_client("orders")
        container.create_item({"id": "o1", "pk": "eu", "pat": PAT})
        query = f"SELECT * FROM c WHERE c.pat = '{LITERAL}'"  # noqa: S608 - the literal is the bait
        list(container.query_items(query, enable_cross_partition_query=True))

    await asyncio.to_thread(cosmos_calls)
    # The exporter posts from its own thread with a blocking client to a receiver on this
    # loop: flush off the loop.
    assert await asyncio.to_thread(tracing.flush)
    text = stack.sink.text()
    spans = list(stack.sink.spans())
    # Not vacuous: every resource's requests and the mint were exported, in the task's trace.
    by_resource = {attributes(s).get("lockgate.resource") for s in spans}
    assert {"api", "cosmos", "dbx"} <= by_resource
    assert any(s.name == "lockgate.mint" for s in spans)
    assert all(s.trace_id.hex() == TRACE_ID for s in spans if s.name != "lockgate.mint")
    assert stack.sink.headers and stack.sink.headers[0]["x-api-key"] == OTLP_KEY
    upstream_tokens = list(stack.dbx.tokens)
    assert upstream_tokens  # the gateway did take a service principal token
    never = [
        *secrets_of(api_token, cosmos_token, dbx_token, minted), *encoded.split("%2E"),
        STATIC_SECRET, SP_SECRET, DEPLOYMENT_SECRET, OTLP_KEY, SIG, CODE, PAT, LITERAL,
        stack.cosmos.keys[0], task_key, *upstream_tokens,
        base64.b64encode(f"prod:{DEPLOYMENT_SECRET}".encode()).decode(),
    ]  # fmt: skip
    leaked = [secret for secret in never if secret in text]
    assert leaked == []
    logged = "\n".join(
        r.getMessage() + str(getattr(r, "fields", ""))
        for r in caplog.records
        if r.name.startswith("lockgate")  # not the test upstreams' access logs
    )
    assert [secret for secret in (OTLP_KEY, *secrets_of(api_token)) if secret in logged] == []
