"""The verifier's attack table, replayed end to end through the real HTTPS engine.

Every forged, expired, misdirected or revoked token must get 401 with the right reason in
both the JSON body and ``WWW-Authenticate``, and nothing may reach the upstream.
"""

from __future__ import annotations

import json
import ssl
import time
import urllib.error
import urllib.request
from collections.abc import Callable

import pytest

from lockgate.demo.stack import LocalStack
from lockgate.identity import TaskIdentity, TokenIssuer
from tests.identity import test_tokens as table


class _WallClock:
    """The identity tests' settable clock, reading real time (the gateway's clock)."""

    @property
    def t(self) -> float:
        return time.time()

    def __call__(self) -> float:
        return time.time()


def _get(stack: LocalStack, headers: dict[str, str], path: str = "/orders-api/orders"):
    ctx = ssl.create_default_context(cafile=str(stack.ca_file)) if stack.ca_file else None
    req = urllib.request.Request(stack.http_url + path, headers=headers)
    try:
        with urllib.request.urlopen(req, context=ctx, timeout=10) as resp:
            return resp.status, dict(resp.headers), resp.read()
    except urllib.error.HTTPError as exc:
        return exc.code, dict(exc.headers), exc.read()


@pytest.fixture(scope="module")
def ctx(stack: LocalStack) -> table.Ctx:
    gw = stack.gateway
    identity = TaskIdentity("prod", "finance_daily", "read_orders", "manual__attack", 1, -1)
    return table.Ctx(gw.state.keys, gw.issuer, gw.state.revocations, _WallClock(), identity)


@pytest.mark.parametrize(
    ("name", "build", "reason"), table.ATTACKS, ids=[a[0] for a in table.ATTACKS]
)
def test_attack_is_refused_by_the_http_engine(
    name: str,
    build: Callable[[table.Ctx], str],
    reason: str,
    ctx: table.Ctx,
    stack: LocalStack,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(table, "ISSUER", stack.config.issuer_url)
    token = build(ctx)
    if name == "revoked jti":
        stack.gateway.state.revocations.refresh(force=True)
    seen_before = len(stack.upstream.seen)
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    status, resp_headers, body = _get(stack, headers)
    assert status == 401, (name, status, body[:200])
    assert json.loads(body)["reason"] == reason
    challenge = resp_headers.get("WWW-Authenticate", "")
    assert challenge.startswith('Bearer realm="lockgate"')
    if reason != "missing":
        assert f'error_description="{reason}"' in challenge
    assert len(stack.upstream.seen) == seen_before  # nothing reached the upstream


def test_control_a_good_token_passes(ctx: table.Ctx, stack: LocalStack) -> None:
    token = TokenIssuer(ctx.keys, stack.config.issuer_url).mint(ctx.identity, "orders-api", 60)[0]
    status, _, _ = _get(stack, {"Authorization": f"Bearer {token}"})
    assert status == 200


def test_token_for_one_resource_is_refused_at_another_path(
    ctx: table.Ctx, stack: LocalStack
) -> None:
    """Replay for another resource: aud is bound to the first path segment."""
    token = TokenIssuer(ctx.keys, stack.config.issuer_url).mint(ctx.identity, "billing-api", 60)[0]
    status, _, body = _get(stack, {"Authorization": f"Bearer {token}"})
    assert status == 401 and json.loads(body)["reason"] == "wrong_audience"


def test_revocation_by_cli_applies_to_a_live_token(ctx: table.Ctx, stack: LocalStack) -> None:
    from lockgate.cli import main as cli

    identity = TaskIdentity("prod", "finance_daily", "read_orders", "manual__revoke_me", 1, -1)
    token = TokenIssuer(ctx.keys, stack.config.issuer_url).mint(identity, "orders-api", 600)[0]
    assert _get(stack, {"Authorization": f"Bearer {token}"})[0] == 200
    code = cli(["--config", str(stack.config_path), "token", "revoke", "--dag", "finance_daily",
                "--run", "manual__revoke_me"])  # fmt: skip
    assert code == 0
    deadline = time.time() + 5
    status = 200
    while time.time() < deadline and status == 200:
        time.sleep(0.2)
        status, _, body = _get(stack, {"Authorization": f"Bearer {token}"})
    assert status == 401 and json.loads(body)["reason"] == "revoked"
