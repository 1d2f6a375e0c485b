"""The sans-I/O CQL connection: bytes in, events out; events in, bytes out.

Strategy (h11-style): ``receive_data`` only appends; ``next_event`` is the only place that
parses and returns one event per complete frame, or ``NEED_DATA``. It raises only
:class:`CqlProtocolError` (a ``RemoteProtocolError``) whose ``code`` is the native error to
answer with and whose ``stream`` (when known) is the stream to answer on; after that the
connection is in an error state, drops its buffer and raises the same error again.

A relay that forwards most frames as they are splits with ``next_frame`` (a :class:`Frame`:
raw bytes and header fields, the body not parsed; only version, direction and length are
checked) and parses only the frames it must look into with ``decode``, whose errors are the
frame's alone (its end is known, the next frame still splits). Returned frames are dropped
from the buffer in one move when the splitter next answers NEED_DATA, not once per frame and
never later: a connection waiting for its next read keeps no frame it returned.

Resource rule: the 9-byte header is validated (direction, version, opcode, flags, length
against ``max_frame_bytes``) before any body byte is waited for, so a forged length never
allocates; while ``next_event`` returns NEED_DATA the buffer holds at most one partial frame,
i.e. at most ``max_frame_bytes + 9`` bytes (callers feed socket reads of bounded size and
drain ``next_event`` until NEED_DATA before reading again).

Versions: the first frame fixes the connection's version. Only v4 is spoken; any other
version raises :class:`UnsupportedProtocolVersion` carrying the client's version and stream
so the engine can send :func:`protocol_error_frame` (the Python driver downgrades on it).
"""

from __future__ import annotations

import enum
import struct

from lockgate.errors import LocalProtocolError, RemoteProtocolError

from . import events as ev
from ._wire import Malformed, Reader
from .bodies import encode_frame, frame, read_body

HEADER_SIZE = 9
DEFAULT_MAX_FRAME_BYTES = 16 * 1024 * 1024
SUPPORTED_VERSION = 4
_HEADER = struct.Struct(">BBhBi")
_KNOWN_FLAGS = (
    ev.FLAG_COMPRESSION
    | ev.FLAG_TRACING
    | ev.FLAG_CUSTOM_PAYLOAD
    | ev.FLAG_WARNING
    | ev.FLAG_USE_BETA
)


class Role(enum.Enum):
    """Which side we are: a SERVER reads requests and sends responses; a CLIENT the reverse."""

    SERVER = "server"
    CLIENT = "client"


class NEED_DATA:
    """Sentinel returned by ``next_event`` when no complete frame is buffered."""


class Frame:
    """One whole frame, split by its header but not decoded: what a relay forwards as is.

    ``raw`` is the exact frame bytes; ``opcode``, ``flags`` and ``stream`` come from its
    header. :meth:`Connection.decode` turns it into an event when the relay must look in.
    """

    __slots__ = ("flags", "opcode", "raw", "stream", "version")

    def __init__(self, raw: bytes, version: int, flags: int, stream: int, opcode: int) -> None:
        self.raw = raw
        self.version = version
        self.flags = flags
        self.stream = stream
        self.opcode = opcode

    @property
    def result_kind(self) -> int | None:
        """The kind of a RESULT whose body starts at once (no tracing, warnings or custom
        payload before it); None for anything else."""
        if self.opcode != ev.RESULT or self.flags or len(self.raw) < HEADER_SIZE + 4:
            return None
        return int.from_bytes(self.raw[HEADER_SIZE : HEADER_SIZE + 4], "big", signed=True)


class CqlProtocolError(RemoteProtocolError):
    """The peer's bytes are not a valid v4 frame.

    ``code`` is the CQL error code to answer with (0x000A Protocol error by default),
    ``stream`` the stream id of the offending frame (0 if the header was unreadable), and
    ``version`` the peer's protocol version if the header got that far.
    """

    def __init__(
        self,
        message: str,
        *,
        code: int = ev.ERR_PROTOCOL,
        stream: int = 0,
        version: int | None = None,
    ) -> None:
        super().__init__(message)
        self.code = code
        self.stream = stream
        self.version = version

    def error_frame(self) -> bytes:
        """The ERROR frame to send before closing (protocol error on the offending stream)."""
        return protocol_error_frame(str(self), stream=self.stream, version=self.version or 4)


class UnsupportedProtocolVersion(CqlProtocolError):
    """The peer speaks a protocol version other than v4 (e.g. v5, v3 or DSE 0x41/0x42)."""

    def __init__(self, version: int, stream: int) -> None:
        super().__init__(
            f"Invalid or unsupported protocol version ({version}); supported versions are (4/v4)",
            stream=stream,
            version=version,
        )


