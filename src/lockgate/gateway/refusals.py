"""What every engine needs to audit a refusal safely: a sanitised description and a budget.

Every refusal is audited (``decision: deny``, or ``error`` for the gateway's own faults),
but a client that sends garbage at line rate must not grow the audit trail at line rate.
So refusals *before authentication* (nothing in the request can be tied to a principal:
framing and path errors, unknown resources, tokens whose signature did not verify) spend a
per-peer budget: the first ``burst`` of them in a ``window`` are recorded one by one, the rest
of that window are counted, and one summary record per peer and window says how many were
suppressed and why (reason slug → count). A refusal that names a principal (its token's
signature verified: expired, revoked, wrong audience, policy denials) never touches the
budget and is always recorded. Metrics count every refusal, suppressed or not.

Descriptions in records and logs come from :func:`describe`: printable ASCII only, other
bytes escaped as ``\\xNN``, capped in length, so an attacker's bytes are never written raw.
A request line passes :func:`request_line` first: no query, no fragment, no userinfo, since
any of them may hold a secret (``?sig=``, ``#access_token=``, ``user:password@host``).
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

from lockgate import metrics

if TYPE_CHECKING:
    from lockgate.identity import Claims

#: Longest description kept in a record or log line (after escaping).
MAX_DESCRIPTION = 200
_PRINTABLE = frozenset(range(0x20, 0x7F)) - {ord("\\")}


def describe(text: str | bytes, limit: int = MAX_DESCRIPTION) -> str:
    """``text`` as printable ASCII (``\\xNN`` escapes, backslash doubled), at most ``limit``."""
    data = text.encode("utf-8", "backslashreplace") if isinstance(text, str) else text
    out: list[str] = []
    size = 0
    for byte in data[: limit + 1]:  # an escape is at least one character: never need more
        piece = chr(byte) if byte in _PRINTABLE else ("\\\\" if byte == 0x5C else f"\\x{byte:02x}")
        if size + len(piece) > limit:
            return "".join(out) + "..."
        out.append(piece)
        size += len(piece)
    if len(data) > limit:
        return "".join(out) + "..."
    return "".join(out)


#: A JWT-shaped path segment: the Cosmos DB profile carries the Lockgate token in its path
#: (``/_t/<token>/``), so a refused request line would otherwise hold it (or its start).
_JWT_SEGMENT = re.compile(rb"(?<=/)[A-Za-z0-9_-]{2,}\.[A-Za-z0-9_-]{2,}\.[A-Za-z0-9_-]+")


def request_line(line: bytes) -> bytes:
    """``line`` (a request line or a bare target) without what may hold a secret: cut at
    the query or fragment, userinfo of an absolute- or authority-form target withheld, a
    token-shaped path segment withheld."""
    cuts = [i for i in (line.find(b"?"), line.find(b"#")) if i >= 0]
    if cuts:
        line = line[: min(cuts)]
    parts = line.split(b" ")
    i = 1 if len(parts) > 1 else 0
    parts[i] = _JWT_SEGMENT.sub(b"[token]", _without_userinfo(parts[i]))
    return b" ".join(parts)


def _without_userinfo(target: bytes) -> bytes:
    if target.startswith(b"/"):
        return target
    start = target.find(b"://") + 3 if b"://" in target else 0
    end = target.find(b"/", start)
    authority = target[start : end if end >= 0 else len(target)]
    at = authority.rfind(b"@")  # the last one: a password may hold "@" too
    if at < 0:
        return target
    return target[:start] + b"[userinfo]" + target[start + at :]


def peer_key(peer: Any) -> str:
    """The budget key of a connection's peer: its address without the port."""
    if isinstance(peer, tuple) and peer:
        return str(peer[0])
    return str(peer) if peer else "unknown"


@dataclass(slots=True)
class _Window:
    start: float
    recorded: int = 0
    suppressed: int = 0
    reasons: dict[str, int] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Suppressed:
    """One peer's refusals not recorded one by one in one window: the summary record."""

    peer: str
    count: int
    reasons: dict[str, int]
    window: float


