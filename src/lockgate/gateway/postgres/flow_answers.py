"""Server -> client half of a session's flow: relay, outcomes, transaction status.

Every message is relayed as it arrives, in order; only :data:`ANSWERS` are looked into
(:meth:`AnswerRelay.server_message`), so DataRow and CopyData (the bulk) pass as the
server framed them. The flow keeps a FIFO of what it forwarded (:class:`~.flow_units.Unit`), in
the server's answer order, so each CommandComplete / EmptyQueryResponse / PortalSuspended
/ ErrorResponse finds its statement and each ReadyForQuery its Sync:

* CommandComplete -> the statement's effects on the session (``scope.statement_done``:
  search_path, transactions, prepared names) and its outcome record (``allowed``, detail
  ``outcome: done``, ``tag``, ``rows`` from the tag, ``ref`` of the admitted record);
* ErrorResponse -> the failed statement's outcome (``error`` with the SQLSTATE; classes
  08/53/57/58/XX are the server's trouble: ``upstream_error``) and ``not_executed`` for
  what the server now skips (the rest of the Query, or of the batch up to its Sync); the
  probe standing in for a refused message answers 26000, swapped for the refusal here;
* ReadyForQuery -> the transaction status (the server's own), ``scope.ready``;
* CopyInResponse -> the client's rows are expected (``COPY FROM STDIN``);
* a Parse or Bind the server refused or skipped leaves no statement or portal behind.
"""

from __future__ import annotations

from collections import deque
from typing import TYPE_CHECKING

from . import codec
from .flow_scope import FlowScope
from .flow_units import (
    BATCH_END,
    BIND,
    CLOSE,
    DESCRIBE,
    EXECUTE,
    PARSE,
    REFUSAL,
    STATEMENT,
    Out,
    Portal,
    Unit,
    raw,
)
from .judge import Judge
from .lexing import safe_lexing_value

if TYPE_CHECKING:
    from .context import EngineContext

#: What the server answers to the probe standing in for a refused message (no such
#: prepared statement); anything else (a FATAL on shutdown, say) is relayed as it is.
PROBE_FAILED = "26000"
#: The server messages the flow looks at (:meth:`AnswerRelay.server_message`); the rest
#: (DataRow, CopyData, notices, ParameterStatus, ...) go to the client untouched, unlooked.
ANSWERS = frozenset(
    {codec.COMMAND_COMPLETE, codec.READY_FOR_QUERY, codec.ERROR_RESPONSE, codec.EMPTY_QUERY}
    | {codec.PORTAL_SUSPENDED, codec.PARSE_COMPLETE, codec.BIND_COMPLETE, codec.CLOSE_COMPLETE}
    | {codec.ROW_DESCRIPTION, codec.NO_DATA, codec.COPY_IN_RESPONSE, codec.PARAMETER_STATUS}
)
#: ErrorResponse SQLSTATE classes that are the server's trouble, not the statement's.
_SERVER_TROUBLE = ("08", "53", "57", "58", "XX")


