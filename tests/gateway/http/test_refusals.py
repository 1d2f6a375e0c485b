"""Every refusal of the HTTP engine is audited, logged and counted, never with decision null.

The gateway here runs with the real token verifier (keys, revocations), the real audit log
(SQLite, hash chain) and the real credential broker, so what the tests read back is what
``lockgate audit search`` reads: the CLI itself is run over the same data directory.
"""

from __future__ import annotations

import asyncio
import json
import os
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from lockgate.audit import AuditLog, AuditReader, AuditRow
from lockgate.cli import main as cli_main
from lockgate.config import LockgateConfig
from lockgate.credentials import CredentialBroker, CredentialStore
from lockgate.gateway.engine import Collaborators
from lockgate.gateway.http import HttpEngine
from lockgate.gateway.http.forward_proxy import ForwardProxy
from lockgate.identity import KeyStore, RevocationStore, TaskIdentity, TokenIssuer, TokenVerifier
from lockgate.metrics import REGISTRY
from lockgate.tlsgen import LeafIssuer, write_dev_ca

from ..fakes import FakeAudit, FakeBroker, FakePolicy, FakePolicySet, FakeSigner
from .conftest import SECRETS, Upstream, call, raw_request, resource
from .test_smuggling import SMUGGLING

ISSUER = "https://lockgate.test"
MAX_DESCRIPTION = 200  # printable ASCII, at most this long (plus "...")
IDENTITY = TaskIdentity("prod", "finance_daily", "load_orders", "manual__1", 1)


@dataclass
class Stack:
    engine: HttpEngine
    port: int
    url: str
    keys: KeyStore
    revocations: RevocationStore
    audit: Any
    data_dir: Path

    def token(self, audience: str = "orders", ttl: int = 900, ago: float = 0.0) -> tuple[str, str]:
        """A real Lockgate token and its jti; ``ago`` mints it that many seconds back."""
        issuer = TokenIssuer(self.keys, ISSUER, clock=lambda: time.time() - ago)
        token, claims = issuer.mint(IDENTITY, audience, ttl)
        return token, claims.jti

    def rows(self, **filters: Any) -> list[AuditRow]:
        self.audit.flush()
        return AuditReader(self.data_dir / "audit.db").search(limit=10_000, **filters)


@pytest.fixture
async def make_stack(tmp_path: Path, upstream: Upstream) -> AsyncIterator[Any]:
    made: list[tuple[HttpEngine, Any, RevocationStore]] = []

    async def factory(
        *, broker: Any = None, audit: Any = None, resources: list[Any] | None = None
    ) -> Stack:
        data = tmp_path / f"data{len(made)}"
        keys = KeyStore(data)
        revocations = RevocationStore(data / "revocations.db")
        verifier = TokenVerifier(keys, revocations, ISSUER, leeway=0)
        log = audit if audit is not None else AuditLog(data / "audit.db")
        res = resources or [resource("orders", upstream.url), resource("billing", upstream.url)]
        shared = Collaborators(
            verifier,
            FakePolicy(FakePolicySet([("*", "/ok*")])),
            broker or FakeBroker({"orders-key": list(SECRETS)}),
            log,
            FakeSigner(),
        )
        engine = HttpEngine(res, shared)
        await engine.start("127.0.0.1", 0)
        made.append((engine, log, revocations))
        port = engine.port
        return Stack(
            engine, port, f"http://127.0.0.1:{port}", keys, revocations, log, data,
        )  # fmt: skip

    yield factory
    for engine, log, revocations in made:
        await engine.close()
        if hasattr(log, "close"):
            log.close()
        revocations.close()


def refusals_metric(reason: str) -> float:
    return (
        REGISTRY.get_sample_value("lockgate_refusals_total", {"protocol": "http", "reason": reason})
        or 0.0
    )


def is_clean(text: str) -> bool:
    return all(0x20 <= ord(c) < 0x7F for c in text)


