"""Upstream → client: how the CQL engine relays the answers of one connection.

Strategy: the codec connection of the upstream login splits the answers into frames
(:meth:`~.codec.Connection.next_frame`); only those the gateway must look into are decoded
(anything but Void and plain Rows, or Rows of system.local/peers reads). SetKeyspace
updates the connection's keyspace and releases the frames held behind a USE, Prepared fills
the shared prepared map (after checking its metadata names the tables that were judged),
topology/status EVENTs are dropped, and every audited request gets its outcome record
(result kind or error code, latency, ``detail.ref`` naming its ``admitted`` record).
Answers are queued while one upstream read chunk is processed and written with one call.
"""

from __future__ import annotations

from typing import Any

from lockgate import _log

from . import codec
from .judge import Pending, SessionState
from .rewrite import forward_event, rewrite_rows
from .statements import tables_outside_plan

log = _log.get("gateway.cql")

READ_SIZE = 65536


class AnswerRelay(SessionState):
    """Upstream → client: relay, rewrite or refuse each answer, and record its outcome."""

    _to_client: list[bytes]  # upstream answers not yet written (coalesced)

    async def _pump_upstream(self) -> None:
        assert self.auth is not None
        link = self.auth.link
        reader, conn = link.reader, link.conn  # the codec connection of the login splits
        while True:
            data = await reader.read(READ_SIZE)
            if not data:
                self._upstream_lost()
                return
            conn.receive_data(data)
            try:
                while (frame := conn.next_frame()) is not codec.NEED_DATA:
                    assert isinstance(frame, codec.Frame)
                    self._on_response(frame)
            except codec.CqlProtocolError as exc:
                log.error(
                    "cql upstream sent an invalid frame header; closing",
                    extra={"fields": {**self._fields(), "error": str(exc)}},
                )
                self._flush_client()  # the valid frames before it still reach the client
                self._upstream_lost()
                return
            self._flush_client()
            await self.writer.drain()

    def _flush_client(self) -> None:
        if self._to_client:
            data = b"".join(self._to_client)
            self._to_client.clear()
            self._write(data)

    def _emit(self, frame: bytes) -> None:
        """Queue an answer for the client; written once per upstream read chunk."""
        self._to_client.append(frame)

    def _on_response(self, frame: codec.Frame) -> None:
        stream = frame.stream
        p = self.pending.pop(stream, None) if stream >= 0 else None
        if stream == self.holds.use_stream:
            self._use_answered(self._relay_answer(frame, p))
        else:
            self._relay_answer(frame, p)

    def _relay_answer(self, frame: codec.Frame, p: Pending | None) -> codec.Event | None:
        """Relay one upstream answer (rewritten or refused where needed) and record its
        outcome; the decoded answer, None when it was relayed without decoding."""
        kind = frame.result_kind
        if kind == codec.RESULT_VOID or (
            kind == codec.RESULT_ROWS and (p is None or p.plan is None or p.plan.rewrite is None)
        ):
            # The hot path: writes' Void and rows nobody rewrites are relayed undecoded.
            self._emit(frame.raw)
            self._finish(p, kind)
            return None
        event = self._inspect(frame)
        raw = frame.raw
        stream = frame.stream
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
                self._emit(raw)
            self._finish(p, codec.ERR_SERVER, error=True)
            return None
        if isinstance(event, codec.ServerEvent):
            if forward_event(event):
                self._emit(raw)
            return event
        status: int | None = None
        failed = isinstance(event, codec.Error)
        if isinstance(event, codec.Error):
            status = event.code
        elif isinstance(event, codec.Result):
            status = event.kind
            if isinstance(event, codec.SetKeyspace):
                self.keyspace = event.keyspace
            elif isinstance(event, codec.SchemaChange) and self.auth is not None:
                self.ctx.views.invalidate(self.auth.resource.name)  # a view may be new
            elif isinstance(event, codec.Prepared) and p is not None and p.plan is not None:
                refusal = self._remember_prepared(event, p) if p.plan.op == "prepare" else None
                if refusal is not None:
                    status, failed = codec.ERR_INVALID, True
                    raw = codec.encode_frame(
                        codec.Error(stream=stream, code=codec.ERR_INVALID, message=refusal)
                    )
            elif isinstance(event, codec.Rows) and p is not None and p.plan is not None:
                rewrite = p.plan.rewrite
                if rewrite is not None:
                    rows = rewrite_rows(event, rewrite, self.local_address, self.local_port)
                    if rows is not event:
                        raw = codec.encode_frame(rows)
        self._emit(raw)
        self._finish(p, status, error=failed)
        return event

    def _remember_prepared(self, event: codec.Prepared, p: Pending) -> str | None:
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
        self._record(
            p,
            "denied",
            status=codec.ERR_INVALID,
            decision="deny",
            reason=reason,
            detail={**self._detail(plan), "prepared_on": outside},
        )
        return message

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

    def _inspect(self, frame: codec.Frame) -> codec.Event | None:
        assert self.auth is not None
        try:
            return self.auth.link.conn.decode(frame)
        except codec.CqlProtocolError as exc:
            log.error("cql upstream frame not decodable", extra={"fields": {"error": str(exc)}})
            return None

    def _finish(self, p: Pending | None, status: int | None, *, error: bool = False) -> None:
        if p is None:
            return
        if p.tickets or p.attempt is not None:  # quota slots and the span: answered now
            p.done(status)
        if not p.audited or self.auth is None:
            return
        auth = self.auth
        self.ctx.observe_upstream(auth.resource.name, self.ctx.clock() - p.t0)
        assert p.plan is not None
        # Server-side failures (0x0000-0x1fff) are upstream errors; request errors are answers.
        event = "upstream_error" if error and (status or 0) < 0x2000 else "allowed"
        self._record(p, event, status=status, decision="allow", detail=self._outcome(p))

    def _record(
        self,
        p: Pending,
        event: str,
        *,
        decision: str,
        detail: dict[str, Any],
        status: int | None = None,
        reason: str | None = None,
    ) -> None:
        """Audit what became of the forwarded request ``p`` (its action, object, latency)."""
        auth = self.auth
        assert auth is not None
        self.ctx.record(
            event, auth.claims, auth.resource.name, p.t0, action=p.action, obj=p.obj,
            status=status, decision=decision, reason=reason, detail=detail,
        )  # fmt: skip

    def _outcome(self, p: Pending) -> dict[str, Any]:
        """An outcome record's detail: the plan's, and the admitted record it follows."""
        assert p.plan is not None
        return {**(p.detail or self._detail(p.plan)), "ref": p.ref}

    def _upstream_lost(self) -> None:
        auth = self.auth
        if auth is None:
            return
        self._refuse_held(self.holds.drain(), "upstream_closed")
        for p in self.pending.values():
            p.done(None, "upstream_closed")
            if p.audited and p.plan is not None:
                self._record(
                    p,
                    "upstream_error",
                    decision="allow",
                    reason="upstream_closed",
                    detail=self._outcome(p),
                )
        self.pending.clear()
        log.warning("cql upstream connection closed", extra={"fields": self._fields()})
