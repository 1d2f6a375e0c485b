"""Reaching the PostgreSQL server: TCP, then TLS negotiated the protocol's way.

:func:`open_stream` connects to ``host:port`` (every address the name resolves to, in
turn; ``TCP_NODELAY`` and keepalives on) and, when a TLS context is given, sends an
SSLRequest and reads exactly one byte of answer before the handshake, so nothing a man in
the middle sent in clear can pass as encrypted (CVE-2021-23222). :func:`client_ssl_context`
is the context for a resource's ``tls`` mode, shared per CA file. Errors name the server by
:func:`address` and say why (:func:`describe`), never a secret; :class:`Transient` marks a
server going away or coming back, which a login tries again.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import ssl
from pathlib import Path

from lockgate.config import PostgresResource
from lockgate.errors import UpstreamUnavailable

from . import codec

READ_SIZE = 65536

#: TCP keepalive probes after 60 s idle, every 15 s, 4 unanswered = dead (where supported).
_KEEPALIVE = [
    (getattr(socket, name), value)
    for name, value in (("TCP_KEEPIDLE", 60), ("TCP_KEEPINTVL", 15), ("TCP_KEEPCNT", 4))
    if hasattr(socket, name)
]


class Transient(UpstreamUnavailable):
    """The server is starting up or shutting down (SQLSTATE 57P03), or closed the
    connection without a word (as a server going down does)."""


_contexts: dict[tuple[str, str, int], ssl.SSLContext] = {}


def client_ssl_context(resource: PostgresResource) -> ssl.SSLContext | None:
    """The TLS context for ``resource.tls`` (None for ``disable``).

    Contexts are shared per (mode, CA file and its modification time): loading a CA store
    costs milliseconds, a login should not.
    """
    if resource.tls == "disable":
        return None
    ca = str(resource.ca_file) if resource.ca_file else ""
    try:
        stamp = Path(ca).stat().st_mtime_ns if ca else 0
    except OSError as exc:
        raise UpstreamUnavailable(
            f"{address(resource)}: cannot read ca_file {ca}: {exc.strerror}"
        ) from None
    key = (resource.tls, ca, stamp)
    ctx = _contexts.get(key)
    if ctx is None:
        ctx = ssl.create_default_context(cafile=ca or None)
        ctx.minimum_version = ssl.TLSVersion.TLSv1_2
        if resource.tls == "require":  # encrypt, verify nothing (libpq's sslmode=require)
            ctx.check_hostname = False
            ctx.verify_mode = ssl.CERT_NONE
        if len(_contexts) > 64:  # CA files replaced many times over: start afresh
            _contexts.clear()
        _contexts[key] = ctx
    return ctx


def address(resource: PostgresResource) -> str:
    host = f"[{resource.host}]" if ":" in resource.host else resource.host
    return f"{host}:{resource.port}"


def describe(exc: OSError) -> str:
    if isinstance(exc, ssl.SSLCertVerificationError):  # say why, not only that it failed
        return f"TLS certificate verify failed: {exc.verify_message}"
    reason = getattr(exc, "reason", None) or exc.strerror or str(exc)
    return f"{type(exc).__name__}: {reason}"


def _tune(sock: socket.socket) -> None:
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    # A session may sit idle for an hour (idle_timeout) behind NATs and cloud load balancers
    # that forget a silent flow after minutes: keepalives keep it known, and find a dead peer.
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
    for option, value in _KEEPALIVE:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.IPPROTO_TCP, option, value)


async def _tcp(host: str, port: int) -> socket.socket:
    loop = asyncio.get_running_loop()
    infos = await loop.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    last: OSError = OSError(f"no address for {host}")
    for family, type_, proto, _, addr in infos:
        sock = socket.socket(family, type_, proto)
        try:
            sock.setblocking(False)
            await loop.sock_connect(sock, addr)
            _tune(sock)
            return sock
        except OSError as exc:
            sock.close()
            last = exc
        except BaseException:
            sock.close()
            raise
    raise last


async def open_stream(
    resource: PostgresResource, ctx: ssl.SSLContext | None
) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """A connection to the server, TLS negotiated when ``ctx`` is given."""
    sock = await _tcp(resource.host, resource.port)
    try:
        if ctx is None:
            return await asyncio.open_connection(sock=sock, limit=READ_SIZE)
        loop = asyncio.get_running_loop()
        await loop.sock_sendall(sock, codec.ssl_request())
        # Exactly one byte: whatever follows it is read by the TLS handshake, never as clear.
        answer = await loop.sock_recv(sock, 1)
        if answer == b"S":
            return await asyncio.open_connection(
                sock=sock, ssl=ctx, server_hostname=resource.host, limit=READ_SIZE
            )
        if answer == b"N":
            why = f"the server does not accept TLS (tls: {resource.tls})"
        elif not answer:
            raise Transient(
                f"{address(resource)}: the server closed the connection at the TLS request"
            )
        else:
            why = f"unexpected answer {answer!r} to the TLS request"
        raise UpstreamUnavailable(f"{address(resource)}: {why}")
    except BaseException:
        sock.close()
        raise
