"""Operations endpoints of a running gateway: /healthz, /readyz, /metrics, fail-closed audit."""

from __future__ import annotations

import asyncio
import json
import ssl
import time
import urllib.error
import urllib.request
from typing import Any

from lockgate.audit import AuditRecord
from lockgate.demo.stack import LocalStack
from lockgate.identity import TaskIdentity


def _get(stack: LocalStack, url: str, headers: dict[str, str] | None = None):
    ctx = ssl.create_default_context(cafile=str(stack.ca_file))
    try:
        with urllib.request.urlopen(
            urllib.request.Request(url, headers=headers or {}), context=ctx, timeout=10
        ) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


def _token(stack: LocalStack) -> str:
    ident = TaskIdentity("prod", "finance_daily", "ops", "manual__ops", 1, -1)
    return stack.gateway.issuer.mint(ident, "orders-api", 300)[0]


def test_health_and_readiness(stack: LocalStack) -> None:
    assert _get(stack, stack.control_url + "/healthz")[0] == 200
    status, body = _get(stack, stack.control_url + "/readyz")
    assert status == 200 and json.loads(body)["ready"] is True


def test_metrics_cover_requests_tokens_rejections_and_credential_age(stack: LocalStack) -> None:
    auth = {"Authorization": f"Bearer {_token(stack)}"}
    assert _get(stack, stack.http_url + "/orders-api/orders", auth)[0] == 200
    assert (
        _get(stack, stack.http_url + "/orders-api/orders", {"Authorization": "Bearer x.y.z"})[0]
        == 401
    )
    time.sleep(1.2)  # credential age is refreshed by the once-a-second loop
    status, body = _get(stack, stack.control_url + "/metrics")
    text = body.decode()
    assert status == 200
    assert (
        'lockgate_requests_total{action="read",dag="finance_daily",decision="allow",resource="orders-api"}'
        in text
    )
    assert 'lockgate_upstream_latency_seconds_bucket{le="0.005",resource="orders-api"}' in text
    assert "lockgate_token_rejections_total{reason=" in text
    assert 'lockgate_credential_age_seconds{credential="orders-api-key"}' in text
    assert auth["Authorization"][7:] not in text


def test_audit_failure_fails_closed_and_recovers_by_itself(stack: LocalStack) -> None:
    audit = stack.gateway.audit
    auth = {"Authorization": f"Bearer {_token(stack)}"}
    url = stack.http_url + "/orders-api/orders"

    # the writer process fails every commit until told otherwise (as a full disk would)
    audit.inject_fault("error", "OSError: [Errno 28] No space left on device")
    try:
        audit.emit(AuditRecord(event="policy_reloaded"))  # the next write hits the fault
        deadline = time.time() + 5
        while audit.healthy and time.time() < deadline:
            time.sleep(0.05)
        assert not audit.healthy
        status, body = _get(stack, url, auth)
        assert status == 503 and json.loads(body)["error"] == "audit_unavailable"
        assert _get(stack, stack.control_url + "/readyz")[0] == 503
    finally:
        audit.inject_fault("clear")
    deadline = time.time() + 10
    status = 503
    while status != 200 and time.time() < deadline:
        time.sleep(0.1)
        status, _ = _get(stack, url, auth)
    assert status == 200
    assert audit.flush(5.0)
    assert audit.verify().ok


def test_a_new_catalog_is_served_without_a_restart(stack: LocalStack) -> None:
    """The server hands every engine the new catalog; a removed resource answers 404 at
    once, and serves again when it comes back (warm pools of unchanged resources kept)."""
    gateway, loop = stack.gateway, stack._loop
    assert gateway is not None and loop is not None
    auth = {"Authorization": f"Bearer {_token(stack)}"}
    url = stack.http_url + "/orders-api/orders"
    everything = list(gateway.config.resources)

    def serve(resources: list[Any]) -> None:
        async def update() -> None:
            gateway.update_resources(resources)

        asyncio.run_coroutine_threadsafe(update(), loop).result(5)

    assert _get(stack, url, auth)[0] == 200
    serve([r for r in everything if r.name != "orders-api"])
    try:
        status, body = _get(stack, url, auth)
        assert status == 404 and json.loads(body)["error"] == "unknown_resource"
    finally:
        serve(everything)
    assert _get(stack, url, auth)[0] == 200


def test_sighup_reloads_the_catalog_and_refuses_other_changes(stack: LocalStack) -> None:
    """``reload_config`` (SIGHUP): a change to ``resources`` is served at once; a change to
    any other section is refused whole (a restart applies it)."""
    import yaml

    gateway, loop = stack.gateway, stack._loop
    assert gateway is not None and loop is not None
    auth = {"Authorization": f"Bearer {_token(stack)}"}
    url = stack.http_url + "/orders-api/orders"
    path = stack.config_path
    original = path.read_text()
    data = yaml.safe_load(original)

    def reload(text: str) -> bool:
        path.write_text(text)

        async def run() -> bool:
            return gateway.reload_config()

        return asyncio.run_coroutine_threadsafe(run(), loop).result(5)

    try:
        kept = [r for r in data["resources"] if r["name"] != "orders-api"]
        assert reload(yaml.safe_dump({**data, "resources": kept})) is True
        assert _get(stack, url, auth)[0] == 404
        assert reload(yaml.safe_dump({**data, "log_level": "debug"})) is False  # none applied
        assert reload("resources: [unclosed") is False  # a broken file: the catalog stays
        assert _get(stack, url, auth)[0] == 404
    finally:
        assert reload(original) is True
    assert _get(stack, url, auth)[0] == 200
