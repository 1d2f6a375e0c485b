"""Upstream side of the PostgreSQL engine: the gateway's own login to the server.

:func:`connect` opens one authenticated connection for one client session, each login
attempt bounded by the resource's ``connect_timeout`` (steps 1 and 2:
:mod:`.upstream_transport`):

1. TCP to ``host:port``;
2. TLS per ``resource.tls``: ``verify-full`` (the certificate chains to ``ca_file`` or the
   system store and names ``host``, TLS 1.2 or newer), ``require`` (encrypted, not
   verified), ``disable`` (plain). An SSLRequest is answered with one byte; a server that
   says 'N' while TLS is wanted is refused. The TLS handshake reads the socket right after
   that byte, so nothing a man in the middle sent in clear before it can pass as encrypted
   (CVE-2021-23222);
3. StartupMessage: the caller's parameters (application_name, client_encoding ...) and then
   the resource's own ``user``, ``database`` and ``search_path``, which always win;
   ``options``, ``replication`` and ``_pq_.*`` are never sent (each could change the role,
   any setting or the protocol behind the gateway's back);
4. authentication with the credential's value: SCRAM-SHA-256 (:mod:`.scram`; bound to the
   server's certificate over TLS when the server offers SCRAM-SHA-256-PLUS, which defeats a
   man in the middle even under ``tls: require``; the server must prove it knows the
   verifier before its AuthenticationOk counts), md5, a cleartext
   password only over TLS to a verified server (``verify-full``: how Entra ID access tokens
   are sent to Azure Database for PostgreSQL; under ``require`` a man in the middle could ask
   for it), or none when the server trusts the address;
5. ParameterStatus and BackendKeyData collected up to ReadyForQuery.

A refused, reset or silently closed connection or SQLSTATE 57P01-57P03 (a server
restarting) is tried again with backoff until ``connect_timeout``.

A refused credential (SQLSTATE class 28) is retried once with another version or a fresh
token (:mod:`.upstream_credential`). Failures raise :class:`~lockgate.errors.UpstreamUnavailable`
(:class:`~lockgate.errors.UpstreamAuthFailed` for a refused credential) whose message names
``host:port``, the SQLSTATE and the server's message — never the secret.

:func:`cancel` sends a CancelRequest for a backend key on a fresh connection (TLS as for a
login), as the protocol wants.
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TypeVar

from lockgate import _log
from lockgate.config import PostgresResource
from lockgate.errors import CredentialError, UpstreamAuthFailed, UpstreamUnavailable
from lockgate.gateway.caches import SecretCache, UpstreamSecret
from lockgate.gateway.upstream_credential import CredentialChoice

from . import codec, scram
from .upstream_transport import (
    READ_SIZE,
    Transient,
    address,
    client_ssl_context,
    describe,
    open_stream,
)

log = _log.get("gateway.postgres")

#: Largest message the server may send during the login (ParameterStatus, notices ...).
LOGIN_MAX_MESSAGE_BYTES = 1024 * 1024
#: Startup parameters the resource fixes, and ones never passed on from a client.
_RESOURCE_PARAMS = frozenset({"user", "database", "search_path"})
_NEVER_SENT = frozenset({"options", "replication"})

#: A server restarting ends the logins under way (57P01 admin_shutdown, 57P02
#: crash_shutdown), refuses connections, then answers 57P03 (cannot_connect_now: "the
#: database system is starting up"); a login then tries again, with backoff, until
#: connect_timeout, so a client connecting during a restart gets in once the server is back.
_RESTARTING_SQLSTATES = frozenset({"57P01", "57P02", "57P03"})
_RETRY_FIRST_DELAY = 0.05
_RETRY_MAX_DELAY = 0.5

_T = TypeVar("_T")


@dataclass(slots=True)
class UpstreamLink:
    """An authenticated upstream connection, ready for queries (status after login: 'I')."""

    reader: asyncio.StreamReader
    writer: asyncio.StreamWriter
    parameters: dict[str, str]  # ParameterStatus values from the login
    backend_pid: int
    backend_secret: bytes = field(repr=False)
    pending: bytes = b""  # bytes read past the login's ReadyForQuery (normally none)
    credential_version: int | None = None  # None: the server asked for no password
    tls: bool = False

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.writer.close()


# -- startup ------------------------------------------------------------------------------
def quote_ident(name: str) -> str:
    """``name`` as a double-quoted SQL identifier (always quoted: exact, case kept)."""
    return '"' + name.replace('"', '""') + '"'


def startup_params(resource: PostgresResource, startup: Mapping[str, str]) -> dict[str, str]:
    """The StartupMessage parameters: the caller's, then the resource's, which win."""
    params = {
        k: v
        for k, v in startup.items()
        if k not in _RESOURCE_PARAMS and k not in _NEVER_SENT and not k.startswith("_pq_.")
    }
    params["user"] = resource.username
    params["database"] = resource.database
    params["search_path"] = ",".join(quote_ident(s) for s in resource.search_path)
    return params


# -- one login ------------------------------------------------------------------------------
class _Messages:
    """Typed messages from the server during the login; remembers what is read past them."""

    def __init__(self, reader: asyncio.StreamReader, where: str) -> None:
        self._reader = reader
        self._where = where
        self._codec = codec.MessageReader(LOGIN_MAX_MESSAGE_BYTES)
        self._last = b""

    async def next(self) -> codec.Message:
        while True:
            try:
                msg = self._codec.next_message()
            except codec.ProtocolError as exc:
                raise UpstreamUnavailable(f"{self._where}: protocol error: {exc}") from None
            if msg is not None:
                return msg
            data = await self._reader.read(READ_SIZE)
            if not data:
                raise Transient(f"{self._where}: the server closed the connection")
            self._codec.feed(data)
            self._last = data

    def rest(self) -> bytes:
        # Once a message is complete nothing is fed until the next is asked for, so what
        # is still buffered is the tail of the last chunk read.
        left = self._codec.buffered()
        return self._last[len(self._last) - left :] if left else b""


class _Login:
    """One login attempt with one secret; ``sent_secret`` tells whether the server saw it."""

    def __init__(
        self,
        resource: PostgresResource,
        ctx: ssl.SSLContext | None,
        secret: UpstreamSecret | None,
        startup: Mapping[str, str],
    ) -> None:
        self.resource = resource
        self.ctx = ctx
        self.secret = secret
        self.startup = startup
        self.where = address(resource)
        self.sent_secret = False

    async def run(self) -> UpstreamLink:
        timeout = self.resource.connect_timeout
        last = ""
        try:
            async with asyncio.timeout(timeout):
                delay = _RETRY_FIRST_DELAY
                while True:
                    try:
                        return await self._attempt()
                    except ConnectionError as exc:  # refused, reset, broken pipe
                        last = describe(exc)
                    except Transient as exc:
                        last = str(exc).removeprefix(f"{self.where}: ")
                    await asyncio.sleep(delay)
                    delay = min(delay * 2, _RETRY_MAX_DELAY)
        except TimeoutError:
            raise UpstreamUnavailable(
                f"{self.where}: no login within {timeout:g}s (connect_timeout)"
                + (f"; last: {last}" if last else "")
            ) from None
        except OSError as exc:  # refused, unreachable, TLS verification (ssl.SSLError)
            raise UpstreamUnavailable(f"{self.where}: {describe(exc)}") from None
        except codec.ProtocolError as exc:
            raise UpstreamUnavailable(f"{self.where}: protocol error: {exc}") from None
        except ValueError:  # the encoders' refusal; its text could quote the secret: not kept
            raise UpstreamUnavailable(
                f"{self.where}: a NUL byte or invalid Unicode in the credential "
                f"{self.resource.credential!r} or a startup parameter cannot be sent"
            ) from None

    async def _attempt(self) -> UpstreamLink:
        reader, writer = await open_stream(self.resource, self.ctx)
        try:
            return await self._login(reader, writer)
        except BaseException:
            writer.close()
            raise

    async def _login(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> UpstreamLink:
        tls = writer.get_extra_info("ssl_object") is not None
        writer.write(codec.startup_message(startup_params(self.resource, self.startup)))
        messages = _Messages(reader, self.where)
        await self._authenticate(messages, writer, tls)
        parameters: dict[str, str] = {}
        pid, key = 0, b""
        while True:
            msg = await messages.next()
            if msg.type == codec.PARAMETER_STATUS:
                name, value = codec.decode_parameter_status(msg.body)
                parameters[name] = value
            elif msg.type == codec.BACKEND_KEY_DATA:
                pid, key = codec.decode_backend_key_data(msg.body)
            elif msg.type == codec.READY_FOR_QUERY:
                return UpstreamLink(
                    reader,
                    writer,
                    parameters,
                    pid,
                    key,
                    pending=messages.rest(),
                    credential_version=self._sent_version(),
                    tls=tls,
                )
            elif msg.type == codec.ERROR_RESPONSE:
                raise self._server_error(msg.body)
            elif msg.type != codec.NOTICE_RESPONSE:
                raise self._unexpected(msg, "after authentication")

    async def _authenticate(
        self, messages: _Messages, writer: asyncio.StreamWriter, tls: bool
    ) -> None:
        exchange: scram.ScramClient | None = None
        while True:
            msg = await messages.next()
            if msg.type == codec.ERROR_RESPONSE:
                raise self._server_error(msg.body)
            if msg.type in (codec.NOTICE_RESPONSE, codec.NEGOTIATE_PROTOCOL_VERSION):
                continue  # notices may come at any time; the other only answers _pq_ options
            if msg.type != codec.AUTHENTICATION:
                raise self._unexpected(msg, "during authentication")
            auth = codec.decode_authentication(msg.body)
            if auth.code == codec.AUTH_OK:
                if exchange is not None and not exchange.done:
                    raise UpstreamUnavailable(
                        f"{self.where}: the server ended SCRAM authentication before proving "
                        "it knows the password"
                    )
                return
            if auth.code == codec.AUTH_CLEARTEXT_PASSWORD:
                # Only to a server whose certificate was verified: under ``tls: require`` a
                # man in the middle could ask for the password (or Entra token) in clear.
                if not tls or self.resource.tls != "verify-full":
                    raise UpstreamUnavailable(
                        f"{self.where}: the server asks for a cleartext password over a "
                        f"connection whose server is not verified (tls: {self.resource.tls}); "
                        "refused (use tls: verify-full)"
                    )
                writer.write(codec.password_message(self._password()))
            elif auth.code == codec.AUTH_MD5_PASSWORD:
                answer = scram.md5_password(self._password(), self.resource.username, auth.data)
                writer.write(codec.password_message(answer))
            elif auth.code == codec.AUTH_SASL:
                exchange = self._start_scram(codec.sasl_mechanisms(auth.data), writer)
            elif auth.code == codec.AUTH_SASL_CONTINUE and exchange is not None:
                await self._scram_continue(exchange, auth.data, writer)
            elif auth.code == codec.AUTH_SASL_FINAL and exchange is not None:
                self._scram(exchange.server_final, auth.data)
            else:
                raise UpstreamUnavailable(
                    f"{self.where}: unsupported authentication request (code {auth.code})"
                )

    def _start_scram(self, offered: list[str], writer: asyncio.StreamWriter) -> scram.ScramClient:
        ssl_object: ssl.SSLObject | None = writer.get_extra_info("ssl_object")
        certificate = ssl_object.getpeercert(binary_form=True) if ssl_object else None
        binding = scram.tls_server_end_point(certificate) if certificate else None
        try:
            mechanism, bound = scram.choose_mechanism(offered, binding)
        except scram.ScramError as exc:
            raise UpstreamUnavailable(f"{self.where}: {exc}") from None
        exchange = scram.ScramClient(
            self._password(), channel_binding=bound, could_bind=binding is not None
        )
        writer.write(codec.sasl_initial_response(mechanism, exchange.client_first()))
        return exchange

    async def _scram_continue(
        self, exchange: scram.ScramClient, data: bytes, writer: asyncio.StreamWriter
    ) -> None:
        salt, iterations = self._scram(exchange.server_first, data)
        password = self._password()
        if scram.cached_salted_password(password, salt, iterations) is None:
            # thousands of HMAC rounds: off the event loop, other sessions keep flowing
            await asyncio.to_thread(scram.salted_password, password, salt, iterations)
        writer.write(codec.sasl_response(exchange.client_final()))

    def _scram(self, step: Callable[[bytes], _T], data: bytes) -> _T:
        try:
            return step(data)
        except scram.ScramError as exc:
            raise UpstreamUnavailable(f"{self.where}: SCRAM authentication: {exc}") from None

    def _password(self) -> str:
        if self.secret is None:
            raise UpstreamUnavailable(
                f"{self.where}: the server asks for a password and credential "
                f"{self.resource.credential!r} has no value"
            )
        self.sent_secret = True
        return self.secret.value

    def _sent_version(self) -> int | None:
        return self.secret.version if self.sent_secret and self.secret is not None else None

    def _server_error(self, body: bytes) -> UpstreamUnavailable:
        fields = codec.decode_error_fields(body)
        sqlstate = fields.get("C", "")
        text = f"{self.where}: {fields.get('V') or fields.get('S', 'ERROR')} {sqlstate}: "
        text += fields.get("M", "(no message)")
        if sqlstate in _RESTARTING_SQLSTATES:
            return Transient(text)
        # Class 28: invalid authorization (28P01 wrong password, 28000 no pg_hba entry).
        return UpstreamAuthFailed(text) if sqlstate.startswith("28") else UpstreamUnavailable(text)

    def _unexpected(self, msg: codec.Message, when: str) -> UpstreamUnavailable:
        return UpstreamUnavailable(
            f"{self.where}: protocol error: unexpected message {chr(msg.type)!r} {when}"
        )


# -- the door ---------------------------------------------------------------------------------
async def connect(
    resource: PostgresResource, secrets: SecretCache, startup: Mapping[str, str]
) -> UpstreamLink:
    """Log in to ``resource`` as the gateway (see the module docstring)."""
    ctx = client_ssl_context(resource)
    choice = CredentialChoice(resource, secrets)
    try:
        secret = await choice.first()
    except CredentialError as exc:  # the message names the credential, never its value
        raise UpstreamUnavailable(f"{address(resource)}: {exc}") from None
    while True:
        login = _Login(resource, ctx, secret, startup)
        try:
            link = await login.run()
        except UpstreamAuthFailed:
            retry = await choice.after_refusal(secret) if secret and login.sent_secret else None
            if retry is None:
                raise
            log.info(
                "postgres upstream refused the credential; retrying",
                extra={
                    "fields": {
                        "resource": resource.name,
                        "credential_name": resource.credential,
                        "refused_version": secret.version if secret else None,
                        "retry_version": retry.version,
                    }
                },
            )
            secret = retry
            continue
        choice.succeeded(secret if login.sent_secret else None)
        return link


async def cancel(resource: PostgresResource, pid: int, secret: bytes) -> None:
    """Ask the server to cancel what backend ``pid`` runs (CancelRequest, fresh connection).

    Waits until the server closes the connection, i.e. has taken the request. Raises
    UpstreamUnavailable when the server cannot be reached; the server never answers
    whether a query was cancelled.
    """
    where = address(resource)
    try:
        async with asyncio.timeout(resource.connect_timeout):
            reader, writer = await open_stream(resource, client_ssl_context(resource))
            try:
                writer.write(codec.cancel_request(pid, secret))
                await writer.drain()
                with contextlib.suppress(OSError):  # a TLS peer may close without notify
                    while await reader.read(READ_SIZE):
                        pass
            finally:
                writer.close()
    except TimeoutError:
        raise UpstreamUnavailable(f"{where}: cancel request timed out") from None
    except OSError as exc:
        raise UpstreamUnavailable(f"{where}: cancel request: {describe(exc)}") from None
