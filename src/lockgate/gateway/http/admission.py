"""Admission: normalise → authenticate → classify → decide → write the record ahead.

Order matters for safety: the path is normalised before anything reads it; refusals (400,
401, 403, 404, 413) never touch the upstream, are audited, and are answered even when audit
is unhealthy; an allowed request then asks its quotas (a throttled one is answered 429 and
audited ``throttled``: :mod:`.throttle`), and is admitted only once its ``admitted`` record
is written ahead (else 503 ``audit_unavailable``, fail closed). A profiled resource's
request is authenticated here and classified by its profile
(:meth:`Admission.admit_profiled`). A quota that paces (its answer is awaitable) turns a
request into a :class:`Held` one, served on a task.
"""

from __future__ import annotations

import inspect
from collections.abc import Awaitable, Callable, Mapping
from typing import TYPE_CHECKING, Any, NamedTuple

from lockgate import metrics
from lockgate.errors import (
    AuthenticationError,
    CredentialError,
    UpstreamUnavailable,
)
from lockgate.gateway.engine import (
    Decision,
    PolicySource,
    RequestFactory,
    SecretCache,
    TokenVerifier,
    policy_request,
)
from lockgate.gateway.http import framing, responses
from lockgate.gateway.http.bearer import token_of
from lockgate.gateway.http.bodies import buffered_body, read_whole
from lockgate.gateway.http.forwarded import forwarding_block
from lockgate.gateway.http.normalize import PathError, Target, split_mounted, split_target
from lockgate.gateway.http.profiles.hooks import Profile, ProfileRequest, UpstreamHeaders, Verdict
from lockgate.gateway.http.resources import ResourceState, upstream_reading
from lockgate.gateway.http.server import ClientConnection, RequestBody
from lockgate.gateway.http.throttle import Quota, ask, ask_run, request_span, throttled
from lockgate.gateway.http.trail import Trail
from lockgate.gateway.refusals import request_line
from lockgate.quotas import NO_QUOTAS, NO_TICKET, QuotaGate, Throttled
from lockgate.quotas import Admission as QuotaAnswer
from lockgate.tracing import RequestSpan

if TYPE_CHECKING:
    from lockgate.identity import Claims


# Methods whose answer is the request as the upstream received it: with the credential and
# identity assertion the gateway added. Never forwarded, whatever a grant says.
ECHO_METHODS = frozenset({"TRACE", "TRACK"})


class Admitted:
    """A request that passed normalise → authenticate → classify → decide → quota →
    write-ahead; it holds its quota slots (``quota``) and its span until it ends."""

    __slots__ = (
        "action", "claims", "forwarded", "head_only", "method", "obj", "quota", "reason",
        "ref", "rs", "rule", "span", "t0", "target", "verdict",
    )  # fmt: skip

    def __init__(
        self,
        rs: ResourceState,
        target: Target,
        claims: Claims,
        method: str,
        head_only: bool,
        action: str,
        obj: str,
        rule: str | None,
        reason: str,
        t0: float,
        span: RequestSpan,
    ) -> None:
        self.rs = rs
        self.target = target
        self.claims = claims
        self.method = method
        self.head_only = head_only
        self.action = action
        self.obj = obj
        self.rule = rule
        self.reason = reason
        self.t0 = t0
        self.verdict: Verdict | None = None  # a profile's verdict, for its response hooks
        self.ref: str | None = None  # its written-ahead "admitted" record, named in the outcome
        self.forwarded = b""  # the gateway's forwarding headers (:mod:`.forwarded`)
        self.quota = Quota()  # its quota slots, given back when it ends (:meth:`Quota.release`)
        self.span = span  # its tracing span (the no-op span when tracing is off)

    @property
    def resource(self) -> str:
        return self.rs.name


class Pending(NamedTuple):
    """Authenticated, for a profiled resource: the profile classifies it (maybe async)."""

    rs: ResourceState
    profile: Profile
    target: Target
    claims: Claims
    method: str
    head_only: bool
    t0: float
    span: RequestSpan


class Held(NamedTuple):
    """Allowed, waiting for its quota's answer (a pacing or shared gate): settle it with
    :meth:`Admission.settle` once ``answer`` is awaited."""

    adm: Admitted
    answer: Awaitable[QuotaAnswer]


def refusal(
    rs: ResourceState, status: int, body: dict[str, Any], close: bool, head_only: bool = False
) -> bytes:
    """The gateway's own answer, in the upstream's error shape when its profile has one."""
    shape = rs.profile.error_body if rs.profile is not None else None
    return responses.json_response(status, body, close=close, head_only=head_only, shape=shape)


