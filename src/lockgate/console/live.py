"""What the live page knows beyond the sessions registry: the tokens live now, and the audit
record of an operator's revocation, block or unblock (the CLI's ``lockgate token`` writes
the same record, through :func:`operator_record`).

A token is live from its ``token_issued`` record until its expiry, unless revoked: the
trail is read over the last ``tokens.max_ttl`` seconds (no token lives longer), each
token's claims rebuilt from its record and asked of the revocation store (memory, as the
verifier asks). Its last use is the newest record carrying its jti, read for every live token
at once (:meth:`~lockgate.audit.AuditReader.last_uses`). Never a token string:
records carry the jti only.

No aiohttp here: the CLI imports this module.
"""

from __future__ import annotations

import re
import time
from collections.abc import Mapping
from dataclasses import dataclass, replace

from lockgate.audit import AuditQuery, AuditReader, AuditRecord, AuditRow
from lockgate.identity import RevocationStore
from lockgate.identity.model import Claims

#: ``token_issued`` records read at most (the newest first). Their last uses are one read
#: (4.5 ms for 200 tokens, 45 ms for 1,000 on a 100k-record chain), but each listed token is
#: ~1 KB of HTML rendered on the event loop the gateway shares (1,000 tokens: ~1 MB, 120-175 ms
#: a page): the cap bounds that; a DAG filter shows a DAG's older tokens.
MAX_TOKENS = 200
#: what reorders or hides the text after it on screen: C0/C1 controls, bidi embeddings,
#: overrides, isolates and marks (a DAG id is whatever a pipeline called itself)
_UNSEEN = re.compile("[\x00-\x1f\x7f-\x9f\u061c\u200e\u200f\u202a-\u202e\u2066-\u2069]")
#: The action an operator's event is recorded with.
_ACTIONS = {"token_revoked": "revoke", "mint_blocked": "revoke", "mint_unblocked": "unblock"}


@dataclass(frozen=True, slots=True)
class LiveToken:
    """A token issued, not expired and not revoked, as the live page lists it."""

    jti: str
    principal: str | None
    deployment: str | None
    dag_id: str | None
    run_id: str | None
    task_id: str | None
    try_number: int | None
    map_index: int | None
    resource: str | None
    issued_at: float
    expires_at: float
    last_use: float | None = None
    last_event: str | None = None  # what the last use was (allowed, denied ...)


@dataclass(frozen=True, slots=True)
class LiveTokens:
    """Tokens live now; ``more``: older tokens were issued within the window but not read
    (narrow by DAG to see them)."""

    tokens: list[LiveToken]
    more: bool


def live_tokens(
    reader: AuditReader,
    revocations: RevocationStore,
    *,
    max_ttl: float,
    dag: str | None = None,
    now: float | None = None,
    limit: int = MAX_TOKENS,
) -> LiveTokens:
    """Tokens live now (of ``dag`` when given), newest first, out of the newest ``limit``
    issued within ``max_ttl``."""
    now = time.time() if now is None else now
    page = reader.query(AuditQuery(event="token_issued", dag=dag, since=now - max_ttl), limit=limit)
    tokens: list[LiveToken] = []
    seen: set[str] = set()
    for row in page.rows:
        token = _token(row)
        if token is None or token.jti in seen or token.expires_at <= now:
            continue
        seen.add(token.jti)
        if revocations.is_revoked(_claims(token)):
            continue
        tokens.append(token)
    # every token's last use in one read (one statement on the shared trail), not one each
    uses = reader.last_uses({t.jti: t.issued_at for t in tokens}) if tokens else {}
    tokens = [_used(t, uses.get(t.jti)) for t in tokens]
    return LiveTokens(tokens, more=page.older is not None)


def _token(row: AuditRow) -> LiveToken | None:
    """The token a ``token_issued`` record announces (None: a record without a jti or an
    expiry, which no gateway writes)."""
    expires = row.detail.get("expires_at")
    if not row.jti or not isinstance(expires, int | float):
        return None
    return LiveToken(
        jti=row.jti, principal=row.principal, deployment=row.deployment, dag_id=row.dag_id,
        run_id=row.run_id, task_id=row.task_id, try_number=row.try_number,
        map_index=row.map_index, resource=row.resource, issued_at=row.ts,
        expires_at=float(expires),
    )  # fmt: skip


def _claims(token: LiveToken) -> Claims:
    """Claims as the verifier would hold them, for the revocation store's question (iat:
    the issue second, as the token carries it)."""
    issued = int(token.issued_at)
    return Claims(
        iss="", sub=token.principal or "", aud=token.resource or "", exp=int(token.expires_at),
        iat=issued, nbf=issued, jti=token.jti, deployment=token.deployment or "",
        dag_id=token.dag_id or "", task_id=token.task_id or "", run_id=token.run_id or "",
        try_number=token.try_number or 0,
        map_index=-1 if token.map_index is None else token.map_index,
    )  # fmt: skip


def _used(token: LiveToken, last: tuple[float, str] | None) -> LiveToken:
    """``token`` with its last use: (when, event) of its newest record since its issue other
    than the issue (:meth:`AuditReader.last_uses`); None: never used."""
    if last is None:
        return token
    return replace(token, last_use=last[0], last_event=last[1])


def operator_record(
    event: str,
    *,
    by: str,
    principal: str | None = None,
    deployment: str | None = None,
    dag_id: str | None = None,
    run_id: str | None = None,
    jti: str | None = None,
    reason: str | None = None,
    detail: Mapping[str, object] | None = None,
) -> AuditRecord:
    """The audit record of an operator's ``token_revoked``, ``mint_blocked`` or
    ``mint_unblocked``: what it names, who did it (``by``; ``principal`` for a console user,
    ``console:<subject>``) and ``detail`` (the console adds the role and how they signed
    in)."""
    if event not in _ACTIONS:
        raise ValueError(f"not an operator event: {event!r}")
    return AuditRecord(
        event=event, action=_ACTIONS[event], principal=principal, deployment=deployment,
        dag_id=dag_id, run_id=run_id, jti=jti, reason=reason or None,
        detail={"by": by, **(detail or {})},
    )  # fmt: skip


def visible(text: str, *, lines: bool = False) -> str:
    """``text`` as a sentence may show it: each character that would reorder or hide what
    follows (a right-to-left override in a DAG id turns the rest of a confirmation around)
    written as its code point, ``<U+202E>``; ``lines``: newlines kept (a block of text)."""

    def code_point(m: re.Match[str]) -> str:
        char = m.group()
        return char if lines and char == "\n" else f"<U+{ord(char):04X}>"

    return _UNSEEN.sub(code_point, text)


__all__ = [
    "MAX_TOKENS",
    "LiveToken",
    "LiveTokens",
    "live_tokens",
    "operator_record",
    "visible",
]
