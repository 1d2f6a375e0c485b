"""One PostgreSQL session's statement state machine: judge, forward, relay, audit.

Sans-I/O apart from awaiting audit durability: the session hands every client message to
:meth:`Flow.from_client` and every server message to :meth:`Flow.from_server`, and writes
what the returned :class:`Out` says (``to_server``, then ``to_client``; ``close``: end the
session once ``to_client`` is written). The relay's own path does not frame anything again:
:meth:`Flow.client_message` answers None for a message that goes to the server as it is
(nearly all), and :meth:`~.flow_answers.AnswerRelay.server_message` sees only the server
messages it must (the session passes the rest, and unchanged runs, as the peer framed them).

Client side:

* ``Query`` — every statement is classified (:mod:`.judge`) and decided; all must be allowed
  or the whole text is refused. Allowed: one ``admitted`` record per statement, written ahead
  and durable before the Query is returned for the server.
* ``Parse`` is judged at once (the name remembered: unnamed overwritten, a name in use is
  left to the server to refuse); ``Bind`` ties a portal to its statement's text and search
  paths; ``Execute`` is judged again under the scope of now and its Bind (the server plans
  a portal at Bind, after search_path changes) and gets one admitted record.
  ``Describe``, ``Close``, ``Flush`` and ``Sync`` are forwarded.
* A text whose placing rests on relation catalog facts another session may have changed
  since the last read (:attr:`~.judge.Judged.catalog_sensitive`: a name found past a schema
  of the path, a view or a parent expanded ...) is placed again on a catalog read that
  started after it arrived (shared by the sessions that ask together); a failed read
  leaves the placing on what is known.
* ``FunctionCall`` is refused (``admin`` on ``function_call_protocol``): the fast-path
  interface calls any function by OID, which no statement text shows.
* ``CopyData``/``CopyDone``/``CopyFail`` are forwarded after a text that may be a COPY
  (sent or refused: a client may stream rows before the server asks, and the server drops
  rows outside COPY), while a ``COPY FROM STDIN`` runs or right after it failed; anywhere
  else they are a protocol error (:class:`~.codec.ProtocolError`; the session answers FATAL
  and closes). A Sync sent between an extended-protocol COPY and its CopyDone is one the
  server ignores once in COPY: it expects no ReadyForQuery then.
* ``Terminate`` ends the session (the session sends Terminate upstream itself).

Refusals keep the protocol exact, transactions included: the server must fail where the
refused message stood, as it would for its own error (an implicit transaction of a pipeline
batch rolls back, a transaction block becomes failed 'E'). So the refused message is not
forwarded; a ``Describe`` of a prepared statement that cannot exist (:data:`PROBE_NAME`,
which clients may not use) goes in its place, and its ErrorResponse is swapped for the
gateway's own (nothing runs, nothing is logged as a statement). A refused Query is followed
by a ``Sync``; after a refused extended-protocol message the client's messages are
discarded up to and including its ``Sync``, which *is* forwarded (``Flush`` still is: it
runs nothing, and a client waiting on it gets its answers). If the server failed earlier in
the batch it skips the probe too, and the client sees the server's error alone, as it would
without the gateway. ReadyForQuery is always the server's own.

Refusal SQLSTATEs: ``42501`` for policy denials and texts the classifier cannot place; a
token that expired or was revoked mid-session: ``FATAL 42501`` naming the reason, audited
``auth_failed``, then the session closes (the client reconnects with a fresh token); audit
unavailable: ``53000`` (the gateway lacks a resource now; retry later), audited as
``upstream_error`` once the sink recovers, the session stays usable.

Quotas and spans (:mod:`.flow_quotas`): an allowed statement asks the quota gate before
its record is written ahead; over a quota it is refused like a denial but with ``53300``
(audited ``throttled``), a paced one waits where it stands, so the order holds. The
tickets are given back with the statement's outcome (:mod:`.flow_answers`). One span per
admitted or denied statement, never its text.

Server side: :mod:`.flow_answers`.
"""

from __future__ import annotations

import re
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from lockgate import _log, tracing
from lockgate.errors import AuditUnavailable
from lockgate.quotas.engines import (
    release_all,
)

