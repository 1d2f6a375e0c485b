"""The HTTP engine's request handler: admit a request, then run its exchange.

Two entries, called by the client connection:

* :meth:`Proxy.serve` — the request's body is complete: refusals are answered at once; an
  allowed request goes upstream on the fast path (:class:`~.exchange.Exchange`) when a warm
  pooled connection and a cached secret are at hand, else on the task path;
* :meth:`Proxy.handle` — the body is still arriving: it will stream upstream.

A request whose quota answers later (pacing, shared budgets) is served on a task
(:meth:`Proxy.serve_held`); its quota slots are given back when it ends, on every path.

The parts: :mod:`.admission` (normalise → authenticate → classify → decide → write ahead),
:mod:`.exchange` (forward → retry → relay → record), :mod:`.trail` (audit records),
:mod:`.resources` (what is computed once per resource), profiles (:mod:`.profiles`) hooked
into both.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Mapping

from lockgate.gateway.engine import (
    AssertionCache,
    AuditSink,
    PolicySource,
    RequestFactory,
    SecretCache,
    TokenVerifier,
)
from lockgate.gateway.http import framing, responses
from lockgate.gateway.http.admission import Admission, Admitted, Held, Pending, refusal
from lockgate.gateway.http.exchange import Forwarder
from lockgate.gateway.http.fast_path import Exchange
from lockgate.gateway.http.outcome import FirstAttempt, Forwarding
from lockgate.gateway.http.resources import ResourceState, upstream_reading
from lockgate.gateway.http.server import ClientConnection, RequestBody
from lockgate.gateway.http.trail import Trail
from lockgate.gateway.records import RecordBuilder
from lockgate.gateway.refusals import RefusalRecorder, request_line
from lockgate.quotas import NO_QUOTAS, QuotaGate


class Proxy:
    """Admission and exchange for every resource of one HTTP engine."""

    def __init__(
        self,
        *,
        verifier: TokenVerifier,
        policy: PolicySource,
        secrets: SecretCache,
        assertions: AssertionCache,
        audit: AuditSink,
        records: RecordBuilder,
        make_request: RequestFactory,
        clock: Callable[[], float] = time.monotonic,
        quotas: QuotaGate = NO_QUOTAS,
    ) -> None:
        self._secrets = secrets
        self.clock = clock
        self.trail = Trail(audit, records, clock)
        self.admission = Admission(
            verifier=verifier, policy=policy, secrets=secrets, make_request=make_request,
            trail=self.trail, clock=clock, quotas=quotas,
        )  # fmt: skip
        self._hand_over = self.serve_admitted  # (bound once: the fast path's way back)
        self.forwarder = Forwarder(
            secrets=secrets, assertions=assertions, trail=self.trail, clock=clock, quotas=quotas
        )

    @property
    def resources(self) -> Mapping[str, ResourceState]:
        return self.admission.resources

    @resources.setter
    def resources(self, value: Mapping[str, ResourceState]) -> None:
        self.admission.resources = value

    @property
    def quotas(self) -> QuotaGate:
        return self.admission.quotas

    @quotas.setter
    def quotas(self, gate: QuotaGate) -> None:
        """Another quota gate for new requests (those in flight keep their tickets)."""
        self.admission.quotas = gate
        self.forwarder.quotas = gate

    @property
    def refusals(self) -> RefusalRecorder:
        return self.trail.refusals

    # -- entries ---------------------------------------------------------------------------
    def serve(self, conn: ClientConnection, head: framing.Head, body: RequestBody) -> bool | None:
        """Entry for a request whose body is complete, called from ``data_received``.

        Returns ``keep`` when answered, None when the answer is under way.
        """
        adm = self.admission.admit(conn, head, body)
        if adm is True or adm is False:
            return adm
        if isinstance(adm, Pending):
            conn.run(self.serve_profiled(conn, head, body, adm))
            return None
        if isinstance(adm, Held):
            conn.run(self.serve_held(conn, head, body, adm))
            return None
        rs = adm.rs
        secret = None
        if rs.credential is not None:
            secret = self._secrets.peek(rs.credential)
        durable = self.trail.durable()  # None unless audit durability is fsync
        fw = Forwarding(conn, head, body, adm)
        if (
            (secret is not None or rs.credential is None)
            and not head.expect_continue
            and durable is None
        ):
            up = rs.pool.take_idle()
            if up is not None and Exchange(self.forwarder, fw, up, secret, self._hand_over).start():
                return None
        conn.run(self.serve_admitted(fw, durable=durable))
        return None

    async def handle(self, conn: ClientConnection, head: framing.Head, body: RequestBody) -> bool:
        """Entry for a request whose body is still arriving (it will stream upstream)."""
        adm = self.admission.admit(conn, head, body)
        if adm is True or adm is False:
            return adm
        if isinstance(adm, Pending):
            return await self.serve_profiled(conn, head, body, adm)
        if isinstance(adm, Held):
            return await self.serve_held(conn, head, body, adm)
        return await self.serve_admitted(Forwarding(conn, head, body, adm))

    def connection_refused(
        self, conn: ClientConnection, status: int, reason: str, description: str, line: bytes | None
    ) -> None:
        """A refusal the connection answered itself (framing 400, 408, 500): audited."""
        self.trail.refusals.refuse(
            peer=conn.peer, status=status, reason=reason,
            decision="error" if status >= 500 else "deny", description=description,
            request=request_line(line) if line else None,
        )  # fmt: skip

    # -- the task path ---------------------------------------------------------------------
    async def serve_profiled(
        self, conn: ClientConnection, head: framing.Head, body: RequestBody, p: Pending
    ) -> bool:
        """A profiled resource's request: the profile classifies it, then the exchange."""
        admitted = await self.admission.admit_profiled(conn, head, body, p)
        if admitted is True or admitted is False:
            return admitted
        adm, body = admitted
        return await self.serve_admitted(Forwarding(conn, head, body, adm))

    async def serve_held(
        self, conn: ClientConnection, head: framing.Head, body: RequestBody, held: Held
    ) -> bool:
        """An allowed request whose quota answers later (a pacing quota holds it up to its
        ``max_delay``): settled, then forwarded. A client that leaves while held cancels
        this task, and the gate's wait with it."""
        adm = held.adm
        try:
            answer = await held.answer
        except asyncio.CancelledError:
            adm.span.end(error="client_closed")
            raise
        except BaseException as exc:
            adm.span.end(error=type(exc).__name__)
            raise
        if not self.admission.settle(conn, body, adm, answer):
            return head.keep_alive and body.complete
        return await self.serve_admitted(Forwarding(conn, head, body, adm))

    async def serve_admitted(
        self,
        fw: Forwarding,
        first: FirstAttempt | None = None,
        *,
        durable: Awaitable[None] | None = None,
    ) -> bool:
        """Forward an admitted request (the task path), relay and audit it."""
        conn, head, body, adm = fw
        rs = adm.rs
        try:
            if first is None:  # (a hand-over from the fast path was durable before it started)
                wait = durable or self.trail.durable()
                if wait is not None and not await self.trail.until_durable(wait, adm):
                    answer = {"error": "audit_unavailable"}
                    conn.write(refusal(rs, 503, answer, close=True, head_only=adm.head_only))
                    adm.span.end(status=503, error="audit_unavailable")
                    return False
            if head.expect_continue and not body.complete:
                conn.write(responses.CONTINUE)
                conn.bytes_out = 0
            try:
                out = await self.forwarder.forward(fw, first)
            except asyncio.CancelledError:
                self.forwarder.record_client_lost(fw)
                raise
            self.forwarder.record(fw, out)
            return head.keep_alive and out.keep
        finally:
            adm.quota.release()  # (already given back when recorded: this covers the rest)


__all__ = ["Admitted", "Pending", "Proxy", "ResourceState", "upstream_reading"]
