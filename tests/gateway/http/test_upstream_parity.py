"""What the upstream receives, judged by the upstream's own log against the audit trail.

* A header the gateway drops (method overrides, forwarding headers) must not reach the
  upstream in the spelling CGI/WSGI servers read the same way (``_`` for ``-``).
* Every copy of a request the upstream receives is accounted for: one ``admitted`` record,
  and the outcome's ``retries`` counts the copies past the first (credential rotation,
  token refresh, a pooled connection that closed under the request)."""

from __future__ import annotations

import re

import pytest

from .conftest import SECRETS, TOKEN, bearer, call, raw_request, resource


def _cgi(name: str) -> str:
    """The environ key a CGI/WSGI server gives a header name."""
    return "HTTP_" + name.upper().replace("-", "_")


async def test_underscore_spellings_of_dropped_headers_are_dropped(make_gateway, upstream):
    gw = await make_gateway()
    sent = {
        "X_HTTP_Method_Override": "DELETE",
        "X_Method_Override": "DELETE",
        "X_Original_URL": "/admin",
        "X_Forwarded_For": "10.9.9.9",
        "X_Lockgate_Identity": "forged",
        "X_Custom_Tag": "kept",
    }
    status, _, seen = await call("GET", f"{gw.url}/orders/x", headers={**bearer(), **sent})
    assert status == 200
    environ = {_cgi(k): v for k, v in seen["headers"].items()}
    for name in ("X-HTTP-Method-Override", "X-Method-Override", "X-Original-URL",
                 "X-Lockgate-Identity"):  # fmt: skip
        assert _cgi(name) not in environ, name
    assert environ[_cgi("X-Forwarded-For")] == "127.0.0.1"  # the gateway's, not the client's
    assert environ[_cgi("X-Custom-Tag")] == "kept"  # other underscore names still pass
    assert gw.audit.records[-1].action == "read"


async def test_rotation_resend_is_counted_on_both_paths(make_gateway, upstream):
    gw = await make_gateway()
    gw.broker.versions["orders-key"].append("up-secret-v3")  # upstream does not know v3 yet
    upstream.received.clear()
    # task path (nothing pooled, nothing cached), then the fast path (warm and cached)
    for path in ("/orders/rot-a", "/orders/rot-b", "/orders/rot-c"):
        before = len(gw.audit.records)
        status, _, seen = await call("GET", f"{gw.url}{path}", headers=bearer())
        assert status == 200 and seen["headers"]["Authorization"] == f"Bearer {SECRETS[-1]}"
        sent = upstream.received.count(path.removeprefix("/orders"))
        assert sent == 2
        outcome = [r for r in gw.audit.records[before:] if r.event == "allowed"]
        assert len(outcome) == 1
        assert outcome[0].detail.get("retries", 0) == sent - 1


# -- paths the upstream reads leniently -----------------------------------------------------
# ASP.NET Core and Express route case-insensitively by default, IIS serves /ADMIN as /admin,
# and IIS maps /admin./ and /admin%20/ to the folder admin: the upstream's own reading.
def _lenient(path: str) -> str:
    return re.sub(r"(?:\.|%20)+(?=/|$)", "", path.lower())


@pytest.mark.parametrize(
    "target",
    [b"/orders/ADMIN/y", b"/orders/Admin/y", b"/orders/%41dmin/y", b"/orders/admin./y",
     b"/orders/admin%20/y", b"/orders/Admin.%20./y"],
)  # fmt: skip
async def test_a_deny_rule_holds_for_upstreams_that_ignore_case(
    make_gateway, upstream, target: bytes
) -> None:
    gw = await make_gateway(deny=[("*", "/admin/*")])
    req = b"GET " + target + b" HTTP/1.1\r\nHost: g\r\nAuthorization: Bearer "
    req += TOKEN.encode() + b"\r\nConnection: close\r\n\r\n"
    out = await raw_request(gw.port, req)
    ran = [_lenient(seen["path"]) for seen in upstream.seen]
    assert not [p for p in ran if p.startswith("/admin/")], out[:200]
    assert out.startswith(b"HTTP/1.1 403 ")
    assert (gw.audit.records[-1].event, gw.audit.records[-1].object) == ("denied", "/admin/y")


async def test_a_route_holds_for_upstreams_that_ignore_case(make_gateway, upstream) -> None:
    routes = [{"method": "POST", "path": "/admin/*", "action": "admin"}]
    res = [resource("orders", upstream.url, routes=routes)]
    gw = await make_gateway(resources=res, allow=[("read", "*"), ("write", "*")])
    status, _, _ = await call("POST", f"{gw.url}/orders/ADMIN/purge", headers=bearer())
    assert status == 403 and upstream.seen == []
    assert (gw.audit.records[-1].action, gw.audit.records[-1].object) == ("admin", "/admin/purge")


async def test_mixed_case_allow_rules_keep_working(make_gateway, upstream) -> None:
    gw = await make_gateway(allow=[("read", "/Reports/*")])
    status, _, seen = await call("GET", f"{gw.url}/orders/Reports/q1.csv", headers=bearer())
    assert status == 200 and seen["path"] == "/Reports/q1.csv"
    assert gw.audit.records[-1].object == "/Reports/q1.csv"


# -- pipelined requests on one connection ----------------------------------------------------
async def test_pipelined_requests_reach_the_upstream_as_the_audit_says(make_gateway, upstream):
    """Five requests in one write: allowed, denied with a body that is itself a request,
    allowed with such a body, HEAD, allowed. The upstream's log equals the allowed records."""
    gw = await make_gateway(deny=[("*", "/admin/*")])
    auth = b"Authorization: Bearer " + TOKEN.encode() + b"\r\n"
    inner = b"GET /orders/admin/inner HTTP/1.1\r\nHost: g\r\n" + auth + b"\r\n"

    def req(method: bytes, path: bytes, body: bytes = b"") -> bytes:
        length = b"Content-Length: %d\r\n" % len(body) if body else b""
        return method + b" " + path + b" HTTP/1.1\r\nHost: g\r\n" + auth + length + b"\r\n" + body

    data = (
        req(b"GET", b"/orders/a")
        + req(b"POST", b"/orders/admin/x", inner)
        + req(b"POST", b"/orders/b", inner)
        + req(b"HEAD", b"/orders/c")
        + req(b"GET", b"/orders/d")
    )
    out = await raw_request(gw.port, data + b"GET /orders/e HTTP/1.1\r\nHost: g\r\n" + auth
                            + b"Connection: close\r\n\r\n")  # fmt: skip
    statuses = re.findall(rb"HTTP/1\.1 (\d{3}) ", out)
    assert statuses == [b"200", b"403", b"200", b"200", b"200", b"200"]
    ran = [(s["method"], s["path"]) for s in upstream.seen]
    assert ran == [("GET", "/a"), ("POST", "/b"), ("HEAD", "/c"), ("GET", "/d"), ("GET", "/e")]
    allowed = [r.object for r in gw.audit.records if r.event == "allowed"]
    admitted = [r.object for r in gw.audit.ahead]
    assert allowed == admitted == ["/a", "/b", "/c", "/d", "/e"]
    assert [r.object for r in gw.audit.records if r.event == "denied"] == ["/admin/x"]
    assert upstream.seen[1]["size"] == len(inner)  # the body went as a body, not a request