from . import codec
from .classified import Unplaceable
from .flow_answers import AnswerRelay
from .flow_quotas import TOO_MANY_CONNECTIONS, FlowQuotas
from .flow_scope import FlowScope, WidenedScope
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
    Pending,
    Portal,
    Unit,
    mask_literals,
    raw,
)
from .judge import Admission, Judge, Judged, KeyedScope, Refusal

if TYPE_CHECKING:
    from lockgate.config import PostgresResource
    from lockgate.identity import Claims

    from .context import EngineContext
    from .judge import Classifier
    from .scope import RelationCatalog, SessionScope

log = _log.get("gateway.postgres")

_SYNC = codec.sync()
#: A catalog-sensitive placing (:attr:`~.judge.Judged.catalog_sensitive`) stands on a
#: relation catalog read at most this long ago, else the catalog is read again first. 0:
#: always a read that starts after the text arrived (any window would let a relation
#: created just before the text shadow the one judged).
FRESH_CATALOG_SECONDS = 0.0
#: A prepared statement name no client may use: refusals are answered through it.
PROBE_NAME = "\x1flockgate refused"
_PROBE = codec.encode_message(codec.Describe("S", PROBE_NAME))
_COPY_MESSAGES = frozenset({codec.COPY_DATA, codec.COPY_DONE, codec.COPY_FAIL})
#: A text the classifier could not read may still be a COPY: copy messages from the client
#: are expected after it (stray ones are harmless: outside COPY the server drops them).
_COPY_WORD = re.compile(r"\bcopy\b", re.IGNORECASE).search


@dataclass(slots=True, eq=False)
class SessionInfo:
    """What the flow knows of a session, built by the engine after the client's login."""

    claims: Claims  # verified at login; refreshed by every statement's token check
    token: str  # the client's Lockgate token; never logged nor recorded
    resource: PostgresResource
    ctx: EngineContext
    client: str = ""  # "host:port", for log lines only
    #: returns once the client closed its side (a paced statement then never runs)
    client_gone: Callable[[], Awaitable[None]] | None = None