def reply_version(client_version: int) -> int:
    """A version the client can read for an error reply: its own if v3/v4 (same header
    layout), otherwise v4 (the Python driver accepts any version it knows)."""
    return client_version if client_version in (3, 4) else 4


def protocol_error_frame(
    message: str, *, stream: int = 0, version: int = 4, code: int = ev.ERR_PROTOCOL
) -> bytes:
    """An ERROR response frame readable by a client of ``version`` (see ``reply_version``).

    For an unsupported version use the exception's message: the driver downgrades only when
    the message contains "unsupported protocol version".
    """
    body = struct.pack(">i", code)
    msg = message.encode("utf-8")[:65535]
    body += struct.pack(">H", len(msg)) + msg
    return frame(0x80 | reply_version(version), 0, stream, ev.ERROR, body)


class Connection:
    """One side of one CQL connection. Not thread-safe; one per socket direction pair."""

    def __init__(self, our_role: Role, *, max_frame_bytes: int = DEFAULT_MAX_FRAME_BYTES) -> None:
        if max_frame_bytes < 0:
            raise ValueError("max_frame_bytes must be >= 0")
        self.our_role = our_role
        self.max_frame_bytes = max_frame_bytes
        self._buf = bytearray()
        self._pos = 0  # where the next frame starts in _buf (returned bytes: see _need_data)
        self._eof = False
        self._error: CqlProtocolError | None = None
        #: The peer's protocol version, fixed by its first frame (None before that).
        self.peer_version: int | None = None
        self._incoming = ev.REQUEST_TYPES if our_role is Role.SERVER else ev.RESPONSE_TYPES
        # Requests have the direction bit clear, responses set.
        self._direction = 0x00 if our_role is Role.SERVER else 0x80

    # -- receiving ------------------------------------------------------------------------------
    @property
    def buffered(self) -> int:
        """Bytes received but not yet returned as events."""
        return len(self._buf) - self._pos

    @property
    def eof(self) -> bool:
        return self._eof

    def receive_data(self, data: bytes) -> None:
        """Append bytes from the peer; ``b""`` means the peer closed. Never parses."""
        if self._error is not None:
            return
        if not data:
            self._eof = True
            return
        if self._eof:
            raise RuntimeError("received data after EOF")
        if self._pos:  # drop what was returned before appending: one move per chunk
            del self._buf[: self._pos]
            self._pos = 0
        self._buf += data

    def next_event(self) -> ev.Event | type[NEED_DATA]:
        """Return the next complete frame as an event, or NEED_DATA.

        Raises only :class:`CqlProtocolError`. At EOF with a partial frame buffered it raises
        (a truncated frame); at EOF with an empty buffer it returns NEED_DATA (check ``eof``).
        """
        frame = self._next_frame(whole_header=True)
        if frame is NEED_DATA:
            return NEED_DATA
        assert isinstance(frame, Frame)
        try:
            return self._parse(frame)
        except CqlProtocolError as exc:
            self._fail(exc)
            raise

    def next_frame(self) -> Frame | type[NEED_DATA]:
        """Return the next complete frame undecoded, or NEED_DATA: for a relay that forwards
        most frames as they are and decodes only some (:meth:`decode`).

        Only what splitting needs is checked here (version, direction, length against
        ``max_frame_bytes``); an unknown opcode or flag surfaces in :meth:`decode`. Raises
        :class:`CqlProtocolError` (and the connection stays failed) when the stream cannot be
        split any further.
        """
        return self._next_frame(whole_header=False)

    def decode(self, frame: Frame) -> ev.Event:
        """The event of a frame from :meth:`next_frame`. Raises :class:`CqlProtocolError`
        when it cannot be decoded; the connection is not failed by that (the frame's end is
        known, so the next one can still be split)."""
        self._check_message(frame.opcode, frame.flags, frame.stream)
        return self._parse(frame)

    def _next_frame(self, *, whole_header: bool) -> Frame | type[NEED_DATA]:
        if self._error is not None:
            raise self._error
        try:
            return self._split(whole_header)
        except CqlProtocolError as exc:
            self._fail(exc)
            raise

    def _fail(self, exc: CqlProtocolError) -> None:
        self._error = exc
        self._buf = bytearray()
        self._pos = 0

    def _split(self, whole_header: bool) -> Frame | type[NEED_DATA]:
        buf, pos = self._buf, self._pos
        have = len(buf) - pos
        if have < HEADER_SIZE:
            if self._eof and have:
                raise CqlProtocolError("connection closed inside a frame header")
            if have and self.peer_version is None:
                self._check_first_byte(buf)
            return self._need_data()
        vbyte, flags, stream, opcode, length = _HEADER.unpack_from(buf, pos)
        version = vbyte & 0x7F
        if self.peer_version is None:
            self._check_first_byte(buf)
            self.peer_version = version
        elif version != self.peer_version:
            raise CqlProtocolError("protocol version changed mid-connection", stream=stream)
        if vbyte & 0x80 != self._direction:
            raise CqlProtocolError("frame in the wrong direction", stream=stream, version=version)
        if whole_header:  # refused before any body byte is waited for
            self._check_message(opcode, flags, stream)
        if length < 0 or length > self.max_frame_bytes:
            raise CqlProtocolError(
                f"frame body of {length} bytes exceeds the limit of {self.max_frame_bytes}",
                stream=stream,
                version=4,
            )
        end = pos + HEADER_SIZE + length
        if len(buf) < end:
            if self._eof:
                raise CqlProtocolError("connection closed inside a frame", stream=stream, version=4)
            return self._need_data()
        self._pos = end
        return Frame(bytes(buf[pos:end]), version, flags, stream, opcode)

    def _need_data(self) -> type[NEED_DATA]:
        """NEED_DATA, with the bytes already returned dropped first: while the connection
        waits for its next read (an idle pooled connection may wait for minutes) it must not
        keep its last frame, which may be the largest it ever relayed. This is the move
        :meth:`receive_data` would make before its next append, made earlier, not twice."""
        if self._pos:
            del self._buf[: self._pos]
            self._pos = 0
        return NEED_DATA

    def _check_message(self, opcode: int, flags: int, stream: int) -> None:
        """Refuse an opcode not sent in this direction, compression and unknown flags."""
        if opcode not in self._incoming:
            raise CqlProtocolError(f"unexpected opcode 0x{opcode:02x}", stream=stream, version=4)
        if flags & ev.FLAG_COMPRESSION:
            raise CqlProtocolError(
                "compressed frames are not supported (compression was not negotiated)",
                stream=stream,
                version=4,
            )
        if flags & ~_KNOWN_FLAGS or (self.our_role is Role.SERVER and flags & ev.FLAG_WARNING):
            raise CqlProtocolError(f"unknown frame flags 0x{flags:02x}", stream=stream, version=4)

    def _check_first_byte(self, buf: bytearray) -> None:
        """Refuse foreign versions as soon as the version byte (and the stream) is known."""
        vbyte = buf[0]
        version = vbyte & 0x7F
        if version == SUPPORTED_VERSION:
            return
        if version < 3:
            # v1/v2 headers have a one-byte stream at offset 2.
            if len(buf) >= 3:
                raise UnsupportedProtocolVersion(version, struct.unpack_from(">b", buf, 2)[0])
            return
        if len(buf) >= 4:
            raise UnsupportedProtocolVersion(version, struct.unpack_from(">h", buf, 2)[0])

    def _parse(self, frame: Frame) -> ev.Event:
        cls = self._incoming[frame.opcode]
        flags = frame.flags
        r = Reader(frame.raw, HEADER_SIZE)
        common: dict[str, object] = {
            "stream": frame.stream,
            "version": frame.version,
            "flags": flags,
            "raw": frame.raw,
        }
        try:
            if self.our_role is Role.CLIENT:
                # Response bodies: tracing id, then warnings, then custom payload.
                if flags & ev.FLAG_TRACING:
                    common["tracing_id"] = r.take(16)
                if flags & ev.FLAG_WARNING:
                    common["warnings"] = r.string_list()
            if flags & ev.FLAG_CUSTOM_PAYLOAD:
                common["custom_payload"] = r.bytes_map()
            return read_body(cls, r, frame.version, common)
        except Malformed as exc:
            raise CqlProtocolError(
                f"malformed {cls.__name__} frame: {exc}", stream=frame.stream, version=4
            ) from None

    # -- sending --------------------------------------------------------------------------------
    def send(self, event: ev.Event) -> bytes:
        """Bytes for ``event``: its ``raw`` frame if the codec parsed it and it was not
        edited, else a frame encoded from its fields. Raises LocalProtocolError if ``event``
        cannot be sent by our role or its fields cannot be encoded."""
        if event.is_request != (self.our_role is Role.CLIENT):
            raise LocalProtocolError(f"a {self.our_role.value} cannot send {type(event).__name__}")
        if event._parsed and event.raw:
            return event.raw
        try:
            return encode_frame(event)
        except (ValueError, TypeError, struct.error, OverflowError, UnicodeEncodeError) as exc:
            raise LocalProtocolError(f"cannot encode {type(event).__name__}: {exc}") from None
