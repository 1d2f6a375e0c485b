"""DynamicRoles.retire: once a resource leaves the catalog its set issues nothing more and
drops what it had issued (the race with an issue under way: test_attack_roles.py)."""

from __future__ import annotations

from pathlib import Path

import pytest

from lockgate.demo.standins.cqlserver import CqlServer
from lockgate.gateway.cql.roles import DynamicRoles, RolesRetired, role_name

from ..fakes import FakePolicy, FakePolicySet
from .test_attack_roles import orders_cql
from .test_dynamic_roles import mint
from .test_engine_live import PASSWORD
from .test_engine_live import fake as fake


async def _password() -> str:
    return PASSWORD


async def test_a_retired_set_drops_its_roles_and_issues_no_more(
    fake: CqlServer, tmp_path: Path
) -> None:
    roles = DynamicRoles(
        orders_cql(fake.port), _password, FakePolicy(FakePolicySet([("*", "*")]))
    )  # fmt: skip
    live = await roles.issue(mint(tmp_path))
    assert live.username in fake.store.roles

    assert await roles.retire() == [live.username]
    assert live.username not in fake.store.roles and not roles.issued

    later = mint(tmp_path, deployment="staging")
    with pytest.raises(RolesRetired):
        await roles.issue(later)
    assert role_name("orders-cql", later.jti) not in fake.store.roles
