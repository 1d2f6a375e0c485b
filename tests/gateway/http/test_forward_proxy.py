"""The CONNECT forward proxy: intercepted hosts are served by the HTTP engine through a TLS
leaf signed by the Lockgate interception CA; everything else is refused."""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from lockgate.config import ForwardProxyConfig, ListenerConfig, Listeners, TlsConfig
from lockgate.gateway.engine import Collaborators
from lockgate.gateway.http import HttpEngine
from lockgate.gateway.http.forward_proxy import ForwardProxy
from lockgate.tlsgen import LeafIssuer, write_dev_ca

from ..fakes import FakeAudit, FakeBroker, FakePolicy, FakePolicySet, FakeSigner, FakeVerifier
from .conftest import TOKEN, Upstream, bearer, raw_request, resource

HOST = "management.azure.com"


@pytest.fixture(scope="module")
def ca(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    return write_dev_ca(tmp_path_factory.mktemp("proxy-ca"))


@pytest.fixture
async def proxied(make_gateway: Any, upstream: Upstream, ca: dict[str, Path]) -> AsyncIterator[Any]:
    gw = await make_gateway(
        [resource("orders", upstream.url), resource("billing", upstream.url)],
        deny=[("*", "/secret*")],
    )
    issuer = LeafIssuer.from_files(ca["cert"], ca["key"])
    fp = ForwardProxy(gw.engine, {f"{HOST}:443": "orders"}, issuer, head_timeout=1.0)
    await fp.start("127.0.0.1", 0)
    gw.proxy_url = f"http://127.0.0.1:{fp.port}"
    gw.client_ssl = ssl.create_default_context(cafile=str(ca["cert"]))
    yield gw
    await fp.close()


async def _get(gw: Any, path: str, headers: dict[str, str] | None = None) -> tuple[int, Any]:
    async with (
        aiohttp.ClientSession() as s,
        s.get(f"https://{HOST}{path}", proxy=gw.proxy_url, ssl=gw.client_ssl,
              headers=headers or {}) as r,
    ):  # fmt: skip
        return r.status, await r.json(content_type=None)


async def test_intercepted_host_is_served_by_the_engine(proxied: Any, upstream: Upstream) -> None:
    status, body = await _get(proxied, "/subscriptions/x?api-version=1", bearer())
    assert status == 200, body
    assert body["path"] == "/subscriptions/x" and body["query"] == "api-version=1"
    # the upstream saw the gateway's credential, never the task token
    assert body["headers"]["Authorization"] == "Bearer up-secret-v2"
    assert TOKEN not in str(body["headers"])
    rec = proxied.audit.records[-1]
    assert rec.event == "allowed" and rec.resource == "orders"


async def test_token_for_another_resource_is_refused_inside_the_tunnel(proxied: Any) -> None:
    status, body = await _get(proxied, "/x", bearer("tok-billing"))
    assert status == 401 and body["reason"] == "wrong_audience"
    status, body = await _get(proxied, "/x")
    assert status == 401


async def test_policy_applies_inside_the_tunnel(proxied: Any) -> None:
    status, body = await _get(proxied, "/secret-thing", bearer())
    assert status == 403 and body["object"] == "/secret-thing"


async def test_several_requests_share_one_tunnel(proxied: Any, upstream: Upstream) -> None:
    async with aiohttp.ClientSession() as s:
        for _ in range(3):
            async with s.get(
                f"https://{HOST}/a", proxy=proxied.proxy_url, ssl=proxied.client_ssl,
                headers=bearer(),
            ) as r:  # fmt: skip
                assert r.status == 200
    assert len(upstream.seen) == 3


@pytest.mark.parametrize(
    ("head", "status"),
    [
        (b"CONNECT example.com:443 HTTP/1.1\r\nHost: example.com:443\r\n\r\n", b"403"),
        (b"CONNECT management.azure.com:80 HTTP/1.1\r\n\r\n", b"403"),
        (b"GET http://management.azure.com/ HTTP/1.1\r\nHost: x\r\n\r\n", b"403"),
        (b"CONNECT 127.0.0.1:22 HTTP/1.1\r\n\r\n", b"403"),
        (b"CONNECT management.azure.com:443 HTTP/1.1\r\n\r\n\x16\x03\x01", b"400"),
        (b"CONNECT management.azure.com:443 HTTP/1.1\r\n bad\r\n\r\n", b"403"),
        (b"CONNECT " + b"a" * 9000 + b":443 HTTP/1.1\r\n", b"431"),
    ],
)
async def test_not_an_open_proxy(proxied: Any, head: bytes, status: bytes) -> None:
    port = int(proxied.proxy_url.rsplit(":", 1)[1])
    got = await raw_request(port, head)
    assert got.startswith(b"HTTP/1.1 " + status), got[:80]
    assert b"200 Connection Established" not in got


async def test_slow_head_times_out(proxied: Any) -> None:
    port = int(proxied.proxy_url.rsplit(":", 1)[1])
    got = await raw_request(port, b"CONNECT management.azure.com:443 HTTP/1.1\r\n", timeout=3)
    assert got.startswith(b"HTTP/1.1 408")


async def test_client_that_does_not_trust_the_ca_gets_no_answer(proxied: Any) -> None:
    strict = ssl.create_default_context()  # system roots only
    with pytest.raises(aiohttp.ClientConnectorCertificateError):
        async with aiohttp.ClientSession() as s:
            await s.get(f"https://{HOST}/x", proxy=proxied.proxy_url, ssl=strict, headers=bearer())
    await asyncio.sleep(0)


def test_leaf_certificates_are_cached_and_name_the_host(ca: dict[str, Path]) -> None:
    issuer = LeafIssuer.from_files(ca["cert"], ca["key"])
    assert issuer.context(HOST) is issuer.context(HOST)
    assert issuer.context("127.0.0.1") is not issuer.context(HOST)


async def test_the_engine_opens_the_proxy_and_its_routes_follow_the_catalog(
    upstream: Upstream, ca: dict[str, Path]
) -> None:
    shared = Collaborators(
        FakeVerifier(), FakePolicy(FakePolicySet([])), FakeBroker({}), FakeAudit(), FakeSigner()
    )
    engine = HttpEngine([resource("orders", upstream.url, intercept=[f"{HOST}:443"])], shared)
    proxy = ForwardProxyConfig(port=0, ca=TlsConfig(cert=ca["cert"], key=ca["key"]))
    await engine.listen(Listeners(http=ListenerConfig(port=0), forward_proxy=proxy))
    connect = f"CONNECT {HOST}:443 HTTP/1.1\r\nHost: {HOST}:443\r\n\r\n".encode()
    try:
        port = engine.ports["forward_proxy"]
        assert (await raw_request(port, connect, timeout=0.5)).startswith(b"HTTP/1.1 200")
        engine.update_resources([resource("orders", upstream.url)])  # no longer intercepted
        assert (await raw_request(port, connect, timeout=0.5)).startswith(b"HTTP/1.1 403")
    finally:
        await engine.close()
    assert engine.forward_proxy is None
