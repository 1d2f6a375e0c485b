"""``POST /v1/db-role`` when the audit cannot write: no record, no role (dropped again at
once, never handed out), and the task is told 503 ``audit_unavailable``."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from lockgate.audit import AuditRecord
from tests.gateway.cql.test_dynamic_roles_e2e import Stack, coords, stack

__all__ = ["stack"]  # the fixture: a gateway with a dynamic_roles resource on a fake node


async def test_an_unrecorded_role_is_dropped_and_not_handed_out(
    stack: Stack, monkeypatch: pytest.MonkeyPatch
) -> None:
    async def broken(record: AuditRecord) -> None:
        raise OSError("disk full")

    monkeypatch.setattr(stack.gw.audit, "write", broken)
    status, body = await stack.post("/v1/db-role", **coords())
    assert status == 503 and body["error"] == "temporarily_unavailable"
    assert "password" not in body and "username" not in body
    assert not [r for r in stack.fake.store.roles if r.startswith("lg_")]
    assert stack.gw.db_roles is not None and stack.gw.db_roles.roles["cass"].issued == {}
    monkeypatch.undo()
    assert (await stack.role())["username"] in stack.fake.store.roles  # it mends itself


async def test_a_resource_taken_out_of_the_catalog_takes_its_live_roles_with_it(
    stack: Stack,
) -> None:
    role = await stack.role()
    assert role["username"] in stack.fake.store.roles
    assert stack.gw.control is not None
    everything = list(stack.gw.config.resources)
    stack.gw.control.update_resources([r for r in everything if r.name != "cass"])
    for _ in range(100):  # dropped in the background, at once
        if role["username"] not in stack.fake.store.roles:
            break
        await asyncio.sleep(0.02)
    assert role["username"] not in stack.fake.store.roles
    status, _ = await stack.post("/v1/db-role", **coords())
    assert status == 404  # no such resource any more
    stack.gw.control.update_resources(everything)  # back: roles are issued again
    assert (await stack.role(try_number=2))["username"] in stack.fake.store.roles


@pytest.mark.parametrize("change", ["removed", "changed"])
async def test_a_role_whose_resource_moves_while_it_is_made_is_refused_with_that_reason(
    stack: Stack, monkeypatch: pytest.MonkeyPatch, change: str
) -> None:
    """The catalog changes while the role is being made: no role, a 503 the task may retry,
    and the refusal recorded as ``resource_removed`` / ``resource_changed`` (not as an
    unavailable cluster)."""
    assert stack.gw.control is not None and stack.gw.db_roles is not None
    control, roles = stack.gw.control, stack.gw.db_roles.roles["cass"]
    everything = list(stack.gw.config.resources)
    if change == "removed":
        catalog = [r for r in everything if r.name != "cass"]
    else:
        catalog = [
            r.model_copy(update={"keyspace": "other"}) if r.name == "cass" else r
            for r in everything
        ]
    issue = roles.issue

    async def issue_while_the_catalog_changes(*args: Any, **kw: Any) -> Any:
        control.update_resources(catalog)  # lands while the role is being made
        return await issue(*args, **kw)

    monkeypatch.setattr(roles, "issue", issue_while_the_catalog_changes)
    status, body = await stack.post("/v1/db-role", **coords())
    assert status == 503 and body["error"] == "temporarily_unavailable", body
    assert body["resource"] == "cass" and "password" not in body and "username" not in body
    for _ in range(100):  # whatever the retire drops in the background has had time
        if not [r for r in stack.fake.store.roles if r.startswith("lg_")]:
            break
        await asyncio.sleep(0.02)
    assert not [r for r in stack.fake.store.roles if r.startswith("lg_")]
    stack.gw.audit.flush(2.0)
    refused = [r for r in stack.gw.audit.tail(20) if r.status == 503]
    assert [r.reason for r in refused] == [f"resource_{change}"]


async def test_grants_withheld_for_what_they_reach_are_named_in_the_issue_record(
    stack: Stack, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A kind that withholds a grant (PostgreSQL: a view over a forbidden table) says so in
    ``token_issued``; the CQL kind withholds none and its record has no such field."""
    assert stack.gw.db_roles is not None
    roles = stack.gw.db_roles.roles["cass"]
    await stack.role()
    plain = [r for r in stack.gw.audit.tail(20) if r.event == "token_issued"][-1]
    assert "skipped_grants" not in plain.detail
    why = "SELECT ON ks.v: reaches ks.hidden, where policy does not allow read"
    monkeypatch.setattr(roles, "skipped_grants", lambda name: (why,))
    await stack.role(try_number=2)
    issued = [r for r in stack.gw.audit.tail(20) if r.event == "token_issued"][-1]
    assert issued.detail["skipped_grants"] == [why]
