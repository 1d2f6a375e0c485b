"""The login of a CQL connection as two state machines, one per side: events in, steps out.

No I/O and no verification here: the engine reads events, feeds them in, writes the bytes
it gets back and decides who may log in.

:class:`ServerHandshake` (we are the node; the client logs in with SASL PLAIN)::

    hs = ServerHandshake(supported=options, authenticator=AUTHENTICATOR)
    step = hs.receive(event)      # Reply | Login | Refused
    # Reply: write step.data, read the next event
    # Login: check step.username / step.password (None when the PLAIN response was
    #        malformed), then write hs.accept() (AUTH_SUCCESS) or hs.reject(code, message)
    # Refused: write step.data and close

Order enforced: OPTIONS any time before the login; STARTUP (without COMPRESSION: frames are
relayed and inspected uncompressed), then AUTH_RESPONSE. Anything else before the login is
refused (``unauthenticated_request``).

:class:`ClientHandshake` (we log in to the node as the gateway's own user)::

    hs = ClientHandshake(username, password)
    write(hs.start())                       # STARTUP
    while (data := hs.receive(event)) is not None:   # None: logged in
        write(data)                         # AUTH_RESPONSE
    # raises LoginRefused with a short reason (never the password)

A node that answers READY (no authenticator) is accepted; a SASL challenge is refused (only
PLAIN is spoken).
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field

from . import events as ev
from .bodies import encode_frame
from .connection import protocol_error_frame

CQL_VERSION = "3.0.0"


def plain_token(username: str, password: str) -> bytes:
    """SASL PLAIN response: empty authzid, NUL, user, NUL, password."""
    return b"\0" + username.encode() + b"\0" + password.encode()


def split_plain(token: bytes | None) -> tuple[str, str] | None:
    """(username, password) of a SASL PLAIN response; None when it is malformed."""
    parts = (token or b"").split(b"\0")
    if len(parts) != 3:
        return None
    try:
        return parts[1].decode("utf-8"), parts[2].decode("utf-8")
    except UnicodeDecodeError:
        return None


# -- steps of the server side ------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class Reply:
    """Write ``data`` and go on reading."""

    data: bytes


@dataclass(frozen=True, slots=True)
class Login:
    """The client's credentials, to verify; then :meth:`ServerHandshake.accept` or
    :meth:`ServerHandshake.reject`. Both are None when the PLAIN response was malformed."""

    stream: int
    username: str | None
    password: str | None = field(repr=False)


@dataclass(frozen=True, slots=True)
class Refused:
    """Write ``data`` and close. ``reason`` is the audit slug, or None when the refusal is
    protocol negotiation rather than a refused request (compression asked for)."""

    data: bytes
    reason: str | None


Step = Reply | Login | Refused


class _State(enum.Enum):
    IDLE = "idle"  # before STARTUP
    STARTED = "started"  # AUTHENTICATE sent, waiting for AUTH_RESPONSE
    CHECKING = "checking"  # credentials handed out, waiting for accept/reject
    DONE = "done"  # logged in
    CLOSED = "closed"  # refused


class ServerHandshake:
    """The node's side of the login; see the module docstring."""

    def __init__(self, *, supported: dict[str, list[str]], authenticator: str) -> None:
        self._supported = supported
        self._authenticator = authenticator
        self._state = _State.IDLE
        self._stream = 0

    @property
    def done(self) -> bool:
        return self._state is _State.DONE

    def receive(self, event: ev.Event) -> Step:
        """The step for the client's next event before the login completed."""
        if self._state not in (_State.IDLE, _State.STARTED):
            raise RuntimeError(f"handshake is {self._state.value}, not reading")
        if isinstance(event, ev.Options):
            return Reply(encode_frame(ev.Supported(stream=event.stream, options=self._supported)))
        if isinstance(event, ev.Startup):
            if event.options.get("COMPRESSION"):
                self._state = _State.CLOSED
                message = "compression is not supported by Lockgate; connect without compression"
                return Refused(protocol_error_frame(message, stream=event.stream), None)
            self._state = _State.STARTED
            return Reply(
                encode_frame(
                    ev.Authenticate(stream=event.stream, authenticator=self._authenticator)
                )
            )
        if isinstance(event, ev.AuthResponse) and self._state is _State.STARTED:
            self._state = _State.CHECKING
            self._stream = event.stream
            credentials = split_plain(event.token)
            if credentials is None:
                return Login(event.stream, None, None)
            return Login(event.stream, *credentials)
        self._state = _State.CLOSED
        message = (
            f"unexpected {type(event).__name__} before authentication; "
            "send STARTUP and log in with the resource name and a Lockgate token"
        )
        return Refused(
            protocol_error_frame(message, stream=event.stream), "unauthenticated_request"
        )

    def accept(self) -> bytes:
        """The credentials were good: AUTH_SUCCESS; the connection now carries requests."""
        self._expect_checking()
        self._state = _State.DONE
        return encode_frame(ev.AuthSuccess(stream=self._stream))

    def reject(self, code: int, message: str) -> bytes:
        """The credentials (or the upstream behind them) failed: the ERROR to send before
        closing."""
        self._expect_checking()
        self._state = _State.CLOSED
        return encode_frame(ev.Error(stream=self._stream, code=code, message=message))

    def _expect_checking(self) -> None:
        if self._state is not _State.CHECKING:
            raise RuntimeError(f"handshake is {self._state.value}, no login to answer")


# -- the client side ---------------------------------------------------------------------------
class LoginRefused(Exception):
    """The node did not let us log in; the message is short and names no secret."""


class ClientHandshake:
    """Our login to a node as the gateway's own user; see the module docstring."""

    def __init__(self, username: str, password: str) -> None:
        self._username = username
        self._password = password
        self._state = _State.IDLE

    @property
    def done(self) -> bool:
        return self._state is _State.DONE

    def start(self) -> bytes:
        """The STARTUP frame."""
        if self._state is not _State.IDLE:
            raise RuntimeError("handshake already started")
        self._state = _State.STARTED
        return encode_frame(ev.Startup(stream=0, options={"CQL_VERSION": CQL_VERSION}))

    def receive(self, event: ev.Event) -> bytes | None:
        """Bytes to write for the node's answer, or None once logged in. Raises
        :class:`LoginRefused`."""
        if self._state is _State.STARTED:
            if isinstance(event, ev.Ready):
                self._state = _State.DONE
                return None
            if not isinstance(event, ev.Authenticate):
                self._refuse(f"unexpected answer to STARTUP: {describe(event)}")
            self._state = _State.CHECKING
            token = plain_token(self._username, self._password)
            return encode_frame(ev.AuthResponse(stream=0, token=token))
        if self._state is _State.CHECKING:
            if isinstance(event, ev.AuthChallenge):
                self._refuse("authenticator sent a challenge; only SASL PLAIN is supported")
            if not isinstance(event, ev.AuthSuccess):
                self._refuse(f"login as {self._username!r} refused: {describe(event)}")
            self._state = _State.DONE
            return None
        raise RuntimeError(f"handshake is {self._state.value}, not reading")

    def _refuse(self, reason: str) -> None:
        self._state = _State.CLOSED
        raise LoginRefused(reason)


def describe(event: ev.Event) -> str:
    """A short description of an unexpected answer (an error's code and message)."""
    if isinstance(event, ev.Error):
        return f"error 0x{event.code:04x} {event.message[:200]}"
    return type(event).__name__


__all__ = [
    "ClientHandshake",
    "Login",
    "LoginRefused",
    "Refused",
    "Reply",
    "ServerHandshake",
    "Step",
    "describe",
    "plain_token",
    "split_plain",
]
