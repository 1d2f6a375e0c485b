"""CQL handshake refusals are denials with the token's DAG exactly when its signature verified.

Real gateway (token verifier, revocations, audit log) in front of the fake node; the client
logs in with SASL PLAIN as the Python driver does.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from lockgate.gateway.cql import codec
from lockgate.identity import TaskIdentity, TokenIssuer

from .engine_stack import RESOURCE, RawClient, Stack, stack_fixture


@pytest.fixture
async def stack(tmp_path: Path) -> AsyncIterator[Stack]:
    async for s in stack_fixture(tmp_path):
        yield s


def mint(stack: Stack, *, audience: str = RESOURCE, age: float = 0.0) -> tuple[str, str]:
    issuer = TokenIssuer(
        stack.gw.state.keys, stack.gw.config.issuer_url, clock=lambda: time.time() - age
    )
    token, claims = issuer.mint(TaskIdentity("prod", "etl", "load", "run-1", 1), audience, 60)
    return token, claims.jti


async def test_handshake_refusals_are_denials_with_verified_claims_only(stack: Stack) -> None:
    expired, expired_jti = mint(stack, age=3600)
    other, other_jti = mint(stack, audience="another-resource")
    revoked, revoked_jti = mint(stack)
    stack.gw.state.revocations.revoke_jti(revoked_jti, time.time() + 60, "leak")
    good, _ = mint(stack)
    head, payload, sig = good.split(".")
    forged = f"{head}.{payload}.{('A' if sig[0] != 'A' else 'B') + sig[1:]}"
    cases = [
        ("expired", expired, expired_jti),
        ("wrong_audience", other, other_jti),
        ("revoked", revoked, revoked_jti),
        ("bad_signature", forged, None),
        ("malformed", "not-a-token", None),
    ]
    for reason, token, _ in cases:
        client = await RawClient.open(stack.port)
        try:
            answer = await client.login(token)
        finally:
            client.close()
        assert isinstance(answer, codec.Error) and f"({reason})" in answer.message
    rows = stack.audit("auth_failed")
    assert [r.reason for r in rows] == [reason for reason, _, _ in cases]
    for row, (reason, token, jti) in zip(rows, cases, strict=True):
        assert row.decision == "deny" and row.resource == RESOURCE, reason
        if jti is None:
            assert (row.jti, row.dag_id, row.deployment) == (None, None, None), reason
        else:
            assert (row.jti, row.dag_id, row.deployment) == (jti, "etl", "prod"), reason
        assert token not in str(row.to_dict())
    denied = stack.gw.audit.search(decision="deny", event="auth_failed")
    assert [r.reason for r in denied] == [reason for reason, _, _ in cases]
    assert stack.fake.user_statements() == []
