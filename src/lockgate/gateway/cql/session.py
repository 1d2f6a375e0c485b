"""One client connection through the CQL engine: handshake, then two pumps, and the end.

Strategy: one upstream connection per client connection, so stream ids pass through
unchanged and responses need no renumbering. After the handshake (:mod:`.handshake`) two
pumps run side by side:

* client → upstream (:mod:`.judge`): each request is parsed by the codec, judged (plan,
  token, policy or built-in rule, written-ahead audit) and refused or forwarded;
* upstream → client (:mod:`.answers`): each answer is relayed, rewritten or refused, and
  its outcome recorded.

:class:`ClientSession` joins the two halves and owns what lies around them: the lifecycle,
reading client frames with their deadlines, and writing forwarded frames upstream.

Writes are coalesced: frames bound for one side are collected while a read chunk is being
processed and written with one call before the pump next waits (one syscall per chunk, not
per frame; with 64 statements in flight this was the largest cost per statement). With
audit durability ``fsync`` forwarded frames wait until their records are on the device.

Robustness: a malformed or oversized client frame, a frame that stalls for longer than the
resource's ``handshake_timeout``, or an unfinished handshake closes this connection only,
with an audit record. A connection with nothing in flight and no traffic for
``idle_timeout`` is closed quietly. A request reusing the stream id of one in flight is
refused (its answer could not be told apart). No exception leaves :meth:`ClientSession.run`.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

from lockgate import _log
from lockgate.errors import AuditUnavailable
from lockgate.quotas import NO_TICKET, QuotaTicket
from lockgate.quotas.engines import release_all

from . import codec
from .answers import READ_SIZE, AnswerRelay
from .context import PRE_AUTH_MAX_FRAME_BYTES, EngineContext
from .handshake import Authenticated, handshake
from .holds import UseHold
from .judge import Pending, RequestJudging

log = _log.get("gateway.cql")


class _Stalled(Exception):
    """A frame did not complete in time (slow-loris)."""


class ClientSession(RequestJudging, AnswerRelay):
    """One client connection: handshake, then judge requests and relay answers."""

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
        self.pending: dict[int, Pending] = {}
        self._judged = {}  # prepared statements judged on this connection (judge.Judged)
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
        self._paced: asyncio.Future[None] | None = None  # a statement a quota holds
        self._session_quota: QuotaTicket = NO_TICKET  # the ``sessions`` slot, given back at end
        self._live_id: str | None = None  # its row among the sessions open now (live_sessions)

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
            self._session_quota = self.auth.quota
            r = self.auth.resource
            self._live_id = self.ctx.shared.live.opened("cql", r.name, self.auth.claims, _peer(
                self.writer))  # fmt: skip
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
        if self._paced is not None:
            self._paced.cancel()  # its quota answer is given back (:mod:`lockgate.quotas.engines`)
        for p in self.pending.values():  # unanswered statements give their quota slots back
            p.done(None, "session_ended")
        release_all([self._session_quota])
        self._session_quota = NO_TICKET
        if self._live_id is not None:
            self.ctx.shared.live.closed(self._live_id)
            self._live_id = None
        if self.auth is not None:
            self.auth.link.close()
        with contextlib.suppress(Exception):
            self.writer.close()
            await asyncio.wait_for(self.writer.wait_closed(), 1.0)

    def write(self, data: bytes) -> None:  # ClientIO for the handshake
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
            timeout: float | None
            if self.client.buffered:
                if self._frame_deadline is None:
                    self._frame_deadline = now + self._frame_timeout
                timeout = self._frame_deadline - now
                if timeout <= 0:
                    raise _Stalled
            else:
                timeout = self._idle_timeout
            try:
                async with asyncio.timeout(timeout):
                    data = await self.reader.read(READ_SIZE)
            except TimeoutError:
                if self.client.buffered:
                    raise _Stalled from None
                if self.pending or self._paced is not None:
                    continue  # a long (or paced) statement is running; the client waits
                log.info("cql connection idle; closing", extra={"fields": self._fields()})
                return None
            self.client.receive_data(data)

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


def _peer(writer: asyncio.StreamWriter) -> str:
    """``host:port`` of the client (empty when the transport does not say)."""
    peer = writer.get_extra_info("peername") or ("", 0)
    return f"{peer[0]}:{peer[1]}" if peer[0] else ""
