"""Client → upstream: how the CQL engine judges each request of one connection.

Strategy: a statement-bearing request (QUERY, PREPARE, EXECUTE, BATCH) gets a
:class:`~.statements.Plan`; the connection's token is verified again (expiry, revocation,
in memory); every target that needs one is decided by policy, and the request is either
answered by the gateway (Unauthorized, Unprepared, Invalid, audit unavailable) or forwarded
as its exact bytes once its ``admitted`` record is written ahead. USE and driver metadata
reads need no policy allow: they are admitted under a built-in rule (``builtin:use``,
``builtin:driver-metadata``) unless a policy rule denies them explicitly, and audited like
the rest. OPTIONS (driver heartbeats) and REGISTER are forwarded. While a USE is in
flight, later frames wait in :class:`~.holds.UseHold` and are judged once its answer names
the keyspace.

Fast path: what a prepared statement asks of policy and puts in its records (targets with
view bases, policy requests, action, object, detail) is worked out once per connection and
prepared id (:class:`Judged`) and reused while the registry entry, the view catalog and the
verified claims it was built from stand (texts longer than ``CACHE_TEXT_MAX`` are judged
anew each time: only the registry may keep them). The token check, the policy decision and
the written-ahead record still happen for every EXECUTE, so a revocation, a policy reload or
a time window applies to the very next statement.

:class:`SessionState` is what both halves of a session (this one and :mod:`.answers`)
share: the connection's keyspace, the requests in flight and how to write to the client.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Any

from lockgate import _log, tracing
from lockgate.errors import AuditUnavailable, AuthenticationError
from lockgate.gateway.engine import policy_request
from lockgate.quotas import NO_QUOTAS, QuotaTicket, Throttled
from lockgate.quotas.engines import (
    Outstanding,
    admit_each,
    release_all,
)

from . import codec
from .classify import Target
from .context import EngineContext
from .handshake import Authenticated
from .holds import UseHold
from .pacing import StatementQuotas
from .statements import CACHE_TEXT_MAX, Plan, PreparedEntry, execute_plan, plan_for
from .views import with_view_bases

log = _log.get("gateway.cql")

_RANK = {"use": 0, "read": 1, "write": 2, "admin": 3}


#: Prepared statements one session keeps judged (:class:`Judged`); past it they start over.
#: Only texts up to ``CACHE_TEXT_MAX`` are kept, so one session pins at most 4 MiB of them.
MAX_JUDGED_PER_SESSION = 1024


@dataclass(slots=True)
class Pending(Outstanding):
    """A request forwarded upstream and not answered yet (its tickets and span: see
    :class:`~lockgate.quotas.engines.Outstanding`)."""

    t0: float
    plan: Plan | None
    audited: bool
    action: str | None = None
    obj: str | None = None
    ref: str | None = None  # the written-ahead "admitted" record, named in the outcome
    detail: dict[str, Any] | None = None  # the plan's audit detail (statement, op, keyspace)


@dataclass(slots=True)
class Judged:
    """What a plan asks of policy and puts in its records, worked out once.

    For an EXECUTE it is kept per session and prepared id while the registry entry and the
    view catalog it was built from stand (:meth:`RequestJudging._plan`); the policy requests
    are rebuilt when the verified claims change. Policy itself is asked for every statement
    (its own cache makes that cheap), so a reload, a deny or a time window applies at once.
    """

    plan: Plan
    to_decide: list[Target]  # policy decides these (all targets of a built-in plan)
    builtin: bool  # USE / driver metadata: allowed unless a rule denies explicitly
    action: str  # the highest action of the targets, for the records and the counter
    obj: str  # the targets' objects, comma-joined
    detail: dict[str, Any]  # statement, op, keyspace: the records' detail
    changes_keyspace: bool  # later frames wait for its answer (:mod:`.holds`)
    claims: Any = None  # the claims the requests were built for
    requests: list[Any] | None = None

    @classmethod
    def of(cls, plan: Plan) -> Judged:
        checked = plan.checked
        # USE and driver metadata reads are every principal's (a built-in rule), audited all
        # the same; only an explicit deny rule withdraws them (a deny beats any allow).
        builtin = not checked
        targets = plan.targets
        return cls(
            plan,
            targets if builtin else checked,
            builtin,
            max((t.action for t in targets), key=lambda a: _RANK.get(a, 3)),
            ",".join(dict.fromkeys(t.object for t in targets)),
            plan_detail(plan),
            plan.changes_keyspace,
        )

    def requests_for(self, ctx: EngineContext, claims: Any, resource: str) -> list[Any]:
        """The policy requests of :attr:`to_decide` for ``claims`` (built once per claims)."""
        if self.requests is None or self.claims is not claims:
            make = ctx.make_request
            self.requests = [
                policy_request(make, claims, target.action, resource, target.object)
                for target in self.to_decide
            ]
            self.claims = claims
        return self.requests


class SessionState:
    """One client connection's state, shared by the request and the answer half."""

    ctx: EngineContext
    writer: asyncio.StreamWriter
    auth: Authenticated | None
    keyspace: str | None  # the keyspace the upstream uses for the next frame
    pending: dict[int, Pending]  # by stream id
    holds: UseHold
    local_address: str
    local_port: int

    def _write(self, data: bytes) -> None:
        if not self.writer.is_closing():
            self.writer.write(data)

    def _fields(self) -> dict[str, Any]:
        auth = self.auth
        return {
            "resource": auth.resource.name if auth else None,
            "principal": getattr(auth.claims, "sub", None) if auth else None,
        }

    def _detail(self, plan: Plan) -> dict[str, Any]:
        return plan_detail(plan)

    # Each half calls into the other; ClientSession has both.
    def _on_request(self, event: codec.Event) -> None:
        raise NotImplementedError

    def _refuse_held(self, frames: list[codec.Event], reason: str) -> None:
        raise NotImplementedError

    def _flush_upstream(self) -> None:
        raise NotImplementedError