# -- 401s -------------------------------------------------------------------------------------
async def test_401s_are_denials_with_the_dag_only_when_the_signature_verified(
    make_stack: Any, upstream: Upstream, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    st = await make_stack()
    good, _ = st.token()
    head, payload, sig = good.split(".")
    tampered = f"{head}.{payload}.{('A' if sig[0] != 'A' else 'B') + sig[1:]}"
    expired, expired_jti = st.token(ttl=60, ago=3600)
    revoked, revoked_jti = st.token()
    st.revocations.revoke_jti(revoked_jti, time.time() + 900, "leak")
    other, other_jti = st.token(audience="billing")

    cases = {
        "missing": ({}, None),
        "malformed": ({"Authorization": "Bearer not-a-jwt"}, None),
        "bad_signature": ({"Authorization": f"Bearer {tampered}"}, None),
        "expired": ({"Authorization": f"Bearer {expired}"}, expired_jti),
        "revoked": ({"Authorization": f"Bearer {revoked}"}, revoked_jti),
        "wrong_audience": ({"Authorization": f"Bearer {other}"}, other_jti),
    }
    before = {reason: refusals_metric(reason) for reason in cases}
    for reason, (headers, _) in cases.items():
        status, _, body = await call("GET", f"{st.url}/orders/ok", headers=headers)
        assert (status, body["reason"]) == (401, reason)
    assert upstream.seen == []

    rows = st.rows(event="auth_failed")
    assert [r.reason for r in rows] == list(cases)
    for row, (reason, (_, jti)) in zip(rows, cases.items(), strict=True):
        assert row.decision == "deny", reason
        assert row.status == 401 and row.resource == "orders"
        if jti is None:  # nothing in an unverified token is recorded
            assert (row.jti, row.dag_id, row.deployment, row.principal) == (None,) * 4, reason
        else:
            assert row.jti == jti, reason
            assert (row.deployment, row.dag_id) == ("prod", "finance_daily"), reason
        assert good not in json.dumps(row.to_dict())
        assert refusals_metric(reason) == before[reason] + 1, reason

    # The CLI finds every one of them by decision, and by the DAG those that have one.
    conf = tmp_path / "lockgate.yaml"
    conf.write_text(f"data_dir: {st.data_dir}\n")
    assert cli_main(["-c", str(conf), "audit", "search", "--decision", "deny", "--json"]) == 0
    found = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [r["reason"] for r in found] == list(cases)
    assert cli_main(["-c", str(conf), "audit", "search", "--dag", "finance_daily", "--json"]) == 0
    by_dag = [json.loads(line)["reason"] for line in capsys.readouterr().out.splitlines()]
    assert by_dag == ["expired", "revoked", "wrong_audience"]


# -- 400s: framing and path attacks -------------------------------------------------------------
PATH_ATTACKS = {
    "path_traversal": b"GET /orders/a/../../etc/passwd HTTP/1.1\r\n",
    "encoded_separator": b"GET /orders/a%2f..%2fadmin HTTP/1.1\r\n",
    "double_encoding": b"GET /orders/%252e%252e/admin HTTP/1.1\r\n",
    "encoded_nul": b"GET /orders/a%00.json HTTP/1.1\r\n",
    "invalid_utf8": b"GET /orders/%C0%AE%C0%AE/admin HTTP/1.1\r\n",
    "invalid_character": b"GET /orders/a\\..\\admin HTTP/1.1\r\n",
}


@pytest.mark.parametrize("name", sorted(SMUGGLING))
async def test_framing_refusals_are_audited_with_a_slug_and_a_clean_description(
    make_stack: Any, upstream: Upstream, name: str
) -> None:
    st = await make_stack()
    out = await raw_request(st.port, SMUGGLING[name])
    assert out.startswith(b"HTTP/1.1 400 ")
    (row,) = st.rows(decision="deny")
    assert row.event == "denied" and row.status == 400
    assert row.reason in {
        "malformed_head", "malformed_request_line", "ambiguous_length", "head_too_large",
        "bad_host", "bad_chunk",
    }  # fmt: skip
    assert row.jti is None and row.dag_id is None
    assert row.detail["peer"] == "127.0.0.1"
    text = json.dumps(row.detail)
    assert is_clean(row.detail["description"]) and len(row.detail["description"]) <= 203
    assert is_clean(row.detail.get("request", ""))
    assert "Bearer" not in text and "tok-orders" not in text
    assert upstream.seen == []


@pytest.mark.parametrize("slug", sorted(PATH_ATTACKS))
async def test_path_attacks_are_audited(make_stack: Any, upstream: Upstream, slug: str) -> None:
    st = await make_stack()
    token, _ = st.token()
    before = refusals_metric(slug)
    req = PATH_ATTACKS[slug] + b"Host: g\r\nAuthorization: Bearer " + token.encode() + b"\r\n\r\n"
    out = await raw_request(st.port, req)
    assert out.startswith(b"HTTP/1.1 400 ")
    (row,) = st.rows(decision="deny")
    assert (row.event, row.status, row.reason) == ("denied", 400, slug)
    assert is_clean(row.detail["request"]) and row.detail["request"].startswith("GET /orders/")
    assert token not in json.dumps(row.to_dict())
    assert refusals_metric(slug) == before + 1
    assert upstream.seen == []


async def test_descriptions_never_carry_raw_bytes_and_are_bounded(make_stack: Any) -> None:
    st = await make_stack()
    line = b"GET /orders/" + bytes(range(0x80, 0x100)) * 4 + b"\x1b[31m HTTP/1.1\r\n"
    await raw_request(st.port, line + b"Host: g\r\n\r\n")
    await raw_request(st.port, b"G\x00T /orders/x?secret=hunter2 HTTP/1.1\r\nHost: g\r\n\r\n")
    rows = st.rows(decision="deny")
    assert len(rows) == 2
    for row in rows:
        for value in (row.detail["description"], row.detail["request"]):
            assert is_clean(value) and "\x1b" not in value
            assert len(value) <= MAX_DESCRIPTION + 3
    assert "\\x80" in rows[0].detail["request"]
    assert "hunter2" not in json.dumps(rows[1].detail)  # the query never reaches a record


async def test_unknown_resource_and_request_timeout_are_audited(make_stack: Any) -> None:
    st = await make_stack()
    status, _, _ = await call("GET", f"{st.url}/nosuch/x")
    assert status == 404
    st.engine._idle_timeout = 0.2  # for the connection opened next
    out = await raw_request(st.port, b"GET /orders/x HTTP/1.1\r\nHost: g\r\n", timeout=3.0)
    assert out.startswith(b"HTTP/1.1 408 ")
    rows = st.rows(decision="deny")
    got = [(r.status, r.reason) for r in rows]
    assert got == [(404, "unknown_resource"), (408, "request_timeout")]


# -- the gateway's own faults: decision "error" ------------------------------------------------
async def test_a_credential_never_set_is_503_credential_unavailable(
    make_stack: Any,
    upstream: Upstream,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
    capsys: pytest.CaptureFixture[str],
) -> None:
    config = LockgateConfig.model_validate(
        {"credentials": [{"name": "orders-key", "type": "static", "overlap": 60}]}
    )
    store = CredentialStore(tmp_path / "creds.db", os.urandom(32))
    broker = CredentialBroker(config, store)
    st = await make_stack(broker=broker)
    token, jti = st.token()
    try:
        status, _, body = await call(
            "GET", f"{st.url}/orders/ok", headers={"Authorization": f"Bearer {token}"}
        )
    finally:
        await broker.close()
    assert status == 503
    assert body["error"] == "credential_unavailable" and body["resource"] == "orders"
    assert "orders" in body["message"] and "Traceback" not in caplog.text
    (row,) = st.rows(decision="error")
    assert (row.event, row.status, row.reason) == ("upstream_error", 503, "credential_unavailable")
    assert row.jti == jti and row.dag_id == "finance_daily"
    assert upstream.seen == []
    conf = tmp_path / "lockgate.yaml"
    conf.write_text(f"data_dir: {st.data_dir}\n")
    assert cli_main(["-c", str(conf), "audit", "search", "--decision", "error", "--json"]) == 0
    found = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [(r["reason"], r["jti"]) for r in found] == [("credential_unavailable", jti)]


async def test_audit_and_upstream_failures_are_errors(make_stack: Any, upstream: Upstream) -> None:
    audit = FakeAudit()
    audit.writable = False
    dead = resource("dead", "http://127.0.0.1:9", retry={"deadline": 0.3, "base_delay": 0.01})
    st = await make_stack(audit=audit, resources=[resource("orders", upstream.url), dead])
    token, jti = st.token()
    status, _, body = await call(
        "GET", f"{st.url}/orders/ok", headers={"Authorization": f"Bearer {token}"}
    )
    assert (status, body["error"]) == (503, "audit_unavailable")
    audit.writable = True
    dead_token, _ = st.token(audience="dead")
    status, _, _ = await call(
        "GET", f"{st.url}/dead/ok", headers={"Authorization": f"Bearer {dead_token}"}
    )
    assert status == 502
    first, second = audit.records
    assert (first.decision, first.reason, first.status, first.jti) == (
        "error",
        "audit_unavailable",
        503,
        jti,
    )
    assert (second.decision, second.event, second.status) == ("error", "upstream_error", 502)
    assert second.reason == "connect_failed"


# -- rate safety --------------------------------------------------------------------------------
async def test_a_flood_before_authentication_is_summarised_not_recorded_one_by_one(
    make_stack: Any,
) -> None:
    st = await make_stack()
    budget = st.engine.proxy.refusals.budget
    now = [1000.0]
    budget._clock = lambda: now[0]  # the window ends when the test says, not mid-flood
    budget.burst, budget.window = 5, 0.2
    expired, expired_jti = st.token(ttl=60, ago=3600)
    for i in range(40):
        await raw_request(st.port, b"GET /orders/x HTTP/1.1\r\nHost: g\r\nX: a\x00b\r\n\r\n")
        if i % 4 == 0:  # an authenticated principal's refusal is never budgeted
            status, _, _ = await call(
                "GET", f"{st.url}/orders/ok", headers={"Authorization": f"Bearer {expired}"}
            )
            assert status == 401
    assert not [r for r in st.rows() if r.reason == "refusals_suppressed"]
    now[0] += 0.2  # the window is over: its timer writes the summary without another refusal
    for _ in range(20):
        await asyncio.sleep(0.1)
        if any(r.reason == "refusals_suppressed" for r in st.rows()):
            break
    rows = st.rows(decision="deny")
    framing = [r for r in rows if r.reason == "malformed_head"]
    expired_rows = [r for r in rows if r.reason == "expired"]
    (summary,) = [r for r in rows if r.reason == "refusals_suppressed"]
    assert len(framing) == 5
    assert len(expired_rows) == 10 and {r.jti for r in expired_rows} == {expired_jti}
    assert summary.detail["peer"] == "127.0.0.1"
    assert summary.detail["suppressed"] == 35
    assert summary.detail["reasons"] == {"malformed_head": 35}
    assert refusals_metric("malformed_head") >= 40  # metrics count every one


async def test_forward_proxy_connect_refusals_are_audited(
    make_gateway: Any, upstream: Upstream, tmp_path: Path
) -> None:
    ca = write_dev_ca(tmp_path / "ca")
    gw = await make_gateway()
    issuer = LeafIssuer.from_files(ca["cert"], ca["key"])
    fp = ForwardProxy(gw.engine, {"management.azure.com:443": "orders"}, issuer)
    await fp.start("127.0.0.1", 0)
    try:
        out = await raw_request(fp.port, b"CONNECT example.com:443 HTTP/1.1\r\n\r\n")
        assert out.startswith(b"HTTP/1.1 403")
        out = await raw_request(fp.port, b"GET http://example.com/?k=s3cr3t HTTP/1.1\r\n\r\n")
        assert out.startswith(b"HTTP/1.1 403")
    finally:
        await fp.close()
    got = [(r.event, r.decision, r.status, r.reason) for r in gw.audit.records]
    assert got == [
        ("denied", "deny", 403, "not_intercepted"),
        ("denied", "deny", 403, "only_connect"),
    ]
    assert gw.audit.records[0].detail["request"] == "CONNECT example.com:443 HTTP/1.1"
    assert all(is_clean(r.detail["request"]) for r in gw.audit.records)
    assert "s3cr3t" not in json.dumps([r.detail for r in gw.audit.records])


@pytest.mark.parametrize("value", ["v1\r\nX-Injected: 1", "v1-\u20ac-not-latin-1"])
async def test_a_credential_value_unsafe_as_a_header_is_503_not_sent(
    make_stack: Any, upstream: Upstream, value: str
) -> None:
    st = await make_stack(broker=FakeBroker({"orders-key": [value]}))
    token, jti = st.token()
    for _ in range(2):  # the second finds the secret cached: still refused, never sent
        status, _, body = await call(
            "GET", f"{st.url}/orders/ok", headers={"Authorization": f"Bearer {token}"}
        )
        assert (status, body["error"]) == (503, "credential_unavailable")
    rows = st.rows(decision="error")
    assert [(r.reason, r.jti) for r in rows] == [("credential_unavailable", jti)] * 2
    assert upstream.seen == []


async def test_credentials_in_a_refused_target_reach_no_record_and_no_log(
    make_gateway: Any, make_stack: Any, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # A client configured with a proxy URL or a full URL sends absolute-form targets, and
    # with them userinfo, a query or a fragment: the refusal keeps method, host and path.
    secrets = ("pa55word", "s3cr3t", "fr4gtoken")
    st = await make_stack()
    for target in (
        b"http://alice:pa55word@orders.test/orders/x?k=s3cr3t",
        b"/orders/x#access_token=fr4gtoken",
        b"alice:pa55word@orders.test:443",
    ):
        await raw_request(st.port, b"GET " + target + b" HTTP/1.1\r\nHost: g\r\n\r\n")
    ca = write_dev_ca(tmp_path / "ca")
    gw = await make_gateway()
    fp = ForwardProxy(gw.engine, {"management.azure.com:443": "orders"},
                      LeafIssuer.from_files(ca["cert"], ca["key"]))  # fmt: skip
    await fp.start("127.0.0.1", 0)
    try:
        for line in (
            b"GET http://alice:pa55word@example.com/?k=s3cr3t HTTP/1.1",
            b"CONNECT alice:pa55word@example.com:443 HTTP/1.1",
        ):
            await raw_request(fp.port, line + b"\r\n\r\n")
    finally:
        await fp.close()
    records = [r.to_dict() for r in st.rows(decision="deny")] + [
        r.to_dict() for r in gw.audit.records
    ]
    assert len(records) == 5, records
    written = json.dumps(records) + caplog.text
    assert "orders.test" in written and "example.com" in written  # the host is kept
    for secret in secrets:
        assert secret not in written, secret
