"""Retries, backoff, deadlines and credential rotation against a real upstream."""

from __future__ import annotations

import socket
import time
from types import SimpleNamespace

from lockgate import metrics
from lockgate.gateway.http.retry import Backoff, retry_after

from .conftest import bearer, call, resource


def _retries(resource_name: str, reason: str) -> float:
    return (
        metrics.REGISTRY.get_sample_value(
            "lockgate_upstream_retries_total", {"resource": resource_name, "reason": reason}
        )
        or 0.0
    )


async def test_503_twice_then_200(make_gateway, upstream):
    gw = await make_gateway()
    before = _retries("orders", "503")
    status, _, _seen = await call("GET", f"{gw.url}/orders/flaky1", headers=bearer())
    assert status == 200
    assert upstream.hits["/flaky1"] == 3
    assert _retries("orders", "503") - before == 2
    # one admitted record written ahead, one outcome naming it, however many attempts
    assert [r.event for r in gw.audit.ahead] == ["admitted"]
    assert gw.audit.records[-1].detail == {"retries": 2, "ref": "fake/1"}


async def test_post_is_not_retried_on_503(make_gateway, upstream):
    gw = await make_gateway()
    status, _, _seen = await call("POST", f"{gw.url}/orders/flaky2", data=b"x", headers=bearer())
    assert status == 503
    assert upstream.hits["/flaky2"] == 1


async def test_429_honours_x_ms_retry_after_ms(make_gateway, upstream):
    gw = await make_gateway()
    t0 = time.monotonic()
    status, _, _seen = await call("GET", f"{gw.url}/orders/throttle1", headers=bearer())
    assert status == 200
    elapsed = time.monotonic() - t0
    assert 0.28 <= elapsed < 2.0  # upstream asked for 300 ms; our own backoff is ≤ 50 ms
    assert upstream.hits["/throttle1"] == 2


async def test_deadline_bounds_all_attempts(make_gateway, upstream):
    res = resource(
        "orders",
        upstream.url,
        retry={"max_attempts": 20, "base_delay": 0.1, "max_delay": 0.2, "deadline": 0.5},
    )
    gw = await make_gateway(resources=[res])
    t0 = time.monotonic()
    status, _, _seen = await call("GET", f"{gw.url}/orders/always503", headers=bearer())
    assert status == 503  # the last answer is relayed
    assert time.monotonic() - t0 < 0.9
    assert 2 <= upstream.hits["/always503"] < 20


async def test_slow_upstream_times_out_with_504(make_gateway, upstream):
    res = resource("orders", upstream.url, retry={"deadline": 0.3})
    gw = await make_gateway(resources=[res])
    status, _, _seen = await call("GET", f"{gw.url}/orders/slow?s=0.6", headers=bearer())
    assert status == 504
    assert gw.audit.records[-1].event == "upstream_error"


async def test_connection_refused_is_502_after_retries(make_gateway, upstream):
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    sock.close()  # nothing listens here now
    res = resource(
        "orders",
        f"http://127.0.0.1:{port}",
        retry={"max_attempts": 3, "base_delay": 0.01, "max_delay": 0.02},
    )
    gw = await make_gateway(resources=[res])
    before = _retries("orders", "connect")
    status, _, seen = await call("POST", f"{gw.url}/orders/x", data=b"abc", headers=bearer())
    assert status == 502
    assert seen["error"] == "upstream_unreachable"
    assert _retries("orders", "connect") - before == 2
    assert gw.audit.records[-1].event == "upstream_error"


async def test_rotation_401_retries_once_with_previous_version(make_gateway, upstream):
    gw = await make_gateway()
    gw.broker.versions["orders-key"].append("up-secret-v3")  # upstream does not know v3 yet
    status, _, seen = await call("POST", f"{gw.url}/orders/rot", data=b"payload", headers=bearer())
    assert status == 200
    assert seen["headers"]["Authorization"] == "Bearer up-secret-v2"
    assert seen["size"] == 7
    assert _retries("orders", "rotation") >= 1


async def test_401_with_no_previous_version_is_relayed(make_gateway, upstream):
    gw = await make_gateway()
    gw.broker.versions["orders-key"] = ["wrong"]
    status, _, seen = await call("GET", f"{gw.url}/orders/x", headers=bearer())
    assert status == 401
    assert seen == {"error": "upstream_unauthorized"}


def test_backoff_full_jitter_and_hints():
    settings = SimpleNamespace(max_attempts=4, base_delay=0.1, max_delay=1.0, deadline=10)
    b = Backoff(settings, rand=lambda: 1.0)
    assert [b.delay(i) for i in range(6)] == [0.1, 0.2, 0.4, 0.8, 1.0, 1.0]
    assert Backoff(settings, rand=lambda: 0.0).delay(3) == 0.0
    assert b.next_delay(0, now=0, deadline_at=10, hint=2.5) == 2.5
    assert b.next_delay(0, now=0, deadline_at=2, hint=2.5) is None
    assert b.next_delay(3, now=0, deadline_at=10) is None  # attempts exhausted


def test_retry_after_parsing():
    assert retry_after([(b"Retry-After", b"3")]) == 3.0
    assert retry_after([(b"retry-after", b"2"), (b"x-ms-retry-after-ms", b"250")]) == 0.25
    assert (
        retry_after([(b"Retry-After", b"Wed, 21 Oct 2015 07:28:00 GMT")], wall=lambda: 1445412470)
        == 10
    )
    assert retry_after([(b"Retry-After", b"soon")]) is None
    assert retry_after([]) is None


async def test_rotation_on_the_fast_path_hands_over_once(make_gateway, upstream):
    """A warm pooled connection and a cached secret take the callback path; its 401 must be
    retried with the previous version by the task path, with exactly one answer and record."""
    gw = await make_gateway()
    assert (await call("GET", f"{gw.url}/orders/warm", headers=bearer()))[0] == 200
    gw.broker.versions["orders-key"].append("up-secret-v3")  # upstream does not know v3 yet
    gw.engine.secrets.invalidate()
    assert (await call("GET", f"{gw.url}/orders/a", headers=bearer()))[0] == 200  # caches v3
    before = _retries("orders", "rotation")
    records = len(gw.audit.records)
    for _ in range(3):
        status, _, seen = await call("GET", f"{gw.url}/orders/b", headers=bearer())
        assert status == 200
        assert seen["headers"]["Authorization"] == "Bearer up-secret-v2"
    assert _retries("orders", "rotation") - before == 3
    assert [r.event for r in gw.audit.records[records:]] == ["allowed"] * 3
