"""The client's login: SSLRequest and TLS, the StartupMessage, the token as password.

The client speaks to the gateway as to a PostgreSQL server. This module does the startup
phase of protocol v3 up to a verified token; :mod:`.session` then logs in upstream and
answers ``AuthenticationOk``. Packets are read with the codec's :class:`StartupReader`.

Rules, in the order a client meets them:

* ``SSLRequest`` -> ``S`` and TLS (the listener's certificate, ALPN ``postgresql``), or ``N``
  when the listener has no TLS. Bytes sent after the SSLRequest before the TLS handshake are
  refused (CVE-2021-23214: they would be read as if they came over TLS). Direct TLS
  (PostgreSQL 17 ``sslnegotiation=direct``, a ClientHello first) is not served: such a
  client is closed without an answer and audited ``direct_tls_unsupported``; the default
  ``sslnegotiation=postgres`` works.
* ``GSSENCRequest`` -> ``N`` (no GSSAPI); the client goes on with TLS or plain.
* ``CancelRequest`` -> :mod:`.cancel`, then the connection is closed silently.
* ``StartupMessage``: protocol 3.0; a newer 3.x (PostgreSQL 18 libpq asks 3.2) gets
  ``NegotiateProtocolVersion`` (3.0, its ``_pq_.*`` options unrecognised) and goes on at 3.0;
  another major version is refused ``08P01``.
* Without TLS the login is refused ``28000`` ("Lockgate requires TLS") unless the listener
  sets ``allow_plaintext``: the password is a bearer token.
* ``database`` names the resource (PgBouncer style; it defaults to ``user`` as on the
  server). An unknown one is refused ``3D000 database "x" does not exist``, the same
  answer whether it is missing or not served here.
* ``user`` may be anything (the secrets backend hands out ``lockgate``); the gateway logs
  in upstream as the resource's own ``username``.
* Other parameters are passed upstream only from :data:`FORWARDED_PARAMETERS` (session
  settings that change no statement's meaning). ``client_encoding`` must be UTF-8 or
  SQL_ASCII: statements are parsed as UTF-8, and encodings such as SJIS hide a quote inside
  a multibyte character (CVE-2006-2314). Upstream, ``client_encoding`` (UTF8 unless the
  client chose) and ``standard_conforming_strings=on`` are always sent, so a database or
  role default cannot change how the server lexes what the gateway parsed. Refused with
  ``08P01``/``0A000`` and a message that says what to do: ``replication`` (no replication
  through the gateway), a non-empty ``options`` (``-c`` settings could change the role or
  the search path unseen),
  ``search_path`` (the session starts on the resource's ``search_path``; ``SET`` it after
  connecting, where it is tracked), and any other parameter.
* Then ``AuthenticationCleartextPassword``; the ``PasswordMessage`` is the Lockgate token,
  verified with the resource as audience. A refused token gets
  ``28P01 password authentication failed for user "u"`` with the reason slug as hint
  (``expired``, ``revoked``, ``wrong_audience``...), never the token.

Every refusal is audited ``auth_failed`` (``decision: deny``, reason slug; the token's
DAG when its signature verified). The whole startup is bounded by the listener's
``handshake_timeout``, and by the resource's once it is known.
"""

from __future__ import annotations

import asyncio
import ssl
from dataclasses import dataclass
from typing import TYPE_CHECKING

from lockgate.config import PostgresResource
from lockgate.errors import AuthenticationError

from . import codec
from .cancel import handle_cancel
from .context import PRE_AUTH_MAX_MESSAGE_BYTES, READ_SIZE
from .lexing import SAFE_ENCODINGS, safe_encoding

if TYPE_CHECKING:
    from lockgate.identity import Claims

    from .context import EngineContext

#: Startup parameters passed upstream (lower case; the server's names are case-insensitive).
FORWARDED_PARAMETERS = frozenset(
    {
        "application_name",
        "client_encoding",
        "datestyle",
        "timezone",
        "extra_float_digits",
        "intervalstyle",
        "bytea_output",
        "statement_timeout",
        "lock_timeout",
        "idle_in_transaction_session_timeout",
    }
)
#: Session settings sent upstream in every startup packet (they win over database and role
#: defaults) and checked in the server's ParameterStatus after login (:mod:`.session`).
PINNED_PARAMETERS = {"standard_conforming_strings": "on"}
TLS_REQUIRED = "Lockgate requires TLS (sslmode=require or stronger)"


_TLS_HANDSHAKE = 0x16  # first byte of a TLS ClientHello record


class _DirectTls(Exception):
    """A TLS ClientHello where a startup packet belongs (``sslnegotiation=direct``)."""


