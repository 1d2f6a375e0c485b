"""The per-request pipeline: normalise → authenticate → classify → decide → forward → audit.

Order matters for safety: the path is normalised before anything reads it, refusals (400,
401, 403, 404) never touch the upstream and are answered even when audit is unhealthy, and
an allowed request is served only while ``audit.check_writable()`` passes (fail closed).

Forwarding (:meth:`Proxy._forward`) owns retries: 429/502/503/504 and connection failures
for idempotent, replayable requests (backoff with full jitter and server hints, within the
resource's deadline), a fresh-connection retry when a pooled connection turns out closed,
and one retry with the previous credential version when the upstream answers 401 during a
rotation. A body that was already streaming upstream is never replayed.
"""

from __future__ import annotations

import asyncio
import binascii
import re
import time
from base64 import b64decode
from collections.abc import Awaitable
from dataclasses import dataclass
from typing import Any, NamedTuple

from lockgate import _log, metrics
from lockgate.errors import (
    AuditUnavailable,
    AuthenticationError,
    CredentialError,
    UpstreamUnavailable,
)
from lockgate.gateway.engine import (
    AssertionCache,
    AuditSink,
    PolicySource,
    RecordFactory,
    RequestFactory,
    SecretCache,
    TokenVerifier,
    emit_safely,
    identity_fields,
)
from lockgate.gateway.http import framing, responses
from lockgate.gateway.http.classify import Classifier
from lockgate.gateway.http.exchange import Exchange, body_frame, response_head
from lockgate.gateway.http.forwarded import OVERRIDES, forwarding_block, header_key
from lockgate.gateway.http.normalize import PathError, Target, split_target
from lockgate.gateway.http.profiles import Profile, ProfileRequest, Verdict
from lockgate.gateway.http.profiles.databricks import CAPTURE_LIMIT
from lockgate.gateway.http.retry import IDEMPOTENT_METHODS, RETRY_STATUSES, Backoff, retry_after
from lockgate.gateway.http.server import ChunkedWriter, ClientConnection, RequestBody
from lockgate.gateway.http.upstream import UpstreamConnection, UpstreamPool, UpstreamTarget
from lockgate.gateway.refusals import RefusalRecorder, request_line

log = _log.get("gateway.http")

# Never forwarded upstream: hop-by-hop, framing (re-added), credentials, and headers some
# servers use to override the method or the path policy judged.
_DROP_REQUEST = frozenset(
    {
        b"connection",
        b"keep-alive",
        b"proxy-connection",
        b"proxy-authorization",
        b"te",
        b"trailer",
        b"transfer-encoding",
        b"upgrade",
        b"content-length",
        b"host",
        b"expect",
        b"authorization",
        # set by the gateway itself (:mod:`.forwarded`), never taken from the client
        b"forwarded",
        b"x-real-ip",
        *OVERRIDES,
    }
)
# Prefixes of headers never forwarded: the gateway's own, and X-Forwarded-* (set by it).
_DROP_PREFIXES = (b"x-lockgate-", b"x-forwarded-")


# Segment ends that Windows (IIS, App Service on Windows) drops when it maps a URL to a file.
_WINDOWS_TAIL = re.compile(r"(?:\.|%20)+(?=/|$)")


def upstream_reading(path: str) -> str:
    """``path`` as a lenient upstream may read it: lower-cased (ASP.NET Core, Express, IIS
    route without regard to case) and without trailing dots or spaces in a segment (IIS)."""
    folded = path.lower()
    if "." in folded or "%20" in folded:
        folded = _WINDOWS_TAIL.sub("", folded)
    return folded


def _safe(value: bytes) -> bool:
    return b"\r" not in value and b"\n" not in value and b"\x00" not in value


class ResourceState:
    """Everything about one resource that can be computed once, not per request."""

    def __init__(self, resource: Any, pool: UpstreamPool | None = None) -> None:
        self.resource = resource
        self.name: str = resource.name
        self.target = UpstreamTarget.from_resource(resource)
        self.pool = pool or UpstreamPool(self.target)
        self.classifier = Classifier(resource.routes)
        self.backoff = Backoff(resource.retry)
        self.credential: str | None = resource.credential
        auth_name = resource.auth.header.encode("latin-1")
        self._auth_prefix = (
            auth_name
            + b": "
            + (resource.auth.scheme.encode("latin-1") + b" " if resource.auth.scheme else b"")
        )
        ident = resource.identity_header
        self.identity_prefix = ident.encode("latin-1") + b": " if ident else None
        drop = set(_DROP_REQUEST) | {auth_name.lower()}
        if ident:
            drop.add(ident.lower().encode("latin-1"))
        self.drop = frozenset(drop)
        self.host_line = b"Host: " + self.target.host_header + b"\r\n"
        self._auth_cache: tuple[Any, bytes] | None = None
        self._counters: dict[tuple[str, str], Any] = {}
        self.latency = metrics.UPSTREAM_LATENCY.labels(self.name)
        self.profile: Profile | None = None  # set by the engine for ``profile:`` resources

    def count(self, action: str, decision: str) -> None:
        """``lockgate_requests_total`` += 1; labelled children are cached (labels() is slow)."""
        child = self._counters.get((action, decision))
        if child is None:
            child = self._counters[(action, decision)] = metrics.REQUESTS.labels(
                self.name, action, decision
            )
        child.inc()

    def auth_line(self, secret: Any) -> bytes:
        cached = self._auth_cache
        if cached is not None and cached[0] is secret:
            return cached[1]
        try:
            value = str(secret.value).encode("latin-1")
        except UnicodeEncodeError:  # the error's text names characters of the value: dropped
            value = None
        if value is None or not _safe(value):
            raise UpstreamUnavailable("credential value is not header-safe")
        line = self._auth_prefix + value + b"\r\n"
        self._auth_cache = (secret, line)
        return line

    def forwarded_headers(self, head: framing.Head) -> bytes:
        drop = self.drop
        named = head.connection  # headers the client listed in Connection are hop-by-hop
        out: list[bytes] = []
        for name, value in head.headers:
            low = header_key(name)
            if (
                low in drop
                or low.startswith(_DROP_PREFIXES)
                or (named and (low in named or name.lower() in named))
            ):
                continue
            out.append(b"%s: %s\r\n" % (name, value))
        return b"".join(out)


