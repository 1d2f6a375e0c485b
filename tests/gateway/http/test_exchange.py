"""The one HTTP exchange: profile hooks, the credential retry, bounded rewrites, and the
pieces both drivers share (request bytes, response bodies, the token found per head)."""

from __future__ import annotations

from typing import Any

from lockgate.gateway.engine import UpstreamSecret
from lockgate.gateway.http import bearer, framing
from lockgate.gateway.http.bodies import Collector, Tee
from lockgate.gateway.http.normalize import Target
from lockgate.gateway.http.profiles import (
    Decide,
    Headers,
    Presented,
    ProfileBase,
    ProfileRequest,
    UpstreamCall,
    UpstreamHeaders,
    Verdict,
)

from .conftest import TOKEN, call
from .conftest import bearer as bearer_header


class SigningProfile(ProfileBase):
    """Signs every attempt itself, may rewrite its answers, keeps its own throttling."""

    def __init__(self, *, rewrite: bool = False, retried: frozenset[int] | None = None) -> None:
        self.signed: list[str] = []
        self.rewrite = rewrite
        if retried is not None:
            self.retry_statuses = retried

    async def authorize(
        self, req: ProfileRequest, decide: Decide, headers: UpstreamHeaders
    ) -> Verdict:
        action, obj = req.default
        decision = decide(action, obj)
        return Verdict(
            decision.allowed, action, obj, decision.reason, rule=decision.rule,
            decision=decision, rewrite=self.rewrite, detail={"profiled": True},
        )  # fmt: skip

    def sign_upstream(self, call: UpstreamCall, secret: UpstreamSecret) -> bytes:
        self.signed.append(secret.value)
        n = len(self.signed)
        return f"Authorization: Bearer {secret.value}\r\nX-Signed: {call.method} {n}\r\n".encode()

    def rewrite_response(
        self, verdict: Verdict, status: int, headers: Headers, body: bytes, origin: str
    ) -> tuple[Headers, bytes]:
        return headers, b'{"rewritten":"' + origin.encode() + b'"}'

    def on_response(
        self, verdict: Verdict, status: int, headers: Headers, body: bytes
    ) -> dict[str, Any]:
        return {**verdict.detail, "seen_status": status}


class TokenInPath(ProfileBase):
    """Takes the token from ``/_t/<token>/...`` like the Cosmos DB profile."""

    async def authorize(
        self, req: ProfileRequest, decide: Decide, headers: UpstreamHeaders
    ) -> Verdict:
        action, obj = req.default
        decision = decide(action, obj)
        return Verdict(decision.allowed, action, obj, decision.reason, rule=decision.rule)

    def authenticate(self, target: Target, head: framing.Head) -> Presented:
        parts = target.path.split("/", 3)
        if len(parts) < 4 or parts[1] != "_t":
            return Presented(None, "missing", target, "/_t/<token>")
        return Presented(
            parts[2], "", Target(target.resource, "/" + parts[3], target.query), "/_t/<token>"
        )


async def test_a_profile_signs_every_attempt_and_a_refused_key_is_retried_once(
    make_gateway, upstream
):
    gw = await make_gateway()
    profile = SigningProfile()
    gw.engine.proxy.resources["orders"].profile = profile
    gw.broker.versions["orders-key"].append("up-secret-v3")  # upstream does not know v3 yet
    status, _, seen = await call("GET", f"{gw.url}/orders/rot", headers=bearer_header())
    assert status == 200
    assert profile.signed == ["up-secret-v3", "up-secret-v2"]  # current, then previous
    assert seen["headers"]["X-Signed"] == "GET 2"  # signed afresh for the retry
    outcome = gw.audit.records[-1]
    assert outcome.event == "allowed" and outcome.detail["retries"] == 1
    assert outcome.detail["profiled"] is True and outcome.detail["seen_status"] == 200
    assert "X-Lockgate-Assertion" in seen["headers"]  # the profile did not turn it off


async def test_a_rotation_the_cache_has_not_seen_is_retried_with_the_new_current(
    make_gateway, upstream
):
    gw = await make_gateway()
    status, _, _ = await call("GET", f"{gw.url}/orders/warm", headers=bearer_header())
    assert status == 200  # v2 is cached now
    gw.broker.versions["orders-key"].append("up-secret-v3")
    upstream.accepted = {"up-secret-v3"}  # the account rotated before the cache saw it
    status, _, seen = await call("GET", f"{gw.url}/orders/x", headers=bearer_header())
    assert status == 200
    assert seen["headers"]["Authorization"] == "Bearer up-secret-v3"
    assert gw.audit.records[-1].detail["retries"] == 1


async def test_a_profile_keeping_its_own_throttling_budget_gets_the_429(make_gateway, upstream):
    gw = await make_gateway()
    gw.engine.proxy.resources["orders"].profile = SigningProfile(retried=frozenset())
    status, headers, _ = await call("GET", f"{gw.url}/orders/throttle-1", headers=bearer_header())
    assert status == 429 and headers["x-ms-retry-after-ms"] == "300"
    assert upstream.hits["/throttle-1"] == 1
    assert not gw.audit.records[-1].detail.get("retries")