class Refused(Exception):
    """The login is refused: a FATAL ``ErrorResponse`` for the client and an audit record."""

    def __init__(
        self,
        sqlstate: str,
        message: str,
        reason: str,
        *,
        hint: str | None = None,
        claims: Claims | None = None,
        resource: str | None = None,
    ) -> None:
        super().__init__(message)
        self.sqlstate = sqlstate
        self.message = message
        self.reason = reason
        self.hint = hint
        self.claims = claims
        self.resource = resource

    def error_response(self) -> bytes:
        return codec.error_response(self.sqlstate, self.message, severity="FATAL", hint=self.hint)


@dataclass(slots=True)
class Login:
    """A client whose token verified for ``resource``."""

    resource: PostgresResource
    claims: Claims
    token: str
    user: str
    parameters: dict[str, str]  # what goes upstream in the startup packet
    tls: bool
    protocol: tuple[int, int]  # what the client asked for (the session speaks 3.0)


class Startup:
    """Runs one client's startup phase over its streams; see the module docstring."""

    def __init__(
        self,
        ctx: EngineContext,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        *,
        tls: ssl.SSLContext | None,
        allow_plaintext: bool,
        deadline: asyncio.Timeout | None = None,
    ) -> None:
        self.ctx = ctx
        self.reader = reader
        self.writer = writer
        self.tls_context = tls
        self.allow_plaintext = allow_plaintext
        self.deadline = deadline
        self.started = asyncio.get_running_loop().time()
        self.encrypted = False
        self._seen_bytes = False
        self.packets = codec.StartupReader()

    async def run(self, t0: float) -> Login | None:
        """The verified login; None when the client went away, cancelled a query or was
        refused (the refusal already answered and audited)."""
        try:
            return await self._run(t0)
        except Refused as refused:
            self.writer.write(refused.error_response())
            self._refused(t0, refused.reason, claims=refused.claims, resource=refused.resource)
            return None
        except _DirectTls:  # a TLS client would read an ErrorResponse as a broken record
            self._refused(t0, "direct_tls_unsupported")
            return None
        except codec.ProtocolError as exc:
            self.writer.write(codec.error_response(exc.sqlstate, str(exc), severity="FATAL"))
            self._refused(t0, "protocol_error", description=str(exc))
            return None

    def _refused(
        self,
        t0: float,
        reason: str,
        *,
        claims: Claims | None = None,
        resource: str | None = None,
        description: str | None = None,
    ) -> None:
        self.ctx.refusals.refuse(
            peer=self.writer.get_extra_info("peername"), status=None, reason=reason,
            event="auth_failed", claims=claims, resource=resource, action="connect", t0=t0,
            description=description,
        )  # fmt: skip

    async def _run(self, t0: float) -> Login | None:
        while True:
            packet = await self._next_packet()
            if packet is None:
                return None
            if isinstance(packet, codec.SSLRequest):
                await self._ssl_request()
            elif isinstance(packet, codec.GSSENCRequest):
                self.writer.write(b"N")
            elif isinstance(packet, codec.CancelRequest):
                peer = self.writer.get_extra_info("peername")
                await handle_cancel(self.ctx, packet.pid, packet.secret, t0, peer)
                return None
            else:
                return await self._login(packet)

    async def _next_packet(self) -> codec.StartupPacket | None:
        while True:
            packet = self.packets.next_packet()
            if packet is not None:
                return packet
            data = await self.reader.read(READ_SIZE)
            if not data:
                return None
            if data[0] == _TLS_HANDSHAKE and not self.encrypted and not self._seen_bytes:
                raise _DirectTls
            self._seen_bytes = True
            self.packets.feed(data)

    async def _ssl_request(self) -> None:
        if self.encrypted:
            raise codec.ProtocolError("SSLRequest on an encrypted connection")
        if self.tls_context is None:
            self.writer.write(b"N")
            return
        if self.packets.rest():  # bytes sent before the handshake (CVE-2021-23214)
            raise codec.ProtocolError("received unencrypted data after SSL request")
        self.writer.write(b"S")
        await self.writer.start_tls(self.tls_context)
        self.encrypted = True
        self.packets = codec.StartupReader()

    async def _login(self, startup: codec.StartupMessage) -> Login | None:
        major, minor = startup.version
        if major != 3:
            raise Refused(
                "08P01",
                f"unsupported frontend protocol {major}.{minor}: server supports 3.0 to 3.0",
                "unsupported_protocol",
            )
        params = dict(startup.params)
        extensions = [k for k in params if k.startswith("_pq_.")]
        if minor > 0 or extensions:
            self.writer.write(codec.negotiate_protocol_version(0, extensions))
            for k in extensions:
                del params[k]
        if not self.encrypted and not self.allow_plaintext:
            raise Refused("28000", TLS_REQUIRED, "plaintext_refused")
        user = params.pop("user", "")
        if not user:
            raise Refused(
                "28000", "no PostgreSQL user name specified in startup packet", "protocol_error"
            )
        database = params.pop("database", "") or user
        resource = self.ctx.resources.get(database)
        if resource is None:
            raise Refused("3D000", f'database "{database}" does not exist', "unknown_resource")
        if self.deadline is not None:  # from now on the resource's own bound applies
            self.deadline.reschedule(self.started + resource.handshake_timeout)
        forwarded = _forwarded(params, resource.name)
        token = await self._password(resource.name)
        if token is None:
            return None
        try:
            claims = self.ctx.verifier.verify(token, resource.name)
        except AuthenticationError as exc:
            raise Refused(
                "28P01",
                f'password authentication failed for user "{user}"',
                str(getattr(exc, "reason", "invalid")),
                hint=f"Lockgate token refused: {getattr(exc, 'reason', 'invalid')}",
                claims=getattr(exc, "claims", None),
                resource=resource.name,
            ) from None
        return Login(resource, claims, token, user, forwarded, self.encrypted, startup.version)

    async def _password(self, resource: str) -> str | None:
        """Ask for the password and read it (the Lockgate token); None when the client
        closes instead (not a refusal: nothing was presented)."""
        messages = codec.MessageReader(PRE_AUTH_MAX_MESSAGE_BYTES)
        messages.feed(self.packets.rest())
        self.writer.write(codec.authentication_cleartext_password())
        while (msg := messages.next_message()) is None:
            data = await self.reader.read(READ_SIZE)
            if not data:  # psql does this to prompt for the password, then connects again
                return None
            messages.feed(data)
        if msg.type != codec.PASSWORD:
            raise Refused(
                "08P01",
                f"expected password response, got message type {msg.type}",
                "protocol_error",
                resource=resource,
            )
        if messages.buffered():  # nothing may follow before AuthenticationOk
            raise Refused(
                "08P01", "unexpected data after the password message", "protocol_error",
                resource=resource,
            )  # fmt: skip
        token = codec.decode_password(msg.body)
        if not token:
            raise Refused(
                "28P01", "empty password returned by client", "malformed_credentials",
                resource=resource,
            )  # fmt: skip
        return token


