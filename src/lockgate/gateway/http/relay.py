"""Framing between the two sides of an exchange: the response head the client gets (hop-by-
hop headers dropped, its own framing chosen) and the framing of a buffered request body."""

from __future__ import annotations

from collections.abc import Callable
from http import HTTPStatus

from lockgate.gateway.http import framing
from lockgate.gateway.http.server import ClientConnection, RequestBody
from lockgate.gateway.http.upstream import UpstreamConnection

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


def status_line(status: int) -> bytes:
    try:
        phrase = HTTPStatus(status).phrase.encode()
    except ValueError:
        phrase = b"Unknown"
    return b"HTTP/1.1 %d %s\r\n" % (status, phrase)


STATUS_LINES = {s: status_line(s) for s in range(100, 600)}


def response_head(
    head: framing.Head, resp: framing.Head, head_only: bool
) -> tuple[bytes, bool, bool]:
    """The response head for the client: (bytes, keep the client connection, chunked)."""
    status = resp.status
    named = resp.connection
    lines = [STATUS_LINES.get(status) or status_line(status)]
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


def public_origin(conn: ClientConnection, head: framing.Head) -> str:
    """``scheme://host`` as the client addressed the gateway."""
    transport = conn.transport
    tls = transport is not None and transport.get_extra_info("sslcontext") is not None
    host = head.host.decode("latin-1") if head.host else ""
    return f"{'https' if tls else 'http'}://{host}"


def body_writers(
    up: UpstreamConnection, chunked: bool, head_timeout: float
) -> tuple[Callable[[bytes], None], Callable[[], None]]:
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
