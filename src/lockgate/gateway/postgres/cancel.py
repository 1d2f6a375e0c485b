"""CancelRequest: the gateway's own backend keys, mapped to the upstream's.

A PostgreSQL client cancels a running query by opening a *new* connection and sending
``CancelRequest(pid, secret)`` with the key the server gave it at login
(``BackendKeyData``). Through Lockgate the client never sees the upstream's key: each
session gets a key of the gateway's own (a random pid and a random 4-byte secret), and
:class:`CancelKeys` maps it to ``(resource, upstream pid, upstream secret)`` while the
session is open. So:

* a cancel reaches only the session it names, and only with that session's exact secret
  (compared in constant time); a guess, a stale key or a key of a closed session does
  nothing (the connection is closed silently, as the server does: the client learns
  nothing);
* the upstream's key stays in the gateway (a client cannot cancel queries of other
  sessions that share the gateway's upstream login);
* a cancel carries no token: it needs none, as on the server; the secret is the proof.

Every cancel is audited with ``action: cancel``: an honoured one as ``allowed`` with the
session's principal, a refused one as ``denied`` without principal (``reason:
unknown_key``, with the peer), within the per-peer budget of refusals before
authentication (:mod:`lockgate.gateway.refusals`: a guessing client is summarised).
"""

from __future__ import annotations

import hmac
import secrets
from dataclasses import dataclass
from typing import TYPE_CHECKING

from lockgate import _log
from lockgate.config import PostgresResource
from lockgate.errors import UpstreamUnavailable

from . import upstream

if TYPE_CHECKING:
    from lockgate.identity import Claims

    from .context import EngineContext

log = _log.get("gateway.postgres")

_PID_MAX = 2**31 - 1  # the key's pid is an int32 the client keeps as a positive number


@dataclass(frozen=True, slots=True)
class CancelTarget:
    """The upstream session behind one gateway key."""

    resource: PostgresResource
    claims: Claims
    upstream_pid: int
    upstream_secret: bytes
    secret: bytes  # the gateway's secret the client must present


class CancelKeys:
    """Gateway backend key -> upstream session, for open sessions only."""

    def __init__(self) -> None:
        self._targets: dict[int, CancelTarget] = {}

    def __len__(self) -> int:
        return len(self._targets)

    def issue(
        self,
        resource: PostgresResource,
        claims: Claims,
        upstream_pid: int,
        upstream_secret: bytes,
    ) -> tuple[int, bytes]:
        """A fresh gateway key ``(pid, secret)`` for an open session; :meth:`release` it
        when the session ends."""
        while True:
            pid = secrets.randbelow(_PID_MAX) + 1
            if pid not in self._targets:
                break
        secret = secrets.token_bytes(4)
        self._targets[pid] = CancelTarget(resource, claims, upstream_pid, upstream_secret, secret)
        return pid, secret

    def release(self, pid: int) -> None:
        self._targets.pop(pid, None)

    def lookup(self, pid: int, secret: bytes) -> CancelTarget | None:
        """The target of a key presented by a client; None unless the secret matches."""
        target = self._targets.get(pid)
        if target is None or not hmac.compare_digest(target.secret, secret):
            return None
        return target


async def handle_cancel(
    ctx: EngineContext, pid: int, secret: bytes, t0: float, peer: object = None
) -> None:
    """Honour a CancelRequest with a key this gateway issued (see module doc); never raises
    for a bad key (the caller closes the connection either way)."""
    target = ctx.cancels.lookup(pid, secret)
    if target is None:
        ctx.refusals.refuse(
            peer=peer, status=None, reason="unknown_key", action="cancel", t0=t0
        )  # budgeted per peer: guessing keys does not flood the trail
        return
    name = target.resource.name
    try:
        await upstream.cancel(target.resource, target.upstream_pid, target.upstream_secret)
    except (UpstreamUnavailable, OSError) as exc:
        log.warning(
            "postgres cancel not delivered", extra={"fields": {"resource": name, "error": str(exc)}}
        )
        ctx.record(
            "upstream_error", target.claims, name, t0, action="cancel", decision="error",
            reason="upstream_unavailable", detail={"error": str(exc)[:500]},
        )  # fmt: skip
        return
    ctx.record("allowed", target.claims, name, t0, action="cancel", decision="allow")


__all__ = ["CancelKeys", "CancelTarget", "handle_cancel"]
