"""The fast path of the one HTTP exchange: a request driven by transport callbacks only.

Taken when the request is complete, the secret cached and a warm pooled connection idle
(see :mod:`.exchange`, whose :class:`~.exchange.Forwarder` builds the request bytes and
records the outcome for both paths). Anything unusual is handed to the task path with the
first attempt's result. A traced request's attempt span opens at the send and closes at
the response head (or the error).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from contextlib import AbstractContextManager, suppress

from lockgate import metrics
from lockgate.errors import UpstreamUnavailable
from lockgate.gateway.engine import UpstreamSecret
from lockgate.gateway.http import framing
from lockgate.gateway.http.exchange import Forwarder
from lockgate.gateway.http.outcome import FirstAttempt, Forwarding, Outcome, retry_statuses
from lockgate.gateway.http.relay import body_frame, response_head
from lockgate.gateway.http.server import ChunkedWriter
from lockgate.gateway.http.upstream import UpstreamConnection
from lockgate.tracing import NO_SPAN


class Exchange:
    """One request on the fast path (see the module docstring)."""

    __slots__ = (
        "adm", "attempt", "body", "chunked_out", "conn", "forwarder", "fw", "hand_over", "head",
        "keep", "relayed", "secret", "sent_at", "status", "up",
    )  # fmt: skip

    def __init__(
        self,
        forwarder: Forwarder,
        fw: Forwarding,
        up: UpstreamConnection,
        secret: UpstreamSecret | None,
        hand_over: Callable[[Forwarding, FirstAttempt], Awaitable[bool]],
    ) -> None:
        self.forwarder = forwarder
        self.fw = fw
        self.conn, self.head, self.body, self.adm = fw
        self.up = up
        self.secret = secret
        self.hand_over = hand_over  # the task path, given the first attempt's result
        self.relayed = False
        self.keep = False
        self.chunked_out = False
        self.status = 0
        self.sent_at = 0.0
        # the traced attempt's CLIENT span, open from the send to the response head (or error)
        self.attempt: AbstractContextManager[None] | None = None

    def start(self) -> bool:
        """Send the request; False (nothing sent) when its credential cannot go out: the
        task path answers that, as it answers every credential failure."""
        adm = self.adm
        rs = adm.rs
        up = self.up
        head = self.head
        body = self.body
        forwarder = self.forwarder
        try:
            parts = [
                forwarder.request_head(head, adm),
                forwarder.auth_lines(adm, self.secret),
                body_frame(head, body),
                b"\r\n",
            ]
        except UpstreamUnavailable:
            rs.pool.release(up)  # nothing was sent on it
            return False
        except BaseException:
            rs.pool.release(up)
            raise
        if body.total:
            parts.append(body.data())
        self.conn.inflight = self
        if adm.span is not NO_SPAN:
            self.attempt = adm.span.upstream_attempt(1)
            self.attempt.__enter__()
        now = forwarder.clock()
        self.sent_at = now
        up.begin_listening(
            self, head_only=adm.head_only, timeout=adm.t0 + rs.backoff.deadline - now
        )
        up.write(b"".join(parts))
        return True

    # -- upstream callbacks --------------------------------------------------------------
    def on_head(self, resp: framing.Head) -> None:
        self._attempt_ended()
        rs = self.adm.rs
        rs.latency.observe(self.forwarder.clock() - self.sent_at)
        status = resp.status
        if status in retry_statuses(rs) or (status == 401 and self.secret is not None):
            self._hand_over(resp)  # retries and credential rotation live on the task path
            return
        out_head, self.keep, chunked = response_head(self.head, resp, self.adm.head_only)
        self.status = status
        self.chunked_out = chunked
        self.relayed = True
        conn = self.conn
        conn.upstream = self.up
        self.up.attach(ChunkedWriter(conn) if chunked else conn, out_head)

    def on_done(self) -> None:
        conn = self.conn
        conn.upstream = None
        if self.chunked_out:
            conn.write(framing.LAST_CHUNK)
        if conn.closed:
            self.up.close()
        else:
            self.adm.rs.pool.release(self.up)
        self.forwarder.record(self.fw, Outcome(self.status, self.keep))
        conn.finish(self.keep)

    def on_error(self, exc: Exception) -> None:
        self._attempt_ended(exc)
        if not self.relayed:
            self._hand_over(exc)  # timeout, stale pooled connection, bad response head
            return
        # The head is out: the only honest signal left is an aborted connection.
        metrics.UPSTREAM_ERRORS.labels(self.adm.rs.name, "truncated").inc()
        conn = self.conn
        conn.upstream = None
        conn.abort()
        self.forwarder.record(self.fw, Outcome(self.status, False, "upstream_truncated"))
        conn.finish(False)

    # -- client callback -----------------------------------------------------------------
    def on_client_lost(self) -> None:
        self._attempt_ended()
        self.up.cancel()
        self.forwarder.record_client_lost(self.fw)

    def _attempt_ended(self, exc: Exception | None = None) -> None:
        attempt, self.attempt = self.attempt, None
        if attempt is not None:
            # (a generator context manager may re-raise what it is given: not here)
            with suppress(Exception):
                attempt.__exit__(type(exc) if exc else None, exc, None)

    def _hand_over(self, result: framing.Head | Exception) -> None:
        if not isinstance(result, Exception):
            self.up.detach()  # now, so the end of this response no longer reaches on_done
        conn = self.conn
        conn.inflight = None
        conn.run(self.hand_over(self.fw, (self.up, result, self.secret)))