class RefusalBudget:
    """Per-peer budget of individually recorded refusals before authentication.

    ``admit(peer, reason)`` says whether this refusal is recorded on its own (True) or only
    counted (False). Summaries of counted refusals are handed to ``report`` when their window
    ends: on the peer's next refusal, or from a timer armed when suppression starts (so a
    flood that stops is still reported). At most ``max_peers`` peers are tracked; beyond
    that, new peers share one ``*`` entry, which keeps memory bounded under a spoofed-source
    flood at the price of one budget for them all.
    """

    def __init__(
        self,
        *,
        burst: int = 20,
        window: float = 60.0,
        max_peers: int = 4096,
        clock: Callable[[], float] = time.monotonic,
        report: Callable[[Suppressed], None] | None = None,
    ) -> None:
        self.burst = burst
        self.window = window
        self.max_peers = max_peers
        self._clock = clock
        self.report = report
        self._peers: dict[str, _Window] = {}
        self._timer: Any = None

    def admit(self, peer: str, reason: str) -> bool:
        now = self._clock()
        win = self._peers.get(peer)
        if win is not None and now - win.start >= self.window:
            self._close(peer, win)
            win = None
        if win is None:
            if len(self._peers) >= self.max_peers:
                self.flush(now)
                if len(self._peers) >= self.max_peers:
                    peer = "*"
                    win = self._peers.get(peer)
            if win is None:
                win = self._peers[peer] = _Window(now)
        if win.recorded < self.burst:
            win.recorded += 1
            return True
        win.suppressed += 1
        win.reasons[reason] = win.reasons.get(reason, 0) + 1
        if win.suppressed == 1:
            self._arm(win.start + self.window - now)
        return False

    def flush(self, now: float | None = None) -> None:
        """Report and forget every window that has ended."""
        now = self._clock() if now is None else now
        for peer, win in list(self._peers.items()):
            if now - win.start >= self.window:
                self._close(peer, win)

    def close(self) -> None:
        """Report every pending summary now (shutdown) and stop the timer."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        for peer, win in list(self._peers.items()):
            self._close(peer, win)

    def _close(self, peer: str, win: _Window) -> None:
        del self._peers[peer]
        if win.suppressed and self.report is not None:
            self.report(Suppressed(peer, win.suppressed, dict(win.reasons), self.window))

    def _arm(self, delay: float) -> None:
        if self._timer is not None:
            return
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:  # no loop (unit use): summaries come on the next admit/flush
            return
        self._timer = loop.call_later(max(delay, 0.0), self._tick)

    def _tick(self) -> None:
        self._timer = None
        now = self._clock()
        self.flush(now)
        pending = [w.start for w in self._peers.values() if w.suppressed]
        if pending:
            self._arm(min(pending) + self.window - now)


class EmitRecord(Protocol):
    """Builds and writes one audit record, never raising (the shape of
    :meth:`lockgate.gateway.records.RecordBuilder.emit`, called with keywords only)."""

    def __call__(
        self,
        *,
        event: str,
        claims: Claims | None,
        resource: str | None,
        action: str | None,
        obj: str | None,
        t0: float,
        status: int | None,
        decision: str | None,
        rule: str | None,
        reason: str | None,
        detail: dict[str, Any] | None,
    ) -> None: ...


class RefusalRecorder:
    """One engine's refusals: counted, logged and audited, budgeted before authentication.

    ``emit`` builds and writes one audit record (:class:`EmitRecord`: a
    :class:`~lockgate.gateway.records.RecordBuilder`'s ``emit`` will do).
    """

    def __init__(
        self,
        protocol: str,
        emit: EmitRecord,
        log: logging.Logger,
        *,
        clock: Callable[[], float] = time.monotonic,
        budget: RefusalBudget | None = None,
    ) -> None:
        self.protocol = protocol
        self._emit = emit
        self._log = log
        self._clock = clock
        self._counters: dict[str, Any] = {}
        self.budget = budget or RefusalBudget(clock=clock)
        self.budget.report = self._summary

    def refuse(
        self,
        *,
        peer: Any,
        status: int | None,
        reason: str,
        event: str = "denied",
        decision: str = "deny",
        claims: Claims | None = None,
        resource: str | None = None,
        action: str | None = None,
        obj: str | None = None,
        t0: float | None = None,
        rule: str | None = None,
        description: str | None = None,
        request: bytes | str | None = None,
    ) -> bool:
        """Count, log and audit one refusal; False when it only counted into a summary.

        ``description`` and ``request`` (the offending request line, say) pass through
        :func:`describe`; neither may carry a secret to begin with.
        """
        counter = self._counters.get(reason)
        if counter is None:
            counter = self._counters[reason] = metrics.REFUSALS.labels(self.protocol, reason)
        counter.inc()
        who = peer_key(peer)
        if claims is None and decision == "deny" and not self.budget.admit(who, reason):
            return False
        detail: dict[str, Any] = {"peer": who}
        if description:
            detail["description"] = describe(description)
        if request:
            detail["request"] = describe(request, 120)
        fields = {"status": status, "reason": reason, "decision": decision, "resource": resource,
                  "jti": claims.jti if claims else None,
                  "dag_id": claims.dag_id if claims else None,
                  **detail}  # fmt: skip
        level = logging.ERROR if decision == "error" else logging.WARNING
        self._log.log(level, f"{self.protocol} refused: {reason}", extra={"fields": fields})
        self._emit(
            event=event, claims=claims, resource=resource, action=action, obj=obj,
            t0=self._clock() if t0 is None else t0, status=status, decision=decision,
            rule=rule, reason=reason, detail=detail,
        )  # fmt: skip
        return True

    def close(self) -> None:
        """Write the pending summaries (shutdown)."""
        self.budget.close()

    def _summary(self, s: Suppressed) -> None:
        detail = {"peer": s.peer, "suppressed": s.count, "reasons": s.reasons,
                  "window_s": s.window}  # fmt: skip
        self._log.warning(f"{self.protocol} refusals suppressed", extra={"fields": dict(detail)})
        self._emit(
            event="denied", claims=None, resource=None, action=None, obj=None,
            t0=self._clock(), status=None, decision="deny", rule=None,
            reason="refusals_suppressed", detail=detail,
        )  # fmt: skip
