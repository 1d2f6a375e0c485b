"""One client connection through the CQL engine: handshake, then decide and relay.

Strategy: one upstream connection per client connection, so stream ids pass through
unchanged and responses need no renumbering. Two pumps run side by side:

* client → upstream: each request is parsed by the codec; statement-bearing ones
  (QUERY, PREPARE, EXECUTE, BATCH) get a :class:`~.statements.Plan`, the token is verified
  again (expiry and revocation, in memory), every target that is not a driver metadata read
  or ``USE`` is decided by policy, and the request is either answered by the gateway
  (Unauthorized, Unprepared, audit unavailable) or forwarded as its exact bytes. OPTIONS
  (driver heartbeats) and REGISTER are forwarded. While a USE is in flight, later frames
  wait in :class:`~.holds.UseHold` and are judged once its answer names the keyspace.
* upstream → client: frames are split by their 9-byte header; only those the gateway must
  look into (anything but plain Rows, or Rows of system.local/peers reads) are decoded.
  SetKeyspace updates the connection's keyspace and releases held frames, Prepared fills
  the shared prepared map (after checking its metadata names the tables that were judged),
  topology/status EVENTs are dropped, and every audited statement is recorded with its
  result kind or error code and its latency.

Writes are coalesced: frames bound for one side are collected while a read chunk is being
processed and written with one call before the pump next waits (one syscall per chunk, not
per frame; with 64 statements in flight this was the largest cost per statement).

Robustness: a malformed or oversized client frame, a frame that stalls for longer than the
resource's ``handshake_timeout``, or an unfinished handshake closes this connection only,
with an audit record. A connection with nothing in flight and no traffic for
``idle_timeout`` is closed quietly. A request reusing the stream id of one in flight is
refused (its answer could not be told apart). No exception leaves :meth:`ClientSession.run`.
"""

from __future__ import annotations

import asyncio
import contextlib
import struct
from dataclasses import dataclass
from typing import Any

from lockgate import _log
from lockgate.errors import AuditUnavailable, AuthenticationError
from lockgate.gateway.engine import identity_fields

from . import codec
from .context import PRE_AUTH_MAX_FRAME_BYTES, EngineContext
from .handshake import Authenticated, handshake
from .holds import UseHold
from .rewrite import forward_event, rewrite_rows
from .statements import Plan, plan_for, tables_outside_plan
from .upstream import UPSTREAM_MAX_FRAME_BYTES

log = _log.get("gateway.cql")

_READ_SIZE = 65536
_HEADER = struct.Struct(">BBhBi")
_RANK = {"use": 0, "read": 1, "write": 2, "admin": 3}


class _Stalled(Exception):
    """A frame did not complete in time (slow-loris)."""


@dataclass(slots=True)
class _Pending:
    t0: float
    plan: Plan | None
    audited: bool
    action: str | None = None
    obj: str | None = None
    ref: str | None = None  # the written-ahead "admitted" record, named in the outcome


