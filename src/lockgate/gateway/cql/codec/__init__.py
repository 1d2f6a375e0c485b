"""Sans-I/O codec for the CQL native protocol, version 4.

No sockets, no asyncio: feed bytes, get events; give events, get bytes.

Usage (client-facing side of the gateway)::

    from lockgate.gateway.cql import codec

    conn = codec.Connection(codec.Role.SERVER, max_frame_bytes=16 * 1024 * 1024)
    conn.receive_data(chunk)                 # b"" = EOF; never parses, never raises on bytes
    while (event := conn.next_event()) is not codec.NEED_DATA:
        ...                                  # codec.Query / Prepare / Execute / Batch / ...
    writer.write(conn.send(codec.Error(stream=event.stream, code=codec.ERR_UNAUTHORIZED,
                                       message="denied by policy")))

``Connection(our_role, *, max_frame_bytes=16 MiB)``
    ``our_role`` is ``Role.SERVER`` (reads requests, sends responses: the client-facing side)
    or ``Role.CLIENT`` (reads responses, sends requests: the upstream side).
    ``receive_data(data: bytes) -> None``; ``next_event() -> Event | NEED_DATA``;
    ``send(event) -> bytes``; ``peer_version`` (fixed by the first frame); ``buffered``; ``eof``.
    A relay that forwards most frames untouched splits with ``next_frame() -> Frame |
    NEED_DATA`` (``raw``, ``opcode``, ``flags``, ``stream``, ``result_kind``; only version,
    direction and length are checked) and decodes the ones it must look into with
    ``decode(frame) -> Event`` (raises CqlProtocolError for that frame alone).

``ServerHandshake`` / ``ClientHandshake`` (:mod:`.handshake`) are the login state machines
of each side (OPTIONS/STARTUP/AUTHENTICATE/AUTH_RESPONSE → READY or AUTH_SUCCESS, SASL
PLAIN): events in, bytes and steps out; the engine does the I/O and the verification.

``next_event`` raises only :class:`CqlProtocolError` (a ``lockgate.errors.RemoteProtocolError``)
with ``code`` (CQL error code to answer, 0x000A), ``stream`` and ``version``;
``exc.error_frame()`` is the ERROR frame to write before closing. A first frame of any other
version than 4 raises :class:`UnsupportedProtocolVersion` whose message makes the Python driver
downgrade (v5/DSE → v4) on a new connection. Compressed frames (flag 0x01), unknown flags,
opcodes sent in the wrong direction, frames longer than ``max_frame_bytes`` (checked from the
header, before buffering), malformed or over-long bodies all raise. After an error the
connection stays failed.

Events are frozen dataclasses (``kw_only``) named after the spec's messages. Every event has
``stream``, ``version``, ``flags`` (frame flags), ``raw`` (exact frame bytes when parsed) and
``custom_payload``; responses also ``tracing_id`` and ``warnings``.

* Requests: :class:`Startup` (options), :class:`Options`, :class:`AuthResponse` (token),
  :class:`Query` (query, consistency, query_flags, values, names, page_size, paging_state,
  serial_consistency, timestamp), :class:`Prepare` (query), :class:`Execute` (query_id + the
  same parameters), :class:`Batch` (batch_type, statements: list[:class:`BatchStatement`],
  consistency, batch_flags, serial_consistency, timestamp), :class:`Register` (event_types).
* Responses: :class:`Error` (code, message, unprepared_id, keyspace, table, extra),
  :class:`Ready`, :class:`Authenticate` (authenticator), :class:`Supported` (options),
  :class:`AuthChallenge` / :class:`AuthSuccess` (token), :class:`ServerEvent`, and the
  RESULT kinds :class:`Void`, :class:`Rows` (metadata: :class:`RowsMetadata`, rows:
  list[list[bytes | None]], ``column_index(name)``), :class:`SetKeyspace` (keyspace),
  :class:`Prepared` (query_id, metadata: :class:`PreparedMetadata`, result_metadata),
  :class:`SchemaChange` (change_type, target, keyspace, name, arg_types).
* Metadata: :class:`ColumnSpec` (keyspace, table, name, type: :class:`CqlType`), the type
  tree keeps custom/list/set/map/UDT/tuple parameters; ``RowsMetadata.for_columns(cols)``.

``send(event)`` returns ``raw`` for an unedited parsed event (byte-exact forwarding) and
otherwise encodes from the fields; edit with ``dataclasses.replace`` (e.g. a new ``stream``
or rewritten ``rows``). Value helpers for cells live in :mod:`.values` (inet, int, bigint,
varchar, boolean, uuid, blob, set<varchar>). :func:`encode_frame` encodes any event from its
fields regardless of role. :func:`protocol_error_frame` builds a bare
protocol-error frame for any client version.
"""

from __future__ import annotations

from . import values
from ._wire import UNSET, UnsetType, Value
from .bodies import encode_frame
from .connection import (
    DEFAULT_MAX_FRAME_BYTES,
    HEADER_SIZE,
    NEED_DATA,
    SUPPORTED_VERSION,
    Connection,
    CqlProtocolError,
    Frame,
    Role,
    UnsupportedProtocolVersion,
    protocol_error_frame,
    reply_version,
)
from .events import *  # noqa: F403 - opcodes, flags, error codes, consistency constants
from .events import (
    AuthChallenge,
    Authenticate,
    AuthResponse,
    AuthSuccess,
    Batch,
    BatchStatement,
    Error,
    Event,
    Execute,
    Options,
    Prepare,
    Prepared,
    Query,
    Ready,
    Register,
    Request,
    Response,
    Result,
    Rows,
    SchemaChange,
    ServerEvent,
    SetKeyspace,
    Startup,
    Supported,
    Void,
)
from .handshake import (
    ClientHandshake,
    Login,
    LoginRefused,
    Refused,
    Reply,
    ServerHandshake,
    plain_token,
    split_plain,
)
from .types import ColumnSpec, CqlType, PreparedMetadata, RowsMetadata

__all__ = [
    "DEFAULT_MAX_FRAME_BYTES",
    "HEADER_SIZE",
    "NEED_DATA",
    "SUPPORTED_VERSION",
    "UNSET",
    "AuthChallenge",
    "AuthResponse",
    "AuthSuccess",
    "Authenticate",
    "Batch",
    "BatchStatement",
    "ClientHandshake",
    "ColumnSpec",
    "Connection",
    "CqlProtocolError",
    "CqlType",
    "Error",
    "Event",
    "Execute",
    "Frame",
    "Login",
    "LoginRefused",
    "Options",
    "Prepare",
    "Prepared",
    "PreparedMetadata",
    "Query",
    "Ready",
    "Refused",
    "Register",
    "Reply",
    "Request",
    "Response",
    "Result",
    "Role",
    "Rows",
    "RowsMetadata",
    "SchemaChange",
    "ServerEvent",
    "ServerHandshake",
    "SetKeyspace",
    "Startup",
    "Supported",
    "UnsetType",
    "UnsupportedProtocolVersion",
    "Value",
    "Void",
    "encode_frame",
    "plain_token",
    "protocol_error_frame",
    "reply_version",
    "split_plain",
    "values",
]
