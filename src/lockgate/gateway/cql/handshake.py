"""Client handshake: OPTIONS/STARTUP/AUTHENTICATE, then a Lockgate token as the password.

Strategy: the client speaks to the gateway as to a Cassandra node with
``PasswordAuthenticator``; the order of the login is the codec's
:class:`~.codec.ServerHandshake` (events in, replies out), this module does the I/O, the
verification and the audit around it. SASL PLAIN carries the resource name as the username and the
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
* A ``sessions`` quota (:mod:`lockgate.quotas`) is asked once the token verified, before
  the upstream connection opens; over it the AUTH_RESPONSE gets Overloaded (0x1001) naming
  the limit, audited ``throttled`` (action ``connect``), and the connection closes. The
  slot is :attr:`Authenticated.quota`, given back when the session ends (or the login fails
  after it was taken).
* The upstream login (:func:`.upstream.login`) follows a rotation of the gateway's
  credential: a password the cluster refuses is tried once more with the version the
  rotation's overlap allows. A login that got in after a refusal or with another version
  than the current one is audited ``allowed`` (action ``connect``, reason
  ``credential_rotation``, detail: the credential, the version that logged in, the current
  one and the one refused, if any); one refused with every version is ``upstream_error``
  whose detail names the credential and the refused versions. Never a value.
* A login whose resource is removed or changed while it is under way (the credential, the
  upstream connection and the view catalog are awaited) is refused ``resource_removed`` or
  ``resource_changed``, like the sessions the engine ends for that change: it would
  otherwise run as the old upstream user for the connection's life. The view catalog it may
  have read from the old upstream is invalidated, so the next login reads the new one's.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass
from typing import Any, Protocol

from lockgate.config import CqlResource
from lockgate.errors import AuthenticationError, UpstreamUnavailable
from lockgate.quotas import NO_TICKET, THROTTLED, QuotaTicket, Throttled
from lockgate.quotas.engines import count_throttled, settle, throttled_detail, throttled_message

from . import codec, upstream
from .context import AUTHENTICATOR, SUPPORTED_OPTIONS, EngineContext


@dataclass(slots=True)
class Authenticated:
    resource: CqlResource
    claims: Any
    token: str
    link: upstream.UpstreamLink
    quota: QuotaTicket = NO_TICKET  # the session's ``sessions`` slot, released at its end


class ClientIO(Protocol):
    """What the handshake needs from the session: read one event, write bytes."""

    async def read_event(self) -> codec.Event | None: ...  # None at EOF

    def write(self, data: bytes) -> None: ...


async def handshake(ctx: EngineContext, io: ClientIO, t0: float) -> Authenticated | None:
    """Run the client handshake; None when the client went away or was refused."""
    login = codec.ServerHandshake(supported=SUPPORTED_OPTIONS, authenticator=AUTHENTICATOR)
    while True:
        event = await io.read_event()
        if event is None:
            return None
        step = login.receive(event)
        if isinstance(step, codec.Reply):
            io.write(step.data)
            continue
        if isinstance(step, codec.Login):
            return await _authenticate(ctx, io, login, step, t0)
        io.write(step.data)
        if step.reason is not None:  # compression asked for is negotiation, not a refusal
            ctx.record(
                "auth_failed",
                None,
                None,
                t0,
                reason=step.reason,
                decision="deny",
                status=codec.ERR_PROTOCOL,
            )
        return None


async def _authenticate(
    ctx: EngineContext, io: ClientIO, login: codec.ServerHandshake, step: codec.Login, t0: float
) -> Authenticated | None:
    resource: CqlResource | None = None
    try:
        if step.username is None or step.password is None:
            raise AuthenticationError("malformed_credentials")
        token = step.password
        # Taken before the lookup: a catalog change landing while this login awaits its
        # credential or connection makes the view refresh below store nothing.
        views_generation = ctx.views.generation(step.username)
        resource = ctx.resources.get(step.username)
        if resource is None:
            raise AuthenticationError("unknown_resource")
        claims = ctx.verifier.verify(token, resource.name)
    except AuthenticationError as exc:
        _refuse(
            ctx, io, login, t0, str(getattr(exc, "reason", "invalid")),
            claims=getattr(exc, "claims", None),  # the token's jti/DAG when its signature verified
            resource=resource.name if resource is not None else None,
            hint="log in with the resource name as username and a Lockgate token for it "
            "as password",
        )  # fmt: skip
        return None
    opened = ctx.quotas.open_session(claims, resource.name)
    if inspect.isawaitable(opened):
        opened = await settle(opened)
    if isinstance(opened, Throttled):
        _throttle(ctx, io, login, t0, opened, claims, resource.name)
        return None
    try:
        auth = await _open(ctx, io, login, resource, claims, token, views_generation, t0)
    except BaseException:
        opened.release()
        raise
    if auth is None:
        opened.release()
        return None
    auth.quota = opened
    return auth


async def _open(
    ctx: EngineContext,
    io: ClientIO,
    login: codec.ServerHandshake,
    resource: CqlResource,
    claims: Any,
    token: str,
    views_generation: int,
    t0: float,
) -> Authenticated | None:
    """Open the upstream connection for a verified login, then accept it; None: refused."""
    try:
        link = await upstream.login(resource, ctx.secrets)
        if ctx.views.stale(resource.name):
            try:
                await ctx.views.refresh(resource.name, link, generation=views_generation)
            except BaseException:
                link.close()
                raise
    except UpstreamUnavailable as exc:
        io.write(
            login.reject(
                codec.ERR_SERVER,
                f"Lockgate could not open a connection to the cluster of "
                f"{resource.name!r}; try again later",
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
            detail=_unavailable_detail(exc),
            status=codec.ERR_SERVER,
        )
        return None
    # The catalog may have changed while the credential, the connection and the views were
    # awaited; update_resources ends only sessions already logged in, so this login must not
    # finish on the resource it looked up before. No await follows until the session holds
    # the login, so no change can slip in after this check.
    current = ctx.resources.get(resource.name)
    if current != resource:
        link.close()
        # Views this login read are the old upstream's, stored as fresh after the change
        # invalidated them: the next login of the new resource must read them again.
        ctx.views.invalidate(resource.name)
        reason = "resource_removed" if current is None else "resource_changed"
        _refuse(
            ctx, io, login, t0, reason, claims=claims, resource=resource.name, hint="log in again"
        )
        return None
    # Likewise a revocation reloaded meanwhile: the engine ends only sessions logged in, so
    # the token is verified again (in memory) before the login completes.
    try:
        ctx.verifier.verify(token, resource.name)
    except AuthenticationError as exc:
        link.close()
        _refuse(
            ctx, io, login, t0, str(getattr(exc, "reason", "invalid")), claims=claims,
            resource=resource.name, hint="log in with a fresh Lockgate token",
        )  # fmt: skip
        return None
    io.write(login.accept())
    if link.rotation_under_way:
        _record_rotation(ctx, claims, resource, link, t0)
    return Authenticated(resource, claims, token, link)


def _unavailable_detail(exc: UpstreamUnavailable) -> dict[str, object]:
    """What an ``upstream_error`` login record says: the error (no secret in it) and, when
    the cluster refused the password, the credential and the versions it refused."""
    detail: dict[str, object] = {"error": str(exc)[:1000]}
    if isinstance(exc, upstream.CredentialVersionsRefused):
        detail["credential_name"] = exc.credential
        detail["refused_versions"] = list(exc.versions)
    return detail


def _record_rotation(
    ctx: EngineContext, claims: Any, resource: CqlResource, link: upstream.UpstreamLink, t0: float
) -> None:
    """A login the cluster took with another version than the current one, or only after
    refusing one (a rotation under way): audited with the version numbers, never a value."""
    ctx.record(
        "allowed", claims, resource.name, t0, action="connect", decision="allow",
        reason="credential_rotation",
        detail={
            "credential_name": resource.credential,
            "version": link.credential_version,
            "current_version": link.current_version,
            "refused_version": link.refused_version,
        },
    )  # fmt: skip


def _refuse(
    ctx: EngineContext,
    io: ClientIO,
    login: codec.ServerHandshake,
    t0: float,
    reason: str,
    *,
    claims: Any,
    resource: str | None,
    hint: str,
) -> None:
    """Refuse the login as bad credentials, naming the reason slug (never the token) and
    what to do, and audit it."""
    message = f"Lockgate authentication failed ({reason}): {hint}"
    io.write(login.reject(codec.ERR_BAD_CREDENTIALS, message))
    ctx.record(
        "auth_failed",
        claims,
        resource,
        t0,
        reason=reason,
        decision="deny",
        status=codec.ERR_BAD_CREDENTIALS,
    )


def _throttle(
    ctx: EngineContext,
    io: ClientIO,
    login: codec.ServerHandshake,
    t0: float,
    throttled: Throttled,
    claims: Any,
    resource: str,
) -> None:
    """Over a ``sessions`` quota: Overloaded to the login, audited ``throttled``."""
    message = throttled_message(throttled, "a new session", claims.sub, resource)
    io.write(login.reject(codec.ERR_OVERLOADED, message))
    ctx.count(resource, "connect", "deny", claims.dag_id)
    count_throttled(resource, throttled)
    ctx.record(
        THROTTLED, claims, resource, t0, action="connect", decision="deny", reason=THROTTLED,
        status=codec.ERR_OVERLOADED, detail=throttled_detail(throttled),
    )  # fmt: skip
