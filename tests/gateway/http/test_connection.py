"""Connection-level behaviour: Expect: 100-continue, HTTP/1.0, resource reloads."""

from __future__ import annotations

import asyncio

from .conftest import TOKEN, bearer, call, raw_request, resource

AUTH = b"Authorization: Bearer " + TOKEN.encode() + b"\r\n"


async def test_expect_continue_is_answered_after_the_decision(make_gateway, upstream):
    gw = await make_gateway(deny=[("*", "/secret")])
    reader, writer = await asyncio.open_connection("127.0.0.1", gw.port)
    writer.write(
        b"PUT /orders/x HTTP/1.1\r\nHost: g\r\n" + AUTH
        + b"Content-Length: 5\r\nExpect: 100-continue\r\nConnection: close\r\n\r\n"
    )  # fmt: skip
    interim = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 2)
    assert interim == b"HTTP/1.1 100 Continue\r\n\r\n"
    writer.write(b"hello")
    rest = await asyncio.wait_for(reader.read(), 2)
    writer.close()
    assert rest.startswith(b"HTTP/1.1 200 ")
    assert upstream.seen[-1]["size"] == 5 and "Expect" not in upstream.seen[-1]["headers"]
    denied = await raw_request(
        gw.port,
        b"PUT /orders/secret HTTP/1.1\r\nHost: g\r\n" + AUTH
        + b"Content-Length: 5\r\nExpect: 100-continue\r\n\r\n",
    )  # fmt: skip
    assert denied.startswith(b"HTTP/1.1 403 ") and b"100 Continue" not in denied


async def test_http10_client_gets_a_closed_connection(make_gateway, upstream):
    gw = await make_gateway()
    out = await raw_request(gw.port, b"GET /orders/x HTTP/1.0\r\n" + AUTH + b"\r\n")
    assert out.startswith(b"HTTP/1.1 200 ")
    assert b"<timeout>" not in out


async def test_update_resources_swaps_the_catalog(make_gateway, upstream):
    gw = await make_gateway()
    status, _, _ = await call("GET", f"{gw.url}/orders/x", headers=bearer())
    assert status == 200
    gw.engine.update_resources([resource("billing", upstream.url)])
    status, _, body = await call("GET", f"{gw.url}/orders/x", headers=bearer())
    assert status == 404 and body["error"] == "unknown_resource"
