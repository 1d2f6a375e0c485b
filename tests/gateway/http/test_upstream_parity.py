"""What the upstream receives, judged by the upstream's own log against the audit trail.

* A header the gateway drops (method overrides, forwarding headers) must not reach the
  upstream in the spelling CGI/WSGI servers read the same way (``_`` for ``-``).
* Every copy of a request the upstream receives is accounted for: one ``admitted`` record,
  and the outcome's ``retries`` counts the copies past the first (credential rotation,
  token refresh, a pooled connection that closed under the request)."""

from __future__ import annotations

from .conftest import SECRETS, bearer, call


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
