"""Path normalisation table, and that policy sees exactly the normalised path."""

from __future__ import annotations

import pytest

from lockgate.gateway.http.normalize import PathError, split_target

from .conftest import TOKEN, raw_request

OK = [
    (b"/orders/a/b", "orders", "/a/b", ""),
    (b"/orders", "orders", "/", ""),
    (b"/orders/", "orders", "/", ""),
    (b"/orders/a/", "orders", "/a/", ""),
    (b"/orders/a/../b", "orders", "/b", ""),
    (b"/orders/a/%2e%2e/b", "orders", "/b", ""),
    (b"/orders/a/%2E./b", "orders", "/b", ""),
    (b"/orders//a", "orders", "/a", ""),
    (b"//orders/a", "orders", "/a", ""),
    (b"/orders/a/./b", "orders", "/a/b", ""),
    (b"/orders/a/b/..", "orders", "/a/", ""),
    (b"/orders/%61dmin/x", "orders", "/admin/x", ""),
    (b"/orders/a%20b", "orders", "/a%20b", ""),
    (b"/orders/a%3fb", "orders", "/a%3Fb", ""),
    (b"/orders/x?q=/../admin&z", "orders", "/x", "q=/../admin&z"),
]

REFUSED = [
    b"/orders/a%2fb",
    b"/orders/a%2Fb",
    b"/orders/a%5cb",
    b"/orders/a\\b",
    b"/orders/..",
    b"/orders/a/../../b",
    b"/orders/%2e%2e/x",
    b"/orders/a%252e%252e/x",
    b"/orders/a%00",
    b"/orders/a%zz",
    b"/orders/a%2",
    b"/orders/admin;x=1/y",
    b"http://evil/orders/x",
    b"*",
    b"/orders/x#frag",
    b"/../orders/x",
    b"/orders/\xc3\xa9",
]


@pytest.mark.parametrize(("raw", "res", "path", "query"), OK)
def test_normalises(raw: bytes, res: str, path: str, query: str) -> None:
    t = split_target(raw)
    assert (t.resource, t.path, t.query) == (res, path, query)


@pytest.mark.parametrize("raw", REFUSED)
def test_refuses(raw: bytes) -> None:
    with pytest.raises(PathError):
        split_target(raw)


BYPASSES = [
    b"/orders/x/../admin/y",
    b"/orders/%61dmin/y",
    b"/orders//admin/y",
    b"/orders/./admin/y",
    b"/orders/x/%2e%2e/admin/y",
    b"/orders/admin/./y",
]


@pytest.mark.parametrize("target", BYPASSES)
async def test_deny_rule_cannot_be_bypassed(make_gateway, upstream, target: bytes) -> None:
    gw = await make_gateway(deny=[("*", "/admin/*")])
    req = b"GET " + target + b" HTTP/1.1\r\nHost: g\r\nAuthorization: Bearer "
    req += TOKEN.encode() + b"\r\nConnection: close\r\n\r\n"
    out = await raw_request(gw.port, req)
    assert out.startswith(b"HTTP/1.1 403 "), out[:200]
    assert gw.policy.seen[-1].object == "/admin/y"
    assert upstream.seen == []


@pytest.mark.parametrize("target", [b"/orders/a%2fadmin", b"/orders/a\\..\\admin", b"/orders/../x"])
async def test_ambiguous_paths_are_400(make_gateway, upstream, target: bytes) -> None:
    gw = await make_gateway()
    req = b"GET " + target + b" HTTP/1.1\r\nHost: g\r\nAuthorization: Bearer "
    req += TOKEN.encode() + b"\r\n\r\n"
    out = await raw_request(gw.port, req)
    assert out.startswith(b"HTTP/1.1 400 ")
    assert b"Connection: close" in out
    assert upstream.seen == []


async def test_upstream_sees_the_normalised_path(make_gateway, upstream) -> None:
    gw = await make_gateway()
    req = b"GET /orders/a/./b/../%63//d HTTP/1.1\r\nHost: g\r\nAuthorization: Bearer "
    req += TOKEN.encode() + b"\r\nConnection: close\r\n\r\n"
    out = await raw_request(gw.port, req)
    assert out.startswith(b"HTTP/1.1 200 ")
    assert upstream.seen[-1]["path"] == "/a/c/d"
    assert gw.policy.seen[-1].object == "/a/c/d"
