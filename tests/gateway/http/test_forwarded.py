"""Forwarding headers reach the upstream as the gateway saw the connection, never as the
client claimed: a spoofed ``X-Forwarded-For: 10.0.0.1`` must not look like an internal caller."""

from __future__ import annotations

import json
import ssl
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from lockgate.tlsgen import write_dev_tls

from .conftest import TOKEN, Upstream, bearer, raw_request

SPOOFED = {
    "Forwarded": 'for=10.0.0.1;host="internal.example";proto=https',
    "X-Forwarded-For": "10.0.0.1, 10.0.0.2",
    "X-Forwarded-Host": "internal.example",
    "X-Forwarded-Proto": "https",
    "X-Forwarded-Port": "443",
    "X-Forwarded-Prefix": "/admin",
    "X-Real-IP": "10.0.0.1",
}


def forwarding(headers: dict[str, str]) -> dict[str, str]:
    keep = {"forwarded", "x-real-ip"}
    return {
        k.lower(): v
        for k, v in headers.items()
        if k.lower() in keep or k.lower().startswith("x-forwarded-")
    }


def expected(host: str, proto: str) -> dict[str, str]:
    return {
        "forwarded": f'for=127.0.0.1;host="{host}";proto={proto}',
        "x-forwarded-for": "127.0.0.1",
        "x-forwarded-host": host,
        "x-forwarded-proto": proto,
        "x-real-ip": "127.0.0.1",
    }


async def test_client_forwarding_headers_are_replaced(
    make_gateway: Any, upstream: Upstream
) -> None:
    gw = await make_gateway()
    host = f"127.0.0.1:{gw.port}"
    async with aiohttp.ClientSession() as s:
        # Twice on one connection: the first goes the task path, the second the fast path.
        for _ in range(2):
            async with s.get(f"{gw.url}/orders/x", headers={**bearer(), **SPOOFED}) as r:
                assert r.status == 200
                seen = (await r.json())["headers"]
            assert forwarding(seen) == expected(host, "http")
    assert len(upstream.seen) == 2


@pytest.mark.parametrize(
    "host", [b"internal.example;for=10.0.0.1", b'a"b', b"a b", b"x,for=10.0.0.1"]
)
async def test_a_host_that_is_not_plain_is_not_repeated(
    make_gateway: Any, upstream: Upstream, host: bytes
) -> None:
    gw = await make_gateway()
    req = (
        b"GET /orders/x HTTP/1.1\r\nHost: " + host + b"\r\nAuthorization: Bearer "
        + TOKEN.encode() + b"\r\nX-Forwarded-For: 10.0.0.1\r\nConnection: close\r\n\r\n"
    )  # fmt: skip
    out = await raw_request(gw.port, req)
    assert out.startswith(b"HTTP/1.1 200 ")
    seen = json.loads(out.partition(b"\r\n\r\n")[2])["headers"]
    assert forwarding(seen) == expected(f"127.0.0.1:{gw.port}", "http")


async def test_tls_listener_says_https(
    make_gateway: Any, upstream: Upstream, tmp_path: Path
) -> None:
    paths = write_dev_tls(tmp_path / "tls")
    server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_ctx.load_cert_chain(paths["cert"], paths["key"])
    gw = await make_gateway()
    # The resource's own TLS listener (closed with the engine).
    server = await gw.engine.start_mounted("orders", "127.0.0.1", 0, ssl=server_ctx)
    port = server.sockets[0].getsockname()[1]
    client_ctx = ssl.create_default_context(cafile=str(paths["ca"]))
    async with aiohttp.ClientSession() as s:
        url = f"https://localhost:{port}/x"
        async with s.get(url, headers={**bearer(), **SPOOFED}, ssl=client_ctx) as r:
            assert r.status == 200
            seen = (await r.json())["headers"]
    assert forwarding(seen) == expected(f"localhost:{port}", "https")
