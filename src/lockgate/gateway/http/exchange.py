"""The one HTTP exchange: forward an admitted request, retry, relay the answer, audit it.

Two drivers share every piece of it (request bytes, retry judgement, relay, outcome record):

* the fast path (:mod:`.fast_path`): most requests a pipeline sends are small and complete
  when their head arrives, and a warm pooled upstream connection is waiting. The client
  connection's ``data_received`` admits the request (all synchronous and cached) and
  :meth:`Exchange.start` writes it upstream; the upstream connection hands the response
  head to :meth:`Exchange.on_head`, which relays it in one write; :meth:`Exchange.on_done`
  returns the connection to the pool and records the outcome. No task, no future. Anything
  unusual — a retry status, a 401 that may need a rotated credential, a timeout, a pooled
  connection that turned out closed — is handed to the task path with the first attempt's
  result, so it is handled exactly as there;
* the task path, :meth:`Forwarder.forward`: retries 429/502/503/504 (a profile may narrow
  these) and connection failures for idempotent, replayable requests (backoff with full
  jitter and server hints, within the resource's deadline), a fresh-connection retry when a
  pooled connection turns out closed, and one credential retry when the upstream answers
  401 (a refreshed access token, a rotation the cache has not seen, or the previous
  version inside the overlap). A body that was already streaming upstream is never
  replayed. Profiles plug in through their hooks (sign the upstream request, rewrite a
  small buffered response, see the response for audit detail).
"""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import Callable
from typing import Any

from lockgate import _log, metrics
from lockgate.errors import AuthenticationError, CredentialError, UpstreamUnavailable
from lockgate.gateway.engine import AssertionCache, SecretCache, UpstreamSecret
from lockgate.gateway.http import framing
from lockgate.gateway.http.admission import Admitted, refusal
from lockgate.gateway.http.bodies import CAPTURE_LIMIT, Collector, Tee
from lockgate.gateway.http.outcome import FirstAttempt, Forwarding, Outcome, Sent, retry_statuses
from lockgate.gateway.http.profiles.hooks import UpstreamCall
from lockgate.gateway.http.relay import body_frame, body_writers, public_origin, response_head
from lockgate.gateway.http.resources import ResourceState, header_safe
from lockgate.gateway.http.retry import IDEMPOTENT_METHODS, retry_after
from lockgate.gateway.http.server import ChunkedWriter, ClientConnection, RequestBody
from lockgate.gateway.http.trail import Trail
from lockgate.gateway.http.upstream import BodySink, UpstreamConnection
from lockgate.quotas import NO_QUOTAS, QuotaGate

log = _log.get("gateway.http")