class Admission:
    """The deciding half of the proxy (see the module docstring)."""

    def __init__(
        self,
        *,
        verifier: TokenVerifier,
        policy: PolicySource,
        secrets: SecretCache,
        make_request: RequestFactory,
        trail: Trail,
        clock: Callable[[], float],
        quotas: QuotaGate = NO_QUOTAS,
    ) -> None:
        self.resources: Mapping[str, ResourceState] = {}
        self.quotas = quotas
        self._verifier = verifier
        self._policy = policy
        self._secrets = secrets
        self._make_request = make_request
        self._trail = trail
        self._clock = clock

    # -- the synchronous part (every request) ----------------------------------------------
    def admit(
        self, conn: ClientConnection, head: framing.Head, body: RequestBody
    ) -> Admitted | Pending | Held | bool:
        """Normalise, authenticate, classify, decide, ask quotas, write ahead; answer
        refusals.

        Returns the admitted request, a :class:`Pending` one for a profiled resource, a
        :class:`Held` one waiting for its quota, or ``keep`` after writing a refusal.
        """
        t0 = self._clock()
        method = head.method.decode("ascii")
        head_only = method == "HEAD"
        keep = head.keep_alive
        refusals = self._trail.refusals
        if method.upper() in ECHO_METHODS:
            refusals.refuse(
                peer=conn.peer, status=405, reason="method_not_allowed", t0=t0,
                description=f"{method} echoes the request, credentials included",
                request=_request_line(head),
            )  # fmt: skip
            conn.write(responses.error(405, "method_not_allowed", method=method, close=True))
            return False
        mount = conn.mount  # a resource's own listener
        try:
            target = (
                split_target(head.target) if mount is None else split_mounted(head.target, mount)
            )
        except PathError as exc:
            refusals.refuse(
                peer=conn.peer, status=400, reason=exc.slug, t0=t0, description=str(exc),
                request=_request_line(head),
            )  # fmt: skip
            conn.write(responses.bad_request(str(exc)))
            return False
        rs = self.resources.get(target.resource)
        if rs is not None and conn.own_listen is not None and rs.resource.listen != conn.own_listen:
            rs = None  # its own port was taken away or moved by a reload
        if rs is None:
            refusals.refuse(
                peer=conn.peer, status=404, reason="unknown_resource", t0=t0,
                description=f"no resource named {target.resource}", request=_request_line(head),
            )  # fmt: skip
            conn.write(
                responses.error(
                    404, "unknown_resource", resource=target.resource,
                    close=not body.complete, head_only=head_only,
                )
            )  # fmt: skip
            return keep
        profile = rs.profile
        if profile is None:
            token, why = token_of(head)
            shown = target.path
        else:
            if body.complete:
                local = profile.local_answer(method, target.path)
                if local is not None:
                    conn.write(local)
                    return keep
            token, why, target, shown = profile.authenticate(target, head)
        claims: Claims | None = None
        try:
            if token is None:
                raise AuthenticationError(why)
            # The verifier checks the audience (and caches the verified token).
            claims = self._verifier.verify(token, rs.name)
            if profile is not None:
                profile.verify_request(claims, method, target, head)
        except AuthenticationError as exc:
            if exc.claims is None:  # the token verified, a profile's request check did not
                exc.claims = claims
            reason = self.auth_refused(conn, exc, rs.name, shown, t0)
            conn.write(
                responses.unauthorized(
                    reason, close=not body.complete, head_only=head_only,
                    shape=profile.error_body if profile is not None else None,
                )
            )  # fmt: skip
            return keep
        span = request_span(rs, claims, method, target.path)
        if profile is not None:
            return Pending(rs, profile, target, claims, method, head_only, t0, span)
        action, obj = rs.classifier.classify(method, target.path)
        decision = self.decide(claims, rs, action, obj)
        also: tuple[str, ...] = ()  # the object as a lenient upstream reads it, for quotas
        if decision.allowed:
            folded = upstream_reading(target.path)
            if folded != target.path:
                decision, action, obj = self._judge_folded(
                    claims, rs, method, folded, decision, action, obj
                )
                folded_obj = rs.classifier.classify(method, folded)[1]
                also = (folded_obj,) if folded_obj != obj else ()
        span.decided(action, obj, "allow" if decision.allowed else "deny", decision.rule,
                     decision.reason)  # fmt: skip
        if not decision.allowed:
            self.forbid(
                conn, body, claims, rs, action, obj, t0, decision.rule, decision.reason,
                decision.explain(), head_only,
            )  # fmt: skip
            span.end(status=403)
            return keep
        adm = Admitted(
            rs, target, claims, method, head_only, action, obj, decision.rule, decision.reason,
            t0, span,
        )  # fmt: skip
        adm.forwarded = forwarding_block(conn, head.host)
        answer = ask(self.quotas, claims, rs.name, action, obj, also)  # /ITEMS/x too
        if answer is not NO_TICKET and inspect.isawaitable(answer):
            return Held(adm, answer)
        if not self.settle(conn, body, adm, answer):
            return keep
        return adm

    def settle(
        self, conn: ClientConnection, body: RequestBody, adm: Admitted, answer: QuotaAnswer
    ) -> bool:
        """Take the quota's answer: throttled (answered 429, audited) or a ticket kept on
        ``adm``; then write ahead. False when the request was answered here."""
        if isinstance(answer, Throttled):
            self.throttle(conn, body, adm, answer)
            return False
        adm.quota.ticket = answer
        if not self.write_ahead(conn, body, adm):
            adm.quota.release()
            adm.span.end(status=503, error="audit_unavailable")
            return False
        adm.rs.count(adm.action, "allow", adm.claims.dag_id)
        return True

    def throttle(
        self, conn: ClientConnection, body: RequestBody, adm: Admitted, over: Throttled
    ) -> None:
        """A request over a quota: 429 in the protocol's form, audited and counted."""
        conn.write(throttled(self._trail.records, adm, over, close=not body.complete))

    def decide(self, claims: Claims, rs: ResourceState, action: str, obj: str) -> Decision:
        return self._policy.current.decide(
            policy_request(self._make_request, claims, action, rs.name, obj)
        )

    def _judge_folded(
        self,
        claims: Claims,
        rs: ResourceState,
        method: str,
        folded: str,
        decision: Decision,
        action: str,
        obj: str,
    ) -> tuple[Decision, str, str]:
        """Judge an allowed path as a lenient upstream reads it as well
        (:func:`upstream_reading`): ``/ADMIN/x`` and ``/admin./x`` run what ``/admin/x``
        runs there. Refused (as that form) when it is denied by a rule, or when it maps to
        another action or object that policy does not allow; a form that merely matches no
        rule keeps the request allowed, so mixed-case allow rules keep working."""
        f_action, f_obj = rs.classifier.classify(method, folded)
        other = self.decide(claims, rs, f_action, f_obj)
        if other.allowed:
            return decision, action, obj
        if other.rule is not None or f_action != action or f_obj != upstream_reading(obj):
            return other, f_action, f_obj
        return decision, action, obj

    # -- refusals ------------------------------------------------------------------------
    def auth_refused(
        self, conn: ClientConnection, exc: AuthenticationError, resource: str, obj: str, t0: float
    ) -> str:
        """Count, log and audit a 401; returns its reason slug. The token's claims (jti,
        deployment, DAG) are recorded when its signature verified, else none are."""
        reason = str(exc.reason or "invalid")
        metrics.TOKEN_REJECTIONS.labels(reason).inc()
        self._trail.refusals.refuse(
            peer=conn.peer,
            status=401,
            reason=reason,
            event="auth_failed",
            claims=exc.claims,
            resource=resource,
            obj=obj,
            t0=t0,
        )
        return reason

    def forbid(
        self,
        conn: ClientConnection,
        body: RequestBody,
        claims: Claims,
        rs: ResourceState,
        action: str,
        obj: str,
        t0: float,
        rule: str | None,
        reason: str,
        explained: str,
        head_only: bool,
        detail: dict[str, Any] | None = None,
    ) -> None:
        """A 403 with principal/action/object/reason, counted and audited."""
        rs.count(action, "deny", claims.dag_id if claims is not None else None)
        self._trail.records.emit(
            "denied", claims, rs.name, t0, action=action, obj=obj, status=403, decision="deny",
            rule=rule, reason=reason, detail=detail,
        )  # fmt: skip
        answer = {
            "error": "forbidden",
            "principal": claims.sub,
            "action": action,
            "resource": rs.name,
            "object": obj,
            "reason": explained,
            "rule": rule,
        }
        if detail and "operation" in detail:  # a profile's name for it (Cosmos DB's SDK calls)
            answer["operation"] = detail["operation"]
        conn.write(refusal(rs, 403, answer, close=not body.complete, head_only=head_only))

    def write_ahead(self, conn: ClientConnection, body: RequestBody, adm: Admitted) -> bool:
        """Make the ``admitted`` record durable before anything is forwarded; False after
        answering 503 ``audit_unavailable`` (then nothing may be forwarded)."""
        detail = adm.verdict.detail if adm.verdict is not None else None
        if not self._trail.write_ahead(adm, detail):
            conn.write(
                refusal(adm.rs, 503, {"error": "audit_unavailable"}, not body.complete,
                        adm.head_only)
            )  # fmt: skip
            return False
        return True

    # -- profiled resources --------------------------------------------------------------
    async def admit_profiled(
        self, conn: ClientConnection, head: framing.Head, body: RequestBody, p: Pending
    ) -> tuple[Admitted, RequestBody] | bool:
        """Classify with the profile (body read first when it asks), decide, write ahead.
        Returns the admitted request and its (maybe now buffered) body, or ``keep``."""
        rs, profile, claims = p.rs, p.profile, p.claims
        data = b""
        if profile.wants_body(p.method, p.target.path):
            streamed = not body.complete  # (read_whole completes it: decide before reading)
            whole = await read_whole(body, profile.max_body) if streamed else b""
            if whole is None or body.total > profile.max_body:
                self._trail.refusals.refuse(
                    peer=conn.peer, status=413, reason="body_too_large", claims=claims,
                    resource=rs.name, obj=p.target.path, t0=p.t0,
                    description=f"body over {profile.max_body} bytes",
                )  # fmt: skip
                close = whole is None
                answer = {"error": "body_too_large", "limit": profile.max_body}
                conn.write(refusal(rs, 413, answer, close=close, head_only=p.head_only))
                return not close and head.keep_alive
            if streamed and whole is not None:
                body = buffered_body(conn, whole)
            data = body.data() if body.total else b""
        req = ProfileRequest(
            p.method, p.target.path, p.target.query, data, claims, claims.sub,
            rs.classifier.classify(p.method, p.target.path), head,
        )  # fmt: skip
        verdict = await profile.authorize(
            req, lambda action, obj: self.decide(claims, rs, action, obj), self._headers_for(rs)
        )
        keep = head.keep_alive and body.complete
        p.span.decided(
            verdict.action, verdict.obj, "allow" if verdict.allowed else "deny", verdict.rule,
            verdict.reason,
        )  # fmt: skip
        if not verdict.allowed:
            p.span.end(status=verdict.status)
            if verdict.status != 403:
                rs.count(verdict.action, "deny", claims.dag_id)
                self._trail.records.emit(
                    "denied", claims, rs.name, p.t0, action=verdict.action, obj=verdict.obj,
                    status=verdict.status, decision="deny", rule=verdict.rule,
                    reason=verdict.reason, detail=verdict.detail or None,
                )  # fmt: skip
                answer = {"error": verdict.slug, "reason": verdict.reason}
                conn.write(
                    refusal(
                        rs, verdict.status, answer, close=not body.complete, head_only=p.head_only
                    )
                )
                return keep
            self.forbid(
                conn, body, claims, rs, verdict.action, verdict.obj, p.t0, verdict.rule,
                verdict.reason, verdict.reason, p.head_only, verdict.detail,
            )  # fmt: skip
            return keep
        adm = Admitted(
            rs, p.target, claims, p.method, p.head_only, verdict.action, verdict.obj,
            verdict.rule, verdict.reason, p.t0, p.span,
        )  # fmt: skip
        adm.verdict = verdict
        try:
            quota_answer = await self._quota_of(adm, verdict.starts_run)
        except BaseException:  # the client left while held: nothing may stay taken
            adm.quota.release()
            raise
        if not self.settle(conn, body, adm, quota_answer):
            return keep
        adm.forwarded = forwarding_block(conn, head.host)
        return adm, body

    async def _quota_of(self, adm: Admitted, starts_run: bool) -> QuotaAnswer:
        """The request's quota answer; a run start also asks the ``runs`` cap (its slot is
        kept on ``adm`` until the upstream names the run)."""
        gate, claims, resource = self.quotas, adm.claims, adm.rs.name
        v = adm.verdict
        also, cost = (v.quota_objects, v.cost) if v is not None else ((), 1)
        answer = ask(gate, claims, resource, adm.action, adm.obj, also, cost)
        if inspect.isawaitable(answer):
            answer = await answer
        if not starts_run or isinstance(answer, Throttled):
            return answer
        adm.quota.ticket = answer  # (given back below if the run cap throttles)
        run = ask_run(gate, claims, resource, adm.obj, also)
        if inspect.isawaitable(run):
            run = await run
        if isinstance(run, Throttled):
            adm.quota.release()
            return run
        adm.quota.run = run
        return answer

    def _headers_for(self, rs: ResourceState) -> UpstreamHeaders:
        async def headers() -> dict[str, str]:
            if rs.credential is None:
                return {}
            try:
                secret = await self._secrets.get(rs.credential)
            except CredentialError:
                secret = None
            if secret is None:
                raise UpstreamUnavailable("credential unavailable")
            auth = rs.resource.auth
            value = f"{auth.scheme} {secret.value}" if auth.scheme else str(secret.value)
            return {auth.header: value}

        return headers


def _request_line(head: framing.Head) -> bytes:
    """Method and target of a request for a refusal's record, without what may carry a
    secret (:func:`~lockgate.gateway.refusals.request_line`)."""
    return request_line(head.method + b" " + head.target)