async def test_a_rewritten_answer_is_held_whole_and_sent_anew(make_gateway, upstream):
    gw = await make_gateway()
    gw.engine.proxy.resources["orders"].profile = SigningProfile(rewrite=True)
    status, headers, body = await call("GET", f"{gw.url}/orders/doc", headers=bearer_header())
    assert status == 200
    assert body == {"rewritten": f"http://127.0.0.1:{gw.port}"}
    assert int(headers["Content-Length"]) == len(f'{{"rewritten":"http://127.0.0.1:{gw.port}"}}')


async def test_an_answer_too_big_to_rewrite_is_refused_not_relayed(make_gateway, upstream):
    gw = await make_gateway()
    gw.engine.proxy.resources["orders"].profile = SigningProfile(rewrite=True)
    url = f"{gw.url}/orders/download?size={3 * 1024 * 1024}"
    status, _, body = await call("GET", url, headers=bearer_header())
    assert status == 502 and body == {"error": "upstream_response_unusable"}
    outcome = gw.audit.records[-1]
    assert outcome.event == "upstream_error" and outcome.reason == "upstream_response_unusable"


async def test_a_token_in_the_path_is_never_recorded(make_gateway, upstream):
    gw = await make_gateway()
    gw.engine.proxy.resources["orders"].profile = TokenInPath()
    status, _, seen = await call("GET", f"{gw.url}/orders/_t/{TOKEN}/docs/1")
    assert status == 200 and seen["path"] == "/docs/1"
    status, _, _ = await call("GET", f"{gw.url}/orders/_t/not-a-token/docs/1")
    assert status == 401
    refused = gw.audit.records[-1]
    assert refused.event == "auth_failed" and refused.object == "/_t/<token>"
    assert not any("not-a-token" in repr(r) for r in gw.audit.records)


def test_the_token_is_found_once_per_head_object(monkeypatch):
    calls = []
    real = bearer.extract_token

    def counting(headers: framing.Headers) -> tuple[str | None, str]:
        calls.append(1)
        return real(headers)

    monkeypatch.setattr(bearer, "extract_token", counting)
    raw = b"GET /orders/x HTTP/1.1\r\nHost: a\r\nAuthorization: Bearer t0k\r\n\r\n"
    head = framing.parse_request_head(raw)
    assert bearer.token_of(head) == ("t0k", "")
    assert bearer.token_of(head) == ("t0k", "")
    assert len(calls) == 1
    other = framing.parse_request_head(raw)  # equal bytes, another object: found again
    assert bearer.token_of(other) == ("t0k", "")
    assert len(calls) == 2


def test_a_tee_keeps_what_fits_and_a_collector_says_when_it_overflowed():
    class Sink:
        def __init__(self) -> None:
            self.out: list[bytes] = []

        def write(self, data: bytes) -> None:
            self.out.append(data)

        def write_first(self, head: bytes, pieces: list[bytes]) -> None:
            self.out.extend([head, *pieces])

    sink = Sink()
    tee = Tee(sink, limit=4)
    tee.write_first(b"H", [b"ab"])
    tee.write(b"cd")
    assert tee.data() == b"abcd" and sink.out == [b"H", b"ab", b"cd"]
    tee.write(b"e")
    assert tee.overflow and tee.data() == b"" and sink.out[-1] == b"e"  # relayed all the same
    collector = Collector(limit=3)
    collector.write_first(b"ignored", [b"ab"])
    assert collector.data() == b"ab" and not collector.overflow
    collector.write(b"cd")
    assert collector.overflow


def test_profiles_import_only_the_hook_types_never_the_proxy():
    """The exchange drives the profiles; a profile reaching back into it (the proxy, the
    exchange, admission) would make an import circle and a second way in."""
    import ast
    from pathlib import Path

    import lockgate.gateway.http.profiles as profiles

    above = ("proxy", "exchange", "fast_path", "admission", "trail", "engine", "server")
    root = Path(profiles.__file__).parent
    for path in root.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module:
                names = [node.module]
            elif isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            else:
                continue
            for name in names:
                if name.startswith("lockgate.gateway.http."):
                    first = name.split(".")[3]
                    assert first not in above, f"{path.relative_to(root)} imports {name}"


def test_request_lines_are_reused_per_head_only_for_the_same_target():
    """The same head bytes on the main listener and on the resource's own listener name
    different upstream paths: the lines built once per head must not cross over."""
    from lockgate.config import HttpResource
    from lockgate.gateway.http.resources import ResourceState

    rs = ResourceState(HttpResource(name="orders", kind="http", upstream="http://127.0.0.1:9/base"))
    head = framing.parse_request_head(
        b"GET /orders/x HTTP/1.1\r\nHost: a\r\nX-Client: 1\r\nX-Forwarded-For: 6.6.6.6\r\n\r\n"
    )
    main = Target("orders", "/x", "")
    mounted = Target("orders", "/orders/x", "")
    first = rs.request_lines(head, main)
    assert first is rs.request_lines(head, main)  # built once
    other = rs.request_lines(head, mounted)
    assert first.startswith(b"GET /base/x HTTP/1.1\r\n")
    assert other.startswith(b"GET /base/orders/x HTTP/1.1\r\n")
    assert b"X-Client: 1\r\n" in first and b"6.6.6.6" not in first