class Admitted:
    """A request that passed normalise → authenticate → classify → decide → audit check."""

    __slots__ = (
        "action", "claims", "decision", "forwarded", "head_only", "method", "obj", "ref", "rs",
        "t0", "target", "verdict",
    )  # fmt: skip

    def __init__(
        self,
        rs: ResourceState,
        target: Target,
        claims: Any,
        method: str,
        head_only: bool,
        action: str,
        obj: str,
        decision: Any,
        t0: float,
    ) -> None:
        self.rs = rs
        self.target = target
        self.claims = claims
        self.method = method
        self.head_only = head_only
        self.action = action
        self.obj = obj
        self.decision = decision
        self.t0 = t0
        self.verdict: Verdict | None = None  # a profile's verdict, for on_response
        self.ref: str | None = None  # its written-ahead "admitted" record, named in the outcome
        self.forwarded = b""  # the gateway's forwarding headers (:mod:`.forwarded`)


class Pending(NamedTuple):
    """Authenticated, for a profiled resource: the profile classifies it (maybe async)."""

    rs: ResourceState
    target: Target
    claims: Any
    method: str
    head_only: bool
    t0: float


def _request_line(head: framing.Head) -> bytes:
    """Method and target of a request for a refusal's record, without what may carry a
    secret (:func:`~lockgate.gateway.refusals.request_line`)."""
    return request_line(head.method + b" " + head.target)


def split_mounted(raw: bytes, resource: str) -> Target:
    """A request on a resource's own listener: the whole path is the object path."""
    if not raw.startswith(b"/"):
        raise PathError("only origin-form request targets are accepted", "bad_target_form")
    target = split_target(b"/" + resource.encode("ascii") + raw)
    if target.resource != resource:
        raise PathError("invalid request target", "bad_path")
    return target


#: The first attempt, already made by the fast path: (connection, its response head or the
#: error it ended with, the secret it carried).
FirstAttempt = tuple[UpstreamConnection, "framing.Head | Exception", Any]


class _Sent(NamedTuple):
    up: UpstreamConnection
    head_fut: asyncio.Future[framing.Head]
    secret: Any
    streaming: bool
    sent_at: float


@dataclass(slots=True)
class _Outcome:
    status: int
    keep: bool
    error: str | None = None  # upstream_error reason slug, when the gateway answered 5xx
    retries: int = 0
    captured: bytes | None = None  # the response body, when a profile asked to see it
    resp_headers: framing.Headers | None = None


def extract_token(headers: framing.Headers) -> tuple[str | None, str]:
    """Bearer token, or HTTP Basic whose password is the token; else (None, reason)."""
    found: bytes | None = None
    for name, value in headers:
        if name.lower() == b"authorization":
            if found is not None:
                return None, "malformed"
            found = value
    if found is None:
        return None, "missing"
    scheme, _, cred = found.partition(b" ")
    scheme = scheme.lower()
    cred = cred.strip()
    if scheme == b"bearer" and cred:
        return cred.decode("latin-1"), ""
    if scheme == b"basic" and cred:
        try:
            decoded = b64decode(cred, validate=True)
        except (binascii.Error, ValueError):
            return None, "malformed"
        _, sep, password = decoded.partition(b":")
        if sep and password:
            return password.decode("latin-1"), ""
    return None, "malformed"


class _Tee:
    """A response sink that also keeps the first ``limit`` body bytes (for a profile)."""

    __slots__ = ("_inner", "_limit", "_parts", "_size", "overflow")

    def __init__(self, inner: Any, limit: int) -> None:
        self._inner = inner
        self._limit = limit
        self._parts: list[bytes] = []
        self._size = 0
        self.overflow = False

    def _keep(self, piece: bytes) -> None:
        if self._size + len(piece) > self._limit:
            self.overflow = True
            return
        self._parts.append(piece)
        self._size += len(piece)

    def write(self, data: bytes) -> None:
        self._keep(data)
        self._inner.write(data)

    def write_first(self, head: bytes, pieces: list[bytes]) -> None:
        for piece in pieces:
            self._keep(piece)
        self._inner.write_first(head, pieces)

    def data(self) -> bytes:
        return b"" if self.overflow else b"".join(self._parts)


