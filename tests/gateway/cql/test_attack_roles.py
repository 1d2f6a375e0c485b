"""Attacks on dynamic roles following a new catalog live: a role issued while its resource
is taken away must not outlive the resource.

:meth:`DbRoles.update_resources` drops the live roles of a resource taken away (it sweeps
the retired set's issued roles). A role whose CREATE ROLE is still under way at that moment
is not issued yet, so the sweep misses it; when the issue completes, the role lives on the
cluster in a set nobody sweeps any more: a database login for a resource the catalog no
longer has, until someone runs ``sweep_orphans`` by hand. The node's role store is the oracle.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from lockgate.config import CqlResource
from lockgate.demo.standins.cqlserver import CqlServer
from lockgate.gateway.cql.dynamic_roles import DbRoles
from lockgate.gateway.cql.roles import RolesRetired, role_name
from lockgate.identity import RevocationStore

from ..fakes import FakePolicy, FakePolicySet
from .test_dynamic_roles import mint
from .test_engine_live import PASSWORD
from .test_engine_live import fake as fake


def orders_cql(port: int) -> CqlResource:
    return CqlResource(
        name="orders-cql", kind="cql", contact_points=[f"127.0.0.1:{port}"],
        username="lockgate", credential="pw", dynamic_roles=True,
    )  # fmt: skip


async def test_a_role_issued_while_its_resource_is_taken_away_does_not_outlive_it(
    fake: CqlServer,
    tmp_path: Path,
) -> None:
    gate, asked = asyncio.Event(), asyncio.Event()

    async def password_for(_resource: CqlResource) -> str:
        asked.set()
        await gate.wait()  # the issue is under way: its upstream login waits here
        return PASSWORD

    revocations = RevocationStore(tmp_path / "revocations.db")
    db = DbRoles(
        [orders_cql(fake.port)], password_for, FakePolicy(FakePolicySet([("*", "*")])),
        revocations,
    )  # fmt: skip
    try:
        claims = mint(tmp_path)
        issuing = asyncio.create_task(db.roles["orders-cql"].issue(claims))
        await asyncio.wait_for(asked.wait(), 3.0)
        db.update_resources([])  # the resource is taken away while its role is being made
        await asyncio.sleep(0.05)
        gate.set()
        with pytest.raises(RolesRetired):  # never handed out: its resource is gone
            await asyncio.wait_for(issuing, 5.0)
        role = role_name("orders-cql", claims.jti)
        for _ in range(50):  # whatever drops it in the background has had time
            if role not in fake.store.roles:
                break
            await asyncio.sleep(0.02)
        assert role not in fake.store.roles, "a role outlived its resource"
    finally:
        gate.set()
        await db.close()
        revocations.close()
