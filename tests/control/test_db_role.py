"""``POST /v1/db-role`` when the audit cannot write: no record, no role (dropped again at
once, never handed out), and the task is told 503 ``audit_unavailable``."""

from __future__ import annotations

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