class AnswerRelay:
    """What a flow does with the server's messages (:class:`~.flow.Flow` is one)."""

    ctx: EngineContext
    name: str  # the resource's
    scope: FlowScope
    judge: Judge
    _status: str  # the transaction status of the last ReadyForQuery
    _units: deque[Unit]  # forwarded, awaiting the server's answer
    _portals: dict[str, Portal]
    _copy: str  # "open" | "in" | "draining" | "" (see Flow.__init__)

    @property
    def transaction_status(self) -> str:
        return self._status

    @property
    def copy_in(self) -> bool:
        return self._copy == "in"

    def from_server(self, msg: codec.Message) -> Out:
        out = self.server_message(msg.type, msg.body) if msg.type in ANSWERS else None
        return Out(to_client=[raw(msg)]) if out is None else out

    def server_message(self, kind: int, body: bytes) -> Out | None:
        """Note one of the server's :data:`ANSWERS`: None to relay it as it is (the rest of
        the server's messages need no look), else what to do instead (``to_client`` in its
        place; ``close``: nothing after it goes to the client, the session ends)."""
        units = self._units
        head = units[0] if units else None
        swap = None
        if kind == codec.COMMAND_COMPLETE:
            if head is not None and head.kind in (STATEMENT, EXECUTE):
                units.popleft()
                self._complete(head, codec.decode_command_complete(body))
        elif kind == codec.READY_FOR_QUERY:
            self._ready(codec.decode_ready_for_query(body))
        elif kind == codec.ERROR_RESPONSE:
            sqlstate = codec.decode_error_fields(body).get("C", "")
            # (only a REFUSAL unit carries an error)
            if head is not None and head.error is not None and sqlstate == PROBE_FAILED:
                swap = Out(to_client=[head.error])  # the probe failed: the refusal instead
            self._server_error(sqlstate)
        elif kind in (codec.EMPTY_QUERY, codec.PORTAL_SUSPENDED):
            if head is not None and head.kind in (STATEMENT, EXECUTE):
                units.popleft()
                outcome = "empty" if kind == codec.EMPTY_QUERY else "suspended"
                self._finish(head, "allowed", outcome)
        elif kind == codec.PARSE_COMPLETE:
            self._pop(PARSE)
        elif kind == codec.BIND_COMPLETE:
            self._pop(BIND)
        elif kind == codec.CLOSE_COMPLETE:
            self._pop(CLOSE)
        elif kind in (codec.ROW_DESCRIPTION, codec.NO_DATA):
            self._pop(DESCRIBE)  # in a Query or an Execute, no Describe is at the head
        elif kind == codec.COPY_IN_RESPONSE:
            self._copy = "in"
            if any(unit.copy_sync for unit in units):
                # In COPY the server ignores the Syncs sent before the client's CopyDone.
                self._units = deque(unit for unit in units if not unit.copy_sync)
        elif kind == codec.PARAMETER_STATUS:
            return self._parameter_status(*codec.decode_parameter_status(body))
        return swap

    def _parameter_status(self, name: str, value: str) -> Out | None:
        """A setting changed on the server. One that changes how it lexes (server code the
        policy admitted may call set_config: classify refuses only what a text shows) ends
        the session: the gateway would judge texts the server reads otherwise."""
        if safe_lexing_value(name.lower(), value):
            return None
        setting = f"{name}={value}"[:200]
        self.ctx.record(
            "upstream_error", self.judge.claims, self.name, self.ctx.clock(), action="connect",
            decision="error", reason="upstream_session_unsafe", detail={"setting": setting},
        )  # fmt: skip
        message = f"the server's {name[:100]} changed to {value[:100]}: Lockgate ends the session"
        fatal = codec.error_response("08006", message, severity="FATAL")
        return Out(to_client=[fatal], close=True)

    def _pop(self, kind: int) -> None:
        units = self._units
        if units and units[0].kind == kind:
            units.popleft()

    def _complete(self, unit: Unit, tag: str) -> None:
        pending = unit.pending
        if pending is not None:
            statement = pending.record.statement
            self.scope.statement_done(statement, tag)
            for effect in statement.effects:
                # SQL DEALLOCATE and DISCARD ALL reach protocol-level statements too.
                if effect.kind == "discard_all":
                    self.scope.protocol.clear()
                    self._portals.clear()
                elif effect.kind == "deallocate" and not effect.name:
                    self.scope.protocol.clear()
                elif effect.kind == "deallocate":
                    self.scope.protocol.pop(effect.name, None)
        self._finish(unit, "allowed", "done", tag=tag)

    def _server_error(self, sqlstate: str) -> None:
        self.scope.error()
        if self._copy == "in":
            self._copy = "draining"
        units = self._units
        if units and units[0].kind == REFUSAL:
            units.popleft()
        elif units and units[0].kind != BATCH_END:
            failed = units.popleft()
            trouble = sqlstate.startswith(_SERVER_TROUBLE)
            event = "upstream_error" if trouble else "allowed"
            self._finish(failed, event, "error", sqlstate=sqlstate)
        # The server skips the rest of the Query, or of the batch up to its Sync.
        while units and units[0].kind != BATCH_END:
            self._finish(units.popleft(), "allowed", "not_executed")

    def _ready(self, status: str) -> None:
        units = self._units
        while units and units[0].kind != BATCH_END:
            self._finish(units.popleft(), "allowed", "not_executed")
        if units:
            units.popleft()
        if self._copy == "in":
            self._copy = "draining"
        self._status = status
        self.scope.ready(status)

    def _finish(
        self,
        unit: Unit,
        event: str,
        outcome: str,
        *,
        tag: str | None = None,
        sqlstate: str | None = None,
        reason: str | None = None,
    ) -> None:
        """The outcome record of a forwarded statement (``admitted`` before it)."""
        if unit.token:
            self.scope.settled(unit.token)
        if unit.undo is not None and outcome != "done":
            names, name, ours = unit.undo
            if names.get(name) is ours:
                del names[name]  # the server did not take the Parse or Bind
        pending = unit.pending
        if pending is None:
            return
        if pending.tickets or pending.attempt is not None:  # quota slots, span: ended now
            pending.done(sqlstate or ("ok" if outcome == "done" else outcome), reason)
        ctx, rec = self.ctx, pending.record
        ctx.observe_upstream(self.name, ctx.clock() - pending.t0)
        detail = {**pending.detail, "ref": pending.ref, "outcome": outcome}
        if tag is not None:
            detail["tag"] = tag
            rows = codec.rows_affected(tag)
            if rows is not None:
                detail["rows"] = rows
        if sqlstate:
            detail["sqlstate"] = sqlstate
        if reason is None and outcome == "not_executed":
            reason = outcome
        ctx.record(
            event, self.judge.claims, self.name, pending.t0, action=rec.action,
            obj=rec.obj, decision="allow", reason=reason, detail=detail,
        )  # fmt: skip

    def upstream_lost(self, reason: str = "upstream_closed") -> None:
        """The upstream connection ended: statements still unanswered get their outcome."""
        units = self._units
        while units:
            unit = units.popleft()
            if unit.pending is not None:
                self._finish(unit, "upstream_error", "lost", reason=reason)
        self.scope.forget_unsettled()


__all__ = ["ANSWERS", "AnswerRelay"]