class RequestJudging(SessionState, StatementQuotas):
    """Client → upstream: judge, refuse or forward each request."""

    _to_upstream: list[bytes]  # forwarded requests not yet written (coalesced)
    #: prepared id → (registry entry, view bases, judged plan) the judgement was made on
    _judged: dict[bytes, tuple[PreparedEntry, dict[str, str], Judged]]

    def _on_request(self, event: codec.Event) -> None:
        auth = self.auth
        assert auth is not None
        if self.holds.must_wait(event):
            self.holds.hold(event)  # judged when the USE in flight is answered
            return
        t0 = self.ctx.clock()
        if event.stream < 0:
            # Negative ids are the server's (EVENTs): an answer on one could not be told
            # apart from an event, so its outcome, rewrite or keyspace would be lost.
            self._refuse_request(
                event,
                None,
                t0,
                codec.ERR_PROTOCOL,
                f"stream id {event.stream} is negative; negative stream ids are the server's",
                "negative_stream",
            )
            return
        if event.stream in self.pending:
            self._refuse_request(
                event,
                None,
                t0,
                codec.ERR_PROTOCOL,
                f"stream id {event.stream} is already in use by a request in flight",
                "stream_in_use",
            )
            return
        if isinstance(event, codec.Options | codec.Register):
            self._forward(event, Pending(t0, None, False))
            return
        judged = self._plan(event)
        if judged is None:
            # STARTUP or AUTH_RESPONSE again: the connection's identity cannot change.
            self._refuse_request(
                event,
                None,
                t0,
                codec.ERR_PROTOCOL,
                f"unexpected {type(event).__name__}",
                "unexpected_request",
            )
            return
        plan = judged if isinstance(judged, Plan) else judged.plan
        if not self._token_valid(event, plan, t0):
            return
        if plan.ambiguous is not None:
            self._refuse_request(
                event,
                plan,
                t0,
                codec.ERR_INVALID,
                f"Lockgate refuses prepared id {plan.ambiguous.hex()}: it was prepared for "
                "more than one statement; prepare the statement again under a fresh text",
                "prepared_ambiguous",
            )
            return
        if plan.unprepared is not None:
            self._write(
                codec.encode_frame(
                    codec.Error(
                        stream=event.stream,
                        code=codec.ERR_UNPREPARED,
                        unprepared_id=plan.unprepared,
                        message="prepared statement unknown to Lockgate; prepare it again",
                    )
                )
            )
            return
        if isinstance(judged, Plan):
            judged = Judged.of(plan)
        self._admit(event, judged, t0)

    def _plan(self, event: codec.Event) -> Plan | Judged | None:
        """The request's plan, with view bases among its targets; None for a request that
        bears no statement. An EXECUTE of a statement this session judged before gets that
        judgement back while its registry entry and the view catalog are the same."""
        auth = self.auth
        assert auth is not None
        name = auth.resource.name
        bases = self.ctx.views.bases(name)
        entry: PreparedEntry | None = None
        if isinstance(event, codec.Execute):
            entry = self.ctx.prepared.lookup(name, event.query_id)
            known = self._judged.get(event.query_id)
            if known is not None and known[0] is entry and known[1] is bases:
                return known[2]
        if isinstance(event, codec.Execute):
            plan: Plan | None = execute_plan(entry, event.query_id, self.keyspace)
        else:
            plan = plan_for(event, name, self.keyspace, self.ctx.prepared)
        if plan is None:
            return None
        if bases:  # a view's rows are its base table's: reading one reads both
            plan.targets = with_view_bases(plan.targets, bases)
        if not isinstance(event, codec.Execute) or entry is None or not plan.targets:
            return plan  # unprepared and ambiguous ids have no targets: judged anew each time
        if len(entry.text) > CACHE_TEXT_MAX:
            # Kept here, a long text would outlive its eviction from the registry, whose
            # memory bound is what stops a session pinning a frame's worth of text per id.
            return plan
        judged = Judged.of(plan)
        if len(self._judged) >= MAX_JUDGED_PER_SESSION:
            self._judged.clear()
        self._judged[event.query_id] = (entry, bases, judged)
        return judged

    def _admit(self, event: codec.Event, judged: Judged, t0: float) -> None:
        """Decide every target, ask the quotas, write the admitted record ahead and forward;
        or refuse."""
        auth = self.auth
        assert auth is not None
        claims = auth.claims
        name = auth.resource.name
        builtin = judged.builtin
        span = self._span(judged) if tracing.enabled() else tracing.NO_SPAN
        policy = self.ctx.policy.current
        decision: Any = None
        for target, request in zip(
            judged.to_decide, judged.requests_for(self.ctx, claims, name), strict=True
        ):
            decision = policy.decide(request)
            if not decision.allowed and (not builtin or decision.rule is not None):
                span.decided(target.action, target.object, "deny", decision.rule, "denied")
                self._deny(event, judged.plan, target.action, target.object, decision, t0)
                span.end(status=codec.ERR_UNAUTHORIZED)
                return
        if builtin:
            rule, reason = judged.plan.builtin_rule, None
        else:
            rule, reason = decision.rule, decision.reason
        span.decided(judged.action, judged.obj, "allow", rule, reason)
        # USE and driver metadata reads are the driver's own machinery, and a PREPARE runs
        # nothing (its EXECUTEs ask): no quota spends them.
        if builtin or judged.plan.op == "prepare" or self.ctx.quotas is NO_QUOTAS:
            self._write_ahead(event, judged, t0, rule, reason, [], span)
            return
        targets = ((t.action, t.object) for t in judged.to_decide)
        answer = admit_each(self.ctx.quotas, claims, name, targets)
        if isinstance(answer, list):
            self._write_ahead(event, judged, t0, rule, reason, answer, span)
        elif isinstance(answer, Throttled):
            self._throttled(event, judged, t0, rule, answer, span)
        else:
            self._pace(event, judged, t0, rule, reason, answer, span)

    def _write_ahead(
        self,
        event: codec.Event,
        judged: Judged,
        t0: float,
        rule: str | None,
        reason: str | None,
        tickets: list[QuotaTicket],
        span: tracing.RequestSpan,
    ) -> None:
        """Write the admitted record ahead and forward (or refuse: audit unavailable)."""
        auth = self.auth
        assert auth is not None
        claims = auth.claims
        name = auth.resource.name
        action, obj = judged.action, judged.obj
        # Durable before a byte goes upstream: the outcome record follows in _finish.
        admitted = self.ctx.records.admitted(
            claims, name, action, obj, rule, reason, dict(judged.detail)
        )
        try:
            ref = self.ctx.audit.write_ahead(admitted)
        except AuditUnavailable as exc:
            release_all(tickets)
            self._answer(
                event,
                codec.ERR_OVERLOADED,
                "Lockgate audit unavailable: statement not run; retry later",
            )
            log.error("cql statement refused: audit unavailable", extra={"fields": self._fields()})
            # Queued, not written ahead: it lands once the audit recovers (nothing was sent).
            self.ctx.record(
                "upstream_error", claims, name, t0, action=action, obj=obj,
                status=codec.ERR_OVERLOADED, decision="error", rule=rule,
                reason="audit_unavailable", detail={**judged.detail, "error": str(exc)[:200]},
            )  # fmt: skip
            span.end(status=codec.ERR_OVERLOADED, error="audit_unavailable")
            return
        self.ctx.count(name, action, "allow", claims.dag_id)
        pending = Pending(
            t0, judged.plan, True, action, obj, ref, judged.detail, tickets=tickets, span=span
        )
        pending.forwarded()
        self._forward(event, pending, changes_keyspace=judged.changes_keyspace)

    def _token_valid(self, event: codec.Event, plan: Plan, t0: float) -> bool:
        """Re-check the connection's token (expiry, revocation) for every statement.

        The verifier keeps verified tokens and revocations in memory, so this costs a few
        dictionary lookups; a statement sent once the revocation store knows is refused.
        """
        auth = self.auth
        assert auth is not None
        try:
            auth.claims = self.ctx.verifier.verify(auth.token, auth.resource.name)
        except AuthenticationError as exc:
            reason = str(getattr(exc, "reason", "invalid"))
            self._answer(
                event,
                codec.ERR_UNAUTHORIZED,
                f"Lockgate token no longer valid ({reason}); reconnect with a fresh token",
            )
            self.ctx.record(
                "auth_failed",
                auth.claims,
                auth.resource.name,
                t0,
                reason=reason,
                decision="deny",
                status=codec.ERR_UNAUTHORIZED,
                detail={"statement": plan.audit_text},
            )
            return False
        return True

    def _deny(
        self, event: codec.Event, plan: Plan, action: str, obj: str, decision: Any, t0: float
    ) -> None:
        auth = self.auth
        assert auth is not None
        reason = decision.explain()
        self.ctx.count(auth.resource.name, action, "deny", auth.claims.dag_id)
        self._answer(
            event,
            codec.ERR_UNAUTHORIZED,
            f"Lockgate denied {action} on {obj} in {auth.resource.name} for "
            f"{auth.claims.sub}: {reason}",
        )
        self.ctx.record(
            "denied",
            auth.claims,
            auth.resource.name,
            t0,
            action=action,
            obj=obj,
            status=codec.ERR_UNAUTHORIZED,
            decision="deny",
            rule=decision.rule,
            reason=reason,
            detail=self._detail(plan),
        )

    def _refuse_request(
        self,
        event: codec.Event,
        plan: Plan | None,
        t0: float,
        code: int,
        message: str,
        reason: str,
    ) -> None:
        """Answer ``event`` with an error the gateway decided (not policy) and audit it."""
        auth = self.auth
        assert auth is not None
        self._answer(event, code, message)
        self.ctx.record(
            "denied",
            auth.claims,
            auth.resource.name,
            t0,
            status=code,
            decision="deny",
            reason=reason,
            detail=self._detail(plan) if plan is not None else None,
        )

    def _answer(self, event: codec.Event, code: int, message: str) -> None:
        self._write(
            codec.encode_frame(codec.Error(stream=event.stream, code=code, message=message))
        )

    def _forward(
        self, event: codec.Event, pending: Pending, *, changes_keyspace: bool = False
    ) -> None:
        self.pending[event.stream] = pending
        self._to_upstream.append(event.raw)
        if changes_keyspace:
            self.holds.started(event.stream)

    def _use_unanswered(self, frames: list[codec.Event]) -> None:
        """The upstream did not answer a USE in time: refuse what waited and close."""
        log.warning(
            "cql USE not answered in time; closing the connection",
            extra={"fields": {**self._fields(), "held": len(frames)}},
        )
        self._refuse_held(frames, "use_unanswered")
        if self.auth is not None:
            self.auth.link.close()  # the upstream pump sees the end and the session closes

    def _refuse_held(self, frames: list[codec.Event], reason: str) -> None:
        auth = self.auth
        assert auth is not None
        for event in frames:
            plan = plan_for(event, auth.resource.name, None, self.ctx.prepared)
            self._refuse_request(
                event,
                plan,
                self.ctx.clock(),
                codec.ERR_SERVER,
                "Lockgate did not run this statement: the cluster did not confirm the keyspace "
                "of the USE before it; reconnect and retry",
                reason,
            )


def plan_detail(plan: Plan) -> dict[str, Any]:
    """The detail of a plan's records: its audit text, op and keyspace."""
    detail: dict[str, Any] = {"statement": plan.audit_text, "op": plan.op}
    if plan.keyspace:
        # "_name": a bare "keyspace" key would be taken for a secret and redacted.
        detail["keyspace_name"] = plan.keyspace
    return detail
