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

:class:`SessionState` is what both halves of a session (this one and :mod:`.answers`)
share: the connection's keyspace, the requests in flight and how to write to the client.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Any

from lockgate import _log
from lockgate.errors import AuditUnavailable, AuthenticationError
from lockgate.gateway.engine import identity_fields

from . import codec
from .context import EngineContext
from .handshake import Authenticated
from .holds import UseHold
from .statements import Plan, plan_for
from .views import with_view_bases

log = _log.get("gateway.cql")

_RANK = {"use": 0, "read": 1, "write": 2, "admin": 3}


@dataclass(slots=True)
class Pending:
    """A request forwarded upstream and not answered yet."""

    t0: float
    plan: Plan | None
    audited: bool
    action: str | None = None
    obj: str | None = None
    ref: str | None = None  # the written-ahead "admitted" record, named in the outcome


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
        detail: dict[str, Any] = {"statement": plan.audit_text, "op": plan.op}
        if plan.keyspace:
            # "_name": a bare "keyspace" key would be taken for a secret and redacted.
            detail["keyspace_name"] = plan.keyspace
        return detail

    # Each half calls into the other; ClientSession has both.
    def _on_request(self, event: codec.Event) -> None:
        raise NotImplementedError

    def _refuse_held(self, frames: list[codec.Event], reason: str) -> None:
        raise NotImplementedError

    def _flush_upstream(self) -> None:
        raise NotImplementedError


class RequestJudging(SessionState):
    """Client → upstream: judge, refuse or forward each request."""

    _to_upstream: list[bytes]  # forwarded requests not yet written (coalesced)

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
        plan = plan_for(event, auth.resource.name, self.keyspace, self.ctx.prepared)
        if plan is None:
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
        bases = self.ctx.views.bases(auth.resource.name)
        if bases:  # a view's rows are its base table's: reading one reads both
            plan.targets = with_view_bases(plan.targets, bases)
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
        claims = auth.claims
        checked = plan.checked
        # USE and driver metadata reads are every principal's (a built-in rule), audited all
        # the same; only an explicit deny rule withdraws them (a deny beats any allow).
        builtin = not checked
        ttl = _token_ttl(claims)
        policy = self.ctx.policy.current
        for target in plan.targets if builtin else checked:
            decision = policy.decide(
                self.ctx.make_request(
                    principal=claims.sub,
                    action=target.action,
                    resource=auth.resource.name,
                    object=target.object,
                    token_ttl=ttl,
                )
            )
            if not decision.allowed and (not builtin or decision.rule is not None):
                self._deny(event, plan, target.action, target.object, decision, t0)
                return
        if builtin:
            rule, reason = plan.builtin_rule, None
        else:
            rule, reason = decision.rule, decision.reason
        targets = plan.targets
        action = max((t.action for t in targets), key=lambda a: _RANK.get(a, 3))
        obj = ",".join(dict.fromkeys(t.object for t in targets))
        # Durable before a byte goes upstream: the outcome record follows in _finish.
        admitted = self.ctx.make_record(
            event="admitted", **identity_fields(claims), resource=auth.resource.name,
            action=action, object=obj, decision="allow", rule=rule, reason=reason,
            detail=self._detail(plan),
        )  # fmt: skip
        try:
            ref = self.ctx.audit.write_ahead(admitted)
        except AuditUnavailable as exc:
            self._answer(
                event,
                codec.ERR_OVERLOADED,
                "Lockgate audit unavailable: statement not run; retry later",
            )
            log.error("cql statement refused: audit unavailable", extra={"fields": self._fields()})
            # Queued, not written ahead: it lands once the audit recovers (nothing was sent).
            self.ctx.record(
                "upstream_error", claims, auth.resource.name, t0, action=action, obj=obj,
                status=codec.ERR_OVERLOADED, decision="error", rule=rule,
                reason="audit_unavailable",
                detail={**self._detail(plan), "error": str(exc)[:200]},
            )  # fmt: skip
            return
        self.ctx.count(auth.resource.name, action, "allow")
        self._forward(event, Pending(t0, plan, True, action, obj, ref))

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
        self.ctx.count(auth.resource.name, action, "deny")
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

    def _forward(self, event: codec.Event, pending: Pending) -> None:
        self.pending[event.stream] = pending
        self._to_upstream.append(event.raw)
        if pending.plan is not None and pending.plan.changes_keyspace:
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


def _token_ttl(claims: Any) -> float | None:
    iat = getattr(claims, "iat", None)
    return float(claims.exp) - float(iat) if iat is not None else None