class ClientSession:
    def __init__(
        self, ctx: EngineContext, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        self.ctx = ctx
        self.reader = reader
        self.writer = writer
        self.client = codec.Connection(codec.Role.SERVER, max_frame_bytes=PRE_AUTH_MAX_FRAME_BYTES)
        sock = writer.get_extra_info("sockname") or ("127.0.0.1", 0)
        self.local_address: str = str(sock[0])
        self.local_port: int = int(sock[1])
        self.auth: Authenticated | None = None
        self.keyspace: str | None = None
        self.pending: dict[int, _Pending] = {}
        self._frame_deadline: float | None = None
        self._frame_timeout = ctx.handshake_timeout
        self._idle_timeout: float | None = None
        self.holds = UseHold(
            max_frames=ctx.max_held_frames,
            max_bytes=ctx.max_held_bytes,
            timeout=ctx.use_answer_timeout,
            on_expired=self._use_unanswered,
        )
        self._to_upstream: list[bytes] = []  # forwarded requests not yet written (coalesced)
        # durability fsync: the task that writes them once their records are on the device
        self._durable_writer: asyncio.Task[None] | None = None
        self._to_client: list[bytes] = []  # upstream answers not yet written (coalesced)
        self._inspector = codec.Connection(
            codec.Role.CLIENT, max_frame_bytes=UPSTREAM_MAX_FRAME_BYTES
        )

    # -- lifecycle ------------------------------------------------------------------------------
    async def run(self) -> None:
        t0 = self.ctx.clock()
        try:
            try:
                async with asyncio.timeout(self.ctx.handshake_timeout):
                    self.auth = await handshake(self.ctx, self, t0)
            except TimeoutError:
                self._refuse("auth_failed", "handshake_timeout", t0)
                return
            if self.auth is None:
                return
            r = self.auth.resource
            self.keyspace = None
            self.client.max_frame_bytes = r.max_frame_bytes
            self._frame_timeout = r.handshake_timeout
            self._idle_timeout = r.idle_timeout
            await self._relay()
        except codec.UnsupportedProtocolVersion as exc:
            # Driver protocol negotiation (DSE/v5 first): expected, cheap, not an attack.
            self._write(exc.error_frame())
            log.debug("cql protocol version refused", extra={"fields": {"version": exc.version}})
        except codec.CqlProtocolError as exc:
            self._write(exc.error_frame())
            reason = "frame_too_large" if "exceeds the limit" in str(exc) else "protocol_error"
            self._refuse("denied" if self.auth else "auth_failed", reason, t0, str(exc))
        except _Stalled:
            self._refuse("denied" if self.auth else "auth_failed", "frame_timeout", t0)
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        except Exception:  # the connection handler must never raise
            log.exception("cql connection failed")
        finally:
            await self._close()

    def _refuse(self, event: str, reason: str, t0: float, detail: str | None = None) -> None:
        auth = self.auth
        self.ctx.record(
            event,
            auth.claims if auth else None,
            auth.resource.name if auth else None,
            t0,
            action="connect",
            decision="deny",
            reason=reason,
            detail={"error": detail[:500]} if detail else None,
        )

    async def _close(self) -> None:
        self.holds.drain()  # the client is gone: what waited for a USE is dropped, unjudged
        if self.auth is not None:
            self.auth.link.close()
        with contextlib.suppress(Exception):
            self.writer.close()
            await asyncio.wait_for(self.writer.wait_closed(), 1.0)

    def _write(self, data: bytes) -> None:
        if not self.writer.is_closing():
            self.writer.write(data)

    # ClientIO for the handshake
    def write(self, data: bytes) -> None:
        self._write(data)

    async def read_event(self) -> codec.Event | None:
        """The next client frame as an event; None at EOF. Raises CqlProtocolError, _Stalled."""
        while True:
            event = self.client.next_event()
            if event is not codec.NEED_DATA:
                assert isinstance(event, codec.Event)
                self._frame_deadline = None
                return event
            if self.client.eof:
                return None
            self._flush_upstream()  # before waiting for more: nothing forwarded may sit here
            now = self.ctx.clock()
            if self.client.buffered:
                if self._frame_deadline is None:
                    self._frame_deadline = now + self._frame_timeout
                timeout: float | None = self._frame_deadline - now
                if timeout <= 0:
                    raise _Stalled
            else:
                timeout = self._idle_timeout
            try:
                async with asyncio.timeout(timeout):
                    data = await self.reader.read(_READ_SIZE)
            except TimeoutError:
                if self.client.buffered:
                    raise _Stalled from None
                if self.pending:
                    continue  # a long statement is running; the client waits for it
                log.info("cql connection idle; closing", extra={"fields": self._fields()})
                return None
            self.client.receive_data(data)

    def _fields(self) -> dict[str, Any]:
        auth = self.auth
        return {
            "resource": auth.resource.name if auth else None,
            "principal": getattr(auth.claims, "sub", None) if auth else None,
        }

    # -- relay ----------------------------------------------------------------------------------
    async def _relay(self) -> None:
        assert self.auth is not None
        pumps = [
            asyncio.create_task(self._pump_client(), name="cql-client"),
            asyncio.create_task(self._pump_upstream(), name="cql-upstream"),
        ]
        try:
            done, _ = await asyncio.wait(pumps, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in pumps:
                task.cancel()
            await asyncio.gather(*pumps, return_exceptions=True)
        for task in done:
            exc = task.exception()
            if exc is not None:
                raise exc

    async def _pump_client(self) -> None:
        assert self.auth is not None
        up = self.auth.link.writer
        while True:
            event = await self.read_event()
            if event is None:
                return
            self._on_request(event)
            if self.holds.full:  # stop reading the client until the USE is answered
                self._flush_upstream()
                await up.drain()
                await self.holds.wait_for_room()
            if self.client.buffered == 0:
                self._flush_upstream()
                await up.drain()

    def _on_request(self, event: codec.Event) -> None:
        auth = self.auth
        assert auth is not None
        if self.holds.must_wait(event):
            self.holds.hold(event)  # judged when the USE in flight is answered
            return
        t0 = self.ctx.clock()
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
            self._forward(event, _Pending(t0, None, False))
            return
        plan = plan_for(event, auth.resource.name, self.keyspace, self.ctx.prepared)
        if plan is None:
            self._answer(event, codec.ERR_PROTOCOL, f"unexpected {type(event).__name__}")
            return
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
        if checked:
            ttl = _token_ttl(claims)
            policy = self.ctx.policy.current
            for target in checked:
                decision = policy.decide(
                    self.ctx.make_request(
                        principal=claims.sub,
                        action=target.action,
                        resource=auth.resource.name,
                        object=target.object,
                        token_ttl=ttl,
                    )
                )
                if not decision.allowed:
                    self._deny(event, plan, target.action, target.object, decision, t0)
                    return
            rule, reason = decision.rule, decision.reason
        else:  # USE and driver metadata reads: every principal's, audited all the same
            rule, reason = plan.builtin_rule, None
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
        except AuditUnavailable:
            self._answer(
                event,
                codec.ERR_OVERLOADED,
                "Lockgate audit unavailable: statement not run; retry later",
            )
            log.error("cql statement refused: audit unavailable", extra={"fields": self._fields()})
            return
        self.ctx.count(auth.resource.name, action, "allow")
        self._forward(event, _Pending(t0, plan, True, action, obj, ref))

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

    def _detail(self, plan: Plan) -> dict[str, Any]:
        detail: dict[str, Any] = {"statement": plan.audit_text, "op": plan.op}
        if plan.keyspace:
            # "_name": a bare "keyspace" key would be taken for a secret and redacted.
            detail["keyspace_name"] = plan.keyspace
        return detail

    def _answer(self, event: codec.Event, code: int, message: str) -> None:
        self._write(
            codec.encode_frame(codec.Error(stream=event.stream, code=code, message=message))
        )

    def _forward(self, event: codec.Event, pending: _Pending) -> None:
        self.pending[event.stream] = pending
        self._to_upstream.append(event.raw)
        if pending.plan is not None and pending.plan.changes_keyspace:
            self.holds.started(event.stream)

    def _flush_upstream(self) -> None:
        if self._to_upstream and self.auth is not None and self._durable_writer is None:
            data = b"".join(self._to_upstream)
            self._to_upstream.clear()
            wait = self.ctx.audit.durable()  # None unless audit durability is fsync
            if wait is None:
                self.auth.link.writer.write(data)
            else:
                self._durable_writer = asyncio.ensure_future(self._write_when_durable(data, wait))

    async def _write_when_durable(self, data: bytes, wait: Any) -> None:
        """Write forwarded frames once their written-ahead records are on the device, in
        order; frames forwarded meanwhile follow in the next round. If the records cannot be
        made durable nothing is written and the upstream link is closed (the pending
        statements are then recorded as upstream errors)."""
        assert self.auth is not None
        writer = self.auth.link.writer
        try:
            while True:
                await wait
                writer.write(data)
                if not self._to_upstream:
                    return
                data = b"".join(self._to_upstream)
                self._to_upstream.clear()
                wait = self.ctx.audit.durable() or asyncio.sleep(0)
        except AuditUnavailable:
            log.error(
                "cql statements not forwarded: audit not durable",
                extra={"fields": self._fields()},
            )
            self._to_upstream.clear()
            writer.close()
        finally:
            self._durable_writer = None

    def _emit(self, frame: bytes) -> None:
        """Queue an answer for the client; written once per upstream read chunk."""
        self._to_client.append(frame)

    # -- upstream → client ----------------------------------------------------------------------
    async def _pump_upstream(self) -> None:
        assert self.auth is not None
        reader = self.auth.link.reader
        buf = bytearray()
        while True:
            data = await reader.read(_READ_SIZE)
            if not data:
                self._upstream_lost()
                return
            buf += data
            pos = 0
            while len(buf) - pos >= 9:
                vbyte, flags, stream, opcode, length = _HEADER.unpack_from(buf, pos)
                if vbyte != 0x84 or length < 0 or length > UPSTREAM_MAX_FRAME_BYTES:
                    log.error(
                        "cql upstream sent an invalid frame header; closing",
                        extra={"fields": self._fields()},
                    )
                    self._flush_client()  # the valid frames before it still reach the client
                    self._upstream_lost()
                    return
                end = pos + 9 + length
                if len(buf) < end:
                    break
                self._on_response(bytes(buf[pos:end]), flags, stream, opcode)
                pos = end
            if pos:
                del buf[:pos]
            self._flush_client()
            await self.writer.drain()

    def _flush_client(self) -> None:
        if self._to_client:
            data = b"".join(self._to_client)
            self._to_client.clear()
            self._write(data)

    def _on_response(self, frame: bytes, flags: int, stream: int, opcode: int) -> None:
        p = self.pending.pop(stream, None) if stream >= 0 else None
        if stream == self.holds.use_stream:
            self._use_answered(self._relay_answer(frame, flags, stream, opcode, p))
        else:
            self._relay_answer(frame, flags, stream, opcode, p)

    def _relay_answer(
        self, frame: bytes, flags: int, stream: int, opcode: int, p: _Pending | None
    ) -> codec.Event | None:
        """Relay one upstream answer (rewritten or refused where needed) and record its
        outcome; the decoded answer, None when it was relayed without decoding."""
        if (
            opcode == codec.RESULT
            and flags == 0
            and frame[9:13] == b"\x00\x00\x00\x02"  # Rows
            and (p is None or p.plan is None or p.plan.rewrite is None)
        ):
            self._emit(frame)  # the hot path: rows relayed without decoding
            self._finish(p, codec.RESULT_ROWS)
            return None
        event = self._inspect(frame)
        if event is None:
            if p is not None and p.plan is not None and p.plan.rewrite is not None:
                # Fail closed: never relay undecodable topology rows.
                self._emit(
                    codec.encode_frame(
                        codec.Error(
                            stream=stream,
                            code=codec.ERR_SERVER,
                            message="Lockgate could not decode the cluster's answer",
                        )
                    )
                )
            else:
                self._emit(frame)
            self._finish(p, codec.ERR_SERVER, error=True)
            return None
        if isinstance(event, codec.ServerEvent):
            if forward_event(event):
                self._emit(frame)
            return event
        status: int | None = None
        failed = isinstance(event, codec.Error)
        if isinstance(event, codec.Error):
            status = event.code
        elif isinstance(event, codec.Result):
            status = event.kind
            if isinstance(event, codec.SetKeyspace):
                self.keyspace = event.keyspace
            elif isinstance(event, codec.Prepared) and p is not None and p.plan is not None:
                refusal = self._remember_prepared(event, p) if p.plan.op == "prepare" else None
                if refusal is not None:
                    status, failed = codec.ERR_INVALID, True
                    frame = codec.encode_frame(
                        codec.Error(stream=stream, code=codec.ERR_INVALID, message=refusal)
                    )
            elif isinstance(event, codec.Rows) and p is not None and p.plan is not None:
                kind = p.plan.rewrite
                if kind is not None:
                    rows = rewrite_rows(event, kind, self.local_address, self.local_port)
                    if rows is not event:
                        frame = codec.encode_frame(rows)
        self._emit(frame)
        self._finish(p, status, error=failed)
        return event

    def _remember_prepared(self, event: codec.Prepared, p: _Pending) -> str | None:
        """File a PREPARED id under the text and keyspace that produced it; the refusal for
        the client when the id cannot be trusted (its metadata names tables the statement
        was not judged on, or the id is known for another statement)."""
        auth = self.auth
        plan = p.plan
        assert auth is not None and plan is not None
        outside = tables_outside_plan(plan, event)
        if outside:
            reason = "prepared_mismatch"
            message = (
                f"Lockgate refuses this prepared statement: the cluster resolved it to "
                f"{', '.join(outside)}, not to what was judged"
            )
        elif not self.ctx.prepared.remember(
            auth.resource.name, event.query_id, plan.text, plan.keyspace
        ):
            reason = "prepared_ambiguous"
            message = (
                f"Lockgate refuses prepared id {event.query_id.hex()}: it is already known "
                "for another statement"
            )
        else:
            return None
        log.error(
            "cql prepared statement not remembered",
            extra={"fields": {**self._fields(), "reason": reason, "tables": outside}},
        )
        self.ctx.record(
            "denied",
            auth.claims,
            auth.resource.name,
            p.t0,
            action=p.action,
            obj=p.obj,
            status=codec.ERR_INVALID,
            decision="deny",
            reason=reason,
            detail={**self._detail(plan), "prepared_on": outside},
        )
        return message

    # -- frames held behind a USE ---------------------------------------------------------------
    def _use_answered(self, event: codec.Event | None) -> None:
        """The in-flight USE was answered: judge the frames that waited for it, in order."""
        self.holds.answered()
        if not isinstance(event, codec.SetKeyspace | codec.Error):
            # Not an answer a USE gets: which keyspace the upstream now uses is unknown, so
            # unqualified names resolve to none (which nothing grants) until the next USE.
            self.keyspace = None
            log.warning("cql USE got an unexpected answer", extra={"fields": self._fields()})
        while (held := self.holds.release_next()) is not None:
            self._on_request(held)
        self._flush_upstream()

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

    def _inspect(self, frame: bytes) -> codec.Event | None:
        self._inspector.receive_data(frame)
        try:
            event = self._inspector.next_event()
        except codec.CqlProtocolError as exc:
            log.error("cql upstream frame not decodable", extra={"fields": {"error": str(exc)}})
            self._inspector = codec.Connection(
                codec.Role.CLIENT, max_frame_bytes=UPSTREAM_MAX_FRAME_BYTES
            )
            return None
        return event if isinstance(event, codec.Event) else None

    def _finish(self, p: _Pending | None, status: int | None, *, error: bool = False) -> None:
        if p is None or not p.audited or self.auth is None:
            return
        auth = self.auth
        self.ctx.observe_upstream(auth.resource.name, self.ctx.clock() - p.t0)
        assert p.plan is not None
        # Server-side failures (0x0000-0x1fff) are upstream errors; request errors are answers.
        event = "upstream_error" if error and (status or 0) < 0x2000 else "allowed"
        self.ctx.record(
            event,
            auth.claims,
            auth.resource.name,
            p.t0,
            action=p.action,
            obj=p.obj,
            status=status,
            decision="allow",
            detail={**self._detail(p.plan), "ref": p.ref},
        )

    def _upstream_lost(self) -> None:
        auth = self.auth
        if auth is None:
            return
        self._refuse_held(self.holds.drain(), "upstream_closed")
        for p in self.pending.values():
            if p.audited and p.plan is not None:
                self.ctx.record(
                    "upstream_error",
                    auth.claims,
                    auth.resource.name,
                    p.t0,
                    action=p.action,
                    obj=p.obj,
                    decision="allow",
                    reason="upstream_closed",
                    detail={**self._detail(p.plan), "ref": p.ref},
                )
        self.pending.clear()
        log.warning("cql upstream connection closed", extra={"fields": self._fields()})


def _token_ttl(claims: Any) -> float | None:
    iat = getattr(claims, "iat", None)
    return float(claims.exp) - float(iat) if iat is not None else None
