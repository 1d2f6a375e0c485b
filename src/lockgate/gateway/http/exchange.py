"""The fast path: one admitted request and its response, driven by transport callbacks only.

Most requests a pipeline sends are small and complete when their head arrives, and a warm
pooled upstream connection is waiting. For those the proxy needs no task, no future and no
loop hop: the client connection's ``data_received`` admits the request (verify, decide and
audit check, all synchronous and cached) and :class:`Exchange` writes it upstream; the
upstream connection's ``data_received`` hands the response head (with whatever body came
along) to :meth:`Exchange.on_head`, which writes it to the client in one write; the end of
the body (:meth:`Exchange.on_done`) returns the connection to the pool, emits the audit
record and lets the client connection read its next request.

Anything unusual goes back to the task path (:meth:`Proxy.serve_admitted`) with the first
attempt's result, so it is handled exactly as there: a retry status (429/502/503/504), a
401 that may need the previous credential version, a timeout, a pooled connection that
turned out closed. The proxy only takes this path when the secret is cached and a pooled
connection is idle; every request is still verified, decided and audited.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from lockgate import metrics
from lockgate.gateway.http import framing
from lockgate.gateway.http.retry import RETRY_STATUSES
from lockgate.gateway.http.server import ChunkedWriter, ClientConnection, RequestBody
from lockgate.gateway.http.upstream import UpstreamConnection

if TYPE_CHECKING:
    from lockgate.gateway.http.proxy import Admitted, Proxy

_DROP_RESPONSE = frozenset(
    {
        b"connection",
        b"keep-alive",
        b"proxy-connection",
        b"proxy-authenticate",
        b"te",
        b"trailer",
        b"transfer-encoding",
        b"upgrade",
        b"content-length",
    }
)


def _status_line(status: int) -> bytes:
    from http import HTTPStatus

    try:
        phrase = HTTPStatus(status).phrase.encode()
    except ValueError:
        phrase = b"Unknown"
    return b"HTTP/1.1 %d %s\r\n" % (status, phrase)


_STATUS_LINES = {s: _status_line(s) for s in range(100, 600)}


def response_head(
    head: framing.Head, resp: framing.Head, head_only: bool
) -> tuple[bytes, bool, bool]:
    """The response head for the client: (bytes, keep the client connection, chunked)."""
    status = resp.status
    named = resp.connection
    lines = [_STATUS_LINES.get(status) or _status_line(status)]
    drop = _DROP_RESPONSE
    for name, value in resp.headers:
        low = name.lower()
        if low in drop or (named and low in named):
            continue
        lines.append(b"%s: %s\r\n" % (name, value))
    keep = head.keep_alive
    chunked_out = False
    if resp.content_length is not None and not resp.chunked:
        lines.append(b"Content-Length: %d\r\n" % resp.content_length)
    elif not (head_only or status in (204, 304)):
        if head.version == 1:
            chunked_out = True
            lines.append(b"Transfer-Encoding: chunked\r\n")
        else:
            keep = False  # HTTP/1.0 client: the end of the body is the end of the connection
    if not keep:
        lines.append(b"Connection: close\r\n")
    lines.append(b"\r\n")
    return b"".join(lines), keep, chunked_out


def body_frame(head: framing.Head, body: RequestBody) -> bytes:
    """Framing header for a complete (buffered) request body."""
    if body.total or head.content_length is not None or head.chunked:
        return b"Content-Length: %d\r\n" % body.total
    return b""


class Exchange:
    """One request on the fast path (see the module docstring)."""

    __slots__ = (
        "adm", "body", "chunked_out", "conn", "head", "keep", "proxy", "relayed", "secret",
        "sent_at", "status", "up",
    )  # fmt: skip

    def __init__(
        self,
        proxy: Proxy,
        conn: ClientConnection,
        head: framing.Head,
        body: RequestBody,
        adm: Admitted,
        up: UpstreamConnection,
        secret: Any,
    ) -> None:
        self.proxy = proxy
        self.conn = conn
        self.head = head
        self.body = body
        self.adm = adm
        self.up = up
        self.secret = secret
        self.relayed = False
        self.keep = False
        self.chunked_out = False
        self.status = 0
        self.sent_at = 0.0

    def start(self) -> None:
        adm = self.adm
        rs = adm.rs
        up = self.up
        head = self.head
        body = self.body
        try:
            auth = rs.auth_line(self.secret) if self.secret is not None else b""
            parts = [self.proxy.request_head(head, adm), auth, body_frame(head, body), b"\r\n"]
        except BaseException:
            rs.pool.release(up)  # nothing was sent on it
            raise
        if body.total:
            parts.append(body.data())
        self.conn.inflight = self
        now = self.proxy.clock()
        self.sent_at = now
        up.begin_listening(
            self, head_only=adm.head_only, timeout=adm.t0 + rs.backoff.deadline - now
        )
        up.write(b"".join(parts))

    # -- upstream callbacks --------------------------------------------------------------
    def on_head(self, resp: framing.Head) -> None:
        rs = self.adm.rs
        rs.latency.observe(self.proxy.clock() - self.sent_at)
        status = resp.status
        if status in RETRY_STATUSES or (status == 401 and self.secret is not None):
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
        self._emit("allowed", self.status, None)
        conn.finish(self.keep)

    def on_error(self, exc: Exception) -> None:
        if not self.relayed:
            self._hand_over(exc)  # timeout, stale pooled connection, bad response head
            return
        # The head is out: the only honest signal left is an aborted connection.
        metrics.UPSTREAM_ERRORS.labels(self.adm.rs.name, "truncated").inc()
        conn = self.conn
        conn.upstream = None
        conn.abort()
        self._emit("upstream_error", self.status, "upstream_truncated")
        conn.finish(False)

    # -- client callback -----------------------------------------------------------------
    def on_client_lost(self) -> None:
        self.up.cancel()
        self._emit("upstream_error", 499, "client_closed")

    # -- helpers -------------------------------------------------------------------------
    def _hand_over(self, result: framing.Head | Exception) -> None:
        if not isinstance(result, Exception):
            self.up.detach()  # now, so the end of this response no longer reaches on_done
        conn = self.conn
        conn.inflight = None
        conn.run(
            self.proxy.serve_admitted(
                conn, self.head, self.body, self.adm, (self.up, result, self.secret)
            )
        )

    def _emit(self, event: str, status: int, error: str | None) -> None:
        adm = self.adm
        decision = adm.decision
        self.proxy.emit(
            event,
            adm.claims,
            adm.rs.name,
            adm.action,
            adm.obj,
            adm.t0,
            status=status,
            decision="allow",
            rule=decision.rule,
            reason=error or decision.reason,
            bytes_in=self.body.total,
            bytes_out=self.conn.bytes_out,
            detail={"ref": adm.ref},
        )
