"""End-to-end through a real gateway to a real upstream: auth, policy, forwarding, audit."""

from __future__ import annotations

import hashlib

import aiohttp

from .conftest import OTHER_TOKEN, SECRETS, TOKEN, basic, bearer, resource


async def test_get_and_post_reach_upstream_with_its_own_secret(make_gateway, upstream):
    gw = await make_gateway()
    async with aiohttp.ClientSession() as s:
        async with s.get(f"{gw.url}/orders/items/1?x=1&y=%20", headers=bearer()) as r:
            assert r.status == 200
            seen = await r.json()
        assert seen["path"] == "/items/1"
        assert seen["query"] == "x=1&y=%20"
        assert seen["headers"]["Authorization"] == f"Bearer {SECRETS[-1]}"
        assert TOKEN not in str(seen["headers"])
        body = b"hello" * 1000
        async with s.post(f"{gw.url}/orders/items", data=body, headers=basic()) as r:
            assert r.status == 200
            seen = await r.json()
        assert seen["sha256"] == hashlib.sha256(body).hexdigest()
        assert seen["method"] == "POST"
    events = gw.audit.events()
    assert events == ["allowed", "allowed"]
    rec = gw.audit.records[1]
    assert rec.action == "write" and rec.object == "/items" and rec.status == 200
    assert rec.bytes_in == len(body) and rec.bytes_out > 0 and rec.dag_id == "finance_daily"
    assert [r.action for r in gw.policy.seen] == ["read", "write"]


async def test_missing_and_bad_token_get_401_with_challenge(make_gateway, upstream):
    gw = await make_gateway()
    async with aiohttp.ClientSession() as s:
        async with s.get(f"{gw.url}/orders/x") as r:
            assert r.status == 401
            assert r.headers["WWW-Authenticate"] == 'Bearer realm="lockgate"'
            assert (await r.json())["reason"] == "missing"
        async with s.get(f"{gw.url}/orders/x", headers=bearer("nope")) as r:
            assert r.status == 401
            assert 'error="invalid_token"' in r.headers["WWW-Authenticate"]
            assert "bad_signature" in r.headers["WWW-Authenticate"]
        async with s.get(f"{gw.url}/orders/x", headers={"Authorization": "Basic !!"}) as r:
            assert r.status == 401
            assert (await r.json())["reason"] == "malformed"
    assert gw.audit.events() == ["auth_failed"] * 3
    assert all(r.principal is None for r in gw.audit.records)
    assert upstream.seen == []


async def test_token_for_another_resource_is_refused(make_gateway, upstream):
    gw = await make_gateway()
    async with aiohttp.ClientSession() as s:
        async with s.get(f"{gw.url}/orders/x", headers=bearer(OTHER_TOKEN)) as r:
            assert r.status == 401
            assert (await r.json())["reason"] == "wrong_audience"
        async with s.get(f"{gw.url}/nosuch/x", headers=bearer()) as r:
            assert r.status == 404
    assert upstream.seen == []


async def test_denial_is_403_with_explanation(make_gateway, upstream):
    gw = await make_gateway(allow=[("read", "/public/*")])
    async with aiohttp.ClientSession() as s:
        async with s.delete(f"{gw.url}/orders/public/1", headers=bearer()) as r:
            assert r.status == 403
            body = await r.json()
        async with s.get(f"{gw.url}/orders/public/1", headers=bearer()) as r:
            assert r.status == 200
    assert body == {
        "error": "forbidden",
        "principal": "airflow:prod/finance_daily/load_orders",
        "action": "write",
        "resource": "orders",
        "object": "/public/1",
        "reason": "no rule matches",
        "rule": None,
    }
    assert gw.audit.events() == ["denied", "allowed"]
    assert gw.audit.records[0].decision == "deny"


async def test_routes_map_method_and_path_to_action_and_object(make_gateway, upstream):
    res = resource(
        "orders",
        upstream.url,
        routes=[{"method": "POST", "path": "/jobs/*/run", "action": "run", "object": "jobs"}],
    )
    gw = await make_gateway(resources=[res], allow=[("run", "jobs")])
    async with aiohttp.ClientSession() as s:
        async with s.post(f"{gw.url}/orders/jobs/7/run", headers=bearer()) as r:
            assert r.status == 200
        async with s.post(f"{gw.url}/orders/jobs/7", headers=bearer()) as r:
            assert r.status == 403
    assert [(q.action, q.object) for q in gw.policy.seen] == [("run", "jobs"), ("write", "/jobs/7")]


async def test_audit_unavailable_fails_closed_but_refusals_still_answered(make_gateway, upstream):
    gw = await make_gateway(deny=[("*", "/admin/*")])
    gw.audit.writable = False
    async with aiohttp.ClientSession() as s:
        async with s.get(f"{gw.url}/orders/x", headers=bearer()) as r:
            assert r.status == 503
            assert (await r.json())["error"] == "audit_unavailable"
        async with s.get(f"{gw.url}/orders/admin/x", headers=bearer()) as r:
            assert r.status == 403
        async with s.get(f"{gw.url}/orders/x") as r:
            assert r.status == 401
    assert upstream.seen == []


async def test_assertion_header_added_forged_ones_stripped(make_gateway, upstream):
    gw = await make_gateway()
    forged = {
        "X-Lockgate-Assertion": "forged",
        "X-Lockgate-Principal": "airflow:prod/other/x",
        "X-HTTP-Method-Override": "DELETE",
        "X-Original-URL": "/admin",
        "Connection": "keep-alive, X-Custom-Hop",
        "X-Custom-Hop": "1",
        "X-Kept": "yes",
    }
    async with aiohttp.ClientSession() as s:
        for _ in range(3):
            async with s.get(f"{gw.url}/orders/x", headers={**bearer(), **forged}) as r:
                seen = await r.json()
    headers = {k.lower(): v for k, v in seen["headers"].items()}
    assert headers["x-lockgate-assertion"] == "assert.jti-1.orders.1"
    assert "x-lockgate-principal" not in headers
    assert "x-http-method-override" not in headers and "x-original-url" not in headers
    assert "x-custom-hop" not in headers
    assert headers["x-kept"] == "yes"
    assert gw.signer.calls == 1  # cached per (jti, resource)


async def test_upstream_connections_are_reused(make_gateway, upstream):
    gw = await make_gateway()
    async with aiohttp.ClientSession() as s:
        for _ in range(20):
            async with s.get(f"{gw.url}/orders/x", headers=bearer()) as r:
                assert r.status == 200
    assert len(upstream.peers) <= 2
    assert gw.engine.pool("orders").connects <= 2


async def test_head_and_keep_alive_pipelining(make_gateway, upstream):
    from .conftest import raw_request

    gw = await make_gateway()
    req = (
        b"HEAD /orders/a HTTP/1.1\r\nHost: gw\r\nAuthorization: Bearer "
        + TOKEN.encode()
        + b"\r\n\r\n"
        b"GET /orders/b HTTP/1.1\r\nHost: gw\r\nAuthorization: Bearer " + TOKEN.encode() + b"\r\n"
        b"Connection: close\r\n\r\n"
    )
    out = await raw_request(gw.port, req)
    assert out.count(b"HTTP/1.1 200 OK") == 2
    assert out.rstrip().endswith(b"}")
    assert b'"path":"/b"' in out.replace(b" ", b"")
