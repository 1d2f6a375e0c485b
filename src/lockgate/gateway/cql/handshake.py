"""Client handshake: OPTIONS/STARTUP/AUTHENTICATE, then a Lockgate token as the password.

Strategy: the client speaks to the gateway as to a Cassandra node with
``PasswordAuthenticator``. SASL PLAIN carries the resource name as the username and the
Lockgate token as the password; the token is verified with that resource as audience.
Only then is the upstream connection opened (as the gateway's own user), and only when
that succeeds does the client get AUTH_SUCCESS.

Rules:

* Versions other than v4 get the codec's "unsupported protocol version" error (the Python
  driver then retries v4 on a new connection); that is negotiation, logged at debug only.
* STARTUP asking for COMPRESSION is refused with a clear protocol error (frames are relayed
  and inspected uncompressed).
* Anything but OPTIONS/STARTUP/AUTH_RESPONSE before authentication is refused and closed.
* Every refusal is audited ``auth_failed`` with ``decision: deny`` and a reason slug (with
  the token's jti, deployment and DAG when its signature verified: expired, revoked, wrong
  audience); the client's message names the slug, never the token. An upstream that cannot
  be reached is ``upstream_error`` with ``decision: error``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from lockgate.config import CqlResource
from lockgate.errors import AuthenticationError, UpstreamUnavailable

from . import codec, upstream
from .context import AUTHENTICATOR, SUPPORTED_OPTIONS, EngineContext


@dataclass(slots=True)
class Authenticated:
    resource: CqlResource
    claims: Any
    token: str
    link: upstream.UpstreamLink


class HandshakeFailed(Exception):
    """The client was answered and must be disconnected."""


class ClientIO:
    """What the handshake needs from the session: read one event, write bytes."""

    async def read_event(self) -> codec.Event | None: ...  # None at EOF

    def write(self, data: bytes) -> None: ...


async def handshake(ctx: EngineContext, io: ClientIO, t0: float) -> Authenticated | None:
    """Run the client handshake; None when the client went away or was refused."""
    started = False
    while True:
        event = await io.read_event()
        if event is None:
            return None
        if isinstance(event, codec.Options):
            io.write(_encode(codec.Supported(stream=event.stream, options=SUPPORTED_OPTIONS)))
        elif isinstance(event, codec.Startup):
            if event.options.get("COMPRESSION"):
                io.write(
                    codec.protocol_error_frame(
                        "compression is not supported by Lockgate; connect without compression",
                        stream=event.stream,
                    )
                )
                return None
            started = True
            io.write(_encode(codec.Authenticate(stream=event.stream, authenticator=AUTHENTICATOR)))
        elif isinstance(event, codec.AuthResponse) and started:
            return await _authenticate(ctx, io, event, t0)
        else:
            io.write(
                codec.protocol_error_frame(
                    f"unexpected {type(event).__name__} before authentication; "
                    "send STARTUP and log in with the resource name and a Lockgate token",
                    stream=event.stream,
                )
            )
            ctx.record(
                "auth_failed",
                None,
                None,
                t0,
                reason="unauthenticated_request",
                decision="deny",
                status=codec.ERR_PROTOCOL,
            )
            return None


def _encode(event: codec.Event) -> bytes:
    return codec.encode_frame(event)


def _split_plain(token: bytes | None) -> tuple[str, str]:
    parts = (token or b"").split(b"\0")
    if len(parts) != 3:
        raise AuthenticationError("malformed_credentials")
    try:
        return parts[1].decode("utf-8"), parts[2].decode("utf-8")
    except UnicodeDecodeError:
        raise AuthenticationError("malformed_credentials") from None


async def _authenticate(
    ctx: EngineContext, io: ClientIO, event: codec.AuthResponse, t0: float
) -> Authenticated | None:
    resource: CqlResource | None = None
    try:
        username, token = _split_plain(event.token)
        resource = ctx.resources.get(username)
        if resource is None:
            raise AuthenticationError("unknown_resource")
        claims = ctx.verifier.verify(token, resource.name)
    except AuthenticationError as exc:
        reason = str(getattr(exc, "reason", "invalid"))
        io.write(
            _encode(
                codec.Error(
                    stream=event.stream,
                    code=codec.ERR_BAD_CREDENTIALS,
                    message=f"Lockgate authentication failed ({reason}): log in with the "
                    "resource name as username and a Lockgate token for it as password",
                )
            )
        )
        name = resource.name if resource is not None else None
        ctx.record(
            "auth_failed",
            getattr(exc, "claims", None),  # the token's jti/DAG when its signature verified
            name,
            t0,
            reason=reason,
            decision="deny",
            status=codec.ERR_BAD_CREDENTIALS,
        )
        return None
    try:
        secret = await ctx.secrets.get(resource.credential)
        if secret is None:
            raise UpstreamUnavailable(f"credential {resource.credential!r} has no value")
        link = await upstream.connect(resource, secret.value)
        if ctx.views.stale(resource.name):
            try:
                await ctx.views.refresh(resource.name, link)
            except BaseException:
                link.close()
                raise
    except UpstreamUnavailable as exc:
        io.write(
            _encode(
                codec.Error(
                    stream=event.stream,
                    code=codec.ERR_SERVER,
                    message=f"Lockgate could not open a connection to the cluster of "
                    f"{resource.name!r}; try again later",
                )
            )
        )
        ctx.record(
            "upstream_error",
            claims,
            resource.name,
            t0,
            action="connect",
            decision="error",
            reason="upstream_unavailable",
            detail={"error": str(exc)[:1000]},
            status=codec.ERR_SERVER,
        )
        return None
    io.write(_encode(codec.AuthSuccess(stream=event.stream)))
    return Authenticated(resource, claims, token, link)