def _forwarded(params: dict[str, str], resource: str) -> dict[str, str]:
    """The client's startup parameters to pass upstream; :class:`Refused` for any other."""
    forwarded: dict[str, str] = {}
    for name, value in params.items():
        key = name.lower()
        if key == "replication":
            raise Refused(
                "0A000", "Lockgate does not serve replication connections", "replication_refused",
                resource=resource,
            )  # fmt: skip
        if key == "options":
            if value.strip():
                raise Refused(
                    "08P01",
                    "Lockgate does not pass command-line options to the server",
                    "unsupported_parameter",
                    hint="remove 'options' from the connection and run SET after connecting",
                    resource=resource,
                )
            continue
        if key == "search_path":
            raise Refused(
                "08P01",
                "Lockgate does not take search_path as a startup parameter",
                "unsupported_parameter",
                hint=f"the session starts on the search_path of {resource!r}; "
                "run SET search_path after connecting",
                resource=resource,
            )
        if key not in FORWARDED_PARAMETERS:
            raise Refused(
                "08P01", f'unsupported startup parameter: "{name}"', "unsupported_parameter",
                hint="run SET after connecting", resource=resource,
            )  # fmt: skip
        if key == "client_encoding" and not safe_encoding(value):
            raise Refused(
                "22023",
                f'client_encoding "{value}" is not served by Lockgate',
                "unsupported_parameter",
                hint="use UTF8",
                resource=resource,
            )
        forwarded[name] = value
    # Pinned whatever a database or role default says: statements are parsed as UTF-8 with
    # standard_conforming_strings on (SJIS or escapes in '...' would lex them otherwise).
    if not any(name.lower() == "client_encoding" for name in forwarded):
        forwarded["client_encoding"] = "UTF8"
    forwarded.update(PINNED_PARAMETERS)
    return forwarded


__all__ = [
    "FORWARDED_PARAMETERS",
    "PINNED_PARAMETERS",
    "SAFE_ENCODINGS",
    "Login",
    "Refused",
    "Startup",
    "safe_encoding",
]
