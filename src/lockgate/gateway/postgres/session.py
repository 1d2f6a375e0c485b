"""One client connection through the PostgreSQL engine: login, upstream, two pumps, the end.

Strategy: one upstream connection per client connection (session pooling), opened as the
gateway's own login only once the client's token verified (:mod:`.startup`). Before the
client hears ``AuthenticationOk`` the session reads the upstream's relation names
(:mod:`.catalog`, shared between sessions for a few seconds), so the first statement can
already be placed. The client then gets ``AuthenticationOk``, the upstream's
``ParameterStatus`` messages, the gateway's *own* ``BackendKeyData`` (:mod:`.cancel` maps it
to the upstream's) and ``ReadyForQuery``.

Then two pumps run side by side, and every message goes through the session's
:class:`~.flow.Flow`, which judges statements, writes their records ahead and keeps the
protocol exact:

* client -> upstream: bytes are cut into messages (capped at the resource's
  ``max_message_bytes``, checked from the header), judged, and what the flow forwards is
  written upstream. The next client chunk is read only once the upstream took the previous
  one (``drain``), so a COPY FROM STDIN streams in bounded memory;
* upstream -> client: messages are relayed through the flow (outcomes, transaction status,
  injected refusals), the client drained per chunk likewise.

Bytes for each side are collected while a chunk is processed and written with one call
(not one per message), in the order both pumps produced them. Relation names stay current:
a DDL command tag marks the shared catalog stale, and a session picks up a newer shared
catalog (read by a later login) at its next Query or Parse, keeping its own changes on top.

Quotas (:mod:`lockgate.quotas`): a ``sessions`` cap is asked once the token verified and
before the upstream login; over it the client gets ``FATAL 53300`` (too_many_connections)
naming the limit before any AuthenticationOk, audited ``throttled``. The slot is given back
when the session ends, whatever ends it. Statements ask the gate in the flow (:mod:`.flow`).

Endings: the client closes or sends Terminate -> Terminate upstream, both closed. The
upstream closes or breaks (a restart mid-query) -> the flow records the lost statements, the
client gets ``FATAL 08006 upstream connection lost`` (unless the server already said why,
e.g. ``57P01`` on shutdown) and the connection closes; the client's next connection logs in
to the server anew. No traffic for the resource's ``idle_timeout`` while nothing is in
flight -> ``FATAL 57P05``. A malformed or oversized client message -> ``FATAL 08P01`` and an
audit record. :meth:`ClientSession.terminate` (the engine, for a removed or changed
resource) writes a FATAL error and ends the session. No exception leaves
:meth:`ClientSession.run`.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import ssl
from dataclasses import dataclass

from lockgate import _log
from lockgate.errors import AuditUnavailable, UpstreamUnavailable
from lockgate.quotas import NO_TICKET, THROTTLED, QuotaTicket, Throttled
from lockgate.quotas.engines import (
    count_throttled,
    release_all,
    settle,
    throttled_detail,
    throttled_message,
)

from . import codec, upstream
from .catalog import CatalogUnavailable
from .context import READ_SIZE, UPSTREAM_MAX_MESSAGE_BYTES, EngineContext
from .flow import TOO_MANY_CONNECTIONS, Flow, SessionInfo
from .flow_answers import ANSWERS
from .flow_quotas import ClientGone
from .relation_catalog import RelationCatalog
from .scope import SessionScope
from .session_login import LoginRefusal, greeting, refusal_after_login, unreachable
from .startup import Login, Startup

log = _log.get("gateway.postgres")

UPSTREAM_LOST = "upstream connection lost"
#: Client reads kept while a statement waits for its quota (each up to READ_SIZE bytes).
READ_AHEAD_CHUNKS = 16
#: CommandComplete tags (first four bytes) after which the shared relation catalog is stale.
_DDL_TAGS = frozenset({b"CREA", b"DROP", b"ALTE", b"IMPO"})


@dataclass(frozen=True, slots=True)
class ListenerSettings:
    """What a session needs of the listener it came in on."""

    tls: ssl.SSLContext | None
    allow_plaintext: bool
    handshake_timeout: float


class _Ended(Exception):
    """The session ends; the client was told why (or is gone)."""


class ClientSession:
    """One client connection; :meth:`run` it as a task."""

    def __init__(
        self,
        ctx: EngineContext,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        listener: ListenerSettings,
    ) -> None:
        self.ctx = ctx
        self.reader = reader
        self.writer = writer
        self.listener = listener
        peer = writer.get_extra_info("peername") or ("", 0)
        self.client = f"{peer[0]}:{peer[1]}" if peer[0] else ""
        self.login: Login | None = None
        self.link: upstream.UpstreamLink | None = None
        self.flow: Flow | None = None
        self.scope: SessionScope | None = None
        self._catalog: RelationCatalog | None = None  # the shared catalog the scope is on
        self.cancel_pid: int | None = None
        self._server_said_fatal = False  # the server's own FATAL was relayed: no second one
        self._in_flight = 0  # Query/Sync sent minus ReadyForQuery relayed: busy, not idle
        self._last_read = asyncio.get_running_loop().time()  # the client's last bytes
        self._terminated = False
        self._lost_recorded = False  # flow.upstream_lost() was called (once only)
        self._session_quota: QuotaTicket = NO_TICKET  # the ``sessions`` slot, given back at end
        self._live_id: str | None = None  # its row among the sessions open now (live_sessions)
        # Client bytes read while a statement waited for its quota (:meth:`_client_gone`),
        # judged next, before anything read later.
        self._read_ahead: list[bytes] = []
        # Bytes bound for each side, in the order both pumps produced them, written with one
        # call per read chunk (not per message: a result of 1,000 rows is one write).
        self._to_server: list[bytes] = []
        self._to_client: list[bytes] = []

    # -- lifecycle --------------------------------------------------------------------------
    async def run(self) -> None:
        t0 = self.ctx.clock()
        try:
            self.login = await self._startup(t0)
            if self.login is None:
                return
            if not await self._open_session(self.login, t0):
                return
            messages = await self._connect(self.login, t0)
            if messages is None:
                return
            await self._relay(messages)
        except (ConnectionError, asyncio.IncompleteReadError, ssl.SSLError, _Ended):
            pass
        except Exception:  # the connection handler must never raise
            log.exception("postgres connection failed", extra={"fields": self._fields()})
            self._fatal("XX000", "Lockgate internal error; the gateway's log says more")
        finally:
            await self._close()

    async def _startup(self, t0: float) -> Login | None:
        try:
            async with asyncio.timeout(self.listener.handshake_timeout) as deadline:
                startup = Startup(
                    self.ctx, self.reader, self.writer,
                    tls=self.listener.tls, allow_plaintext=self.listener.allow_plaintext,
                    deadline=deadline,
                )  # fmt: skip
                return await startup.run(t0)
        except TimeoutError:
            self._fatal("08006", "Lockgate: the login did not finish in time")
            self.ctx.refusals.refuse(
                peer=self.writer.get_extra_info("peername"), status=None,
                reason="handshake_timeout", event="auth_failed", action="connect", t0=t0,
            )  # fmt: skip
            return None

    async def _open_session(self, login: Login, t0: float) -> bool:
        """Take a ``sessions`` quota slot before the upstream login; over the quota the
        client gets ``FATAL 53300`` (before AuthenticationOk), audited ``throttled``."""
        resource, claims = login.resource.name, login.claims
        opened = self.ctx.quotas.open_session(claims, resource)
        if inspect.isawaitable(opened):
            opened = await settle(opened)
        if not isinstance(opened, Throttled):
            self._session_quota = opened
            return True
        self._fatal(
            TOO_MANY_CONNECTIONS,
            throttled_message(opened, "a new session", claims.sub, resource),
        )
        self.ctx.count(resource, "connect", "deny", claims.dag_id)
        count_throttled(resource, opened)
        self.ctx.record(
            THROTTLED, claims, resource, t0, action="connect", decision="deny",
            reason=THROTTLED, detail=throttled_detail(opened),
        )  # fmt: skip
        return False

    async def _connect(self, login: Login, t0: float) -> codec.MessageReader | None:
        """Log in upstream and read the relation catalog; then greet the client. The
        upstream's message reader, or None when refused (answered and audited)."""
        ctx, resource = self.ctx, login.resource
        messages = codec.MessageReader(UPSTREAM_MAX_MESSAGE_BYTES)
        try:
            async with asyncio.timeout(resource.connect_timeout + resource.handshake_timeout):
                self.link = link = await upstream.connect(resource, ctx.secrets, login.parameters)
                messages.feed(link.pending)
                catalog = await ctx.relations.get(resource.name, link.writer, link.reader, messages)
        except (UpstreamUnavailable, CatalogUnavailable, OSError, TimeoutError,
                codec.ProtocolError) as exc:  # fmt: skip
            refusal: LoginRefusal | None = unreachable(resource.name, exc)
        else:
            refusal = refusal_after_login(ctx, login, link)
        if refusal is not None:
            self._fatal(refusal.sqlstate, refusal.message)
            ctx.record(
                refusal.event, login.claims, resource.name, t0, action="connect",
                decision=refusal.decision, reason=refusal.reason, detail=refusal.detail,
            )  # fmt: skip
            return None
        self.cancel_pid, secret = ctx.cancels.issue(
            resource, login.claims, link.backend_pid, link.backend_secret
        )
        info = SessionInfo(
            login.claims, login.token, resource, ctx, client=self.client,
            client_gone=self._client_gone,
        )  # fmt: skip
        # "$user" in a search path names the upstream login user, as the server expands it.
        self.scope = SessionScope(tuple(resource.search_path), catalog, user=resource.username)
        self._catalog = catalog
        self.flow = Flow(info, self.scope)
        self.writer.write(greeting(link, self.cancel_pid, secret))
        ctx.record(
            "allowed", login.claims, resource.name, t0, action="connect", decision="allow",
            detail={"user": login.user[:100], "tls": login.tls},
        )  # fmt: skip
        self._live_id = ctx.shared.live.opened("postgres", resource.name, login.claims, self.client)
        return messages

    @property
    def terminated(self) -> bool:
        """True once :meth:`terminate` ended the session from outside."""
        return self._terminated

    def terminate(self, sqlstate: str, message: str) -> None:
        """End the session from outside (the engine): tell the client, then close."""
        if not self._terminated:
            self._terminated = True
            self._fatal(sqlstate, message)

    def _fatal(self, sqlstate: str, message: str) -> None:
        self._to_client.append(codec.error_response(sqlstate, message, severity="FATAL"))
        with contextlib.suppress(Exception):
            self._flush()

    def _upstream_lost(self, reason: str) -> None:
        """Statements still awaiting their outcome get one (once per session)."""
        if self.flow is not None and not self._lost_recorded:
            self._lost_recorded = True
            self.flow.upstream_lost(reason=reason)

    async def _close(self) -> None:
        self._upstream_lost("session_ended")  # statements' quota slots are given back there
        quota, self._session_quota = self._session_quota, NO_TICKET
        release_all([quota])
        if self._live_id is not None:
            self.ctx.shared.live.closed(self._live_id)
            self._live_id = None
        if self.cancel_pid is not None:
            self.ctx.cancels.release(self.cancel_pid)
            self.cancel_pid = None
        link = self.link
        if link is not None:
            with contextlib.suppress(Exception):
                link.writer.write(codec.terminate())
            link.close()
        with contextlib.suppress(Exception):
            self.writer.close()
            await asyncio.wait_for(self.writer.wait_closed(), 1.0)

    # -- relay --------------------------------------------------------------------------------
    async def _relay(self, upstream_messages: codec.MessageReader) -> None:
        assert self.login is not None
        pumps = [
            asyncio.create_task(self._pump_client(), name="pg-client"),
            asyncio.create_task(self._pump_upstream(upstream_messages), name="pg-upstream"),
            asyncio.create_task(self._watch_idle(self.login.resource.idle_timeout), name="pg-idle"),
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
        assert self.login is not None and self.link is not None and self.flow is not None
        resource, flow, up = self.login.resource, self.flow, self.link.writer
        messages = codec.MessageReader(resource.max_message_bytes)
        loop = asyncio.get_running_loop()
        t0 = self.ctx.clock()
        while True:
            if self._read_ahead:
                data = self._read_ahead.pop(0)
            else:
                data = await self.reader.read(READ_SIZE)
            self._last_read = loop.time()
            if not data:
                return
            messages.feed(data)
            try:
                while True:
                    block, frames = messages.frames()
                    if not frames:
                        break
                    await self._from_client(flow, block, frames)
            except codec.ProtocolError as exc:
                self._fatal(exc.sqlstate, str(exc))
                reason = (
                    "message_too_large" if isinstance(exc, codec.MessageTooLarge)
                    else "protocol_error"
                )  # fmt: skip
                self.ctx.record(
                    "denied", self.login.claims, resource.name, t0, action="connect",
                    decision="deny", reason=reason, detail={"error": str(exc)[:500]},
                )  # fmt: skip
                raise _Ended from None
            except AuditUnavailable:
                self._fatal("58000", "Lockgate cannot write its audit trail; try again later")
                raise _Ended from None
            except ClientGone:  # while a statement waited for its quota: it never ran
                return
            self._flush()
            await _drain(up)  # back-pressure: the upstream took this chunk before the next
            await _drain(self.writer)

    async def _from_client(self, flow: Flow, block: bytes, frames: list[codec.Frame]) -> None:
        """Judge a block of client messages; each run the flow passes on unchanged goes
        upstream as one slice of the block (the whole block, usually), in order with what
        the flow sends in place of the others."""
        resource = self.login.resource.name if self.login is not None else ""
        run = done = 0  # block[run:done]: forwarded as they are, not yet queued
        try:
            for kind, start, end in frames:
                if kind == codec.QUERY or kind == codec.SYNC:
                    self._in_flight += 1
                if kind == codec.QUERY or kind == codec.PARSE:
                    self._adopt_fresher_catalog(resource)
                out = await flow.client_message(kind, block[start + codec.HEADER_SIZE : end])
                if out is None:
                    done = end
                    continue
                if run < done:
                    self._to_server.append(block[run:done])
                run = done = end
                self._to_server += out.to_server
                self._to_client += out.to_client
                if out.close:
                    self._flush()
                    raise _Ended
        finally:
            if run < done:
                self._to_server.append(block if done - run == len(block) else block[run:done])

    async def _client_gone(self) -> None:
        """Return once the client closed its side: what it sends meanwhile is kept for the
        pump (at most :data:`READ_AHEAD_CHUNKS` reads; then it is not read until the wait
        is over)."""
        while len(self._read_ahead) < READ_AHEAD_CHUNKS:
            data = await self.reader.read(READ_SIZE)
            if not data:
                self._read_ahead.append(data)  # the pump sees the end too
                return
            self._read_ahead.append(data)
        await asyncio.Event().wait()  # bounded: wait to be cancelled

    def _adopt_fresher_catalog(self, resource: str) -> None:
        """Judge on the newest shared relation catalog: one read by a later login or in the
        background (after DDL through the gateway, or once the old one aged) replaces the one
        this session logged in with; the session's own changes stay layered on top."""
        cached = self.ctx.relations.cached(resource)
        if cached is None and self.login is not None:  # aged: read anew, in the background
            self.ctx.relations.refresh_soon(self.login.resource, self.ctx.secrets)
        elif cached is not None and cached is not self._catalog and self.scope is not None:
            self._catalog = cached
            self.scope.set_catalog(cached)

    async def _watch_idle(self, idle_timeout: float) -> None:
        """Return (ending the session) once the client sent nothing for ``idle_timeout``
        while nothing was in flight; one timer per period, not one per read."""
        loop = asyncio.get_running_loop()
        while True:
            await asyncio.sleep(max(0.0, self._last_read + idle_timeout - loop.time()))
            if loop.time() - self._last_read < idle_timeout:
                continue  # the client spoke meanwhile
            if self._in_flight > 0:  # a long statement is running; the client waits for it
                self._last_read = loop.time()
                continue
            self._fatal("57P05", "terminating connection due to idle-session timeout")
            log.info("postgres connection idle; closing", extra={"fields": self._fields()})
            return

    async def _pump_upstream(self, messages: codec.MessageReader) -> None:
        assert self.link is not None and self.flow is not None
        flow, reader = self.flow, self.link.reader
        resource = self.login.resource.name if self.login is not None else ""
        try:
            while True:
                while True:
                    block, frames = messages.frames()
                    if not frames:
                        break
                    self._from_server(flow, resource, block, frames)
                self._flush()
                await _drain(self.writer)
                data = await reader.read(READ_SIZE)
                if not data:
                    break
                messages.feed(data)
        except (ConnectionError, ssl.SSLError, codec.ProtocolError, OSError) as exc:
            log.info(
                "postgres upstream connection broke",
                extra={"fields": {**self._fields(), "error": str(exc)[:200]}},
            )
        self._upstream_lost("upstream_closed")
        if not self._server_said_fatal:
            self._fatal("08006", f"Lockgate: {UPSTREAM_LOST}")

    def _from_server(
        self, flow: Flow, resource: str, block: bytes, frames: list[codec.Frame]
    ) -> None:
        """Relay a block of server messages: the flow looks at its :data:`ANSWERS` only, and
        the block goes to the client as it is but for the frames the flow swaps."""
        run = 0  # block[run:]: not yet queued for the client
        for kind, start, end in frames:
            if kind not in ANSWERS:
                continue  # DataRow, CopyData, notices ...: relayed unlooked
            body = block[start + codec.HEADER_SIZE : end]
            if kind == codec.READY_FOR_QUERY:
                self._in_flight = max(0, self._in_flight - 1)
            elif kind == codec.ERROR_RESPONSE:
                self._note_server_error(body)
            elif kind == codec.COMMAND_COMPLETE and body[:4] in _DDL_TAGS:
                # relations may have come or gone: the next login reads them anew
                self.ctx.relations.invalidate(resource)
            out = flow.server_message(kind, body)
            if out is not None:
                if run < start:
                    self._to_client.append(block[run:start])
                self._to_client += out.to_client
                self._to_server += out.to_server
                run = end
                if out.close:  # nothing after it reaches the client
                    self._flush()
                    raise _Ended
        if run == 0:
            self._to_client.append(block)
        elif run < len(block):
            self._to_client.append(block[run:])

    def _note_server_error(self, body: bytes) -> None:
        with contextlib.suppress(codec.ProtocolError):
            severity = codec.decode_error_fields(body).get("V", "")
            if severity in ("FATAL", "PANIC"):
                self._server_said_fatal = True

    def _flush(self) -> None:
        """Write what each side has waiting (both pumps call it before they wait)."""
        if self._to_server:
            data = b"".join(self._to_server)
            self._to_server.clear()
            if self.link is not None:
                self.link.writer.write(data)
        if self._to_client:
            data = b"".join(self._to_client)
            self._to_client.clear()
            self.writer.write(data)

    def _fields(self) -> dict[str, str]:
        login = self.login
        return {
            "client": self.client,
            "resource": login.resource.name if login else "",
            "principal": login.claims.sub if login else "",
        }


async def _drain(writer: asyncio.StreamWriter) -> None:
    """Wait while ``writer`` holds unsent bytes (back-pressure); nothing to wait for
    otherwise, which is the usual case (a closing transport still raises, as drain does)."""
    transport = writer.transport
    if transport.get_write_buffer_size() or transport.is_closing():
        await writer.drain()


__all__ = ["UPSTREAM_LOST", "ClientSession", "ListenerSettings"]
