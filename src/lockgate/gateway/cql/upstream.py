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

Rotation (:func:`login`, what a client session uses): the login sends the credential's
current version; a node that answers the AUTH_RESPONSE with AuthenticationError (0x0100) on
every reachable point gets one more login with the version
:class:`~lockgate.gateway.upstream_credential.CredentialChoice` gives, as the
PostgreSQL engine does: the current version again when a rotation the cache had not seen yet
changed it (the cluster was rotated first), else the previous version while the rotation's
overlap lasts (the gateway was rotated first and the cluster still has the old password).
A current version refused and passed by the previous one is remembered for a minute, so the
logins of an overlap window do not each fail once first. The link names the version that
logged in (:attr:`UpstreamLink.credential_version`), for the audit; never its value.

Rules: the upstream password is only ever put into the SASL frame; TLS verifies the node's
certificate against ``ca_file`` (or the system store) unless ``verify_tls`` is false.
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
from dataclasses import dataclass

from lockgate import _log, metrics
from lockgate.config import CqlResource
from lockgate.errors import CredentialError, UpstreamAuthFailed, UpstreamUnavailable
from lockgate.gateway.caches import SecretCache, UpstreamSecret
from lockgate.gateway.upstream_credential import CredentialChoice

from . import codec
from .codec.handshake import describe

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
    #: the credential version that logged in (None: not through :func:`login`)
    credential_version: int | None = None
    #: the version the cluster refused before that one logged in (None: no retry)
    refused_version: int | None = None
    #: the credential's current version when it logged in (None: not through :func:`login`)
    current_version: int | None = None

    @property
    def rotation_under_way(self) -> bool:
        """The login needed a retry, or went in with another version than the current."""
        return self.refused_version is not None or self.credential_version != self.current_version

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.writer.close()


class CredentialRefused(codec.LoginRefused):
    """The node answered the login with AuthenticationError (0x0100): wrong password."""


class CredentialVersionsRefused(UpstreamAuthFailed):
    """Every version :func:`login` tried was refused; ``versions`` in the order tried."""

    def __init__(self, message: str, credential: str, versions: tuple[int, ...]) -> None:
        named = " and ".join(str(v) for v in versions)
        plural = "s" if len(versions) > 1 else ""
        super().__init__(f"{message}; credential {credential!r} version{plural} {named} refused")
        self.credential = credential
        self.versions = versions


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
    refused = False  # some node refused the password (the others may be down)
    for point in resource.contact_points:
        try:
            async with asyncio.timeout(resource.connect_timeout):
                return await _open(point, resource, password, ctx)
        except TimeoutError:
            failures.append(f"{point}: timed out after {resource.connect_timeout:g}s")
        except (OSError, ssl.SSLError) as exc:
            failures.append(f"{point}: {type(exc).__name__}: {exc.strerror or exc}")
        except codec.LoginRefused as exc:
            refused = refused or isinstance(exc, CredentialRefused)
            failures.append(f"{point}: {exc}")
        log.warning(
            "cql upstream contact point failed",
            extra={"fields": {"resource": resource.name, "error": failures[-1]}},
        )
    message = "; ".join(failures) or "no contact points"
    raise UpstreamAuthFailed(message) if refused else UpstreamUnavailable(message)


async def login(resource: CqlResource, secrets: SecretCache) -> UpstreamLink:
    """:func:`connect` with the credential's value, retried once with another version when
    the cluster refuses it (see the module docstring). Raises UpstreamUnavailable
    (UpstreamAuthFailed: the password was refused) naming the versions tried, never a value."""
    choice = CredentialChoice(resource, secrets)
    try:
        secret = await choice.first()
    except CredentialError as exc:  # the message names the credential, never its value
        raise UpstreamUnavailable(str(exc)) from None
    refused: UpstreamSecret | None = None
    while True:
        if secret is None:
            raise UpstreamUnavailable(f"credential {resource.credential!r} has no value")
        try:
            link = await connect(resource, secret.value)
        except UpstreamAuthFailed as exc:
            retry = await choice.after_refusal(secret)
            if retry is None:
                versions = (
                    (secret.version,) if refused is None else (refused.version, secret.version)
                )
                raise CredentialVersionsRefused(str(exc), resource.credential, versions) from None
            log.info(
                "cql upstream refused the credential; retrying",
                extra={
                    "fields": {
                        "resource": resource.name,
                        "credential_name": resource.credential,
                        "refused_version": secret.version,
                        "retry_version": retry.version,
                    }
                },
            )
            metrics.UPSTREAM_RETRIES.labels(resource.name, "rotation").inc()
            refused, secret = secret, retry
            continue
        choice.succeeded(secret)
        link.credential_version = secret.version
        link.refused_version = refused.version if refused is not None else None
        try:
            link.current_version = await _current_version(secrets, resource.credential, secret)
        except BaseException:  # cancelled (the client's handshake timed out): no leaked link
            link.close()
            raise
        return link


async def _current_version(secrets: SecretCache, name: str, used: UpstreamSecret) -> int:
    """The credential's current version (cached: the login just asked for it)."""
    try:
        current = secrets.peek(name) or await secrets.get(name)
    except CredentialError:
        return used.version  # unknown now: nothing to say about a rotation
    return used.version if current is None else current.version


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
    answered = False  # the AUTH_RESPONSE (the password) went out
    while True:
        event = await _next(link)
        if answered and isinstance(event, codec.Error) and event.code == codec.ERR_BAD_CREDENTIALS:
            raise CredentialRefused(f"login as {username!r} refused: {describe(event)}")
        reply = login.receive(event)
        if reply is None:
            return
        link.writer.write(reply)
        answered = True


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
