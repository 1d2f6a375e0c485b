"""Upstream side of the CQL engine: open one authenticated v4 connection to the cluster.

Strategy: try ``contact_points`` in order, each bounded by ``connect_timeout`` (TCP, TLS and
the v4 handshake together); the first node that completes the login (STARTUP →
AUTHENTICATE → AUTH_RESPONSE, SASL PLAIN as the gateway's own user → AUTH_SUCCESS, or READY
from a node without an authenticator) wins. The login's order is the codec's
:class:`~.codec.ClientHandshake`; this module does its I/O. The link keeps its codec
connection, which then splits the node's answers for the session (:mod:`.answers`).
Every failure is remembered and, when all points failed, raised as one
:class:`~lockgate.errors.UpstreamUnavailable` whose message names the points and short
reasons, never the password.

Rules: the upstream password is only ever put into the SASL frame; TLS verifies the node's
certificate against ``ca_file`` (or the system store) unless ``verify_tls`` is false.
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
from dataclasses import dataclass

from lockgate import _log
from lockgate.config import CqlResource
from lockgate.errors import UpstreamUnavailable

from . import codec

log = _log.get("gateway.cql")

#: Upstream result pages may be larger than what clients may send; still bounded.
UPSTREAM_MAX_FRAME_BYTES = 256 * 1024 * 1024
_READ_SIZE = 65536


@dataclass(slots=True)
class UpstreamLink:
    """An authenticated upstream connection, ready to relay requests."""

    reader: asyncio.StreamReader
    writer: asyncio.StreamWriter
    conn: codec.Connection
    contact_point: str

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.writer.close()


def split_host_port(point: str) -> tuple[str, int]:
    host, _, port = point.rpartition(":")
    return host.strip("[]"), int(port)


def client_ssl_context(resource: CqlResource) -> ssl.SSLContext | None:
    if not resource.tls:
        return None
    ctx = ssl.create_default_context(cafile=str(resource.ca_file) if resource.ca_file else None)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    if not resource.verify_tls:
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
    return ctx


async def connect(
    resource: CqlResource, password: str, *, ssl_context: ssl.SSLContext | None = None
) -> UpstreamLink:
    """Connect and authenticate to the first reachable contact point (see module docstring)."""
    ctx = ssl_context if ssl_context is not None else client_ssl_context(resource)
    failures: list[str] = []
    for point in resource.contact_points:
        try:
            async with asyncio.timeout(resource.connect_timeout):
                return await _open(point, resource, password, ctx)
        except TimeoutError:
            failures.append(f"{point}: timed out after {resource.connect_timeout:g}s")
        except (OSError, ssl.SSLError) as exc:
            failures.append(f"{point}: {type(exc).__name__}: {exc.strerror or exc}")
        except codec.LoginRefused as exc:
            failures.append(f"{point}: {exc}")
        log.warning(
            "cql upstream contact point failed",
            extra={"fields": {"resource": resource.name, "error": failures[-1]}},
        )
    raise UpstreamUnavailable("; ".join(failures) or "no contact points")


async def _open(
    point: str, resource: CqlResource, password: str, ctx: ssl.SSLContext | None
) -> UpstreamLink:
    host, port = split_host_port(point)
    reader, writer = await asyncio.open_connection(
        host, port, ssl=ctx, server_hostname=host if ctx is not None else None
    )
    link = UpstreamLink(
        reader,
        writer,
        codec.Connection(codec.Role.CLIENT, max_frame_bytes=UPSTREAM_MAX_FRAME_BYTES),
        point,
    )
    try:
        await _handshake(link, resource.username, password)
    except BaseException:
        link.close()
        raise
    return link


async def _handshake(link: UpstreamLink, username: str, password: str) -> None:
    login = codec.ClientHandshake(username, password)
    link.writer.write(login.start())
    while (reply := login.receive(await _next(link))) is not None:
        link.writer.write(reply)


async def _next(link: UpstreamLink) -> codec.Event:
    while True:
        try:
            event = link.conn.next_event()
        except codec.CqlProtocolError as exc:
            raise codec.LoginRefused(f"protocol error: {exc}") from None
        if event is not codec.NEED_DATA:
            assert isinstance(event, codec.Event)
            return event
        data = await link.reader.read(_READ_SIZE)
        if not data:
            raise codec.LoginRefused("closed the connection during the handshake")
        link.conn.receive_data(data)
