"""Token events into the audit trail: what the control plane decided, one record each.

The token service and every control route report through one sink,
:class:`TokenAudit` (``await audit(event_kind, **fields)``). Known fields become record
columns, the rest the record's ``detail``. A token is only handed out once its
``token_issued`` record is durable: the sink raises when the audit cannot write, and the
caller refuses.
"""

from __future__ import annotations

from typing import Any, Protocol

from lockgate.audit import AuditRecord

# token service event → (audit event, decision)
_TOKEN_EVENTS: dict[str, tuple[str, str | None]] = {
    "token_issued": ("token_issued", "allow"),
    "token_denied": ("denied", "deny"),
    "proof_rejected": ("auth_failed", "deny"),
    "token_revoked": ("token_revoked", None),
    "mint_blocked": ("mint_blocked", None),
}
_RECORD_KEYS = frozenset(
    {"deployment", "dag_id", "task_id", "run_id", "try_number", "map_index", "principal",
     "resource", "rule", "reason", "jti", "status"}
)  # fmt: skip


class AuditWriter(Protocol):
    """The audit log (a writer thread or a writer process): durable once awaited."""

    async def write(self, record: AuditRecord) -> None: ...


class TokenAudit:
    """``await audit(event_kind, **fields)``: one audit record per control-plane decision."""

    def __init__(self, audit: AuditWriter) -> None:
        self._audit = audit

    async def __call__(self, event_kind: str, /, **fields: Any) -> None:
        event, decision = _TOKEN_EVENTS.get(event_kind, ("auth_failed", "deny"))
        # a refusal before the deployment is known names its own action (authenticate)
        action = fields.pop("action", None) or (
            "revoke" if event in ("token_revoked", "mint_blocked") else "mint"
        )
        record = AuditRecord(
            event=event,
            decision=decision,
            action=action,
            **{k: v for k, v in fields.items() if k in _RECORD_KEYS},
            detail={k: v for k, v in fields.items() if k not in _RECORD_KEYS},
        )
        await self._audit.write(record)