class Flow(AnswerRelay, FlowQuotas):
    """The statement state machine of one client session (see the module docstring)."""

    def __init__(
        self,
        info: SessionInfo,
        scope: SessionScope,
        *,
        status: str = "I",
        classifier: Classifier | None = None,
    ) -> None:
        self.info = info
        self.ctx = info.ctx
        self.name = info.resource.name
        self.scope = FlowScope(scope)
        self.judge = Judge(info.claims, info.token, info.resource, info.ctx, classifier)
        self._status = status
        self._units: deque[Unit] = deque()  # forwarded, awaiting the server's answer
        self._portals: dict[str, Portal] = {}
        self._discarding = False  # a refused extended message: drop until Sync
        # "open": a COPY was sent or refused, "in": COPY FROM STDIN runs, "draining": it
        # failed (the server drops the rows still coming); "": no copy messages expected
        self._copy = ""
        self._copy_syncs = False  # a Sync now may be one the server ignores (in COPY)
        self._tokens = 0
        self._catalog: RelationCatalog | None = None  # the last shared catalog adopted here

    # == client -> server =====================================================================
    async def from_client(self, msg: codec.Message) -> Out:
        out = await self.client_message(msg.type, msg.body)
        return Out([raw(msg)]) if out is None else out

    async def client_message(self, kind: int, body: bytes) -> Out | None:
        """Judge one client message: None when it goes to the server as it is (the session
        passes its own frame on), else what to send and answer instead."""
        if kind in _COPY_MESSAGES:
            return self._copy_message(kind)
        if self._copy and kind != codec.SYNC and kind != codec.FLUSH:
            self._copy = ""  # the client has moved on from its COPY
            self._copy_syncs = False
        if kind == codec.TERMINATE:
            return Out(close=True)
        if self._discarding:
            if kind == codec.SYNC:
                self._discarding = False
                return self._forward(Unit(BATCH_END, copy_sync=self._copy_syncs))
            if kind == codec.FLUSH:
                return None
            return Out()  # the rest of a refused batch, dropped as the server would
        if kind == codec.BIND:
            return self._bind(body)
        if kind == codec.EXECUTE:
            return await self._execute(body)
        if kind == codec.SYNC:
            return self._forward(Unit(BATCH_END, copy_sync=self._copy_syncs))
        if kind == codec.DESCRIBE:
            return self._forward(Unit(DESCRIBE))
        if kind == codec.QUERY:
            return await self._query(body)
        if kind == codec.PARSE:
            return await self._parse(body)
        if kind == codec.CLOSE:
            close = codec.decode_close(body)
            if close.kind == "S":
                self.scope.protocol.pop(close.name, None)
            else:
                self._portals.pop(close.name, None)
            return self._forward(Unit(CLOSE))
        if kind == codec.FLUSH:
            return None
        if kind == codec.FUNCTION_CALL:
            t0 = self.ctx.clock()
            refusal = self.judge.check_token() or self.judge.denial(
                "admin",
                "function_call_protocol",
                "the function call protocol is not supported; call the function in SQL",
            )
            return self._refuse(refusal, t0, {"command": "FunctionCall"}, batch=False)
        raise codec.ProtocolError(f"unexpected message type {chr(kind)!r} from the client")

    async def _query(self, body: bytes) -> Out | None:
        t0 = self.ctx.clock()
        text = codec.decode_query(body)
        judge = self.judge
        refusal = judge.check_token()
        if refusal is not None:
            return self._refuse(refusal, t0, _text_detail(text), batch=False)
        judged = await self._judged(text, self.scope)
        if _may_copy(judged, text):
            self._copy = "open"  # the client may stream its rows before the server asks
        if isinstance(judged, Unplaceable):
            return self._refuse(judge.unplaceable(judged), t0, _text_detail(text), batch=False)
        verdict = _reserved(judged) or judge.decide(judged)
        if isinstance(verdict, Refusal):
            return self._refuse(verdict, t0, _judged_detail(judged), batch=False)
        pendings = await self._admit(verdict, t0, {})
        if isinstance(pendings, Refusal):
            return self._refuse(pendings, t0, _judged_detail(judged), batch=False)
        self._units.extend(Unit(STATEMENT, p, self._sent(p)) for p in pendings)
        return self._forward(Unit(BATCH_END))

    async def _parse(self, body: bytes) -> Out | None:
        t0 = self.ctx.clock()
        parse = codec.decode_parse(body)
        names = {"statement_name": parse.name}
        refusal = self.judge.check_token()
        if refusal is not None:
            return self._refuse(refusal, t0, {**_text_detail(parse.query), **names})
        judged = await self._judged(parse.query, self.scope)
        if isinstance(judged, Unplaceable):
            refusal = self.judge.unplaceable(judged)
            return self._refuse(refusal, t0, {**_text_detail(parse.query), **names})
        verdict = self.judge.decide(judged)
        if parse.name == PROBE_NAME:
            verdict = _RESERVED
        if isinstance(verdict, Refusal):
            return self._refuse(verdict, t0, {**_judged_detail(judged), **names})
        protocol = self.scope.protocol
        unit = Unit(PARSE)
        # A name in use makes the server refuse the Parse: the old text stays the name's.
        if not parse.name or (
            parse.name not in protocol and parse.name not in self.scope.base.prepared
        ):
            protocol[parse.name] = parse.query  # now: a pipelined Bind may follow at once
            unit.undo = (protocol, parse.name, parse.query)
        return self._forward(unit)

    def _bind(self, body: bytes) -> Out | None:
        portal_name, statement = _names(body, 2, "Bind")
        text = self.scope.protocol.get(statement)
        if text is None and statement:
            text = self.scope.base.prepared.get(statement)
        unit = Unit(BIND)
        if text is None:
            self._portals.pop(portal_name, None)  # the server refuses the Bind
        else:
            portal = Portal(text, statement, self.scope.search_paths)
            self._portals[portal_name] = portal
            unit.undo = (self._portals, portal_name, portal)
        return self._forward(unit)

    async def _execute(self, body: bytes) -> Out | None:
        t0 = self.ctx.clock()
        portal_name = _names(body, 1, "Execute")[0]
        names: dict[str, Any] = {"portal": portal_name}
        portal = self._portals.get(portal_name)
        judge = self.judge
        refusal = judge.check_token()
        if refusal is None and portal is None:
            refusal = Refusal(
                "42501",
                f"Lockgate refused to execute portal {portal_name!r}: it was not bound "
                "to a statement in this session",
                "unknown_portal",
            )
        if refusal is not None:
            return self._refuse(refusal, t0, names)
        assert portal is not None
        names["statement_name"] = portal.statement
        scope = self._scope_for(portal)
        judged = await self._judged(portal.text, scope)
        if _may_copy(judged, portal.text):
            # Rows may come before the server asks; a Sync sent before the client's CopyDone
            # goes unanswered once the server is in COPY (it ignores Sync there).
            self._copy, self._copy_syncs = "open", True
        if isinstance(judged, Unplaceable):
            refusal = judge.unplaceable(judged)
            return self._refuse(refusal, t0, {**_text_detail(portal.text), **names})
        verdict = judge.decide(judged)
        if isinstance(verdict, Refusal):
            return self._refuse(verdict, t0, {**_judged_detail(judged), **names})
        pendings = await self._admit(verdict, t0, names, first_only=True)
        if isinstance(pendings, Refusal):
            return self._refuse(pendings, t0, {**_judged_detail(judged), **names})
        pending = pendings[0] if pendings else None
        token = self._sent(pending) if pending is not None else 0
        return self._forward(Unit(EXECUTE, pending, token))

    async def _judged(self, text: str, scope: KeyedScope) -> Judged | Unplaceable:
        """Classify ``text``; a placing that rests on catalog facts others may have changed
        since the last read (a name found past a schema of the path, a view expanded ...)
        is done again on a catalog read after it was asked for (or read just now)."""
        judged = await self.judge.judged_async(text, scope)
        if not isinstance(judged, Judged) or not judged.catalog_sensitive:
            return judged
        relations, name = self.ctx.relations, self.name
        age = relations.age(name)
        if age is None or age > FRESH_CATALOG_SECONDS:
            fresh = await relations.read_now(self.info.resource, self.ctx.secrets)
        else:
            fresh = relations.cached(name)
        if fresh is None or fresh is self._catalog:
            return judged  # a failed read: judged on what is known
        self._catalog = fresh
        self.scope.base.set_catalog(fresh)  # the session's own changes stay on top
        return await self.judge.judged_async(text, scope)

    def _scope_for(self, portal: Portal) -> KeyedScope:
        """The scope to judge a portal under: now, and the paths it was bound with."""
        scope = self.scope
        if all(path in scope.search_paths for path in portal.paths):
            return scope
        return WidenedScope(scope, portal.paths)

    def _copy_message(self, kind: int) -> Out | None:
        if not self._copy:
            raise codec.ProtocolError(
                f"unexpected COPY message {chr(kind)!r}: no COPY FROM STDIN in progress"
            )
        if kind != codec.COPY_DATA:
            self._copy = ""  # CopyDone / CopyFail end it; the server answers
            self._copy_syncs = False
        return None  # forwarded as it is

    # -- admission ------------------------------------------------------------------------
    async def _admit(
        self, admission: Admission, t0: float, names: dict[str, Any], *, first_only: bool = False
    ) -> list[Pending] | Refusal:
        """Write the admitted records ahead and wait until they are durable; or refuse."""
        ctx, claims = self.ctx, self.judge.claims
        records = admission.judged.records[:1] if first_only else admission.judged.records
        tickets = await self._quota_tickets(records, admission)
        if isinstance(tickets, Refusal):
            return tickets
        pendings: list[Pending] = []
        try:
            for i, rec in enumerate(records):
                # each record names the rule that allowed its own object(s)
                rule, reason = admission.rule_for(rec)
                detail = {**admission.detail_for(rec), **names}
                admitted = ctx.records.admitted(
                    claims, self.name, rec.action, rec.obj, rule, reason, detail
                )
                pending = Pending(t0, rec, ctx.audit.write_ahead(admitted), detail)
                if tickets:
                    pending.tickets = tickets[i]
                if tracing.enabled():
                    pending.span = self._span(rec, rule, reason)
                pendings.append(pending)
            durable = ctx.audit.durable()
            if durable is not None:
                await durable
        except BaseException as exc:
            for i in range(len(pendings), len(tickets)):
                release_all(tickets[i])  # not written ahead: never to be forwarded
            for pending in pendings:
                pending.done("53000" if isinstance(exc, AuditUnavailable) else "cancelled")
            if not isinstance(exc, AuditUnavailable):
                raise
            log.error(
                "postgres statement refused: audit unavailable",
                extra={"fields": {"resource": self.name, "principal": claims.sub}},
            )
            for rec in records:
                # Queued, not written ahead: it lands once the audit recovers (nothing ran).
                ctx.record(
                    "upstream_error", claims, self.name, t0, action=rec.action, obj=rec.obj,
                    decision="error", rule=admission.rule_for(rec)[0],
                    reason="audit_unavailable",
                    detail={**admission.detail_for(rec), **names, "error": str(exc)[:200]},
                )  # fmt: skip
            return Refusal(
                "53000",
                "Lockgate audit unavailable: statement not run; retry later",
                "audit_unavailable",
                event="",
            )
        for rec in records:
            ctx.count(self.name, rec.action, "allow", self.judge.claims.dag_id)
        for pending in pendings:
            pending.forwarded()
        return pendings

    def _refuse(
        self, refusal: Refusal, t0: float, detail: dict[str, Any], *, batch: bool = True
    ) -> Out:
        """Audit ``refusal`` and answer it in order; ``batch``: an extended-protocol message
        (drop the client's messages up to its Sync); else a Query or FunctionCall (a Sync
        goes upstream in its place)."""
        ctx, claims = self.ctx, self.judge.claims
        if refusal.event:
            ctx.record(
                refusal.event, claims, self.name, t0, action=refusal.action, obj=refusal.obj,
                decision="deny", rule=refusal.rule, reason=refusal.reason,
                detail={**detail, **(refusal.detail or {})},
            )  # fmt: skip
        if refusal.action is not None:
            ctx.count(self.name, refusal.action, "deny", claims.dag_id if claims else None)
            if refusal.event == "denied" and tracing.enabled():
                self._denied_span(refusal, detail)
        if refusal.close:
            error = codec.error_response(refusal.sqlstate, refusal.message, severity="FATAL")
            return Out(to_client=[error], close=True)
        # The server must fail where the refused message was, as for its own error: a
        # Describe of a statement that cannot exist does, with nothing run nor logged; its
        # ErrorResponse is swapped for the gateway's (see from_server).
        error = codec.error_response(refusal.sqlstate, refusal.message)
        self._units.append(Unit(REFUSAL, error=error))
        out = Out([_PROBE])
        if batch:
            self._discarding = True
        else:
            out.to_server.append(_SYNC)
            self._units.append(Unit(BATCH_END))
        return out

    def _sent(self, pending: Pending) -> int:
        """Note an admitted statement as in flight; the token that settles it."""
        self._tokens += 1
        self.scope.sent(self._tokens, (pending.record.statement,))
        return self._tokens

    def _forward(self, unit: Unit) -> Out | None:
        """The message goes to the server as it is (None: nothing in its place); ``unit``
        awaits its answer."""
        self._units.append(unit)
        return None