class Forwarder:
    """Builds upstream requests and drives the task path; records every outcome."""

    def __init__(
        self,
        *,
        secrets: SecretCache,
        assertions: AssertionCache,
        trail: Trail,
        clock: Callable[[], float],
        quotas: QuotaGate = NO_QUOTAS,
    ) -> None:
        self._secrets = secrets
        self.quotas = quotas
        self._assertions = assertions
        self._trail = trail
        self.clock = clock

    # -- request bytes (both paths) --------------------------------------------------------
    def request_head(self, head: framing.Head, adm: Admitted) -> bytes:
        """Request line, Host, forwarded headers and identity assertion (no auth, no framing)."""
        rs = adm.rs
        profile = rs.profile
        if profile is None:
            lines = rs.request_lines(head, adm.target)  # once per shared head object
        else:
            drop = profile.drop_headers
            verdict = adm.verdict
            if verdict is not None and verdict.drop_headers:
                drop = drop | verdict.drop_headers
            lines = rs.request_line(head, adm.target) + rs.forwarded_headers(
                head, drop, profile.drop_underscored
            )
        if rs.identity_prefix is not None and (profile is None or profile.identity_assertion):
            assertion = self._assertions.get(adm.claims, rs.name)
            return lines + adm.forwarded + rs.identity_line(assertion)
        return lines + adm.forwarded

    @staticmethod
    def auth_lines(adm: Admitted, secret: UpstreamSecret | None) -> bytes:
        """The credential header lines of one attempt (a profile may sign it itself);
        ``UpstreamUnavailable`` when the credential cannot go out (the gateway's 503)."""
        if secret is None:
            return b""
        rs = adm.rs
        profile = rs.profile
        if profile is not None and adm.verdict is not None:
            call = UpstreamCall(adm.method, adm.target.path, adm.verdict)
            try:
                signed = profile.sign_upstream(call, secret)
            except (AuthenticationError, CredentialError, ValueError) as exc:
                # e.g. an account key that is not base64: nothing can be signed. The
                # exception's text is not kept: it is not ours to vouch for.
                why = f"the credential cannot sign a request ({type(exc).__name__})"
                raise UpstreamUnavailable(why) from None
            if signed is not None:
                if not header_safe(signed.replace(b"\r\n", b"")):
                    raise UpstreamUnavailable("credential value is not header-safe")
                return signed
        return rs.auth_line(secret)

    # -- outcome records (both paths) ------------------------------------------------------
    def record(self, fw: Forwarding, out: Outcome, decision: str | None = None) -> None:
        """The outcome record of an admitted request, naming its written-ahead record;
        ``decision`` "error" when the gateway answered (or cut) the request itself."""
        adm = fw.adm
        if decision is None:
            decision = "error" if out.error else "allow"
        if decision == "error":
            fields = {"resource": adm.rs.name, "reason": out.error, "status": out.status,
                      "jti": adm.claims.jti}  # fmt: skip
            log.warning("upstream failure", extra={"fields": fields})
        detail = self._detail(adm, out)
        self._trail.records.emit(
            "upstream_error" if out.error else "allowed", adm.claims, adm.rs.name, adm.t0,
            action=adm.action, obj=adm.obj, status=out.status, decision=decision,
            rule=adm.rule, reason=out.error or adm.reason, bytes_in=fw.body.total,
            bytes_out=fw.conn.bytes_out, detail=detail,
        )  # fmt: skip
        self._settle_quota(adm, out, detail)
        adm.span.end(status=out.status, error=out.error)

    def _settle_quota(self, adm: Admitted, out: Outcome, detail: dict[str, Any]) -> None:
        """The request ended: its quota slots go back; a run start's slot counts the run
        the upstream named; a run the answer shows finished no longer counts."""
        quota = adm.quota
        answered = out.status == 200 and not out.error
        if quota.run is not None:
            run_id = detail.get("run_id") if answered else None
            quota.run_settled(out.status, out.error, run_id, f"unanswered:{adm.ref}")
        quota.release()
        v, profile = adm.verdict, adm.rs.profile
        if v is None or profile is None or not answered:
            return
        try:
            ended = profile.finished_run(v, detail)
            if ended is not None:
                self.quotas.run_finished(adm.rs.name, ended)
        except Exception:  # a quota's bookkeeping must never fail a relayed request
            log.exception("finished run bookkeeping failed")

    def record_client_lost(self, fw: Forwarding) -> None:
        """The client left mid-request: the upstream may have run it all the same."""
        self.record(fw, Outcome(499, False, "client_closed"), decision="allow")

    @staticmethod
    def _detail(adm: Admitted, out: Outcome) -> dict[str, Any]:
        detail: dict[str, Any] = {"ref": adm.ref}
        if out.retries:
            detail["retries"] = out.retries
        v = adm.verdict
        profile = adm.rs.profile
        if v is not None and profile is not None:
            extra = v.detail
            if not out.error:
                try:
                    extra = profile.on_response(
                        v, out.status, out.resp_headers or [], out.captured or b""
                    )
                except Exception:  # audit detail must never fail a relayed request
                    log.exception("profile response hook failed")
            detail.update(extra)
        return detail

    # -- the task path ---------------------------------------------------------------------
    async def forward(self, fw: Forwarding, first: FirstAttempt | None = None) -> Outcome:
        """Send, retry and relay an admitted request; the outcome (already answered)."""
        conn, head, body, adm = fw
        rs = adm.rs
        clock = self.clock
        backoff = rs.backoff
        profile = rs.profile
        deadline_at = adm.t0 + (
            profile.timeout if profile is not None and profile.timeout else backoff.deadline
        )
        idempotent = adm.method in IDEMPOTENT_METHODS
        retried = retry_statuses(rs)
        fixed_bytes = self.request_head(head, adm)
        attempt = 0
        previous = False
        credential_retried = False  # one 401 retry: a refreshed or rotated credential
        token_refreshed = False  # a refused access token is re-fetched once before rotation
        stale_retry_used = False
        resent = 0  # sends that did not advance ``attempt``: each is still an upstream request
        span = adm.span
        while True:
            streaming = False
            if first is not None:
                # The fast path made attempt 0 and met a retry status or a failure.
                up, resp_or_exc, secret = first  # (detached by the fast path)
                first = None
                adm.quota.sent = True
            else:
                with span.upstream_attempt(attempt + resent + 1):
                    made = await self._attempt(
                        fw, fixed_bytes, previous, deadline_at, attempt + resent
                    )
                    if not isinstance(made, Outcome | Exception):
                        up, head_fut, secret, streaming, sent_at = made
                        adm.quota.sent = True
                        try:
                            resp_or_exc = await head_fut
                        except (TimeoutError, UpstreamUnavailable) as exc:
                            resp_or_exc = exc
                        except asyncio.CancelledError:  # the client left: so does its upstream
                            up.abort()
                            raise
                        else:
                            rs.latency.observe(clock() - sent_at)
                if isinstance(made, Outcome):
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
                        answer = {"error": "upstream_unreachable", "reason": slug}
                        conn.write(refusal(rs, 502, answer, close=not body.complete))
                        return Outcome(502, True, slug, attempt + resent)
                    metrics.UPSTREAM_RETRIES.labels(rs.name, "connect").inc()
                    span.retried("connect", wait)
                    await asyncio.sleep(wait)
                    attempt += 1
                    continue
            if isinstance(resp_or_exc, TimeoutError):
                up.abort()
                metrics.UPSTREAM_ERRORS.labels(rs.name, "timeout").inc()
                conn.write(refusal(rs, 504, {"error": "upstream_timeout"}, close=True))
                return Outcome(504, False, "upstream_timeout", attempt + resent)
            if isinstance(resp_or_exc, Exception):
                up.abort()
                if not streaming and up.reused and not up.got_bytes and not stale_retry_used:
                    stale_retry_used = True  # a pooled connection closed under us: try a fresh one
                    if idempotent:
                        span.retried("stale_connection", 0.0)
                        resent += 1  # the closed connection may have delivered it: say so
                        continue
                wait = (
                    backoff.next_delay(attempt, clock(), deadline_at)
                    if idempotent and not streaming
                    else None
                )
                if wait is None:
                    metrics.UPSTREAM_ERRORS.labels(rs.name, "connection").inc()
                    answer = {"error": "upstream_connection_failed"}
                    conn.write(refusal(rs, 502, answer, close=True))
                    return Outcome(502, False, "upstream_connection_failed", attempt + resent)
                metrics.UPSTREAM_RETRIES.labels(rs.name, "connection").inc()
                span.retried("connection", wait)
                await asyncio.sleep(wait)
                attempt += 1
                continue
            resp = resp_or_exc
            status = resp.status
            if status == 429:
                metrics.UPSTREAM_THROTTLES.labels(rs.name).inc()
            if status in retried:
                if idempotent and not streaming:
                    hint = retry_after(resp.headers)
                    wait = backoff.next_delay(attempt, clock(), deadline_at, hint)
                    if wait is not None:
                        up.close()
                        metrics.UPSTREAM_RETRIES.labels(rs.name, str(status)).inc()
                        span.retried(str(status), wait)
                        await asyncio.sleep(wait)
                        attempt += 1
                        continue
            elif status == 401 and secret is not None and not streaming and not previous:
                if getattr(secret, "expires_at", None) is not None and not token_refreshed:
                    # An OAuth2 token the upstream refused before its expiry (revoked, clock
                    # skew): fetch a fresh one with the current secret before trying rotation.
                    token_refreshed = True
                    self._secrets.forget_token(rs.credential or "", secret.version)
                    up.close()
                    metrics.UPSTREAM_RETRIES.labels(rs.name, "token_refresh").inc()
                    span.retried("token_refresh", 0.0)
                    resent += 1
                    continue
                if not credential_retried:
                    credential_retried = True
                    use_previous = await self._rotated(rs, secret)
                    if use_previous is not None:
                        up.close()
                        previous = use_previous
                        metrics.UPSTREAM_RETRIES.labels(rs.name, "rotation").inc()
                        span.retried("rotation", 0.0)
                        resent += 1
                        continue
            return await self._relay(fw, up, resp, attempt + resent)

    async def _rotated(self, rs: ResourceState, failed: UpstreamSecret) -> bool | None:
        """After an upstream 401: retry with the current version when a rotation the cache
        had not seen yet changed it (False), else with the previous version inside the
        overlap (True); None when neither differs from the refused one."""
        name = rs.credential or ""
        try:
            if getattr(failed, "expires_at", None) is None:  # a key, not an access token
                self._secrets.invalidate(name)
                current = await self._secrets.get(name)
                if current is not None and (
                    current.version != failed.version or current.value != failed.value
                ):
                    return False
            older = await self._secrets.get(name, previous=True)
        except CredentialError:
            return None
        if older is not None and older.version != failed.version:
            return True
        return None

    async def _attempt(
        self, fw: Forwarding, fixed_bytes: bytes, previous: bool, deadline_at: float, attempt: int
    ) -> Sent | Outcome | OSError | TimeoutError:
        """Send one attempt; the connect error when no connection could be made."""
        conn, head, body, adm = fw
        rs = adm.rs
        clock = self.clock
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
                auth = self.auth_lines(adm, secret)
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
            head_fut = up.begin(head_only=adm.head_only, timeout=float("inf"))
            up.on_pause = conn.pause_for_upstream
            up.on_resume = conn.resume_for_upstream
            up.write(req_head)
            body.attach(*body_writers(up, head.chunked, rs.backoff.deadline))
        else:
            head_fut = up.begin(head_only=adm.head_only, timeout=deadline_at - sent_at)
            up.write(req_head + body.data() if body.total else req_head)
        return Sent(up, head_fut, secret, streaming, sent_at)

    @staticmethod
    def _credential_unavailable(
        conn: ClientConnection, body: RequestBody, rs: ResourceState, why: str, attempt: int
    ) -> Outcome:
        """503 naming the resource (not the credential or its value); the gateway's fault."""
        metrics.UPSTREAM_ERRORS.labels(rs.name, "credential").inc()
        metrics.REFUSALS.labels("http", "credential_unavailable").inc()
        log.error(
            "upstream credential unavailable",
            extra={"fields": {"resource": rs.name, "credential": rs.credential, "error": why}},
        )
        answer = {
            "error": "credential_unavailable",
            "resource": rs.name,
            "message": f"Lockgate has no usable upstream credential for resource {rs.name!r}; "
            "an operator must set it (lockgate creds set), or fix its source or the cloud's "
            "trust of a federated one (the gateway's log says why)",
        }
        conn.write(refusal(rs, 503, answer, close=not body.complete))
        return Outcome(503, False, "credential_unavailable", attempt)

    async def _relay(
        self, fw: Forwarding, up: UpstreamConnection, resp: framing.Head, retries: int
    ) -> Outcome:
        conn, head, _, adm = fw
        rs = adm.rs
        status = resp.status
        verdict = adm.verdict
        if verdict is not None and verdict.rewrite and status == 200 and not adm.head_only:
            return await self._relay_rewritten(fw, up, resp, retries)
        out_head, keep, chunked_out = response_head(head, resp, adm.head_only)
        conn.upstream = up
        sink: BodySink = ChunkedWriter(conn) if chunked_out else conn
        tee = Tee(sink, CAPTURE_LIMIT) if verdict is not None and verdict.capture else None
        up.attach(tee or sink, out_head)
        try:
            await up.done
        except UpstreamUnavailable:
            # The head is out: the only honest signal left is an aborted connection.
            metrics.UPSTREAM_ERRORS.labels(rs.name, "truncated").inc()
            conn.upstream = None
            conn.abort()
            return Outcome(status, False, "upstream_truncated", retries)
        except asyncio.CancelledError:  # the client left or stalled: a paused upstream stays
            up.abort()  # open forever otherwise, holding its connection and the account's
            raise
        finally:
            conn.upstream = None
        if chunked_out:
            conn.write(framing.LAST_CHUNK)
        keep = _release(fw, up, keep)
        captured = tee.data() if tee is not None and not adm.head_only else None
        return Outcome(status, keep, None, retries, captured, resp.headers)

    async def _relay_rewritten(
        self, fw: Forwarding, up: UpstreamConnection, resp: framing.Head, retries: int
    ) -> Outcome:
        """A small response a profile rewrites (bounded): held whole, then sent anew."""
        conn, head, _, adm = fw
        rs = adm.rs
        profile, verdict = rs.profile, adm.verdict
        assert profile is not None and verdict is not None
        collector = Collector()
        up.attach(collector, b"")
        try:
            await up.done
        except UpstreamUnavailable:
            collector.overflow = True  # cut short: nothing was sent yet, answer 502 below
        except asyncio.CancelledError:
            up.abort()
            raise
        if collector.overflow:
            up.abort()
            metrics.UPSTREAM_ERRORS.labels(rs.name, "rewrite").inc()
            answer = {"error": "upstream_response_unusable"}
            conn.write(refusal(rs, 502, answer, close=True))
            return Outcome(502, False, "upstream_response_unusable", retries)
        headers, data = profile.rewrite_response(
            verdict, resp.status, resp.headers, collector.data(), public_origin(conn, head)
        )
        new = dataclasses.replace(
            resp, headers=tuple(headers), content_length=len(data), chunked=False
        )
        out_head, keep, _ = response_head(head, new, adm.head_only)
        conn.write(out_head + data)
        keep = _release(fw, up, keep)
        return Outcome(
            resp.status, keep, None, retries, data if verdict.capture else None, new.headers
        )


def _release(fw: Forwarding, up: UpstreamConnection, keep: bool) -> bool:
    """The upstream connection back to the pool when it is in sync; keep the client's?"""
    conn, _, body, adm = fw
    if body.complete and not conn.closed:
        adm.rs.pool.release(up)
        return keep
    up.close()
    if not body.complete:
        body.discard()
        return False
    return keep


__all__ = ["Forwarder"]