async def read_whole(body: RequestBody, limit: int) -> bytes | None:
    """The rest of a request body, or None (and the rest dropped) once it passes ``limit``."""
    loop = asyncio.get_running_loop()
    done: asyncio.Future[None] = loop.create_future()
    parts: list[bytes] = []
    size = 0

    def write(piece: bytes) -> None:
        nonlocal size
        size += len(piece)
        if size > limit:
            if not done.done():
                done.set_result(None)
            return
        parts.append(piece)

    def end() -> None:
        if not done.done():
            done.set_result(None)

    body.attach(write, end)
    await done
    if size > limit:
        body.discard()
        return None
    return b"".join(parts)


def buffered_body(conn: ClientConnection, data: bytes) -> RequestBody:
    """A complete in-memory body (what :func:`read_whole` collected), for forwarding."""
    out = RequestBody(conn)
    if data:
        out.chunks = [data]
    out.size = out.total = len(data)
    out.complete = True
    return out


class Proxy:
    def __init__(
        self,
        *,
        verifier: TokenVerifier,
        policy: PolicySource,
        secrets: SecretCache,
        assertions: AssertionCache,
        audit: AuditSink,
        make_request: RequestFactory,
        make_record: RecordFactory,
        clock: Any = time.monotonic,
    ) -> None:
        self.resources: dict[str, ResourceState] = {}
        self._verifier = verifier
        self._policy = policy
        self._secrets = secrets
        self._assertions = assertions
        self._audit = audit
        self._make_request = make_request
        self._make_record = make_record
        self._clock = self.clock = clock
        # Every refusal: counted, logged, audited; budgeted per peer before authentication.
        self.refusals = RefusalRecorder("http", self.emit, log, clock=clock)

    # -- the pipeline --------------------------------------------------------------------
    def serve(self, conn: ClientConnection, head: framing.Head, body: RequestBody) -> bool | None:
        """Entry for a request whose body is complete, called from ``data_received``.

        Refusals are answered here and then; an allowed request goes upstream on the fast
        path (:mod:`exchange`) when a warm pooled connection and a cached secret are at
        hand, else through :meth:`serve_admitted` in a task. Returns ``keep`` when answered,
        None when the answer is under way.
        """
        adm = self.admit(conn, head, body)
        if adm is True or adm is False:
            return adm
        if isinstance(adm, Pending):
            conn.run(self.serve_profiled(conn, head, body, adm))
            return None
        rs = adm.rs
        secret = None
        if rs.credential is not None:
            secret = self._secrets.peek(rs.credential)
        durable = self._audit.durable()  # None unless audit durability is fsync
        if (
            (secret is not None or rs.credential is None)
            and not head.expect_continue
            and durable is None
        ):
            up = rs.pool.take_idle()
            if up is not None:
                Exchange(self, conn, head, body, adm, up, secret).start()
                return None
        conn.run(self.serve_admitted(conn, head, body, adm, durable=durable))
        return None

    async def handle(self, conn: ClientConnection, head: framing.Head, body: RequestBody) -> bool:
        """Entry for a request whose body is still arriving (it will stream upstream)."""
        adm = self.admit(conn, head, body)
        if adm is True or adm is False:
            return adm
        if isinstance(adm, Pending):
            return await self.serve_profiled(conn, head, body, adm)
        return await self.serve_admitted(conn, head, body, adm)

    def admit(
        self, conn: ClientConnection, head: framing.Head, body: RequestBody
    ) -> Admitted | Pending | bool:
        """Normalise, authenticate, classify, decide, check audit; answer refusals.

        Returns the admitted request, a :class:`Pending` one for a profiled resource, or
        ``keep`` after writing a refusal.
        """
        t0 = self._clock()
        method = head.method.decode("ascii")
        head_only = method == "HEAD"
        keep = head.keep_alive
        mount = getattr(conn, "mount", None)
        try:
            target = (
                split_target(head.target) if mount is None else split_mounted(head.target, mount)
            )
        except PathError as exc:
            self.refusals.refuse(
                peer=conn.peer, status=400, reason=exc.slug, t0=t0, description=str(exc),
                request=_request_line(head),
            )  # fmt: skip
            conn.write(responses.bad_request(str(exc)))
            return False
        rs = self.resources.get(target.resource)
        if rs is None:
            self.refusals.refuse(
                peer=conn.peer, status=404, reason="unknown_resource", t0=t0,
                description=f"no resource named {target.resource}", request=_request_line(head),
            )  # fmt: skip
            conn.write(
                responses.error(
                    404,
                    "unknown_resource",
                    resource=target.resource,
                    close=not body.complete,
                    head_only=head_only,
                )
            )
            return keep
        profile = rs.profile
        if profile is not None and body.complete:
            local = profile.local_answer(method, target.path)
            if local is not None:
                conn.write(local)
                return keep
        if profile is not None and hasattr(profile, "serve"):
            # The profile authenticates, decides and forwards itself (Cosmos DB: the token
            # rides in the path and every request is re-signed upstream): claims None.
            return Pending(rs, target, None, method, head_only, t0)
        token, why = extract_token(head.headers)
        try:
            if token is None:
                raise AuthenticationError(why)
            claims = self._verifier.verify(token, rs.name)
            aud = claims.aud
            if aud != rs.name and not (isinstance(aud, list | tuple) and rs.name in aud):
                raise AuthenticationError("wrong_audience", claims=claims)
        except AuthenticationError as exc:
            reason = self.auth_refused(conn, exc, rs.name, target.path, t0)
            conn.write(responses.unauthorized(reason, close=not body.complete, head_only=head_only))
            return keep
        if profile is not None:
            return Pending(rs, target, claims, method, head_only, t0)
        action, obj = rs.classifier.classify(method, target.path)
        decision = self._decide(claims, rs, action, obj)
        if decision.allowed:
            folded = upstream_reading(target.path)
            if folded != target.path:
                decision, action, obj = self._judge_folded(
                    claims, rs, method, folded, decision, action, obj
                )
        if not decision.allowed:
            self._refuse(conn, body, claims, rs, action, obj, t0, decision.rule,
                         decision.reason, decision.explain(), head_only)  # fmt: skip
            return keep
        adm = Admitted(rs, target, claims, method, head_only, action, obj, decision, t0)
        adm.forwarded = forwarding_block(conn, head.host)
        if not self._write_ahead(conn, body, adm):  # checks the audit is writable, refuses
            return keep
        rs.count(action, "allow")
        return adm

    def _judge_folded(
        self,
        claims: Any,
        rs: ResourceState,
        method: str,
        folded: str,
        decision: Any,
        action: str,
        obj: str,
    ) -> tuple[Any, str, str]:
        """Judge an allowed path as a lenient upstream reads it as well
        (:func:`upstream_reading`): ``/ADMIN/x`` and ``/admin./x`` run what ``/admin/x``
        runs there. Refused (as that form) when it is denied by a rule, or when it maps to
        another action or object that policy does not allow; a form that merely matches no
        rule keeps the request allowed, so mixed-case allow rules keep working."""
        f_action, f_obj = rs.classifier.classify(method, folded)
        other = self._decide(claims, rs, f_action, f_obj)
        if other.allowed:
            return decision, action, obj
        if other.rule is not None or f_action != action or f_obj != upstream_reading(obj):
            return other, f_action, f_obj
        return decision, action, obj

    def auth_refused(
        self, conn: ClientConnection, exc: AuthenticationError, resource: str, obj: str, t0: float
    ) -> str:
        """Count, log and audit a 401; returns its reason slug. The token's claims (jti,
        deployment, DAG) are recorded when its signature verified, else none are."""
        reason = str(getattr(exc, "reason", "invalid"))
        metrics.TOKEN_REJECTIONS.labels(reason).inc()
        self.refusals.refuse(
            peer=conn.peer, status=401, reason=reason, event="auth_failed",
            claims=getattr(exc, "claims", None), resource=resource, obj=obj, t0=t0,
        )  # fmt: skip
        return reason

    def connection_refused(
        self, conn: ClientConnection, status: int, reason: str, description: str, line: bytes | None
    ) -> None:
        """A refusal the connection answered itself (framing 400, 408, 500): audited."""
        self.refusals.refuse(
            peer=conn.peer, status=status, reason=reason,
            decision="error" if status >= 500 else "deny", description=description,
            request=request_line(line) if line else None,
        )  # fmt: skip

    def _decide(self, claims: Any, rs: ResourceState, action: str, obj: str) -> Any:
        iat = getattr(claims, "iat", None)
        ttl = float(claims.exp) - float(iat) if iat is not None else None
        return self._policy.current.decide(
            self._make_request(
                principal=claims.sub, action=action, resource=rs.name, object=obj, token_ttl=ttl
            )
        )

    def _refuse(
        self,
        conn: ClientConnection,
        body: RequestBody,
        claims: Any,
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
        rs.count(action, "deny")
        self.emit(
            "denied", claims, rs.name, action, obj, t0, status=403, decision="deny", rule=rule,
            reason=reason, detail=detail,
        )  # fmt: skip
        shape = getattr(rs.profile, "error_body", None)
        if shape is not None:  # the upstream's error shape, so its SDK shows our reason
            refusal = {
                "error": "forbidden",
                "principal": claims.sub,
                "action": action,
                "resource": rs.name,
                "object": obj,
                "reason": explained,
                "rule": rule,
            }
            conn.write(
                responses.json_response(
                    403, shape(403, refusal), close=not body.complete, head_only=head_only
                )
            )
            return
        conn.write(
            responses.forbidden(
                principal=claims.sub,
                action=action,
                resource=rs.name,
                obj=obj,
                reason=explained,
                rule=rule,
                close=not body.complete,
                head_only=head_only,
            )
        )

    def write_ahead(
        self,
        conn: ClientConnection,
        body: RequestBody,
        head_only: bool,
        claims: Any,
        rs: ResourceState,
        action: str,
        obj: str,
        rule: str | None,
        reason: str | None,
        detail: dict[str, Any] | None = None,
    ) -> str | None:
        """Make the allowed request's ``admitted`` record durable before anything is
        forwarded; return its reference for the outcome record, or None after answering 503
        ``audit_unavailable`` (then nothing may be forwarded)."""
        record = self._make_record(
            event="admitted", **identity_fields(claims), resource=rs.name, action=action,
            object=obj, decision="allow", rule=rule, reason=reason, detail=detail or {},
        )  # fmt: skip
        try:
            return self._audit.write_ahead(record)
        except AuditUnavailable as exc:
            self.emit(
                "upstream_error", claims, rs.name, action, obj, self._clock(), status=503,
                decision="error", rule=rule, reason="audit_unavailable",
                detail={"error": str(exc)[:200]},
            )  # fmt: skip
            conn.write(
                responses.error(
                    503, "audit_unavailable", close=not body.complete, head_only=head_only
                )
            )
            return None

    async def until_durable(
        self,
        conn: ClientConnection,
        body: RequestBody,
        head_only: bool,
        wait: Awaitable[None],
        claims: Any,
        resource: str,
        action: str,
        obj: str,
        ref: str | None,
    ) -> bool:
        """Wait until the written-ahead record is on the device (``durability: fsync``);
        False after answering 503 ``audit_unavailable`` when it cannot be."""
        try:
            await wait
        except AuditUnavailable as exc:
            self.emit(
                "upstream_error", claims, resource, action, obj, self._clock(), status=503,
                decision="error", reason="audit_unavailable",
                detail={"ref": ref, "error": str(exc)[:200]},
            )  # fmt: skip
            conn.write(responses.error(503, "audit_unavailable", close=True, head_only=head_only))
            return False
        return True

    def _write_ahead(self, conn: ClientConnection, body: RequestBody, adm: Admitted) -> bool:
        detail = adm.verdict.detail if adm.verdict is not None else None
        adm.ref = self.write_ahead(
            conn, body, adm.head_only, adm.claims, adm.rs, adm.action, adm.obj,
            adm.decision.rule, adm.decision.reason, detail,
        )  # fmt: skip
        return adm.ref is not None

    def _audit_ok(
        self,
        conn: ClientConnection,
        body: RequestBody,
        head_only: bool,
        claims: Any = None,
        rs: ResourceState | None = None,
        action: str | None = None,
        obj: str | None = None,
        t0: float | None = None,
    ) -> bool:
        """Audit can take records (else 503 ``audit_unavailable``, decision error)."""
        try:
            self._audit.check_writable()
        except AuditUnavailable as exc:
            # Recorded anyway: the sink may take it once it recovers, and the log has it.
            self.refusals.refuse(
                peer=conn.peer, status=503, reason="audit_unavailable", decision="error",
                claims=claims, resource=rs.name if rs else None, action=action, obj=obj, t0=t0,
                description=str(exc),
            )  # fmt: skip
            conn.write(
                responses.error(
                    503, "audit_unavailable", close=not body.complete, head_only=head_only
                )
            )
            return False
        return True

    # -- profiled resources --------------------------------------------------------------
    async def serve_profiled(
        self, conn: ClientConnection, head: framing.Head, body: RequestBody, p: Pending
    ) -> bool:
        """Classify with the profile (body read first when it asks), decide, forward."""
        rs = p.rs
        profile = rs.profile
        assert profile is not None
        if p.claims is None:
            return bool(await profile.serve(self, conn, head, body, p))  # type: ignore[attr-defined]
        data = b""
        if profile.wants_body(p.method, p.target.path):
            streamed = not body.complete  # (read_whole completes it: decide before reading)
            whole = await read_whole(body, profile.max_body) if streamed else b""
            if whole is None or body.total > profile.max_body:
                self.refusals.refuse(
                    peer=conn.peer, status=413, reason="body_too_large", claims=p.claims,
                    resource=rs.name, obj=p.target.path, t0=p.t0,
                    description=f"body over {profile.max_body} bytes",
                )  # fmt: skip
                close = whole is None
                conn.write(
                    responses.error(413, "body_too_large", limit=profile.max_body, close=close)
                )
                return not close and head.keep_alive
            if streamed:
                body = buffered_body(conn, whole)
            data = body.data() if body.total else b""
        claims = p.claims
        req = ProfileRequest(
            p.method, p.target.path, p.target.query, data, claims, claims.sub,
            rs.classifier.classify(p.method, p.target.path),
        )  # fmt: skip
        verdict = await profile.authorize(
            req, lambda action, obj: self._decide(claims, rs, action, obj), self._headers_for(rs)
        )
        keep = head.keep_alive and body.complete
        if not verdict.allowed:
            if verdict.status != 403:
                self.emit(
                    "denied", claims, rs.name, verdict.action, verdict.obj, p.t0,
                    status=verdict.status, decision="deny", rule=verdict.rule,
                    reason=verdict.reason,
                )  # fmt: skip
                conn.write(
                    responses.error(
                        verdict.status,
                        verdict.slug,
                        reason=verdict.reason,
                        close=not body.complete,
                        head_only=p.head_only,
                    )
                )
                return keep
            self._refuse(conn, body, claims, rs, verdict.action, verdict.obj, p.t0, verdict.rule,
                         verdict.reason, verdict.reason, p.head_only, verdict.detail)  # fmt: skip
            return keep
        if not self._audit_ok(
            conn, body, p.head_only, claims, rs, verdict.action, verdict.obj, p.t0
        ):
            return keep
        rs.count(verdict.action, "allow")
        adm = Admitted(
            rs, p.target, claims, p.method, p.head_only, verdict.action, verdict.obj,
            verdict.decision, p.t0,
        )  # fmt: skip
        adm.verdict = verdict
        if not self._write_ahead(conn, body, adm):
            return keep
        adm.forwarded = forwarding_block(conn, head.host)
        return await self.serve_admitted(conn, head, body, adm)

    def _headers_for(self, rs: ResourceState) -> Any:
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

    async def serve_admitted(
        self,
        conn: ClientConnection,
        head: framing.Head,
        body: RequestBody,
        adm: Admitted,
        first: FirstAttempt | None = None,
        *,
        durable: Awaitable[None] | None = None,
    ) -> bool:
        """Forward an admitted request (the task path), relay and audit it."""
        rs = adm.rs
        if first is None:  # (a hand-over from the fast path was durable before it started)
            wait = durable or self._audit.durable()
            if wait is not None and not await self.until_durable(
                conn, body, adm.head_only, wait, adm.claims, rs.name, adm.action, adm.obj,
                adm.ref,
            ):  # fmt: skip
                return False
        if head.expect_continue and not body.complete:
            conn.write(responses.CONTINUE)
            conn.bytes_out = 0
        try:
            out = await self._forward(conn, head, body, adm, first)
        except asyncio.CancelledError:
            self.emit(
                "upstream_error",
                adm.claims,
                rs.name,
                adm.action,
                adm.obj,
                adm.t0,
                status=499,
                decision="allow",
                rule=adm.decision.rule,
                reason="client_closed",
                bytes_in=body.total,
                bytes_out=conn.bytes_out,
                detail={"ref": adm.ref},
            )
            raise
        event = "upstream_error" if out.error else "allowed"
        if out.error:  # the gateway answered (or cut) the request itself: decision "error"
            log.warning(
                "upstream failure",
                extra={"fields": {"resource": rs.name, "reason": out.error, "status": out.status,
                                  "jti": getattr(adm.claims, "jti", None)}},
            )  # fmt: skip
        self.emit(
            event,
            adm.claims,
            rs.name,
            adm.action,
            adm.obj,
            adm.t0,
            status=out.status,
            decision="error" if out.error else "allow",
            rule=adm.decision.rule,
            reason=out.error or adm.decision.reason,
            bytes_in=body.total,
            bytes_out=conn.bytes_out,
            detail=self._detail(adm, out),
        )
        return head.keep_alive and out.keep

    def _detail(self, adm: Admitted, out: _Outcome) -> dict[str, Any] | None:
        detail: dict[str, Any] = {"ref": adm.ref}
        if out.retries:
            detail["retries"] = out.retries
        v = adm.verdict
        profile = adm.rs.profile
        if v is not None and profile is not None:
            extra = v.detail
            if out.captured is not None and not out.error:
                try:
                    extra = profile.on_response(v, out.status, out.resp_headers or [], out.captured)
                except Exception:  # audit detail must never fail a relayed request
                    log.exception("profile response hook failed")
            detail.update(extra)
        return detail or None

    def request_head(self, head: framing.Head, adm: Admitted) -> bytes:
        """Request line, Host, forwarded headers and identity assertion (no auth, no framing)."""
        rs = adm.rs
        target = adm.target
        path = rs.target.base_path + target.path
        if target.query:
            path += "?" + target.query
        fixed = [
            head.method + b" " + path.encode("ascii") + b" HTTP/1.1\r\n",
            rs.host_line,
            rs.forwarded_headers(head),
            adm.forwarded,
        ]
        if rs.identity_prefix is not None:
            assertion = self._assertions.get(adm.claims, rs.name).encode("latin-1")
            if not _safe(assertion):
                raise ValueError("assertion is not header-safe")
            fixed.append(rs.identity_prefix + assertion + b"\r\n")
        return b"".join(fixed)

    # -- upstream ------------------------------------------------------------------------
    async def _forward(
        self,
        conn: ClientConnection,
        head: framing.Head,
        body: RequestBody,
        adm: Admitted,
        first: FirstAttempt | None = None,
    ) -> _Outcome:
        rs = adm.rs
        head_only = adm.head_only
        clock = self._clock
        backoff = rs.backoff
        deadline_at = adm.t0 + backoff.deadline
        idempotent = adm.method in IDEMPOTENT_METHODS
        fixed_bytes = self.request_head(head, adm)
        attempt = 0
        previous = False
        token_refreshed = False  # a refused access token is re-fetched once before rotation
        stale_retry_used = False
        resent = 0  # sends that did not advance ``attempt``: each is still an upstream request
        while True:
            if first is not None:
                # The fast path made attempt 0 and met a retry status or a failure.
                up, result, secret = first
                first = None
                streaming = False
                resp_or_exc: framing.Head | Exception = result  # detached by the fast path
            else:
                made = await self._attempt(
                    conn, head, body, rs, fixed_bytes, previous, head_only, deadline_at,
                    attempt + resent,
                )  # fmt: skip
                if isinstance(made, _Outcome):
                    return made
                if isinstance(made, Exception):  # connect failed, nothing sent
                    wait = backoff.next_delay(attempt, clock(), deadline_at)
                    if wait is None:
                        slug = (
                            "connect_timeout"
                            if isinstance(made, TimeoutError)
                            else "connect_failed"
                        )
                        metrics.UPSTREAM_ERRORS.labels(rs.name, slug).inc()
                        conn.write(
                            responses.error(
                                502, "upstream_unreachable", reason=slug, close=not body.complete
                            )
                        )
                        return _Outcome(502, True, slug, attempt + resent)
                    metrics.UPSTREAM_RETRIES.labels(rs.name, "connect").inc()
                    await asyncio.sleep(wait)
                    attempt += 1
                    continue
                up, head_fut, secret, streaming, sent_at = made
                try:
                    resp_or_exc = await head_fut
                except (TimeoutError, UpstreamUnavailable) as exc:
                    resp_or_exc = exc
                except asyncio.CancelledError:  # the client left mid-request: so does its upstream
                    up.abort()
                    raise
                else:
                    rs.latency.observe(clock() - sent_at)
            if isinstance(resp_or_exc, TimeoutError):
                up.abort()
                metrics.UPSTREAM_ERRORS.labels(rs.name, "timeout").inc()
                conn.write(responses.error(504, "upstream_timeout", close=True))
                return _Outcome(504, False, "upstream_timeout", attempt + resent)
            if isinstance(resp_or_exc, Exception):
                up.abort()
                if not streaming and up.reused and not up.got_bytes and not stale_retry_used:
                    stale_retry_used = True  # a pooled connection closed under us: try a fresh one
                    if idempotent:
                        resent += 1  # the closed connection may have delivered it: say so
                        continue
                wait = (
                    backoff.next_delay(attempt, clock(), deadline_at)
                    if idempotent and not streaming
                    else None
                )
                if wait is None:
                    metrics.UPSTREAM_ERRORS.labels(rs.name, "connection").inc()
                    conn.write(responses.error(502, "upstream_connection_failed", close=True))
                    return _Outcome(502, False, "upstream_connection_failed", attempt + resent)
                metrics.UPSTREAM_RETRIES.labels(rs.name, "connection").inc()
                await asyncio.sleep(wait)
                attempt += 1
                continue
            resp = resp_or_exc
            status = resp.status
            if status in RETRY_STATUSES:
                if status == 429:
                    metrics.UPSTREAM_THROTTLES.labels(rs.name).inc()
                if idempotent and not streaming:
                    hint = retry_after(resp.headers)
                    wait = backoff.next_delay(attempt, clock(), deadline_at, hint)
                    if wait is not None:
                        up.close()
                        metrics.UPSTREAM_RETRIES.labels(rs.name, str(status)).inc()
                        await asyncio.sleep(wait)
                        attempt += 1
                        continue
            elif status == 401 and secret is not None and not previous and not streaming:
                if getattr(secret, "expires_at", None) is not None and not token_refreshed:
                    # An OAuth2 token the upstream refused before its expiry (revoked, clock
                    # skew): fetch a fresh one with the current secret before trying rotation.
                    token_refreshed = True
                    self._secrets.forget_token(rs.credential or "", secret.version)
                    up.close()
                    metrics.UPSTREAM_RETRIES.labels(rs.name, "token_refresh").inc()
                    resent += 1
                    continue
                older = await self._secrets.get(rs.credential or "", previous=True)
                if older is not None and older.version != secret.version:
                    up.close()
                    previous = True
                    metrics.UPSTREAM_RETRIES.labels(rs.name, "rotation").inc()
                    resent += 1
                    continue
            capture = adm.verdict is not None and adm.verdict.capture
            return await self._relay(
                conn, head, body, rs, up, resp, head_only, attempt + resent, capture
            )

    async def _attempt(
        self,
        conn: ClientConnection,
        head: framing.Head,
        body: RequestBody,
        rs: ResourceState,
        fixed_bytes: bytes,
        previous: bool,
        head_only: bool,
        deadline_at: float,
        attempt: int,
    ) -> _Sent | _Outcome | OSError | TimeoutError:
        """Send one attempt; the connect error when no connection could be made."""
        clock = self._clock
        secret = None
        auth = b""
        if rs.credential is not None:
            why = "the credential has no value"
            try:
                secret = self._secrets.peek(rs.credential, previous) or await self._secrets.get(
                    rs.credential, previous
                )
            except CredentialError as exc:  # never set, undecryptable, token endpoint refused
                secret, why = None, str(exc)  # messages name the credential, never its value
            if secret is None:
                return self._credential_unavailable(conn, body, rs, why, attempt)
            try:
                auth = rs.auth_line(secret)
            except UpstreamUnavailable as exc:  # a value with CR/LF/NUL: never sent as a header
                return self._credential_unavailable(conn, body, rs, str(exc), attempt)
        streaming = not body.complete
        if streaming:
            frame = (
                b"Transfer-Encoding: chunked\r\n"
                if head.chunked
                else b"Content-Length: %d\r\n" % (head.content_length or 0)
            )
        else:
            frame = body_frame(head, body)
        req_head = fixed_bytes + auth + frame + b"\r\n"
        try:
            up = await rs.pool.acquire(deadline_at - clock())
        except (OSError, TimeoutError) as exc:
            return exc  # nothing was sent: any method may be retried
        sent_at = clock()
        if streaming:
            head_fut = up.begin(head_only=head_only, timeout=float("inf"))
            up.on_pause = conn.pause_for_upstream
            up.on_resume = conn.resume_for_upstream
            up.write(req_head)
            body.attach(*self._body_writers(up, head.chunked, rs.backoff.deadline))
        else:
            head_fut = up.begin(head_only=head_only, timeout=deadline_at - sent_at)
            up.write(req_head + body.data() if body.total else req_head)
        return _Sent(up, head_fut, secret, streaming, sent_at)

    def _credential_unavailable(
        self, conn: ClientConnection, body: RequestBody, rs: ResourceState, why: str, attempt: int
    ) -> _Outcome:
        """503 naming the resource (not the credential or its value); the gateway's fault."""
        metrics.UPSTREAM_ERRORS.labels(rs.name, "credential").inc()
        metrics.REFUSALS.labels("http", "credential_unavailable").inc()
        log.error(
            "upstream credential unavailable",
            extra={"fields": {"resource": rs.name, "credential": rs.credential, "error": why}},
        )
        conn.write(
            responses.error(
                503,
                "credential_unavailable",
                resource=rs.name,
                message=f"Lockgate has no usable upstream credential for resource {rs.name!r}; "
                "an operator must set it (lockgate creds set) or fix its source",
                close=not body.complete,
            )
        )
        return _Outcome(503, False, "credential_unavailable", attempt)

    @staticmethod
    def _body_writers(
        up: UpstreamConnection, chunked: bool, head_timeout: float
    ) -> tuple[Any, Any]:
        if chunked:

            def write(piece: bytes) -> None:
                up.write(framing.chunk(piece))

            def end() -> None:
                up.write(framing.LAST_CHUNK)
                up.arm_head_timeout(head_timeout)

            return write, end

        def end_plain() -> None:
            up.arm_head_timeout(head_timeout)

        return up.write, end_plain

    async def _relay(
        self,
        conn: ClientConnection,
        head: framing.Head,
        body: RequestBody,
        rs: ResourceState,
        up: UpstreamConnection,
        resp: framing.Head,
        head_only: bool,
        retries: int,
        capture: bool = False,
    ) -> _Outcome:
        status = resp.status
        out_head, keep, chunked_out = response_head(head, resp, head_only)
        conn.upstream = up
        sink: Any = ChunkedWriter(conn) if chunked_out else conn
        tee = _Tee(sink, CAPTURE_LIMIT) if capture and not head_only else None
        up.attach(tee or sink, out_head)
        try:
            await up.done
        except UpstreamUnavailable:
            # The head is out: the only honest signal left is an aborted connection.
            metrics.UPSTREAM_ERRORS.labels(rs.name, "truncated").inc()
            conn.upstream = None
            conn.abort()
            return _Outcome(status, False, "upstream_truncated", retries)
        except asyncio.CancelledError:  # the client left or stalled: a paused upstream stays
            up.abort()  # open forever otherwise, holding its connection and the account's
            raise
        finally:
            conn.upstream = None
        if chunked_out:
            conn.write(framing.LAST_CHUNK)
        if body.complete and not conn.closed:
            rs.pool.release(up)
        else:
            up.close()
            if not body.complete:
                body.discard()
                keep = False
        if tee is not None:
            return _Outcome(status, keep, None, retries, tee.data(), resp.headers)
        return _Outcome(status, keep, None, retries)

    # -- audit ---------------------------------------------------------------------------
    def emit(
        self,
        event: str,
        claims: Any,
        resource: str,
        action: str | None,
        obj: str | None,
        t0: float,
        *,
        status: int,
        decision: str | None = None,
        rule: str | None = None,
        reason: str | None = None,
        bytes_in: int | None = None,
        bytes_out: int | None = None,
        detail: dict[str, Any] | None = None,
    ) -> None:
        record = self._make_record(
            event=event,
            **identity_fields(claims),
            resource=resource,
            action=action,
            object=obj,
            decision=decision,
            rule=rule,
            reason=reason,
            status=status,
            latency_ms=round((self._clock() - t0) * 1000.0, 3),
            bytes_in=bytes_in,
            bytes_out=bytes_out,
            detail=detail or {},
        )
        emit_safely(self._audit, record)