_RESERVED = Refusal(
    "42501", f"Lockgate reserves the prepared statement name {PROBE_NAME!r}", "reserved_name"
)


def _reserved(judged: Judged) -> Refusal | None:
    """The refusal of a SQL PREPARE (or EXECUTE, DEALLOCATE) of the gateway's own name."""
    if any(r.statement.prepared_name == PROBE_NAME for r in judged.records):
        return _RESERVED
    return None


def _may_copy(judged: Judged | Unplaceable, text: str) -> bool:
    """Whether ``text`` may be a COPY (a text the classifier could not read: by its words)."""
    return judged.copy if isinstance(judged, Judged) else _COPY_WORD(text) is not None


def _names(body: bytes, count: int, what: str) -> list[str]:
    """The first ``count`` strings of a Bind or Execute (portal and statement names),
    without decoding the rest: parameter values are the server's to read."""
    names: list[str] = []
    start = 0
    for _ in range(count):
        end = body.find(b"\0", start)
        if end < 0:
            raise codec.ProtocolError(f"malformed {what}: a name lacks its terminator")
        try:
            names.append(body[start:end].decode())
        except UnicodeDecodeError:
            raise codec.ProtocolError(f"malformed {what}: a name is not UTF-8") from None
        start = end + 1
    return names


def _judged_detail(judged: Judged) -> dict[str, Any]:
    records = judged.records
    if len(records) == 1:
        return dict(records[0].detail)
    return {"statements": [r.detail for r in records]} if records else {}


def _text_detail(text: str) -> dict[str, Any]:
    # The classifier could not read it, so its literals cannot be told apart from
    # passwords: all of them are masked.
    return {"statement": mask_literals(text)}


__all__ = ["TOO_MANY_CONNECTIONS", "Flow", "Out", "SessionInfo"]
