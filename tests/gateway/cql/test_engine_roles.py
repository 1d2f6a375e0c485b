"""Dynamic least-privilege roles against the fake node's real permission checks."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from lockgate.errors import UpstreamError, UpstreamUnavailable
from lockgate.gateway.cql import codec, upstream
from lockgate.gateway.cql.roles import AdminConnection, DynamicRoles, RoleCredential, role_name

from .engine_stack import RESOURCE, UPSTREAM_PASSWORD, Stack, stack_fixture


@pytest.fixture
async def stack(tmp_path: Path) -> AsyncIterator[Stack]:
    async for s in stack_fixture(tmp_path):
        yield s


def roles_for(stack: Stack) -> DynamicRoles:
    async def password() -> str:
        return UPSTREAM_PASSWORD

    resource = next(r for r in stack.gw.config.resources if r.name == RESOURCE)
    return DynamicRoles(resource, password, stack.gw.policy)  # type: ignore[arg-type]


def claims(stack: Stack, dag: str = "etl") -> Any:
    return stack.gw.verifier.verify(stack.token(dag), RESOURCE)


async def login_as(stack: Stack, cred: RoleCredential) -> AdminConnection:
    resource = next(r for r in stack.gw.config.resources if r.name == RESOURCE)
    direct = resource.model_copy(
        update={"username": cred.username, "contact_points": [f"127.0.0.1:{stack.fake.port}"]}
    )
    return AdminConnection(await upstream.connect(direct, cred.password))


async def test_issue_grants_exactly_what_policy_allows(stack: Stack) -> None:
    roles = roles_for(stack)
    c = claims(stack)
    cred = await roles.issue(c)
    assert cred.username == role_name(RESOURCE, c.jti) and cred.username.startswith("lg_")
    assert set(cred.grants) == {
        ("SELECT", 'TABLE "ks"."orders"'),
        ("MODIFY", 'TABLE "ks"."orders"'),
        ("SELECT", 'TABLE "ks"."secrets"'),  # write on ks.secrets is denied by policy
    }
    assert await roles.issue(c) is cred  # idempotent per token
    assert cred.password not in repr(cred)

    conn = await login_as(stack, cred)
    try:
        await conn.query("INSERT INTO ks.orders (id, item) VALUES (1, 'a')")
        rows = await conn.query("SELECT * FROM ks.orders")
        assert isinstance(rows, codec.Rows) and len(rows.rows) == 1
        with pytest.raises(UpstreamError, match="0x2100"):
            await conn.query("INSERT INTO ks.secrets (id, v) VALUES (1, 'x')")
        with pytest.raises(UpstreamError, match="0x2100"):
            await conn.query("DROP TABLE ks.orders")
    finally:
        conn.close()


async def test_principal_without_grants_gets_a_role_that_can_do_nothing(stack: Stack) -> None:
    roles = roles_for(stack)
    cred = await roles.issue(claims(stack, "marketing"))
    assert cred.grants == ()
    conn = await login_as(stack, cred)
    try:
        with pytest.raises(UpstreamError, match="0x2100"):
            await conn.query("SELECT * FROM ks.orders")
    finally:
        conn.close()


async def test_revoke_and_sweep_drop_roles(stack: Stack) -> None:
    roles = roles_for(stack)
    first = await roles.issue(claims(stack))
    second = await roles.issue(claims(stack))
    assert await roles.sweep(now=first.expires_at - 10) == []
    assert await roles.revoke(first.username)
    assert first.username not in stack.fake.store.roles
    assert await roles.sweep(now=second.expires_at + 1) == [second.username]
    assert second.username not in stack.fake.store.roles and roles.issued == {}
    with pytest.raises(UpstreamUnavailable, match="refused"):
        await login_as(stack, second)


async def test_sweep_orphans_drops_roles_left_by_a_previous_process(stack: Stack) -> None:
    left = await roles_for(stack).issue(claims(stack))
    kept = roles_for(stack)
    mine = await kept.issue(claims(stack))
    assert await kept.sweep_orphans() == [left.username]
    assert left.username not in stack.fake.store.roles
    assert mine.username in stack.fake.store.roles and "cassandra" in stack.fake.store.roles
