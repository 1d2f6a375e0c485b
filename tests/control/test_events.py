"""TokenAudit: one audit record per control-plane decision, known fields as columns."""

from __future__ import annotations

from lockgate.audit import AuditRecord
from lockgate.control import TokenAudit


class Recorder:
    def __init__(self) -> None:
        self.records: list[AuditRecord] = []

    async def write(self, record: AuditRecord) -> None:
        self.records.append(record)


async def test_kinds_map_to_events_and_decisions() -> None:
    sink = Recorder()
    audit = TokenAudit(sink)
    await audit("token_issued", deployment="prod", jti="j1", ttl=60, remote="127.0.0.1")
    await audit("token_denied", deployment="prod", reason="policy_denied", status=403)
    await audit("proof_rejected", reason="bad_client_secret", action="authenticate")
    await audit("token_revoked", deployment="prod", kind="jti")
    await audit("something_new", reason="x")
    got = [(r.event, r.decision, r.action) for r in sink.records]
    assert got == [
        ("token_issued", "allow", "mint"),
        ("denied", "deny", "mint"),
        ("auth_failed", "deny", "authenticate"),
        ("token_revoked", None, "revoke"),
        ("auth_failed", "deny", "mint"),  # an unknown kind is recorded as a refusal
    ]
    issued = sink.records[0]
    assert (issued.deployment, issued.jti) == ("prod", "j1")
    assert issued.detail == {"ttl": 60, "remote": "127.0.0.1"}
    assert sink.records[1].status == 403 and sink.records[1].detail == {}


async def test_a_failing_audit_raises_so_nothing_is_handed_out() -> None:
    class Broken:
        async def write(self, record: AuditRecord) -> None:
            raise OSError("disk full")

    audit = TokenAudit(Broken())
    try:
        await audit("token_issued", jti="j1")
    except OSError:
        return
    raise AssertionError("the failure was swallowed")
